"""The memory plan's predicted peak of one analysis against the measured peak.

For the small torchvision ViT (per-head partition), the built-in GPT of the shipped run
``checkpoints/gpt-text`` (its last checkpoint, per-head partition, its own text windows or
random tokens of the same shape when the corpus is absent), LeNet-5 and VGG-11' (canonical),
with each back end (``loop``, ``vmap``) and batch size: the H̄ of the analysis
(``pseudo_hessian`` with the arguments of ``analyze_model``) of one batch, each case in a
fresh process. The largest batch is measured twice: under the machine's own budget (no
split), and under a budget that the plan fills with ``batch / 4`` samples
(``HESSIAN_LENS_MAX_MEMORY_GB``), so that the engine splits the batch into micro-batches.

The prediction is the engine's own plan (``result.memory``): ``plan.peak(m)`` for its
micro-batch ``m``. The measured peak is the growth during the call over a baseline taken
once the model, the data and a warm-up (``memory_plan`` on 5 samples: it loads the kernels
and runs the probe the call then reuses; with ``vmap`` also one call on 4 samples, as its
CPU probe runs the loop) are in memory and glibc has returned its free heap
(``malloc_trim``), of

* ``rss``: the resident set's high-water mark (``VmHWM`` after resetting it through
  ``/proc/self/clear_refs``; a 0.5 ms sampler of ``VmRSS`` where that is refused);
* ``tensors``: the peak of the live tensor storages allocated in the call, by the engine's
  own meter (``hessian_lens.memory.PeakMeter``: a dispatch mode on the CPU, which runs
  during the same call and adds its bookkeeping to ``rss``; on CUDA
  ``torch.cuda.max_memory_allocated``, and ``ratio`` is taken on it).

One JSON line per case with ``ratio = measured / predicted`` (> 1: the plan under-predicts)
and whether the measured peak stayed within the budget.

    python benchmarks/bench_memory.py --models vit gpt --batch-sizes 8 32
    python benchmarks/bench_memory.py --quick            # LeNet-5, loop, batch 8 (seconds)
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_analysis import MODELS, data  # model configs and random inputs (one definition)

import hessian_lens as hl
from hessian_lens import memory
from hessian_lens.analyze import AnalysisSettings, run_data
from hessian_lens.checkpoint import load_checkpoint
from hessian_lens.data import DataError, DataNotFoundError
from hessian_lens.losses import get_loss
from hessian_lens.partition import Partition
from hessian_lens.runfolder import list_checkpoints, read_manifest

REPO = Path(__file__).resolve().parents[1]
GPT_RUN = REPO / "checkpoints" / "gpt-text"
WARM_UP = memory.PROBE_SAMPLES[-1]  # the warm-up plans a batch of WARM_UP + 1 samples
SPLIT = 4  # the constrained budget fits batch / SPLIT samples
MIB = 2**20


# ---------------------------------------------------------------------------- one case
def setup(name: str, samples: int, batch: int) -> tuple[torch.nn.Module, list, str, str, str]:
    """``(model, batches, partition, loss, data)`` of a model name (``gpt``: the shipped run)."""
    torch.manual_seed(0)
    arch, kwargs, partition, loss, kind = MODELS[name]
    if name == "gpt":  # the run's architecture is in its checkpoints, its loss in run.json
        model, _ = load_checkpoint(list_checkpoints(GPT_RUN)[-1])
        batches, source = gpt_batches(samples, batch)
        return model, batches, partition, read_manifest(GPT_RUN).loss or loss, source
    model = hl.build_model(arch, **kwargs).eval()
    x, y = data(kind, samples, torch.Generator().manual_seed(0))
    batches = [(x[i : i + batch], y[i : i + batch]) for i in range(0, samples, batch)]
    return model, batches, partition, loss, "random"


def gpt_batches(samples: int, batch: int) -> tuple[list, str]:
    """The run's own training windows (as ``analyze`` reads them), else random tokens."""
    manifest = read_manifest(GPT_RUN)
    settings = AnalysisSettings(samples=samples, partition="by_head", loss=manifest.loss)
    try:
        subset = run_data(GPT_RUN, settings, None, None)
    except (DataNotFoundError, DataError, OSError):
        context = manifest.model["kwargs"]["context"]
        tokens = torch.randint(0, 256, (samples, context + 1), generator=torch.Generator())
        x, y = tokens[:, :-1], tokens[:, 1:]
        return [(x[i : i + batch], y[i : i + batch]) for i in range(0, samples, batch)], "random"
    return list(subset.batches(batch)), "text corpus"


def release_free_heap() -> None:
    """Give the C heap's free memory back to the system (glibc), for an honest baseline."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to return
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def status(key: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {key} in /proc/self/status")


class RssPeak:
    """Growth of the resident set's peak over its size on entering (Linux)."""

    def __enter__(self) -> RssPeak:
        self.base, self._thread = status("VmRSS:"), None
        try:  # reset the high-water mark (Linux >= 4.0)
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self._high, self._stop = self.base, threading.Event()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._high = max(self._high, status("VmRSS:"))
            time.sleep(0.0005)

    def __exit__(self, *exc) -> None:
        if self._thread is None:
            self._high = status("VmHWM:")
        else:
            self._stop.set()
            self._thread.join()
        self.peak = max(self._high - self.base, 0)


