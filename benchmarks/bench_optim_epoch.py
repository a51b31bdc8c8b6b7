"""Seconds per training epoch of PartitionNewton, SGD and Adam, measured in the same run.

The optimizer comparison (``optim_compare.py``) runs for hours on a shared machine, so its
own seconds per epoch carry whatever else ran meanwhile. This benchmark times the same
configurations (LeNet-5, paper init, batch 100, the paper's PartitionNewton defaults with
its separate 100-sample curvature loader) on a short slice of the training set, the
optimizers interleaved, ``--repeats`` times each; it prints one JSON line per optimizer:
median seconds per step, the projection to one 45,000-sample epoch, the curvature share,
and the ratio to SGD's time from the same run.

    python benchmarks/bench_optim_epoch.py --data ../shared/datasets/cifar10/cifar10.npz
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hessian_lens.train import TrainConfig, train

CONFIGS = {
    "partition-newton": {
        "optimizer": "partition-newton",
        "lr": 0.3,
        "optimizer_kwargs": {"lambda_int": 1.0, "hard_case": "keep_previous"},
    },
    "sgd": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9},
    "adam": {"optimizer": "adam", "lr": 1e-3},
}
EPOCH_SAMPLES = 45_000


def one_epoch(name: str, args, folder: Path) -> tuple[float, float]:
    """Seconds per step and curvature seconds per step of one short epoch."""
    config = TrainConfig(
        out=str(folder),
        model="lenet5",
        init="paper",
        data="cifar10",
        data_source=args.data,
        train_size=args.steps * 100,
        test_size=100,
        epochs=1,
        batch_size=100,
        seed=0,
        device="cpu",
        **CONFIGS[name],
    )
    train(config, progress=False, command="benchmarks/bench_optim_epoch.py")
    last = json.loads((folder / "run.json").read_text())["history"][-1]
    return last["seconds"] / args.steps, last.get("curvature_seconds", 0.0) / args.steps


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="CIFAR-10 npz or torchvision root")
    ap.add_argument("--steps", type=int, default=100, help="steps per timed epoch")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in CONFIGS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for name in CONFIGS:
                times[name].append(one_epoch(name, args, Path(tmp) / f"{name}-{r}"))
    sgd = statistics.median(t for t, _ in times["sgd"])
    for name, runs in times.items():
        step = statistics.median(t for t, _ in runs)
        curvature = statistics.median(c for _, c in runs)
        print(
            json.dumps(
                {
                    "optimizer": name,
                    "sec_per_step": round(step, 5),
                    "sec_per_epoch_45k": round(step * EPOCH_SAMPLES / 100, 2),
                    "curvature_share": round(curvature / step, 3),
                    "ratio_to_sgd": round(step / sgd, 2),
                    "steps": args.steps,
                    "repeats": args.repeats,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
