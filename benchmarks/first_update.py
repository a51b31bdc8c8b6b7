"""Why the paper's optimizer defaults diverge with PyTorch's init: the first update, explained.

For each init (``torch``, ``paper``) and seed: a LeNet-5 PartitionNewton run with the
paper's defaults (lr 0.3, lambda_int 1, period 10, average 3, separate 100-sample curvature
loader, previous rates kept in the hard case; 45,000 / 5,000 split, batch 100) is started
(epoch 0 only) and replayed to its first update; then the loss along the step it took, over
one update and over the first period of 10, against the Taylor terms of orders 1–4 (the
Taylor view of the Optimizer page). One JSON line per (init, seed, updates):

    python benchmarks/first_update.py --data ../shared/datasets/cifar10/cifar10.npz \\
        --out artifacts/first_update --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hessian_lens.taylor import first_update_view
from hessian_lens.train import TrainConfig, train


def start_run(folder: Path, init: str, seed: int, data: str) -> Path:
    """The paper-default PartitionNewton run's epoch 0 (kept when already there)."""
    if not (folder / "epoch_0000.pt").exists():
        config = TrainConfig(
            out=str(folder),
            model="lenet5",
            init=init,
            data="cifar10",
            data_source=data,
            val_size=5000,
            epochs=0,
            batch_size=100,
            optimizer="partition-newton",
            lr=0.3,
            optimizer_kwargs={"lambda_int": 1.0, "hard_case": "keep_previous"},
            seed=seed,
            device="cpu",
        )
        train(config, progress=False, command="benchmarks/first_update.py")
    return folder


def measure(run: Path, updates: int) -> dict:
    """Rates, Taylor contributions at t = 1 and the true loss along the step."""
    r = first_update_view(run, updates=updates, ts=[0.0, 0.1, 0.3, 1.0])
    loss = dict(zip(r.view.t, r.view.loss, strict=True))
    rates = sorted(zip(r.labels, r.eta or [], strict=False), key=lambda p: -abs(p[1]))
    return {
        "updates": updates,
        "step": r.step,
        "top_rates": [[name, round(rate, 4)] for name, rate in rates[:3]],
        "taylor_at_1": [round(c, 4) for c in r.view.contributions(1.0)],
        "loss_before": round(r.view.loss0, 4),
        "loss_at_0.1": round(loss[0.1], 4),
        "loss_at_0.3": round(loss[0.3], 4),
        "loss_after": round(loss[1.0], 4),
        "order2_predicts": round(r.view.polynomials[1][-1], 4),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="CIFAR-10 npz or torchvision root")
    ap.add_argument("--out", default="artifacts/first_update")
    ap.add_argument("--seeds", type=int, nargs="*", default=[0])
    ap.add_argument("--inits", nargs="*", default=["torch", "paper"])
    args = ap.parse_args(argv)
    for init in args.inits:
        for seed in args.seeds:
            run = start_run(Path(args.out) / f"{init}-seed{seed}", init, seed, args.data)
            for updates in (1, 10):
                row = {"init": init, "seed": seed, **measure(run, updates)}
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
