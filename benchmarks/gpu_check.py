"""GPU check of the engine: one JSON line per measurement (run by ``gpu_check.sh``).

What it measures, in this order (cheap and decisive first, so that a cut-short run still
answers the main question, loop or vmap on a GPU):

1. ``env``: torch, CUDA, the device;
2. ``exactness``: H̄ of a tiny float64 CNN on the device vs the brute-force twin on the CPU
   (both back ends);
3. ``hbar``: H̄ by the loop and the vmap back ends for LeNet-5, VGG-11' and torchvision's
   ResNet-18 (``num_classes=10``) at CIFAR-10 shapes, batch 256 then 1024: median seconds,
   ratio to one gradient measured in the same run, peak extra memory (CUDA allocator),
   predicted peak of the memory plan, micro-batch and chunk used, and the relative
   difference between the back ends;
4. ``gpt``: the 100M-class built-in GPT (12 layers, 12 heads, width 768, 85M parameters)
   head by head (S = 688) on 8 random byte windows of 64 tokens: the loop along the groups
   with its planned rows per vectorised pass, the same with one row per pass, and vmap
   (exact through LayerNorm): seconds, ratio to one gradient and per group, peak and
   predicted peak, rows per pass, agreement with the loop;
5. ``d3``: the full D^(3) of LeNet-5 at batch 256, both back ends;
6. ``dataset``: one VGG-11' H̄ over 10,000 random CIFAR-shaped samples (batches of 1,000,
   the two passes), wall time.

A deadline (``--budget-s``) stops starting new measurements; every failure is a JSON line
with ``"error"``, never a crash. ``--quick`` (CI on the CPU, seconds): batch 8, LeNet-5
with both back ends, a VGG-11' of 1/8 width and ResNet-18 with 2 groups (weights, biases)
by the loop only, a 1-layer GPT of width 64 on 6 windows of 8 tokens, a 64-sample data set.

    PYTHONPATH=. bash benchmarks/gpu_check.sh            # on a GPU machine
    PYTHONPATH=. bash benchmarks/gpu_check.sh --quick --device cpu
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hessian_lens as hl
from hessian_lens.losses import next_token
from hessian_lens.models import GPT, LeNet5, VGG11Prime
from hessian_lens.reference import reference_summary

MIB = 2**20
SLOW_CALL_S = 10.0  # a call slower than this is timed once
DATASET = {"full": (10_000, 1_000), "quick": (64, 16)}  # samples, batch size
BATCHES = {"full": (256, 1024), "quick": (8,)}
GPT_CASE = {  # model kwargs, windows
    "full": ({"layers": 12, "heads": 12, "width": 768, "context": 64}, 8),
    "quick": ({"layers": 1, "heads": 2, "width": 64, "context": 8}, 6),
}
GPT_VARIANTS = {"loop": {}, "loop_one_row": {"chunk_size": 1}, "vmap": {"method": "vmap"}}
WARM_UP_SAMPLES = 16  # the warm-up call loads the kernels and caches the memory probe


class Clock:
    """The run's deadline: no new measurement starts after it."""

    def __init__(self, budget_s: float) -> None:
        self.start, self.budget = time.monotonic(), budget_s

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[object, float]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def measure(fn: Callable[..., object], device: torch.device, repeats: int) -> dict:
    """A warm-up on ``WARM_UP_SAMPLES`` samples (``fn(n)``), one call under the peak
    meter, more timed calls while they are fast (``fn()``)."""
    fn(WARM_UP_SAMPLES)
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    out, first = timed(fn, device)
    peak = torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else None
    times = [first]
    while len(times) < repeats and first < SLOW_CALL_S:
        times.append(timed(fn, device)[1])
    return {"out": out, "median_s": statistics.median(times), "runs": len(times), "peak": peak}


def build(name: str, device: torch.device, quick: bool = False) -> nn.Module:
    torch.manual_seed(0)
    if name == "resnet18":
        import torchvision

        model = torchvision.models.resnet18(num_classes=10)
    elif name == "vgg11p":
        model = VGG11Prime(width=0.125 if quick else 1.0)
    else:
        model = LeNet5()
    return model.to(device).eval()


def partition(name: str, model: nn.Module, quick: bool) -> hl.Partition:
    """Canonical (one group per tensor); in quick mode ResNet-18 by kind (2 groups)."""
    if quick and name == "resnet18":
        return hl.Partition.by_kind(model)
    return hl.Partition.canonical(model)


