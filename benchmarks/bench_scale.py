"""How the cost of H̄ head by head grows with the model: the built-in GPT, width x depth.

For every width W (heads W / 64) and depth L: the per-head H̄ (``Partition.by_head``) of
the next-token loss of ``--samples`` random byte windows of ``--tokens`` tokens, at
initialisation. One JSON line per case, each measured in a fresh process:

* ``gradient_s``: one gradient pass (forward and backward on torch's default attention
  kernel, median of 5), CPU seconds of this process (``time.process_time``: the machine's
  other load does not count) and wall;
* ``analysis_s``: ``pseudo_hessian`` (the default back end: the loop along the groups),
  its ratio to the gradient (``ratio``) and per group (``ratio_per_group``, in gradient
  passes; the target is at most 0.75);
* the levers, where the case is small enough (``--twins-max-params``): ``rows_serial_s``
  (one row per backward pass instead of the planned vectorised rows), ``parameters_s``
  (the loop w.r.t. the parameters, weight-shaped gradients: the engine before the groups),
  ``vmap_s`` (the vmap back end, exact through LayerNorm; ``--vmap-max-params``);
* ``curvlinops_s``: curvlinops' ``HessianLinearOperator`` applied to the S directions
  ``U^T`` (the peer's U^T H U) where ``S x P`` floats fit ``--curvlinops-max-mb``;
* ``peak_mb``: the resident set's growth during the analysis (``VmHWM`` reset first),
  beside ``plan_mb``, the memory plan's predicted peak (``hl.memory_plan(...).peak``).

    HESSIAN_LENS_MAX_MEMORY_GB=4 python benchmarks/bench_scale.py   # the grid (hours on 2 cores)
    python benchmarks/bench_scale.py --quick               # widths 64, 128 at depth 2
    python benchmarks/bench_scale.py --widths 256 --depths 4 --samples 8 --tokens 16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WIDTHS = (64, 128, 256, 512, 768)
DEPTHS = (2, 4, 8, 12)
QUICK = {"widths": (64, 128), "depths": (2,)}
TARGET = 0.75  # gradient passes per group (issue 26)


def build(width: int, depth: int, samples: int, tokens: int, seed: int = 0):
    """The GPT at initialisation, its by_head partition and a batch of byte windows."""
    import torch

    from hessian_lens.models import GPT
    from hessian_lens.partition import Partition

    torch.manual_seed(seed)
    model = GPT(layers=depth, heads=max(width // 64, 1), width=width, context=tokens).eval()
    gen = torch.Generator().manual_seed(seed)
    windows = torch.randint(0, 256, (samples, tokens + 1), generator=gen)
    return model, Partition.by_head(model), (windows[:, :-1], windows[:, 1:])


def timed(fn, repeats: int = 1) -> tuple[float, float, object]:
    """Median CPU and wall seconds of ``fn()`` over ``repeats`` calls, and its last result."""
    cpu, wall, out = [], [], None
    for _ in range(repeats):
        c, w = time.process_time(), time.perf_counter()
        out = fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return statistics.median(cpu), statistics.median(wall), out


def gradient_pass(model, batch) -> None:
    from hessian_lens.losses import next_token

    model.zero_grad(set_to_none=True)
    next_token(model(batch[0]), batch[1]).backward()


def parameters_loop(model, part, batch):
    """H̄ by reverse over reverse w.r.t. the parameters (weight-shaped gradients)."""
    import torch

    from hessian_lens.engine.accumulate import Accumulator, Spec
    from hessian_lens.engine.loop import add_from_gradient
    from hessian_lens.engine.options import Options
    from hessian_lens.engine.state import functional_state
    from hessian_lens.losses import next_token

    with functional_state(model, part, Options()) as st:
        loss = next_token(st.forward(batch[0]), batch[1])
        grads = torch.autograd.grad(loss, st.params, create_graph=True)
        acc = Accumulator.zeros(
            state=st, partition=part, spec=Spec.of(2), direction=[g.detach() for g in grads]
        )
        add_from_gradient(acc, grads, weight=1.0)
        return acc.full[2]


def curvlinops_uhu(model, part, batch):
    """curvlinops' U^T H U: its Hessian operator on the S group directions.

    Under the decomposed layer norm: curvlinops' ``jvp`` of ``jacrev`` through
    ``native_layer_norm`` is off (3.6e-4 absolute, 4e-4 of the largest entry, on the float64
    1-layer GPT of tests/test_benchmarks.py; 6e-15 decomposed).
    """
    import curvlinops
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from hessian_lens.engine.vmapped import DecomposedNorms
    from hessian_lens.losses import next_token

    params = part.parameters(model)

    class Flat(torch.nn.Module):  # curvlinops' loss sees (N * T, V) logits
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x).flatten(0, 1)

    loss = torch.nn.CrossEntropyLoss()
    data = [(batch[0], batch[1].flatten())]
    with sdpa_kernel(SDPBackend.MATH), DecomposedNorms():  # fused kernels: no forward mode
        op = curvlinops.HessianLinearOperator(Flat(model), loss, params, data)
        grad = torch.autograd.grad(next_token(model(batch[0]), batch[1]), params)
        U = part.matrix([g.detach() for g in grad])
        return U @ (op @ U.T.contiguous())


def rss(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    return 0


def case(args: argparse.Namespace) -> dict:
    """One width x depth, measured in this (fresh) process."""
    import torch

    import hessian_lens as hl
    from hessian_lens.losses import next_token

    torch.set_num_threads(args.threads)
    model, part, batch = build(args.width, args.depth, args.samples, args.tokens)
    S, n_params = len(part), sum(p.numel() for p in model.parameters())
    warm = (batch[0][:2], batch[1][:2])
    hl.pseudo_hessian(model, next_token, warm, partition=hl.Partition.trivial(model))
    plan = hl.memory_plan(model, next_token, batch, partition=part)
    g_cpu, g_wall, _ = timed(lambda: gradient_pass(model, batch), 5)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (Linux >= 4.0)
    base = rss("VmRSS:")
    a_cpu, a_wall, res = timed(lambda: hl.pseudo_hessian(model, next_token, batch, partition=part))
    peak = rss("VmHWM:") - base
    row = {
        "width": args.width,
        "depth": args.depth,
        "heads": max(args.width // 64, 1),
        "parameters": n_params,
        "S": S,
        "samples": args.samples,
        "tokens": args.samples * args.tokens,
        "threads": args.threads,
        "gradient_s": round(g_cpu, 4),
        "gradient_wall_s": round(g_wall, 4),
        "analysis_s": round(a_cpu, 3),
        "analysis_wall_s": round(a_wall, 3),
        "ratio": round(a_cpu / g_cpu, 2),
        "ratio_per_group": round(a_cpu / g_cpu / S, 3),
        "meets_target": a_cpu / g_cpu / S <= TARGET,
        "method": res.method,
        "rows_per_pass": res.memory.rows if res.memory else None,
        "peak_mb": round(peak / 2**20, 1),
        "plan_mb": round(plan.peak(args.samples) / 2**20, 1),
        "budget_mb": round(plan.budget / 2**20),
    }
    row["plan_over_peak"] = round(row["plan_mb"] / max(row["peak_mb"], 1e-9), 2)
    H = res.H

    def lever(**kw):
        return hl.pseudo_hessian(model, next_token, batch, partition=part, **kw)

    if n_params <= args.twins_max_params:
        cpu, _, serial = timed(lambda: lever(chunk_size=1))
        row |= twin("rows_serial", cpu, g_cpu, S, serial.H, H, a_cpu)
        cpu, _, old = timed(lambda: parameters_loop(model, part, batch))
        row |= twin("parameters", cpu, g_cpu, S, _symmetric(old), H, a_cpu)
    if n_params <= args.vmap_max_params:
        cpu, _, vm = timed(lambda: lever(method="vmap"))
        row |= twin("vmap", cpu, g_cpu, S, vm.H, H, a_cpu)
        row["vmap_method"] = vm.method
    if S * n_params * 4 <= args.curvlinops_max_mb * 2**20:
        try:
            cpu, _, peer = timed(lambda: curvlinops_uhu(model, part, batch))
            row |= twin("curvlinops", cpu, g_cpu, S, peer, H, a_cpu)
        except ImportError:
            row["curvlinops_s"] = None
    return row


def _symmetric(upper):
    from hessian_lens.engine.accumulate import symmetrize

    return symmetrize(upper)


def twin(name: str, cpu: float, gradient: float, S: int, got, want, analysis: float) -> dict:
    """A twin's seconds, its ratio per group, its speed-up over it and its agreement."""
    scale = float(want.abs().max())
    return {
        f"{name}_s": round(cpu, 3),
        f"{name}_per_group": round(cpu / gradient / S, 3),
        f"{name}_over_analysis": round(cpu / analysis, 2),
        f"{name}_max_rel_diff": float(f"{float((got - want).abs().max()) / scale:.1e}"),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--widths", type=int, nargs="+", default=list(WIDTHS))
    ap.add_argument("--depths", type=int, nargs="+", default=list(DEPTHS))
    ap.add_argument("--samples", type=int, default=8, help="byte windows (> 4: planned)")
    ap.add_argument("--tokens", type=int, default=16, help="tokens per window")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--twins-max-params", type=float, default=15e6)
    ap.add_argument("--vmap-max-params", type=float, default=1e6)
    ap.add_argument("--curvlinops-max-mb", type=float, default=1024)
    ap.add_argument("--quick", action="store_true", help="widths 64, 128 at depth 2")
    ap.add_argument("--out", type=Path, help="also append the JSON lines to this file")
    ap.add_argument("--width", type=int, help=argparse.SUPPRESS)  # one case, in this process
    ap.add_argument("--depth", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.width is not None:
        print(json.dumps(case(args)), flush=True)
        return
    if args.quick:
        args.widths, args.depths = QUICK["widths"], QUICK["depths"]
    for depth in args.depths:
        for width in args.widths:
            line = one_process(args, width, depth)
            print(line, flush=True)
            if args.out is not None:
                with open(args.out, "a") as f:
                    f.write(line + "\n")


def one_process(args: argparse.Namespace, width: int, depth: int) -> str:
    """One case in a fresh process (its peak memory is its own); its JSON line."""
    flags = ["--samples", str(args.samples), "--tokens", str(args.tokens)]
    flags += ["--threads", str(args.threads), "--twins-max-params", str(args.twins_max_params)]
    flags += ["--vmap-max-params", str(args.vmap_max_params)]
    flags += ["--curvlinops-max-mb", str(args.curvlinops_max_mb)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, __file__, "--width", str(width), "--depth", str(depth), *flags],
        capture_output=True,
        text=True,
        env=env,
    )
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode or not lines:
        error = (done.stderr.strip().splitlines() or ["no output"])[-1][:300]
        return json.dumps({"width": width, "depth": depth, "error": error})
    return lines[-1]


if __name__ == "__main__":
    main()
