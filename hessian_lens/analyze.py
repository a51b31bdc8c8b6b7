"""Analysis of checkpoints into a results store.

For a checkpoint and a data subset (training samples, eval mode): ``g_bar`` and ``H_bar``
with the direction u = the gradient over all the samples; the regularised inverse with its
spectrum; the rescaling-invariant normalised ``H_bar`` and ``H_bar^-1``; the block-diagonal
comparisons for blocks = layers, tensors and kinds; optionally the diagonal of ``D^(3)``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hessian_lens import linalg, runfolder
from hessian_lens.checkpoint import load_checkpoint
from hessian_lens.data import DataError, ImageData, check_model_fits, load_dataset
from hessian_lens.engine import Options, PseudoHessian, pseudo_hessian
from hessian_lens.io.files import file_sha256
from hessian_lens.loader import Loader
from hessian_lens.losses import LOSSES, get_loss
from hessian_lens.measures import check_measures, stored_measures
from hessian_lens.partition import Partition, check_scheme
from hessian_lens.settings import checkpoint_limit_bytes
from hessian_lens.store import (
    MAX_GROUPS,
    MAX_SPECTRUM_NODES,
    Record,
    ResultStore,
    label_problem,
    settings_key,
)

ENGINE_VERSION = "1"
BLOCKS = ("layer", "tensor", "kind")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
MAX_SAMPLES = 10_000_000
ProgressFn = Callable[[float, str], None]


class NotARunError(ValueError):
    """A folder that is not a run (no run.json, no checkpoint): nothing is created in it."""


@dataclass(frozen=True)
class AnalysisSettings:
    """What an analysis computes; with the data fingerprint, the key of stored results.

    ``loss`` enters the key only when it is not the default cross-entropy, so results stored
    before losses were selectable keep their keys.
    """

    samples: int = 10000
    partition: str = "canonical"
    order3: bool = False
    batch_size: int = 1000
    seed: int = 0
    dtype: str = "float32"
    loss: str = "cross_entropy"
    curvature: str = "hessian"
    measures: tuple[str, ...] = ()
    probes: int = 16
    steps: int = 20
    slq_probes: int = 2

    def __post_init__(self) -> None:
        if not _count(self.samples, MAX_SAMPLES):
            raise ValueError(
                f"samples must be an integer in 1..{MAX_SAMPLES:,}, got {self.samples!r}"
            )
        if not _count(self.batch_size, MAX_SAMPLES):
            raise ValueError(f"batch size must be an integer >= 1, got {self.batch_size!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {list(LOSSES)}, got {self.loss!r}")
        check_scheme(self.partition)
        if self.curvature not in ("hessian", "ggn"):
            raise ValueError(f"curvature must be 'hessian' or 'ggn', got {self.curvature!r}")
        object.__setattr__(self, "measures", check_measures(self.measures))
        for name, top in (("probes", 4096), ("steps", 1000), ("slq_probes", 256)):
            if not _count(getattr(self, name), top):
                raise ValueError(
                    f"{name} must be an integer in 1..{top}, got {getattr(self, name)!r}"
                )
        if self.measures and self.probes < 2:
            raise ValueError("probes must be >= 2: a standard error needs two probes")
        if self.steps * self.slq_probes > MAX_SPECTRUM_NODES:
            raise ValueError(
                f"steps x slq_probes must be at most {MAX_SPECTRUM_NODES} (the nodes a stored "
                f"spectrum may hold), got {self.steps} x {self.slq_probes}"
            )

    def key(self, data_fingerprint: str) -> dict[str, Any]:
        """The settings dict stored with each record (batch size does not change results)."""
        d = dataclasses.asdict(self)
        d.pop("batch_size")
        if d["loss"] == "cross_entropy":
            d.pop("loss")
        if d["curvature"] == "hessian":  # keys of records stored before curvature= existed
            d.pop("curvature")
        if not d["measures"]:
            for name in ("measures", "probes", "steps", "slq_probes"):
                d.pop(name)
        else:
            d["measures"] = list(d["measures"])
        return {**d, "data": data_fingerprint, "engine": ENGINE_VERSION}


def _count(value: Any, top: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= top


def check_storable(part: Partition, scheme: str) -> None:
    """Refuse a partition whose analysis a store would not read back, before computing it.

    Raises:
        ValueError: more than :data:`~hessian_lens.store.MAX_GROUPS` groups, or a label
            over :data:`~hessian_lens.store.MAX_LABEL_CHARS` characters.
    """
    if len(part.groups) > MAX_GROUPS:
        raise ValueError(
            f"the {scheme} partition of this model has S = {len(part.groups):,} "
            f"groups, more than the {MAX_GROUPS:,} a stored analysis may have; choose a "
            "coarser partition (canonical, by_layer, by_module:K with a smaller K)"
        )
    problem = label_problem(part.labels)
    if problem:
        raise ValueError(f"the {scheme} partition of this model has {problem}")


def analyze_model(
    model: nn.Module,
    batches,
    settings: AnalysisSettings,
    device: torch.device | None = None,
    progress: ProgressFn | bool | None = None,
    distributed: bool = False,
    resume: Path | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """H_bar and everything derived from it, for one model.

    ``distributed=True`` (inside a process group): ``batches`` is this rank's shard and the
    result is that of the union of all ranks' shards (every rank gets it). ``progress``: a
    callback ``(fraction, message)`` or ``True`` (a tqdm bar with an ETA, advancing row by
    row of H̄). ``resume``: a file keeping H̄'s rows as they are computed
    (:mod:`hessian_lens.engine.resume`): a call killed midway and made again continues
    after the last row stored; the caller removes the file once the result is stored.

    Returns:
        ``(summary, arrays)``: JSON-able scalars and labels; float64 numpy arrays ``H``,
        ``g``, ``Hinv``, ``H_norm``, ``Hinv_norm``, ``eigenvalues``, ``eta_full``,
        ``eta_bd_<blocks>``, ``Hinv_bd_<blocks>`` (blockdiag(H̄)⁻¹ for each block choice)
        (and ``d3`` with ``order3``).
    """
    part = Partition.from_name(model, settings.partition)
    check_storable(part, settings.partition)
    tick = _batch_progress(progress) if callable(progress) else progress is True
    options = Options(
        device=device,
        dtype=DTYPES[settings.dtype],
        progress=tick,
        distributed=distributed,
        curvature=settings.curvature,
        resume=resume,
    )
    loss_fn = get_loss(settings.loss)
    res = pseudo_hessian(
        model, loss_fn, batches, partition=part, d3_diagonal=settings.order3, options=options
    )
    summary, arrays = stored_parts(res, part, settings.loss)
    if settings.measures:
        more, extra = stored_measures(
            model,
            loss_fn,
            batches,
            part,
            settings.measures,
            probes=settings.probes,
            steps=settings.steps,
            slq_probes=settings.slq_probes,
            seed=settings.seed,
            options=options.replace(progress=False),
        )
        summary["measures"] = more
        arrays.update({k: as_numpy(v) for k, v in extra.items()})
    summary["curvature"] = settings.curvature
    return summary, arrays


def stored_parts(
    res: PseudoHessian, part: Partition, loss_name: str
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """What a store keeps of a :func:`pseudo_hessian` result: ``(summary, arrays)``.

    The arrays of :func:`derived` (and ``d3`` when computed) as float64 numpy; the summary
    of :func:`derived` plus the loss value and name, sample count, back end and device.
    """
    arrays, summary = derived(res.H, res.g, part)
    if res.d3 is not None:
        arrays["d3"] = res.d3
    summary.update(
        loss=res.loss,
        loss_fn=loss_name,
        n_samples=res.n_samples,
        method=res.method,
        device=str(res.H.device),
    )
    return summary, {k: as_numpy(v) for k, v in arrays.items()}


def derived(H: torch.Tensor, g: torch.Tensor, part: Partition) -> tuple[dict, dict]:
    """The inverse, normalised views and block-diagonal comparisons of ``(H_bar, g_bar)``.

    Returns:
        ``(arrays, summary)`` as stored by :func:`analyze_model` (labels, kinds, layers,
        sizes, inverse status, comparisons per block choice).
    """
    inv = _checked_inverse(H, g)
    arrays = {
        "H": H,
        "g": g,
        "Hinv": inv.inv,
        "H_norm": linalg.normalize(H),
        "Hinv_norm": linalg.normalize(inv.inv),
        "eigenvalues": inv.eigenvalues,
        "normalized_eigenvalues": inv.normalized_eigenvalues,
    }
    compare = {}
    for by in BLOCKS:
        m = linalg.compare_block_diagonal(H, g, part.blocks(by))
        arrays[f"eta_bd_{by}"] = m.pop("eta_bd")
        arrays[f"Hinv_bd_{by}"] = m.pop("inv_bd")
        arrays["eta_full"] = m.pop("eta_full")
        m.pop("inv_full")
        compare[by] = m
    summary = {
        "labels": part.labels,
        "kinds": part.kinds,
        "layers": part.layers,
        "sizes": [grp.size for grp in part.groups],
        "inverse": {
            "status": inv.status,
            "condition": inv.condition,
            "n_negative": inv.n_negative,
            "n_floored": inv.n_floored,
        },
        "compare": compare,
    }
    return arrays, summary


def _checked_inverse(H: torch.Tensor, g: torch.Tensor) -> linalg.Inverse:
    """``linalg.inverse(H)``, or a FloatingPointError saying why H̄ cannot be trusted.

    Raises:
        FloatingPointError: H̄ or ḡ hold NaN or infinities, or H̄ cannot be decomposed
            (e.g. all-zero images: every gradient vanishes).
    """
    if not (torch.isfinite(H).all() and torch.isfinite(g).all()):
        raise FloatingPointError(
            "H̄ or ḡ hold NaN or infinite values: the model diverged on this data, or the "
            "data is degenerate (constant or all-zero images); check the checkpoint and data."
        )
    try:
        return linalg.inverse(H)
    except torch.linalg.LinAlgError as err:
        first = (str(err).splitlines() or ["LinAlgError"])[0][:120]
        raise FloatingPointError(
            f"H̄ cannot be decomposed ({first}); the data is degenerate for this model "
            "(constant or all-zero images give vanishing gradients): check the data set."
        ) from None


def compute_record(
    model: nn.Module,
    meta: dict[str, Any],
    name: str,
    sha: str,
    batches,
    settings: AnalysisSettings,
    data_fingerprint: str,
    device: torch.device | None = None,
    progress: ProgressFn | None = None,
    distributed: bool = False,
    resume: Path | None = None,
) -> Record:
    """Analyse a built model into a :class:`Record` (not stored).

    ``resume``: the file keeping H̄'s rows as they come (:func:`analyze_model`).
    """
    t0 = time.perf_counter()
    summary, arrays = analyze_model(
        model, batches, settings, device, progress, distributed, resume=resume
    )
    summary["model"] = meta.get("model")
    epoch = checkpoint_epoch(name, meta)
    return Record(
        sha, settings.key(data_fingerprint), name, epoch, summary, arrays, time.perf_counter() - t0
    )


def checkpoint_epoch(name: str, meta: dict[str, Any]) -> float | None:
    """The epoch of a checkpoint: its meta's when a sane number, else its file name's."""
    value = meta.get("epoch")
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number and math.isfinite(value) and 0 <= value < 1e9:
        return value
    return runfolder.epoch_of(name)


def run_data(
    run: Path,
    settings: AnalysisSettings,
    data: str | None,
    data_source: str | None,
    tokenizer: str | None = None,
) -> ImageData:
    """The training subset a run is analysed on (its own data set unless overridden).

    Raises:
        NotARunError: the folder holds neither run.json nor a checkpoint (nothing created).
    """
    if not runfolder.is_run(run):
        raise NotARunError(
            f"{run} is not a run folder: it has no run.json and no checkpoint "
            f"({', '.join('epoch_*' + s for s in runfolder.CHECKPOINT_SUFFIXES)}). Give the "
            "folder that `hessian-lens train --out` wrote, or a folder of checkpoints."
        )
    manifest = runfolder.read_manifest(run)
    if data is None and manifest.data.get("name") == runfolder.RECORDER_DATA:
        raise DataError(
            f"{run} was recorded by hl.Recorder from batches in memory, which analyze cannot "
            "load again: give its data set with --data (cifar10, mnist, npz:PATH, "
            "imagefolder:DIR, safetensors:PATH, text:PATH@T) and --data-root PATH, or record "
            'with hl.Recorder(..., data_spec="cifar10", data_source=PATH) to name it'
        )
    spec = str(data or manifest.data.get("name") or "cifar10")
    source = data_source or manifest.data.get("source")
    recorded = manifest.data.get("tokenizer") if data is None else None
    tokenizer = tokenizer or (_run_tokenizer(run, recorded) if isinstance(recorded, str) else None)
    if tokenizer is not None and data is None:  # the run's own tokens, or a refusal
        from hessian_lens.tokenized import check_recorded

        check_recorded(tokenizer, (manifest.data.get("corpus") or {}).get("tokenizer"))
    subset = load_dataset(spec, source, train=True, tokenizer=tokenizer)
    return subset.subset(settings.samples, settings.seed)


def _run_tokenizer(run: Path, recorded: str) -> str:
    """A run's tokenizer: its recorded path (relative to the run), else the run's own copy."""
    path = Path(recorded) if Path(recorded).is_absolute() else run / recorded
    own = run / "tokenizer.json"
    return str(own if not path.exists() and own.is_file() else path)


def analysis_batches(
    data_source: str | None,
    settings: AnalysisSettings,
    data: str = "cifar10",
    tokenizer: str | None = None,
) -> tuple[Loader, str]:
    """The training subset an analysis uses (``data``: a data set spec) and its fingerprint.

    ``tokenizer``: a ``tokenizer.json`` (file, folder or zip) for ``text:`` data.
    """
    subset = load_dataset(data, data_source, train=True, tokenizer=tokenizer)
    subset = subset.subset(settings.samples, settings.seed)
    return subset.batches(settings.batch_size), subset.fingerprint()


LEASE_S = 600.0  # a claim not renewed for this long is taken over
POLL_S = 5.0  # how often to look again at checkpoints other processes are computing


def select_checkpoints(run: str | Path, epochs: Sequence[float] | None = None) -> list[Path]:
    """The run's checkpoints in epoch order, or only those of the given epochs.

    Args:
        run: the run folder.
        epochs: e.g. ``[1, 21]`` (the paper's epochs); None: all of them.

    Raises:
        ValueError: an asked-for epoch has no checkpoint (the message lists those there are).
    """
    files = runfolder.list_checkpoints(run)
    if epochs is None:
        return files
    wanted = {float(e) for e in epochs}
    have = {runfolder.epoch_of(p) for p in files}
    missing = sorted(wanted - have)
    if missing:
        there = ", ".join(f"{e:g}" for e in sorted(e for e in have if e is not None))
        raise ValueError(
            f"{run}: no checkpoint of epoch {', '.join(f'{e:g}' for e in missing)} "
            f"(the run has epochs {there or 'none'})"
        )
    return [p for p in files if runfolder.epoch_of(p) in wanted]


def owner_id() -> str:
    """This process's name in claims: host, pid and a random tag."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def analyze_run(
    run: str | Path,
    settings: AnalysisSettings,
    data_source: str | None = None,
    device: torch.device | None = None,
    progress: bool | ProgressFn = True,
    data: str | None = None,
    lease_s: float = LEASE_S,
    poll_s: float = POLL_S,
    epochs: Sequence[float] | None = None,
    tokenizer: str | None = None,
) -> dict[str, Any]:
    """Analyse every checkpoint of a run into ``<run>/analysis.sqlite`` (resumable).

    Processes share the work without duplicates: each checkpoint is claimed with a lease
    in the store before it is computed (two terminals, several machines on one shared
    folder, or torchrun ranks); a checkpoint claimed by another process is left to it, and
    taken over if its lease expires (a crashed or killed process). The call returns when
    every checkpoint is in the store.

    Args:
        run: the run folder (``run.json`` and/or checkpoints).
        settings: what to compute.
        data_source: npz or torchvision root; default: the run's own data source.
        device: where to compute.
        progress: a tqdm bar (True), a callback ``(fraction, message)``, or nothing.
        data: data set spec; default: the run's own (``run.json``), else ``cifar10``.
        lease_s: how long a claim lives without a heartbeat.
        poll_s: how long to wait before looking again at others' checkpoints.
        epochs: only the checkpoints of these epochs (default: all).
        tokenizer: a ``tokenizer.json`` for text data; default: the run's own (its
            sha256 checked against the one run.json records).

    Returns:
        ``{"computed": n, "skipped": m, "store": path, "seconds": [...]}``.

    Raises:
        NotARunError: the folder holds neither run.json nor a checkpoint (nothing created).
    """
    run = Path(run)
    if not (isinstance(lease_s, (int, float)) and math.isfinite(lease_s) and lease_s > 0):
        raise ValueError(f"the lease must be a finite number of seconds > 0, got {lease_s!r}")
    files = select_checkpoints(run, epochs)
    subset = run_data(run, settings, data, data_source, tokenizer)
    batches, fingerprint = subset.batches(settings.batch_size), subset.fingerprint()
    _check_data_fits_first(run, files, batches)
    created = not (run / runfolder.STORE_FILE).exists()
    job = _Job(
        ResultStore(run / runfolder.STORE_FILE),
        settings,
        fingerprint,
        batches,
        device,
        owner_id(),
        lease_s,
    )
    try:
        seconds = _analyze_all(job, files, progress, poll_s)
    except BaseException:
        if created:  # nothing half-written: a store this call made and filled with nothing
            job.store.discard_if_empty()
        raise
    if callable(progress):
        progress(1.0, f"{len(files)} checkpoints analysed")
    return {
        "computed": len(seconds),
        "skipped": len(files) - len(seconds),
        "store": str(job.store.path),
        "seconds": seconds,
    }


