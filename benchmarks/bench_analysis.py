"""Analysis time per checkpoint vs one gradient pass over the same samples.

For LeNet-5, VGG-11' and torchvision ResNet-18 (CIFAR-10 shapes, canonical partition),
the small torchvision ViT and the built-in GPT of the transformer runs (per-head partition,
``--models vit gpt``): the median time of ``analyze_model`` (g_bar, H_bar, inverse,
comparisons) and of one gradient pass over the same samples and batches, measured
alternately in the same run, and
their ratio next to S (the pruned double-backward loop needs about S gradients' worth of
backward work at most: row s of H_bar only differentiates groups s..S). One JSON line each.

    python benchmarks/bench_analysis.py --samples 500 --batch-size 250 --repeats 3
    python benchmarks/bench_analysis.py --run checkpoints/gpt-text --samples 64 --repeats 1

``--run``: at a shipped run's analysed checkpoints (its partition, loss and data).
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

from bench_train_step import VIT  # the small ViT config of the transformer runs

from hessian_lens.analyze import AnalysisSettings, analyze_model
from hessian_lens.losses import get_loss
from hessian_lens.registry import build_model

IMAGES = (3, 32, 32)
GPT = {"layers": 2, "heads": 4, "width": 64, "context": 64}
# name -> (architecture, kwargs, partition, loss, input maker)
MODELS = {
    "lenet5": ("lenet5", {}, "canonical", "cross_entropy", "images"),
    "vgg11p": ("vgg11p", {}, "canonical", "cross_entropy", "images"),
    "resnet18": (
        "torchvision:resnet18",
        {"num_classes": 10},
        "canonical",
        "cross_entropy",
        "images",
    ),
    "vit": ("torchvision:VisionTransformer", VIT, "by_head", "cross_entropy", "images"),
    "gpt": ("gpt", GPT, "by_head", "next_token", "tokens"),
}


def data(kind: str, samples: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random CIFAR-shaped images and labels, or byte windows and their next bytes."""
    if kind == "images":
        x = torch.randn(samples, *IMAGES, generator=gen)
        return x, torch.randint(0, 10, (samples,), generator=gen)
    tokens = torch.randint(0, 256, (samples, GPT["context"] + 1), generator=gen)
    return tokens[:, :-1], tokens[:, 1:]


def gradient_pass(model, batches, loss_fn) -> None:
    """One gradient of the mean loss over all batches (what an epoch step costs per sample)."""
    model.zero_grad(set_to_none=True)
    n = sum(len(y) for _, y in batches)
    for x, y in batches:
        (loss_fn(model(x), y) * (len(y) / n)).backward()


def measure(name: str, samples: int, batch_size: int, repeats: int) -> dict:
    arch, kwargs, partition, loss, kind = MODELS[name]
    torch.manual_seed(0)
    model = build_model(arch, **kwargs).eval()
    x, y = data(kind, samples, torch.Generator().manual_seed(0))
    batches = [
        (x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, samples, batch_size)
    ]
    settings = AnalysisSettings(
        samples=samples, batch_size=batch_size, partition=partition, loss=loss
    )
    return {"model": name, **timed(model, list(batches), settings, repeats)}


def measure_run(run: Path, epochs: list[float] | None, samples: int, repeats: int) -> list[dict]:
    """The same timing at a shipped run's analysed checkpoints, on the run's own data.

    The partition, loss and data set are those the run was analysed with (its store);
    ``samples`` training samples in one batch.
    """
    from hessian_lens.analyze import analysis_batches, select_checkpoints
    from hessian_lens.checkpoint import load_checkpoint
    from hessian_lens.runs import load_run

    found = load_run(run)
    stored = found.settings()[0]
    settings = AnalysisSettings(
        samples=samples,
        batch_size=samples,
        partition=stored.get("partition", "canonical"),
        loss=stored.get("loss", "cross_entropy"),
    )
    data = found.manifest.data
    batches, _ = analysis_batches(data.get("source"), settings, data.get("name", "cifar10"))
    batches = list(batches)
    out = []
    for path in select_checkpoints(run, epochs):
        model, meta = load_checkpoint(path)
        model = model.float().eval()
        row = {"run": found.name, "checkpoint": path.name, "epoch": meta.get("epoch")}
        out.append({**row, **timed(model, batches, settings, repeats)})
    return out


def timed(model, batches: list, settings: AnalysisSettings, repeats: int) -> dict:
    """Median analysis and gradient-pass seconds, alternated, and their ratio (also / S)."""
    loss_fn = get_loss(settings.loss)
    samples = sum(len(y) for _, y in batches)
    batch_size = max(len(y) for _, y in batches)
    partition = settings.partition
    grads, analyses = [], []
    gradient_pass(model, batches, loss_fn)  # warm-up
    summary, _ = analyze_model(model, batches, settings)
    for _ in range(repeats):
        t0 = time.perf_counter()
        gradient_pass(model, batches, loss_fn)
        grads.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        analyze_model(model, batches, settings)
        analyses.append(time.perf_counter() - t0)
    g, a = statistics.median(grads), statistics.median(analyses)
    return {
        "partition": partition,
        "S": len(summary["labels"]),
        "samples": samples,
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "gradient_s": round(g, 5),
        "analysis_s": round(a, 5),
        "ratio": round(a / g, 2),
        "ratio_per_group": round(a / g / len(summary["labels"]), 3),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--run", type=Path, help="time a shipped run's checkpoints instead")
    ap.add_argument("--epochs", help="with --run: only these epochs, e.g. 0,1,12")
    args = ap.parse_args(argv)
    if args.run is not None:
        epochs = [float(e) for e in args.epochs.split(",")] if args.epochs else None
        for row in measure_run(args.run, epochs, args.samples, args.repeats):
            print(json.dumps(row), flush=True)
        return
    for name in args.models:
        print(json.dumps(measure(name, args.samples, args.batch_size, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
