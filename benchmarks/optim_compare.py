"""PartitionNewton vs SGD (momentum) vs Adam: LeNet-5 (tanh) on CIFAR-10, batch 100.

Every run is a normal run folder (browsable in the dashboard); one JSON line per run:
final / best training loss, test accuracy, seconds per epoch (median), and for
PartitionNewton the share of the time spent recomputing H_bar, g_bar and D^(3).

    python benchmarks/optim_compare.py --data ../shared/datasets/cifar10/cifar10.npz \\
        --epochs 10 --out artifacts/optim_compare --markdown artifacts/optim_compare.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hessian_lens.train import TrainConfig, train

GRID = [  # (run name, optimizer, lr, other TrainConfig fields)
    # paper defaults: damping 0.3, lambda_int 1, period 10, average 3, halve on plateau (2)
    ("partition-newton-lr0.3", "partition-newton", 0.3, {"lr_plateau": 2}),
    (
        "partition-newton-lr0.3-lambda100",
        "partition-newton",
        0.3,
        {"lr_plateau": 2, "optimizer_kwargs": {"lambda_int": 100.0}},
    ),
    ("sgd-lr0.003", "sgd", 0.003, {"momentum": 0.9}),
    ("sgd-lr0.01", "sgd", 0.01, {"momentum": 0.9}),
    ("sgd-lr0.03", "sgd", 0.03, {"momentum": 0.9}),
    ("adam-lr0.0001", "adam", 1e-4, {}),
    ("adam-lr0.0003", "adam", 3e-4, {}),
    ("adam-lr0.001", "adam", 1e-3, {}),
]


def summarize(name: str, optimizer: str, lr: float, run: Path) -> dict:
    """The numbers of one finished run."""
    history = json.loads((run / "run.json").read_text())["history"][1:]
    seconds = [h["seconds"] for h in history]
    curvature = sum(h.get("curvature_seconds", 0.0) for h in history)
    return {
        "run": name,
        "optimizer": optimizer,
        "lr": lr,
        "epochs": len(history),
        "final_train_loss": round(history[-1]["train_loss"], 4),
        "best_train_loss": round(min(h["train_loss"] for h in history), 4),
        "final_test_acc": round(history[-1]["test_acc"], 4),
        "best_test_acc": round(max(h["test_acc"] for h in history), 4),
        "sec_per_epoch": round(statistics.median(seconds), 2),
        "curvature_share": round(curvature / sum(seconds), 3) if curvature else None,
        "final_lr": history[-1].get("lr"),
        "folder": str(run),
    }


def markdown(rows: list[dict]) -> str:
    """The comparison as a markdown table."""
    lines = [
        "| run | lr | final train loss | best test acc | final test acc | "
        "s / epoch | curvature share |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        share = f"{r['curvature_share']:.0%}" if r["curvature_share"] is not None else "–"
        lines.append(
            f"| {r['run']} | {r['lr']:g} | {r['final_train_loss']:.4f} | "
            f"{r['best_test_acc']:.2%} | {r['final_test_acc']:.2%} | "
            f"{r['sec_per_epoch']:.1f} | {share} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="CIFAR-10 npz or torchvision root")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--train-size", type=int, default=None, help="subset (default: all)")
    ap.add_argument("--out", default="artifacts/optim_compare")
    ap.add_argument("--markdown", default=None, help="also write the table here")
    ap.add_argument("--only", nargs="*", default=None, help="optimizer names to run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    rows = []
    for name, optimizer, lr, extra in GRID:
        if args.only and optimizer not in args.only:
            continue
        config = TrainConfig(
            out=str(Path(args.out) / name),
            model="lenet5",
            data_source=args.data,
            train_size=args.train_size,
            epochs=args.epochs,
            batch_size=100,
            optimizer=optimizer,
            lr=lr,
            seed=args.seed,
            device=args.device,
            **extra,
        )
        run = train(config, progress=False, command=f"benchmarks/optim_compare.py ({name})")
        rows.append(summarize(name, optimizer, lr, run))
        print(json.dumps(rows[-1]), flush=True)
    if args.markdown:
        Path(args.markdown).write_text(markdown(rows))


if __name__ == "__main__":
    main()