def _analyze_all(job: _Job, files: list[Path], progress, poll_s: float) -> list[float]:
    """Every checkpoint, each claimed or waited for; the seconds of those computed here."""
    bar = _bar(progress, len(files))
    pending, seconds, done = list(files), [], 0
    while pending:
        waiting = []
        for path in pending:
            inner = _inner_progress(progress, done, len(files), path.name)
            try:
                state, record = job.run(path, inner)
            finally:
                if isinstance(inner, _Bar):
                    inner.close()
            if state == "busy":
                waiting.append(path)
                continue
            done += 1
            if record is not None:
                seconds.append(record.seconds)
            if bar is not None:
                bar.update(1)
        if waiting:
            _wait(progress, len(waiting), poll_s)
        pending = waiting
    if bar is not None:
        bar.close()
    return seconds


def _check_data_fits_first(run: Path, files: list[Path], batches) -> None:
    """Check that the data fits a run's first checkpoint, before the run's store is created.

    The first checkpoint's model must take the data's inputs (input shape) and cover its
    labels (labels within its outputs), so a wrong data set leaves nothing behind.
    """
    if files and hasattr(batches, "data") and not (run / runfolder.STORE_FILE).exists():
        model, _ = load_checkpoint(files[0], max_bytes=checkpoint_limit_bytes())
        check_model_fits(model, batches.data)