def case(name: str, method: str, samples: int, batch: int, device: str) -> dict:
    """Predicted and measured peak of one analysis (run this in a fresh process)."""
    dev = torch.device(device)
    model, batches, partition, loss, source = setup(name, samples, batch)
    model = model.to(dev)
    batches = [(x.to(dev), y.to(dev)) for x, y in batches]
    part, loss_fn = Partition.from_name(model, partition), get_loss(loss)
    common = {"partition": part, "dtype": torch.float32, "method": method}
    head = (batches[0][0][: WARM_UP + 1], batches[0][1][: WARM_UP + 1])
    hl.memory_plan(model, loss_fn, head, **common)  # loads the kernels, caches the probe
    if method == "vmap":  # on the CPU its probe is the loop's: load torch.func's code too
        hl.pseudo_hessian(model, loss_fn, [tuple(t[:WARM_UP] for t in head)], **common)
    release_free_heap()
    with RssPeak() as rss, memory.PeakMeter(dev) as meter:
        res = hl.pseudo_hessian(model, loss_fn, batches, **common)
    tensors = meter.peak()
    plan = res.memory
    micro = min(plan.micro_batch or batch, batch)
    return {
        "model": name,
        "partition": partition,
        "S": len(part),
        "data": source,
        "method": method,
        "ran": res.method,
        "samples": samples,
        "batch": batch,
        "device": device,
        "threads": torch.get_num_threads(),
        "budget_mib": round(plan.budget / MIB, 1),
        "budget_source": plan.source,
        "micro_batch": micro,
        "chunk_size": plan.chunk_size,
        "fixed_mib": round(plan.fixed_bytes / MIB, 2),
        "per_sample_mib": round(plan.per_sample_bytes / MIB, 3),
        "output_mib": round(plan.output_bytes / MIB, 2),
        "predicted_mib": round(plan.peak(micro) / MIB, 2),
        "rss_mib": round(rss.peak / MIB, 2),
        "tensors_mib": round(tensors / MIB, 2),
        "predicted_bytes": plan.peak(micro),
        "rss_bytes": rss.peak,
        "tensors_bytes": tensors,
        "budget_bytes": plan.budget,
    }


# ---------------------------------------------------------------------------- driver
def in_fresh_process(args: list[str], budget: int | None) -> dict:
    """One case in a new interpreter (the allocator keeps memory between calls)."""
    env = {k: v for k, v in os.environ.items() if k != memory.MAX_MEMORY_ENV}
    if budget is not None:
        env[memory.MAX_MEMORY_ENV] = repr(budget / memory.GIB)
    out = subprocess.run(
        [sys.executable, __file__, "--case", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": tail}
    return json.loads(out.stdout.strip().splitlines()[-1])


def with_ratios(row: dict, constrained: bool) -> dict:
    """The case's row with ``budget`` kind and measured / predicted ratios."""
    on_gpu = row["device"].startswith("cuda")
    measured = row["tensors_bytes"] if on_gpu else row["rss_bytes"]
    slim = {k: v for k, v in row.items() if not k.endswith("_bytes")}
    return {
        **slim,
        "budget": "split" if constrained else "machine",
        "ratio": round(measured / row["predicted_bytes"], 3),
        "ratio_rss": round(row["rss_bytes"] / row["predicted_bytes"], 3),
        "ratio_tensors": round(row["tensors_bytes"] / row["predicted_bytes"], 3),
        "within_budget": measured <= row["budget_bytes"],
    }


def split_budget(name: str, method: str, batch: int, device: str) -> int:
    """The budget that the plan of one batch fills with ``batch / SPLIT`` samples."""
    model, batches, partition, loss, _ = setup(name, batch, batch)
    dev = torch.device(device)
    model, (x, y) = model.to(dev), (t.to(dev) for t in batches[0])
    part = Partition.from_name(model, partition)
    saved = os.environ.pop(memory.MAX_MEMORY_ENV, None)  # the machine's budget, as the case
    try:
        plan = hl.memory_plan(
            model, get_loss(loss), (x, y), partition=part, dtype=torch.float32, method=method
        )
    finally:
        if saved is not None:
            os.environ[memory.MAX_MEMORY_ENV] = saved
    return plan.peak(max(batch // SPLIT, 1)) + plan.per_sample_bytes // 2


def cases(name: str, method: str, batch: int, device: str, budgets: list[str]) -> list[dict]:
    """One batch under the machine's budget and/or one that fits ``batch / SPLIT`` samples."""
    args, rows = [name, method, str(batch), str(batch), device], []
    for budget in budgets:
        split = budget == "split"
        if split and batch < 2 * SPLIT:
            continue
        row = in_fresh_process(args, split_budget(name, method, batch, device) if split else None)
        if "error" in row:
            rows.append({"model": name, "method": method, "batch": batch, **row})
        else:
            rows.append(with_ratios(row, split))
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="*", default=["vit", "gpt", "lenet5", "vgg11p"])
    ap.add_argument("--methods", nargs="*", default=["loop", "vmap"])
    ap.add_argument("--batch-sizes", nargs="*", type=int, default=[8, 32])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--budgets",
        nargs="*",
        choices=["machine", "split"],
        default=["machine", "split"],
        help="split: only for the largest batch size",
    )
    ap.add_argument("--quick", action="store_true", help="LeNet-5, loop, batch 8 (seconds)")
    ap.add_argument("--case", nargs=5, metavar=("MODEL", "METHOD", "SAMPLES", "BATCH", "DEV"))
    args = ap.parse_args(argv)
    if args.case:
        name, method, samples, batch, device = args.case
        print(json.dumps(case(name, method, int(samples), int(batch), device)))
        return
    if args.quick:
        args.models, args.methods, args.batch_sizes = ["lenet5"], ["loop"], [8]
    for name in args.models:
        for method in args.methods:
            for batch in args.batch_sizes:
                largest = batch == max(args.batch_sizes)
                budgets = [b for b in args.budgets if b == "machine" or largest]
                for row in cases(name, method, batch, args.device, budgets):
                    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
