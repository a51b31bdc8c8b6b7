"""Analysis of checkpoints into a results store.

For a checkpoint and a data subset (training samples, eval mode): ``g_bar`` and ``H_bar``
with the direction u = the gradient over all the samples; the regularised inverse with its
spectrum; the rescaling-invariant normalised ``H_bar`` and ``H_bar^-1``; the block-diagonal
comparisons for blocks = layers, tensors and kinds; optionally the diagonal of ``D^(3)``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hessian_lens import linalg
from hessian_lens.checkpoint import SUFFIXES, file_sha256, load_checkpoint
from hessian_lens.data import Batches, load_cifar10
from hessian_lens.partition import Partition
from hessian_lens.store import Record, ResultStore
from hessian_lens.summary import pseudo_hessian

ENGINE_VERSION = "1"
BLOCKS = ("layer", "tensor", "kind")
STORE_NAME = "analysis.sqlite"
ProgressFn = Callable[[float, str], None]


@dataclass(frozen=True)
class AnalysisSettings:
    """What an analysis computes; with the data fingerprint, the key of stored results."""

    samples: int = 10000
    partition: str = "canonical"
    order3: bool = False
    batch_size: int = 1000
    seed: int = 0
    dtype: str = "float32"

    def key(self, data_fingerprint: str) -> dict[str, Any]:
        """The settings dict stored with each record (batch size does not change results)."""
        d = dataclasses.asdict(self)
        d.pop("batch_size")
        return {**d, "data": data_fingerprint, "engine": ENGINE_VERSION}


def analyze_model(
    model: nn.Module,
    batches,
    settings: AnalysisSettings,
    device: torch.device | None = None,
    progress: ProgressFn | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """H_bar and everything derived from it, for one model.

    Returns:
        ``(summary, arrays)``: JSON-able scalars and labels; float64 numpy arrays ``H``,
        ``g``, ``Hinv``, ``H_norm``, ``Hinv_norm``, ``eigenvalues``, ``eta_full``,
        ``eta_bd_<blocks>`` (and ``d3`` with ``order3``).
    """
    part = Partition.from_name(model, settings.partition)
    dtype = torch.float64 if settings.dtype == "float64" else torch.float32
    tick = _batch_progress(progress) if progress is not None else False
    res = pseudo_hessian(
        model,
        F.cross_entropy,
        batches,
        partition=part,
        device=device,
        dtype=dtype,
        progress=tick,
        d3_diagonal=settings.order3,
    )
    inv = linalg.inverse(res.H)
    arrays = {
        "H": res.H,
        "g": res.g,
        "Hinv": inv.inv,
        "H_norm": linalg.normalize(res.H),
        "Hinv_norm": linalg.normalize(inv.inv),
        "eigenvalues": inv.eigenvalues,
        "normalized_eigenvalues": inv.normalized_eigenvalues,
    }
    compare = {}
    for by in BLOCKS:
        m = linalg.compare_block_diagonal(res.H, res.g, part.blocks(by))
        arrays[f"eta_bd_{by}"] = m.pop("eta_bd")
        arrays["eta_full"] = m.pop("eta_full")
        m.pop("inv_full"), m.pop("inv_bd")
        compare[by] = m
    if res.d3 is not None:
        arrays["d3"] = res.d3
    summary = {
        "labels": res.labels,
        "kinds": part.kinds,
        "layers": part.layers,
        "sizes": [g.size for g in part.groups],
        "loss": res.loss,
        "n_samples": res.n_samples,
        "inverse": {
            "status": inv.status,
            "condition": inv.condition,
            "n_negative": inv.n_negative,
            "n_floored": inv.n_floored,
        },
        "compare": compare,
        "method": res.method,
        "device": str(device or "cpu"),
    }
    return summary, {k: _np(v) for k, v in arrays.items()}


def analyze_file(
    path: str | Path,
    batches,
    settings: AnalysisSettings,
    data_fingerprint: str,
    store: ResultStore,
    device: torch.device | None = None,
    progress: ProgressFn | None = None,
    architecture: str | None = None,
    model_kwargs: dict | None = None,
    max_bytes: int | None = None,
) -> tuple[Record, bool]:
    """Analyse one checkpoint file into ``store`` unless already there.

    Returns:
        The record and whether it was computed now (False: read from the store).
    """
    path = Path(path)
    sha = file_sha256(path)
    key = settings.key(data_fingerprint)
    found = store.get(sha, key)
    if found is not None:
        return found, False
    model, meta = load_checkpoint(path, architecture, model_kwargs, max_bytes=max_bytes)
    t0 = time.perf_counter()
    summary, arrays = analyze_model(model, batches, settings, device, progress)
    summary["model"] = meta["model"]
    record = Record(
        sha, key, path.name, _epoch(path, meta), summary, arrays, time.perf_counter() - t0
    )
    store.put(record)
    return store.get(sha, key) or record, True


def run_checkpoints(run: str | Path) -> list[Path]:
    """The checkpoint files of a run folder, by epoch."""
    run = Path(run)
    files = [p for p in run.iterdir() if p.suffix in SUFFIXES and p.name != "resume.pt"]

    def order(path: Path) -> tuple[int, str]:
        epoch = _epoch(path, {})
        return (epoch if epoch is not None else 1 << 30, path.name)

    return sorted(files, key=order)


def analysis_batches(data_source: str | None, settings: AnalysisSettings) -> tuple[Batches, str]:
    """The training subset an analysis uses and its fingerprint."""
    data = load_cifar10(data_source, train=True).subset(settings.samples, settings.seed)
    return data.batches(settings.batch_size), data.fingerprint()


def analyze_run(
    run: str | Path,
    settings: AnalysisSettings,
    data_source: str | None = None,
    device: torch.device | None = None,
    progress: bool | ProgressFn = True,
) -> dict[str, Any]:
    """Analyse every checkpoint of a run into ``<run>/analysis.sqlite`` (resumable).

    Args:
        run: the run folder (with ``run.json``).
        settings: what to compute.
        data_source: npz or torchvision root; default: the run's own data source.
        device: where to compute.
        progress: a tqdm bar (True), a callback ``(fraction, message)``, or nothing.

    Returns:
        ``{"computed": n, "skipped": m, "store": path, "seconds": [...]}``.
    """
    run = Path(run)
    manifest = read_manifest(run)
    source = data_source or (manifest.get("data") or {}).get("source")
    batches, fingerprint = analysis_batches(source, settings)
    store = ResultStore(run / STORE_NAME)
    files = run_checkpoints(run)
    bar = _bar(progress, len(files))
    computed, seconds = 0, []
    for i, path in enumerate(files):
        inner = _inner_progress(progress, i, len(files), path.name)
        record, fresh = analyze_file(path, batches, settings, fingerprint, store, device, inner)
        computed += fresh
        if fresh:
            seconds.append(record.seconds)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if callable(progress):
        progress(1.0, f"{len(files)} checkpoints analysed")
    return {
        "computed": computed,
        "skipped": len(files) - computed,
        "store": str(store.path),
        "seconds": seconds,
    }


def read_manifest(run: str | Path) -> dict[str, Any]:
    """A run's ``run.json`` ({} when absent or unreadable)."""
    try:
        return json.loads((Path(run) / "run.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _batch_progress(progress: ProgressFn) -> Callable[[int, int | None], None]:
    def tick(done: int, total: int | None) -> None:
        progress(done / total if total else 0.0, f"batch {done}/{total or '?'}")

    return tick


def _inner_progress(progress, index: int, total: int, name: str) -> ProgressFn | None:
    if not callable(progress):
        return None
    return lambda f, msg: progress((index + f) / total, f"{name}: {msg}")


def _bar(progress, total: int):
    if progress is not True:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="checkpoints", unit="ckpt")


def _epoch(path: Path, meta: dict) -> int | None:
    if isinstance(meta.get("epoch"), int):
        return meta["epoch"]
    m = re.search(r"(\d+)$", Path(path).stem)
    return int(m.group(1)) if m else None


def _np(t) -> np.ndarray:
    return t.detach().double().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