@dataclass
class _Job:
    """One analysis over a run's checkpoints, shared with other processes by claims."""

    store: ResultStore
    settings: AnalysisSettings
    fingerprint: str
    batches: Any
    device: torch.device | None
    owner: str
    lease_s: float

    def run(self, path: Path, progress: ProgressFn | None) -> tuple[str, Record | None]:
        """``("done", None)``, ``("busy", None)`` or ``("computed", record)``."""
        sha, key = file_sha256(path), self.settings.key(self.fingerprint)
        state = self.store.claim(sha, key, self.owner, self.lease_s)
        if state != "taken":
            return state, None
        try:
            model, meta = load_checkpoint(path, max_bytes=checkpoint_limit_bytes())
            if hasattr(self.batches, "data"):
                check_model_fits(model, self.batches.data)
            partial = partial_path(self.store.path, sha, key)
            record = compute_record(
                model,
                meta,
                path.name,
                sha,
                self.batches,
                self.settings,
                self.fingerprint,
                self.device,
                self._heartbeat(sha, key, progress),
                resume=partial,
            )
            self.store.put(record, owner=self.owner)
            partial.unlink(missing_ok=True)
        except BaseException:
            self.store.release(sha, key, self.owner)
            raise
        return "computed", record

    def _heartbeat(self, sha: str, key: dict, progress: ProgressFn | None) -> ProgressFn:
        last = [time.monotonic()]

        def tick(fraction: float, message: str) -> None:
            if time.monotonic() - last[0] > self.lease_s / 3:
                self.store.renew(sha, key, self.owner, self.lease_s)
                last[0] = time.monotonic()
            if progress is not None:
                progress(fraction, message)

        return tick


