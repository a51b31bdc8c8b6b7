"""Benchmark of the engine: one JSON line per measurement.

Measures, for LeNet-5 at CIFAR-10 shapes (S = 10) and a deep tanh MLP (S = 16), at
batches 64 / 256 / 1024: one gradient; H_bar with each back end (loop, vmap) and "auto";
a plain loop of S double-backward HVPs w.r.t. all parameters (the PyHessian way); the full
D^(3). Times are medians over repeats; ratios divide by the gradient's median measured in
the same run, so they survive a noisy shared machine. Peak memory is the extra memory of
one call: the CUDA allocator's peak on a GPU; on the CPU, the resident set sampled every
2 ms during one call in a fresh process (the allocator keeps memory between calls).

    python benchmarks/bench_summary.py                 # everything (a few minutes on 2 cores)
    python benchmarks/bench_summary.py --quick         # smoke run (tiny batches, 1 repeat)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hessian_lens as hl
from hessian_lens.models import MLP, LeNet5

DEEP_MLP = [3072, 512, 256, 256, 128, 128, 64, 64, 10]  # 8 layers: S = 16


class PeakMemory:
    """Peak extra memory during a block: CUDA allocator peak, or sampled RSS on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak, self._stop = device, 0, threading.Event()

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _poll(self, base: int) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss() - base)
            time.sleep(0.002)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._thread = threading.Thread(target=self._poll, args=(self._rss(),), daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
        else:
            self._stop.set()
            self._thread.join()


def median_time(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median seconds over ``repeats`` calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_memory(
    name: str, batch: int, what: str, device: torch.device, fn: Callable[[], object]
) -> int:
    """Extra bytes one call needs (CUDA: in this process; CPU: in a fresh process)."""
    if device.type == "cuda":
        with PeakMemory(device) as mem:
            fn()
        return mem.peak
    out = subprocess.run(
        [sys.executable, __file__, "--probe", name, str(batch), what],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(out.strip().splitlines()[-1])


def probe(name: str, batch: int, what: str) -> None:
    """``--probe``: print the peak extra resident memory of one call (fresh process)."""
    model, x, y = setup(name, batch, torch.device("cpu"))
    fn = workloads(model, x, y, with_d3=True)[what]
    with PeakMemory(torch.device("cpu")) as mem:
        fn()
    print(mem.peak)


def setup(name: str, batch: int, device: torch.device):
    """The model and a random CIFAR-shaped batch (seeded)."""
    torch.manual_seed(0)
    model = {"lenet5": lambda: LeNet5(), "deep_mlp": lambda: MLP(DEEP_MLP)}[name]().to(device)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    return model, x, y


def workloads(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, with_d3: bool
) -> dict[str, Callable[[], object]]:
    """The measured computations on one batch."""
    params = [p for p in model.parameters() if p.requires_grad]

    def gradient():
        return torch.autograd.grad(F.cross_entropy(model(x), y), params)

    def plain_hvp_loop():
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), params, create_graph=True)
        u = [g.detach() for g in grads]
        rows = []
        for s in range(len(params)):
            hv = torch.autograd.grad((grads[s] * u[s]).sum(), params, retain_graph=True)
            rows.append(torch.stack([(h * v).sum() for h, v in zip(hv, u, strict=True)]))
        return torch.stack(rows)

    jobs = {
        "gradient": gradient,
        "hbar_auto": lambda: hl.pseudo_hessian(model, F.cross_entropy, (x, y)),
        "hbar_loop": lambda: hl.pseudo_hessian(model, F.cross_entropy, (x, y), method="loop"),
        "hbar_vmap": lambda: hl.pseudo_hessian(model, F.cross_entropy, (x, y), method="vmap"),
        "plain_hvp_loop": plain_hvp_loop,
    }
    if with_d3:
        jobs["d3_full"] = lambda: hl.summary_tensor(model, F.cross_entropy, (x, y), order=3)
    return jobs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--models", nargs="+", default=["lenet5", "deep_mlp"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-d3", action="store_true")
    ap.add_argument("--quick", action="store_true", help="batches 8, 1 repeat (smoke test)")
    ap.add_argument("--probe", nargs=3, metavar=("MODEL", "BATCH", "WHAT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.probe:
        return probe(args.probe[0], int(args.probe[1]), args.probe[2])
    if args.quick:
        args.batches, args.repeats = [8], 1
    device = torch.device(args.device)
    for name in args.models:
        for batch in args.batches:
            model, x, y = setup(name, batch, device)
            S = len(hl.Partition.canonical(model))
            base = None
            for what, fn in workloads(model, x, y, not args.no_d3).items():
                seconds = median_time(fn, args.repeats, device)
                peak = peak_memory(name, batch, what, device, fn)
                base = seconds if what == "gradient" else base
                print(
                    json.dumps(
                        {
                            "model": name,
                            "S": S,
                            "batch": batch,
                            "what": what,
                            "median_s": round(seconds, 5),
                            "x_gradient": round(seconds / base, 2),
                            "peak_extra_mb": round(peak / 2**20, 1),
                            "repeats": args.repeats,
                            "torch": str(torch.__version__),
                            "device": str(device),
                            "threads": torch.get_num_threads(),
                        }
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()
