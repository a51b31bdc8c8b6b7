"""The engine's per-call overhead against the pruned double-backward floor (issue 30).

One JSON line per measurement. For each case the engine (``hl.pseudo_hessian``, canonical
partition, loop back end) and the floor are timed alternately in one process, best of
``--repeats`` after a warm-up call, so both see the same machine. The floor is the least
work H̄ needs: the gradient with ``create_graph=True``, then for each group s one backward
pass of ``<g_s, u_s>`` w.r.t. the groups s..S only (no data contract, no copies, no plan).

``--baselines REV ...`` also times ``hl.pseudo_hessian`` and one ``hl.partition_newton_step``
call at other commits of this repository (``git archive`` into a temporary folder), each in
its own fresh process, alternating with this tree's, for LeNet-5 at batch 32:

    python benchmarks/bench_overhead.py                          # the four cases
    python benchmarks/bench_overhead.py --baselines bf6b511 e800975
    python benchmarks/bench_overhead.py --quick                  # smoke run (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

REPO = Path(__file__).resolve().parents[1]
if "--worker" not in sys.argv:  # a worker imports the hessian_lens of its PYTHONPATH
    sys.path.insert(0, str(REPO))

CASES = {  # name: (model, kwargs, batch)
    "lenet5-b32": ("lenet5", {}, 32),
    "lenet5-b256": ("lenet5", {}, 256),
    "vgg11p-b32": ("vgg11p", {}, 32),
    "gpt-b32": ("gpt", {"layers": 2, "heads": 4, "width": 64, "context": 64}, 32),
}


def setup(model_name: str, kwargs: dict, batch: int):
    """The model (seeded), a batch of its shape and its loss."""
    from hessian_lens.models import MODELS

    torch.manual_seed(0)
    model = MODELS[model_name](**kwargs).eval()
    if model_name == "gpt":  # only this tree's (an older one's losses may lack it)
        from hessian_lens.losses import next_token

        x = torch.randint(0, 256, (batch, kwargs["context"]))
        y = torch.randint(0, 256, (batch, kwargs["context"]))
        return model, (x, y), next_token
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    return model, (x, y), F.cross_entropy


def pruned_floor(model: torch.nn.Module, loss_fn, batch) -> torch.Tensor:
    """H̄ by the pruned double-backward loop and nothing else (the lower bound).

    Attention runs on the math kernel, as in the engine (the fused ones have no second
    derivative). Only the upper triangle is filled.
    """
    x, y = batch
    params = [p for p in model.parameters() if p.requires_grad]
    with sdpa_kernel(SDPBackend.MATH):
        grads = torch.autograd.grad(loss_fn(model(x), y), params, create_graph=True)
    u = [g.detach() for g in grads]
    S = len(params)
    H = torch.zeros(S, S)
    for s in range(S):
        rows = torch.autograd.grad((grads[s] * u[s]).sum(), params[s:], retain_graph=s < S - 1)
        H[s, s:] = torch.stack([(h * v).sum() for h, v in zip(rows, u[s:], strict=True)])
    return H


def best_alternating(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best seconds of each function, called in turn ``repeats`` times after one warm-up."""
    for fn in fns.values():
        fn()
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def measure_case(name: str, repeats: int) -> dict:
    """Engine and floor on one case, alternating."""
    import hessian_lens as hl

    model_name, kwargs, batch = CASES[name]
    model, data, loss_fn = setup(model_name, kwargs, batch)
    best = best_alternating(
        {
            "engine": lambda: hl.pseudo_hessian(model, loss_fn, data, method="loop"),
            "floor": lambda: pruned_floor(model, loss_fn, data),
        },
        repeats,
    )
    S = len(hl.Partition.canonical(model))
    return {
        "case": name,
        "S": S,
        "batch": batch,
        "engine_ms": round(best["engine"] * 1e3, 2),
        "floor_ms": round(best["floor"] * 1e3, 2),
        "x_floor": round(best["engine"] / best["floor"], 3),
        "repeats": repeats,
    }


def worker(repeats: int) -> None:
    """``--worker``: this process's hessian_lens on LeNet-5 at batch 32 (ms, one JSON line)."""
    import hessian_lens as hl

    model, data, loss_fn = setup("lenet5", {}, 32)
    best = best_alternating(
        {
            "pseudo_hessian": lambda: hl.pseudo_hessian(model, loss_fn, data),
            "partition_newton_step": lambda: hl.partition_newton_step(model, loss_fn, data),
            "floor": lambda: pruned_floor(model, loss_fn, data),
        },
        repeats,
    )
    print(json.dumps({k: round(v * 1e3, 3) for k, v in best.items()}))


def checkout(rev: str, into: Path) -> Path:
    """The tree of commit ``rev`` (``git archive``) under ``into``."""
    folder = into / rev
    folder.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "hessian_lens"],
        check=True,
        capture_output=True,
    ).stdout
    tar = into / f"{rev}.tar"
    tar.write_bytes(archive)
    with tarfile.open(tar) as t:
        t.extractall(folder, filter="data")
    return folder


def run_worker(tree: Path, repeats: int) -> dict:
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", "--repeats", str(repeats)],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def compare_commits(revs: list[str], repeats: int, rounds: int) -> list[dict]:
    """This tree against ``revs``, fresh processes alternating ``rounds`` times (best of)."""
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"this tree": REPO, **{rev: checkout(rev, Path(tmp)) for rev in revs}}
        best: dict[str, dict[str, float]] = {name: {} for name in trees}
        for _ in range(rounds):
            for name, tree in trees.items():
                for key, ms in run_worker(tree, repeats).items():
                    best[name][key] = min(best[name].get(key, float("inf")), ms)
    here = best["this tree"]
    return [
        {
            "tree": name,
            **{f"{k}_ms": v for k, v in ms.items()},
            "x_floor": round(ms["pseudo_hessian"] / ms["floor"], 3),
            "step_vs_this_tree": round(
                ms["partition_newton_step"] / here["partition_newton_step"], 3
            ),
            "case": "lenet5-b32",
        }
        for name, ms in best.items()
    ]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--repeats", type=int, default=12)
    ap.add_argument("--baselines", nargs="*", default=[], metavar="REV")
    ap.add_argument("--rounds", type=int, default=3, help="alternations per baseline")
    ap.add_argument("--quick", action="store_true", help="lenet5-b32, 2 repeats, no baseline")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.repeats)
    if args.quick:
        args.cases, args.repeats, args.baselines = ["lenet5-b32"], 2, []
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    for name in args.cases:
        print(json.dumps({**measure_case(name, args.repeats), **meta}), flush=True)
    if args.baselines:
        for row in compare_commits(args.baselines, args.repeats, args.rounds):
            print(json.dumps({**row, **meta}), flush=True)


if __name__ == "__main__":
    main()