PARTIAL_DIR = "analysis.partial"  # beside the store: the rows of analyses under way


def partial_path(store: Path, sha: str, key: dict[str, Any], rank: str = "") -> Path:
    """Where the rows of one checkpoint's analysis are kept while it runs (beside the store)."""
    return Path(store).parent / PARTIAL_DIR / f"{sha[:16]}-{settings_key(key)}{rank}.npz"


def analyze_run_data_parallel(
    run: str | Path,
    settings: AnalysisSettings,
    data_source: str | None = None,
    device: torch.device | None = None,
    progress: bool | ProgressFn = True,
    data: str | None = None,
    epochs: Sequence[float] | None = None,
    tokenizer: str | None = None,
) -> dict[str, Any]:
    """Every checkpoint of a run, each one's samples split over the ranks of the process group.

    Meant for few, large checkpoints: every rank computes its shard's summaries, they are
    all-reduced, rank 0 stores the record. All ranks must call it. ``epochs`` selects
    checkpoints as in :func:`analyze_run`.

    Returns:
        As :func:`analyze_run` (on every rank).
    """
    from hessian_lens import distributed as dist

    run = Path(run)
    files = select_checkpoints(run, epochs)
    rank, world = dist.rank_and_world()
    subset = run_data(run, settings, data, data_source, tokenizer)
    fingerprint = subset.fingerprint()
    mine = subset.take(
        torch.as_tensor(list(dist.split_indices(len(subset), rank, world))),
        f"{subset.source}[rank {rank}/{world}]",
    )
    batches = mine.batches(settings.batch_size)
    store = ResultStore(run / runfolder.STORE_FILE) if rank == 0 else None
    todo = dist.broadcast_object(
        _missing(store, settings, fingerprint, files) if rank == 0 else None
    )
    bar = _bar(progress if rank == 0 else False, len(todo))
    seconds = []
    for path in todo:
        model, meta = load_checkpoint(path, max_bytes=checkpoint_limit_bytes())
        sha = file_sha256(path)
        partial = partial_path(run / runfolder.STORE_FILE, sha, settings.key(fingerprint))
        record = compute_record(
            model,
            meta,
            path.name,
            sha,
            batches,
            settings,
            fingerprint,
            device,
            True if bar is not None else None,
            distributed=True,
            resume=partial,
        )
        if store is not None:
            store.put(record)
        Path(f"{partial}.rank{rank}of{world}" if world > 1 else partial).unlink(missing_ok=True)
        seconds.append(record.seconds)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return {
        "computed": len(todo),
        "skipped": len(files) - len(todo),
        "store": str(run / runfolder.STORE_FILE),
        "seconds": seconds,
    }


