"""Seconds per training step (Adam) of the transformer configurations, and per epoch.

Plans the compute of the transformer runs: the small torchvision ``VisionTransformer``
on CIFAR-10 and the built-in ``gpt`` on a text corpus, timed on real batches with
``--threads`` threads. Prints one JSON line per model: the median seconds per step over
``--steps`` steps (the first two skipped), the steps per epoch and their product.

    python benchmarks/bench_train_step.py vit --data shared/datasets/cifar10/cifar10.npz
    python benchmarks/bench_train_step.py gpt --data 'text:/usr/lib/python3.11/**/*.py@64' \
        --model-kwargs '{"layers": 2, "heads": 4, "width": 64, "context": 64}'
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hessian_lens.data import load_dataset
from hessian_lens.losses import get_loss
from hessian_lens.registry import build_model

VIT = {
    "image_size": 32,
    "patch_size": 4,
    "num_layers": 4,
    "num_heads": 4,
    "hidden_dim": 128,
    "mlp_dim": 256,
    "num_classes": 10,
}


def measure(args: argparse.Namespace) -> dict:
    """Time ``args.steps`` Adam steps of the chosen model on shuffled real batches."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model == "vit":
        model = build_model("torchvision:VisionTransformer", **{**VIT, **args.model_kwargs})
        data, loss_fn = load_dataset("cifar10", args.data), get_loss("cross_entropy")
    else:
        model = build_model("gpt", **args.model_kwargs)
        data, loss_fn = load_dataset(args.data), get_loss("next_token")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = iter(data.batches(args.batch_size, shuffle=True))
    times = []
    for _ in range(args.steps):
        x, y = next(batches)
        t0 = time.perf_counter()
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    per_step = statistics.median(times[2:])
    steps = -(-len(data) // args.batch_size)
    return {
        "model": args.model,
        "kwargs": args.model_kwargs,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "samples_per_epoch": len(data),
        "s_per_step": round(per_step, 3),
        "steps_per_epoch": steps,
        "s_per_epoch": round(per_step * steps),
    }


def main() -> None:
    """Parse the arguments and print one JSON line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", choices=["vit", "gpt"])
    p.add_argument("--data", required=True, help="cifar10 npz (vit) or a text spec (gpt)")
    p.add_argument("--model-kwargs", type=json.loads, default={})
    p.add_argument("--batch-size", type=int, default=None, help="default: vit 128, gpt 32")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if args.steps < 3:
        p.error("--steps must be >= 3 (the first two are warm-up)")
    args.batch_size = args.batch_size or (128 if args.model == "vit" else 32)
    print(json.dumps(measure(args)))


if __name__ == "__main__":
    main()
