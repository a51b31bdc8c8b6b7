"""The measures against the peers: block traces, the Frobenius map, lambda_max, the GGN.

One JSON line per comparison, every ratio from timings taken in the same run, on the same
model, samples and probe counts:

* ``block_traces``: ``hl.block_norms(frobenius=False)`` (one product per probe for all S
  traces) against a per-block loop: curvlinops' ``hutchinson_trace`` on each diagonal
  block (``SubmatrixLinearOperator`` of its ``HessianLinearOperator``), S x k products.
  Target: at least S / 2 times faster. Agreement: every block's difference within 4
  standard errors (ours and the loop's, from its per-probe values).
* ``frobenius_map``: ``hl.block_norms`` (S products per probe, pruned) against one
  ``hl.pseudo_hessian`` per probe (the target: about the same cost), and against the same
  estimator on curvlinops' submatrix operators, block pair by pair (all S(S+1)/2 pairs
  when S <= 12, else ``--pairs`` of them, timed and scaled to all pairs: "extrapolated").
* ``trace_and_lmax``: PyHessian's ``trace`` (k Rademacher probes) and ``eigenvalues``
  (power iteration) against the total of our block traces and the Lanczos ``lmax`` of
  ``hl.block_spectra(blocks=False)``.
* ``ggn``: ``hl.pseudo_hessian(curvature="ggn")`` against ``U (G U^T)`` with curvlinops'
  ``GGNLinearOperator``: time and the largest relative difference.

    python benchmarks/bench_measures.py                          # LeNet-5, the ViT, the GPT
    python benchmarks/bench_measures.py --models lenet5 --probes 8
    python benchmarks/bench_measures.py --quick                  # smoke run (CI)
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import hessian_lens as hl  # noqa: E402
from hessian_lens.losses import get_loss  # noqa: E402
from hessian_lens.models import LeNet5  # noqa: E402

RUNS = {"vit": ("checkpoints/vit-cifar10", 1.0), "gpt": ("checkpoints/gpt-text", 1.0)}


def lenet(samples: int):
    """LeNet-5 (PyTorch's init, seeded) on random CIFAR-shaped inputs."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(samples, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (samples,), generator=gen)
    model = LeNet5().eval()
    return model, (x, y), F.cross_entropy, hl.Partition.canonical(model)


def shipped(name: str, samples: int):
    """A shipped run's checkpoint on its own data, partition and loss (one batch)."""
    from hessian_lens.analyze import AnalysisSettings, analysis_batches, select_checkpoints
    from hessian_lens.checkpoint import load_checkpoint
    from hessian_lens.runs import load_run

    folder, epoch = RUNS[name]
    found = load_run(REPO / folder)
    stored = found.settings()[0]
    settings = AnalysisSettings(
        samples=samples, batch_size=samples, loss=stored.get("loss", "cross_entropy")
    )
    data = found.manifest.data
    batches, _ = analysis_batches(data.get("source"), settings, data.get("name", "cifar10"))
    (path,) = select_checkpoints(REPO / folder, [epoch])
    model = load_checkpoint(path)[0].float().eval()
    part = hl.Partition.from_name(model, stored.get("partition", "canonical"))
    return model, next(iter(batches)), get_loss(settings.loss), part


def _sig(seconds: float) -> float:
    """A time in seconds to 4 significant digits, so ratios recomputed from it stay within 0.1%."""
    return float(f"{seconds:.4g}")


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


class ClassesFirst(torch.nn.Module):
    """A sequence model's (B, T, V) logits as (B, V, T): torch's CrossEntropyLoss layout."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).transpose(1, 2)


def peer_problem(model, loss_fn, part):
    """The model, loss module and parameters curvlinops takes (it needs a loss module)."""
    if loss_fn is F.cross_entropy:
        return model, torch.nn.CrossEntropyLoss(), part.parameters(model)
    wrapped = ClassesFirst(model)  # next_token: the mean over tokens
    return wrapped, torch.nn.CrossEntropyLoss(), part.parameters(model)


def hessian_operator(model, loss_fn, batch, part):
    import curvlinops

    net, loss, params = peer_problem(model, loss_fn, part)
    return curvlinops.HessianLinearOperator(net, loss, params, [batch])


def block_indices(part: hl.Partition) -> list[list[int]]:
    rows = part.matrix([torch.ones(s) for s in part.shapes])
    return [torch.nonzero(r).reshape(-1).tolist() for r in rows]


def compare_traces(model, loss_fn, batch, part, probes: int) -> dict:
    import curvlinops

    bn, ours = timed(
        lambda: hl.block_norms(model, loss_fn, batch, part, probes=probes, frobenius=False)
    )
    H = hessian_operator(model, loss_fn, batch, part)

    def loop():
        out = []
        for idx in block_indices(part):
            sub = curvlinops.SubmatrixLinearOperator(H, idx, idx)
            samples = [float(curvlinops.hutchinson_trace(sub, 1)) for _ in range(probes)]
            out.append(samples)
        return torch.tensor(out, dtype=torch.float64)

    per_probe, theirs = timed(loop)
    their_mean = per_probe.mean(1)
    their_se = per_probe.std(1) / math.sqrt(probes)
    z = (bn.trace - their_mean).abs() / (bn.trace_se**2 + their_se**2).sqrt().clamp(min=1e-300)
    S = len(part)
    return {
        "what": "block_traces",
        "S": S,
        "probes": probes,
        "ours_s": _sig(ours),
        "per_block_loop_s": _sig(theirs),
        "speedup": round(theirs / ours, 2),
        "target_speedup": S / 2,
        "met": theirs / ours >= S / 2,
        "max_z": round(float(z.max()), 2),
        "agree_within_4_se": bool((z <= 4).all()),
    }


def compare_frobenius(model, loss_fn, batch, part, probes: int, pairs: int) -> dict:
    import curvlinops

    bn, ours = timed(lambda: hl.block_norms(model, loss_fn, batch, part, probes=probes))
    _, one = timed(lambda: hl.pseudo_hessian(model, loss_fn, batch, partition=part))
    H = hessian_operator(model, loss_fn, batch, part)
    idx = block_indices(part)
    every = [(s, t) for s, t in itertools.combinations_with_replacement(range(len(part)), 2)]
    chosen = every if len(part) <= 12 else every[:: max(len(every) // pairs, 1)][:pairs]

    def loop():  # ||A||_F^2 = E ||A v||^2 with curvlinops' submatrix matvecs (its own
        # hutchinson_squared_fro needs A.T, which a SubmatrixLinearOperator lacks)
        gen = torch.Generator().manual_seed(0)
        out = {}
        for s, t in chosen:
            sub = curvlinops.SubmatrixLinearOperator(H, idx[t], idx[s])
            v = torch.randint(0, 2, (len(idx[s]), probes), generator=gen).double() * 2 - 1
            out[(s, t)] = float((sub @ v.to(H.dtype)).pow(2).sum(0).mean())
        return out

    theirs_sq, theirs = timed(loop)
    scaled = theirs * len(every) / len(chosen)
    rel = [
        abs(float(bn.frobenius_sq[s, t]) - v) / max(abs(v), 1e-30)
        for (s, t), v in theirs_sq.items()
    ]
    return {
        "what": "frobenius_map",
        "S": len(part),
        "probes": probes,
        "ours_s": _sig(ours),
        "one_h_bar_s": _sig(one),
        "x_one_h_bar_per_probe": round(ours / (one * probes), 2),
        "curvlinops_pairs_s": _sig(scaled),
        "curvlinops_pairs": f"{len(chosen)} of {len(every)}"
        + (" (extrapolated)" if len(chosen) < len(every) else ""),
        "speedup_vs_pairs": round(scaled / ours, 2),
        "median_rel_diff_sq": round(sorted(rel)[len(rel) // 2], 3),
    }


def compare_pyhessian(model, loss_fn, batch, part, probes: int, steps: int) -> dict:
    from pyhessian import hessian as PyHessian

    bn, ours_trace = timed(
        lambda: hl.block_norms(model, loss_fn, batch, part, probes=probes, frobenius=False)
    )
    sp, ours_lmax = timed(
        lambda: hl.block_spectra(model, loss_fn, batch, part, steps=steps, probes=1, blocks=False)
    )
    peer = copy.deepcopy(model)
    for p, name in zip(peer.parameters(), [n for n, _ in peer.named_parameters()], strict=True):
        p.requires_grad_(name in part.names)
    with sdpa_kernel(SDPBackend.MATH):
        torch.manual_seed(0)
        h = PyHessian(peer, loss_fn, data=batch, cuda=False)
        vals, theirs_trace = timed(lambda: h.trace(maxIter=probes, tol=0.0))
        (top,), theirs_lmax = timed(lambda: h.eigenvalues(maxIter=steps, tol=1e-4)[0])
    vals = torch.tensor(vals, dtype=torch.float64)
    se = float(vals.std() / math.sqrt(len(vals)))
    ours_total, ours_se = float(bn.trace.sum()), float(bn.trace_se.pow(2).sum().sqrt())
    return {
        "what": "trace_and_lmax",
        "probes": probes,
        "ours_trace": ours_total,
        "ours_trace_se": ours_se,
        "pyhessian_trace": float(vals.mean()),
        "pyhessian_trace_se": se,
        "trace_z": round(abs(ours_total - float(vals.mean())) / math.hypot(ours_se, se), 2),
        "ours_trace_s": _sig(ours_trace),
        "pyhessian_trace_s": _sig(theirs_trace),
        "ours_lmax": sp.lmax,
        "pyhessian_lmax": top,
        "lmax_rel_diff": round(abs(sp.lmax - top) / max(abs(top), 1e-30), 4),
        "ours_lmax_s": _sig(ours_lmax),
        "pyhessian_lmax_s": _sig(theirs_lmax),
        "steps": steps,
    }


def compare_ggn(model, loss_fn, batch, part) -> dict:
    import curvlinops

    res, ours = timed(
        lambda: hl.pseudo_hessian(model, loss_fn, batch, partition=part, curvature="ggn")
    )

    def peer():
        G = curvlinops.GGNLinearOperator(*peer_problem(model, loss_fn, part), [batch])
        U = part.matrix(res.direction)
        return U @ (G @ U.T.contiguous())

    with sdpa_kernel(SDPBackend.MATH):
        want, theirs = timed(peer)
    scale = float(want.abs().max())
    return {
        "what": "ggn",
        "S": len(part),
        "ours_s": _sig(ours),
        "curvlinops_s": _sig(theirs),
        "speedup": round(theirs / ours, 2),
        "max_abs_diff_over_max": float((res.H - want).abs().max()) / max(scale, 1e-30),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--models", nargs="+", default=["lenet5", "vit", "gpt"], choices=["lenet5", *RUNS]
    )
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--probes", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument(
        "--pairs", type=int, default=20, help="block pairs timed for curvlinops' Frobenius"
    )
    ap.add_argument("--quick", action="store_true", help="LeNet-5, 8 samples, 2 probes (smoke)")
    args = ap.parse_args(argv)
    if args.quick:
        args.models, args.samples, args.probes, args.steps = ["lenet5"], 8, 2, 3
    meta = {"samples": args.samples, "threads": torch.get_num_threads(), "torch": torch.__version__}
    for name in args.models:
        model, batch, loss_fn, part = (
            lenet(args.samples) if name == "lenet5" else shipped(name, args.samples)
        )
        with sdpa_kernel(SDPBackend.MATH):  # as the engine: the fused kernels lack forward AD
            rows = (
                compare_traces(model, loss_fn, batch, part, args.probes),
                compare_frobenius(model, loss_fn, batch, part, args.probes, args.pairs),
                compare_pyhessian(model, loss_fn, batch, part, args.probes, args.steps),
                compare_ggn(model, loss_fn, batch, part),
            )
            for row in rows:
                print(json.dumps({"model": name, **row, **meta}), flush=True)


if __name__ == "__main__":
    main()