def _missing(store: ResultStore, settings: AnalysisSettings, fingerprint: str, files: list[Path]):
    key = settings.key(fingerprint)
    return [p for p in files if not store.has(file_sha256(p), key)]


def _wait(progress, count: int, poll_s: float) -> None:
    message = f"waiting for {count} checkpoints other processes are analysing"
    if callable(progress):
        progress(0.0, message)
    elif progress is True:
        print(message, flush=True)
    time.sleep(poll_s)


def _batch_progress(progress: ProgressFn) -> Callable[[float, int | None], None]:
    """The engine's ``(done, total)`` ticks (fractions of a batch as H̄'s rows finish)."""

    def tick(done: float, total: int | None) -> None:
        progress(done / total if total else 0.0, f"batch {int(done)}/{total or '?'}")

    return tick


def _inner_progress(progress, index: int, total: int, name: str) -> ProgressFn | None:
    if progress is True:
        return _Bar(name)
    if not callable(progress):
        return None
    return lambda f, msg: progress((index + f) / total, f"{name}: {msg}")


class _Bar:
    """One checkpoint's bar, in percent of its passes, advancing row by row of H̄ (with ETA)."""

    def __init__(self, name: str) -> None:
        self.name, self.bar = name, None

    def __call__(self, fraction: float, message: str) -> None:
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=100.0,
                desc=self.name,
                bar_format="{desc}: {percentage:5.1f}%|{bar}| [{elapsed}<{remaining}]",
            )
        self.bar.n = round(100.0 * min(max(fraction, 0.0), 1.0), 2)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _bar(progress, total: int):
    if progress is not True:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="checkpoints", unit="ckpt")


def as_numpy(t) -> np.ndarray:
    """``t`` as a NumPy array: a tensor detached, in float64 on the CPU; else ``np.asarray(t)``."""
    return t.detach().double().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
