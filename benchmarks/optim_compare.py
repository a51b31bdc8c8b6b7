"""PartitionNewton vs SGD (momentum) vs Adam, the author's protocol: LeNet-5 (tanh, paper
init) on CIFAR-10 (45,000 / 5,000 train / validation split), batch 100.

Phase 1 runs every configuration on seed 0; each baseline's best learning rate (lowest
final training NLL on seed 0) then runs on seeds 1 and 2, and so do both PartitionNewton
configurations (paper defaults: lr 0.3, lambda_int 1, period 10, average 3, a separate
unshuffled 100-sample curvature loader, previous rates kept in the hard case, lr halved on
a 2-epoch plateau; and lambda_int 100). Every optimizer gets the paper init and the same
plateau halving. Divergences are reported, never filtered.

Every run is a normal run folder (browsable in the dashboard) and resumes when the script
is run again; one JSON line per run, then the table::

    python benchmarks/optim_compare.py --data ../shared/datasets/cifar10/cifar10.npz \\
        --epochs 15 --out artifacts/optim_compare --markdown artifacts/optim_compare.md
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hessian_lens.train import TrainConfig, train

PN_PAPER = {"lambda_int": 1.0, "hard_case": "keep_previous"}
#: (family, run name, optimizer, lr, other TrainConfig fields)
GRID = [
    ("partition-newton", "pn-lambda1", "partition-newton", 0.3, {"optimizer_kwargs": PN_PAPER}),
    (
        "partition-newton-lambda100",
        "pn-lambda100",
        "partition-newton",
        0.3,
        {"optimizer_kwargs": {**PN_PAPER, "lambda_int": 100.0}},
    ),
    *[("adam", f"adam-lr{lr:g}", "adam", lr, {}) for lr in (3e-5, 1e-4, 3e-4, 1e-3)],
    *[("sgd", f"sgd-lr{lr:g}", "sgd", lr, {"momentum": 0.9}) for lr in (0.003, 0.01, 0.03)],
]
DIVERGED = 100.0  # a final loss this many times the initial one counts as diverged


def run_one(args, name: str, optimizer: str, lr: float, extra: dict, seed: int) -> dict:
    """Train (or resume) one run and summarise it; a divergence is a result, not a crash."""
    folder = Path(args.out) / f"{name}-seed{seed}"
    config = TrainConfig(
        out=str(folder),
        model="lenet5",
        init="paper",
        data="cifar10",
        data_source=args.data,
        val_size=5000,
        epochs=args.epochs,
        batch_size=100,
        optimizer=optimizer,
        lr=lr,
        seed=seed,
        device=args.device,
        lr_plateau=2,
        **extra,
    )
    error = None
    try:
        train(config, progress=False, command=f"benchmarks/optim_compare.py ({name}, seed {seed})")
    except FloatingPointError as err:
        error = str(err)
    return summarize(name, optimizer, lr, seed, folder, error)


def summarize(name: str, optimizer: str, lr: float, seed: int, run: Path, error) -> dict:
    """The numbers of one run (finished or diverged)."""
    history = json.loads((run / "run.json").read_text())["history"]
    start, epochs = history[0], [h for h in history[1:] if float(h["epoch"]).is_integer()]
    seconds = [h["seconds"] for h in epochs] or [0.0]
    curvature = sum(h.get("curvature_seconds", 0.0) for h in epochs)
    final = epochs[-1] if epochs else start
    diverged = error or (
        f"final loss {final['train_loss']:.3g} >= {DIVERGED:g}x the initial "
        f"{start['train_loss']:.3g}"
        if not math.isfinite(final["train_loss"])
        or final["train_loss"] >= DIVERGED * start["train_loss"]
        else None
    )
    validated = [h for h in epochs if "val_acc" in h]
    best_val = max(validated, key=lambda h: h["val_acc"]) if validated else None  # first of ties
    return {
        "run": name,
        "optimizer": optimizer,
        "lr": lr,
        "seed": seed,
        "epochs": len(epochs),
        "final_train_nll": final["train_loss"],
        "best_train_nll": min(h["train_loss"] for h in epochs) if epochs else None,
        "final_test_acc": final["test_acc"],
        "final_val_acc": final.get("val_acc"),
        # the model selected on the validation split, never on the test set
        "best_val_epoch": best_val["epoch"] if best_val else None,
        "test_acc_at_best_val": best_val["test_acc"] if best_val else None,
        "sec_per_epoch": statistics.median(seconds),
        "curvature_share": curvature / sum(seconds) if curvature else None,
        "final_lr": final.get("lr"),
        "diverged": diverged,
        "folder": str(run),
    }


def best_of(rows: list[dict], family: str) -> dict:
    """The seed-0 run of a family with the lowest final training NLL (diverged last)."""
    mine = [r for r in rows if r["family"] == family and r["seed"] == 0]
    return min(mine, key=lambda r: (r["diverged"] is not None, r["final_train_nll"]))


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean and std over seeds for each (run) with 3 seeds."""
    out = []
    for name in dict.fromkeys(r["run"] for r in rows):
        mine = [r for r in rows if r["run"] == name]
        if len(mine) < 2:
            continue
        nll = [r["final_train_nll"] for r in mine]
        out.append(
            {
                "run": name,
                "seeds": len(mine),
                "nll_mean": statistics.mean(nll),
                "nll_std": statistics.stdev(nll),
                "final_val_acc_mean": statistics.mean(r["final_val_acc"] or 0 for r in mine),
                "test_acc_at_best_val_mean": statistics.mean(
                    r["test_acc_at_best_val"] or 0 for r in mine
                ),
                "final_test_acc_mean": statistics.mean(r["final_test_acc"] for r in mine),
                "sec_per_epoch": statistics.median(r["sec_per_epoch"] for r in mine),
                "curvature_share": mine[0]["curvature_share"],
                "divergences": sum(r["diverged"] is not None for r in mine),
            }
        )
    return out