def cifar_batch(n: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=gen, device=device)
    return x, torch.randint(0, 10, (n,), generator=gen, device=device)


def guarded(what: str, clock: Clock, fn: Callable[[], None], **context) -> None:
    """Run one measurement unless the deadline passed; report errors as lines."""
    if clock.left() <= 0:
        emit(what=what, skipped="deadline", **context)
        return
    try:
        fn()
    except Exception as err:  # one failure must not hide the other measurements
        emit(what=what, error=f"{type(err).__name__}: {err}"[:500], **context)
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# ---------------------------------------------------------------------------- checks
def env_line(device: torch.device, quick: bool) -> None:
    cuda = device.type == "cuda"
    emit(
        what="env",
        torch=torch.__version__,
        python=platform.python_version(),
        device=str(device),
        name=torch.cuda.get_device_name(device) if cuda else platform.processor(),
        memory_gib=round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
        if cuda
        else None,
        cuda=torch.version.cuda,
        cudnn_tf32=torch.backends.cudnn.allow_tf32,
        matmul_tf32=torch.backends.cuda.matmul.allow_tf32,
        quick=quick,
    )


def exactness(device: torch.device) -> None:
    """A tiny float64 CNN: the device's H̄ against the brute-force twin (CPU)."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(32, 3)).double()
    gen = torch.Generator().manual_seed(0)
    data = (torch.randn(16, 1, 6, 6, generator=gen, dtype=torch.float64), torch.arange(16) % 3)
    ref = reference_summary(model, F.cross_entropy, data, 2)
    for method in ("loop", "vmap"):
        res = hl.pseudo_hessian(model, F.cross_entropy, data, device=device, method=method)
        error = float((res.H.cpu() - ref).abs().max() / ref.abs().max())
        emit(what="exactness", method=method, device=str(device), max_rel_error=error)


def hbar_rows(name: str, batch: int, device: torch.device, methods, repeats, quick) -> None:
    """H̄ by each back end for one model and batch, against one gradient."""
    model = build(name, device, quick)
    part = partition(name, model, quick)
    x, y = cifar_batch(batch, device)
    params = [p for p in model.parameters() if p.requires_grad]

    def gradient(n=batch):
        return torch.autograd.grad(F.cross_entropy(model(x[:n]), y[:n]), params)

    grad = measure(gradient, device, repeats)
    results = {}
    for method in methods:

        def hbar(n=batch, m=method):
            return hl.pseudo_hessian(model, F.cross_entropy, (x[:n], y[:n]), part, method=m)

        run = measure(hbar, device, repeats)
        results[method] = run["out"].H
        emit(**_hbar_row(name, batch, method, run, grad["median_s"], len(part)))
    if len(results) == 2:
        loop, vmap = results["loop"], results["vmap"]
        diff = float((loop - vmap).abs().max() / loop.abs().max())
        emit(what="agreement", model=name, batch=batch, max_rel_diff_loop_vmap=diff)


def _hbar_row(name, batch, method, run, gradient_s, S) -> dict:
    plan = run["out"].memory
    micro = min(plan.micro_batch or batch, batch)
    return {
        "what": "hbar",
        "model": name,
        "S": S,
        "batch": batch,
        "method": method,
        "median_s": round(run["median_s"], 5),
        "x_gradient": round(run["median_s"] / gradient_s, 2),
        "gradient_s": round(gradient_s, 5),
        "runs": run["runs"],
        "peak_mib": None if run["peak"] is None else round(run["peak"] / MIB, 1),
        "predicted_peak_mib": round(plan.peak(micro) / MIB, 1),
        "micro_batch": micro,
        "chunk_size": plan.chunk_size,
        "budget_mib": round(plan.budget / MIB),
    }


class GPTCase:
    """The GPT of ``GPT_CASE`` on random byte windows, its partition and its gradient time."""

    def __init__(self, device: torch.device, quick: bool, repeats: int) -> None:
        kwargs, windows = GPT_CASE["quick" if quick else "full"]
        torch.manual_seed(0)
        self.model = GPT(**kwargs).to(device).eval()
        gen = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, 256, (windows, kwargs["context"] + 1), generator=gen)
        self.x, self.y = tokens[:, :-1].to(device), tokens[:, 1:].to(device)
        self.part, self.device, self.repeats = hl.Partition.by_head(self.model), device, repeats
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.gradient_s = measure(
            lambda n=None: torch.autograd.grad(  # n: the warm-up's first windows
                next_token(self.model(self.x[:n]), self.y[:n]), params
            ),
            device,
            repeats,
        )["median_s"]
        self.H: torch.Tensor | None = None

    def row(self, variant: str) -> None:
        """H̄ by one variant (``GPT_VARIANTS``), one JSON line."""
        kw = GPT_VARIANTS[variant]
        run = measure(
            lambda n=None: hl.pseudo_hessian(
                self.model, next_token, (self.x[:n], self.y[:n]), self.part, **kw
            ),
            self.device,
            self.repeats,
        )
        res, S = run["out"], len(self.part)
        out = _hbar_row("gpt", len(self.y), variant, run, self.gradient_s, S)
        out |= {
            "what": "gpt",
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "tokens": self.y.numel(),
            "ran": res.method,
            "x_gradient_per_group": round(run["median_s"] / self.gradient_s / S, 3),
            "rows_per_pass": (res.memory.rows or 1) if res.memory else None,  # None: one
        }
        if self.H is None:
            self.H = res.H
        else:
            out["max_rel_diff_to_loop"] = float((res.H - self.H).abs().max() / self.H.abs().max())
        emit(**out)


def d3_rows(batch: int, device: torch.device, repeats: int) -> None:
    model = build("lenet5", device)
    x, y = cifar_batch(batch, device)
    for method in ("loop", "vmap"):

        def d3(n=batch, m=method):
            return hl.summary_tensor(model, F.cross_entropy, (x[:n], y[:n]), 3, method=m)

        run = measure(d3, device, repeats)
        emit(
            what="d3",
            model="lenet5",
            batch=batch,
            method=method,
            median_s=round(run["median_s"], 5),
            runs=run["runs"],
            peak_mib=None if run["peak"] is None else round(run["peak"] / MIB, 1),
            taylor_sum=float(run["out"].sum()),
        )


def dataset_row(samples: int, batch: int, device: torch.device, quick: bool) -> None:
    model = build("vgg11p", device, quick)
    starts = range(0, samples, batch)
    batches = [cifar_batch(min(batch, samples - i), device, seed=i) for i in starts]
    hl.pseudo_hessian(model, F.cross_entropy, batches[:1])  # warm-up (and the probe)
    res, seconds = timed(lambda: hl.pseudo_hessian(model, F.cross_entropy, batches), device)
    emit(
        what="dataset",
        model="vgg11p",
        samples=res.n_samples,
        batch=batch,
        method=res.method,
        seconds=round(seconds, 3),
        micro_batch=min(res.memory.micro_batch or batch, batch),
    )


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="CPU smoke run (seconds)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=420.0, help="no new measurement after")
    args = ap.parse_args(argv)
    device, mode = torch.device(args.device), "quick" if args.quick else "full"
    repeats = 1 if args.quick else args.repeats
    clock = Clock(args.budget_s)
    env_line(device, args.quick)
    guarded("exactness", clock, lambda: exactness(device))
    gpt: list[GPTCase] = []
    guarded("gpt", clock, lambda: gpt.append(GPTCase(device, args.quick, repeats)))
    for variant in GPT_VARIANTS if gpt else ():
        guarded("gpt", clock, lambda v=variant: gpt[0].row(v), variant=variant)
    models = ("lenet5", "vgg11p", "resnet18")
    for batch in BATCHES[mode]:
        for name in models:
            methods = ("loop", "vmap") if not args.quick or name == "lenet5" else ("loop",)
            job = lambda n=name, b=batch, m=methods: hbar_rows(  # noqa: E731
                n, b, device, m, repeats, args.quick
            )
            guarded("hbar", clock, job, model=name, batch=batch)
        if batch == BATCHES[mode][0]:
            guarded("d3", clock, lambda b=batch: d3_rows(b, device, repeats), batch=batch)
            job = lambda: dataset_row(*DATASET[mode], device, args.quick)  # noqa: E731
            guarded("dataset", clock, job)
    emit(what="done", seconds=round(time.monotonic() - clock.start, 1))


if __name__ == "__main__":
    main()