def markdown(rows: list[dict], summary: list[dict]) -> str:
    """Both tables: every run, then the 3-seed summary."""
    lines = [
        "| run | seed | final train NLL | test acc at best val / final | s / epoch | curvature "
        "| diverged |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        share = f"{r['curvature_share']:.0%}" if r["curvature_share"] else "–"
        lines.append(
            f"| {r['run']} | {r['seed']} | {r['final_train_nll']:.4g} | "
            f"{(r['test_acc_at_best_val'] or 0):.1%} / {r['final_test_acc']:.1%} | "
            f"{r['sec_per_epoch']:.1f} | {share} | {r['diverged'] or 'no'} |"
        )
    lines += [
        "",
        "| run (3 seeds) | final train NLL, mean ± std | test acc at best val / final (mean) | "
        "s / epoch | curvature | divergences |",
        "|---|---|---|---|---|---|",
    ]
    for s in summary:
        share = f"{s['curvature_share']:.0%}" if s["curvature_share"] else "–"
        lines.append(
            f"| {s['run']} | {s['nll_mean']:.4f} ± {s['nll_std']:.4f} | "
            f"{s['test_acc_at_best_val_mean']:.1%} / {s['final_test_acc_mean']:.1%} | "
            f"{s['sec_per_epoch']:.1f} | {share} | {s['divergences']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="CIFAR-10 npz or torchvision root")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--out", default="artifacts/optim_compare")
    ap.add_argument("--markdown", default=None, help="also write the tables here")
    ap.add_argument("--seeds", type=int, nargs="*", default=[1, 2], help="seeds of phase 2")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    rows = []
    for family, name, optimizer, lr, extra in GRID:
        rows.append({"family": family, **run_one(args, name, optimizer, lr, extra, 0)})
        print(json.dumps(rows[-1]), flush=True)
    for family in dict.fromkeys(g[0] for g in GRID):
        best = best_of(rows, family)
        _, name, optimizer, lr, extra = next(g for g in GRID if g[1] == best["run"])
        for seed in args.seeds:
            rows.append({"family": family, **run_one(args, name, optimizer, lr, extra, seed)})
            print(json.dumps(rows[-1]), flush=True)
    summary = aggregate(rows)
    for s in summary:
        print(json.dumps(s), flush=True)
    if args.markdown:
        Path(args.markdown).write_text(markdown(rows, summary))


if __name__ == "__main__":
    main()
