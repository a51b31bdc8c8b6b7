"""Finding runs on disk and reading their analyses (what the dashboard browses).

Torch-free: a run is shown from ``run.json`` + ``analysis.sqlite`` alone, never by importing
or building its model, so a run of a model that only exists in the user's script (a
:class:`~hessian_lens.recorder.Recorder` run) is browsable. Everything is read-only: stores
are opened with :meth:`ResultStore.reader`. A broken file in one run becomes a warning on
that run, never an exception that would take other runs down.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hessian_lens import runfolder
from hessian_lens.store import Record, ResultStore, StoreError

RUNS_ENV = "HESSIAN_LENS_RUNS"
LIVE_WINDOW_S = 1800.0  # a recording run changed this recently is shown as live
T = TypeVar("T")


@dataclass
class Run:
    """A run folder: its manifest, checkpoints and what could not be read."""

    path: Path
    manifest: runfolder.Manifest = field(default_factory=runfolder.Manifest)
    checkpoints: list[Path] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The manifest's name, else the folder's name."""
        return self.manifest.name or self.path.name

    @property
    def store_path(self) -> Path:
        """The path of the run's results store in its folder (it may not exist yet)."""
        return self.path / runfolder.STORE_FILE

    @property
    def history(self) -> list[dict[str, Any]]:
        """The manifest's training history (entries with a numeric ``epoch``)."""
        return self.manifest.history

    @property
    def warnings(self) -> list[str]:
        """What could not be read in the manifest, and an analysis that failed."""
        out = list(self.manifest.warnings)
        raw = self.manifest.raw
        if raw.get("state") == "analysis failed":
            out.append(f"analysis failed: {raw.get('error') or 'no error recorded'}")
        return out

    def last_change(self) -> float:
        """When the run's files last changed (run.json, the store, the newest checkpoint)."""
        files = [self.path / runfolder.RUN_FILE, self.store_path, *self.checkpoints[-1:]]
        stamps = []
        for f in files:
            try:
                stamps.append(f.stat().st_mtime)
            except OSError:
                continue
        return max(stamps, default=0.0)

    def live(self, now: float | None = None) -> bool:
        """Being written: marked recording, its writer alive, changed within the window.

        A Recorder (and the callbacks, and ``train``) mark their run ``"state":
        "recording"`` with their ``"writer"`` (:func:`runfolder.writer_entry`), and
        ``"finished"`` when closed. A recording whose writer process is gone (known on its
        own host) is never live; elsewhere it stops being live once it has not changed for
        :data:`LIVE_WINDOW_S` seconds.
        """
        if self.manifest.raw.get("state") != "recording":
            return False
        if runfolder.writer_gone(self.manifest.raw):
            return False
        return (time.time() if now is None else now) - self.last_change() < LIVE_WINDOW_S

    def store(self) -> ResultStore | None:
        """The run's store opened read-only, None when there is none.

        Raises:
            StoreError: a file that is not a (readable) Hessian Lens store.
        """
        return ResultStore.reader(self.store_path) if self.store_path.exists() else None

    def settings(self) -> list[dict[str, Any]]:
        """Settings analysed in this run's store (most checkpoints first)."""
        store = self.store()
        return store.settings() if store is not None else []

    def records(self, settings: dict[str, Any] | None = None, arrays: bool = True) -> list[Record]:
        """Analysed checkpoints of one settings (default: the most complete one)."""
        store = self.store()
        if store is None:
            return []
        settings = settings or next(iter(store.settings()), None)
        return store.records(settings, arrays) if settings else []


def load_run(folder: str | Path) -> Run:
    """A run folder with its manifest (empty, with a warning, when run.json is unusable)."""
    folder = Path(folder)
    return Run(folder, runfolder.read_manifest(folder), runfolder.list_checkpoints(folder))


def find_runs(roots: Iterable[str | Path]) -> list[Run]:
    """Runs in each root (the root itself or its subfolders), without duplicates."""
    seen, runs = set(), []
    for root in roots:
        for folder in run_folders(root):
            key = folder.resolve()
            if key not in seen:
                seen.add(key)
                runs.append(load_run(folder))
    return runs


def run_folders(root: str | Path) -> list[Path]:
    """The root when it is a run, else its subfolders that are runs (unreadable: none)."""
    root = Path(root).expanduser()
    try:
        if not root.is_dir():
            return []
        if runfolder.is_run(root):
            return [root]
        return sorted(p for p in root.iterdir() if runfolder.is_run(p))
    except OSError:
        return []


def run_roots(default: str | Path, extra: str | None = None) -> list[Path]:
    """The default root, then those of ``$HESSIAN_LENS_RUNS`` and ``extra``.

    Both list their roots separated by ``os.pathsep`` or commas.
    """
    roots = [Path(default)]
    for text in (os.environ.get(RUNS_ENV, ""), extra or ""):
        roots += [
            Path(p.strip()) for p in text.replace(",", os.pathsep).split(os.pathsep) if p.strip()
        ]
    return roots


def one_per_epoch(records: Sequence[T], kept: Iterable[str]) -> list[T]:
    """One analysed checkpoint per epoch, in the records' order: what the views show.

    A store may hold two analyses of one epoch (a float32 checkpoint, then the float16
    copy shipped in its place). Of those, the one whose file is still in the run's folder
    (``kept``: file names) is shown, else the last one stored. Records without an epoch
    (uploads) all stay.

    Args:
        records: store records or their dicts (``epoch``, ``checkpoint``).
        kept: the names of the checkpoint files in the folder.

    Example:
        >>> recs = [{"epoch": 8.0, "checkpoint": "epoch_0008.pt"},
        ...         {"epoch": 8.0, "checkpoint": "epoch_0008.safetensors"}]
        >>> [r["checkpoint"] for r in one_per_epoch(recs, ["epoch_0008.safetensors"])]
        ['epoch_0008.safetensors']
    """
    kept = set(kept)
    field_of = (lambda r, k: r[k]) if records and isinstance(records[0], dict) else getattr
    chosen: dict[float, Any] = {}
    for r in records:
        epoch = field_of(r, "epoch")
        if epoch is None:
            continue
        held = chosen.get(epoch)
        if held is None or field_of(held, "checkpoint") not in kept:
            chosen[epoch] = r
    return [r for r in records if field_of(r, "epoch") is None or chosen[field_of(r, "epoch")] is r]


def describe_settings(settings: dict[str, Any]) -> str:
    """One line for a settings dict, e.g. ``canonical · 10,000 samples · float32``."""
    samples = settings.get("samples")
    parts = [
        settings.get("partition", "?"),
        f"{samples:,} samples" if isinstance(samples, int) else f"{samples} samples",
        settings.get("dtype", "?"),
        f"seed {settings.get('seed', 0)}",
    ]
    if settings.get("loss") not in (None, "cross_entropy"):
        parts.append(f"loss {settings['loss']}")
    if settings.get("order3"):
        parts.append("+ D³ diagonal")
    return " · ".join(str(p) for p in parts)


def optimizer_log(run: Run) -> tuple[dict[str, Any] | None, list[str]]:
    """A PartitionNewton run's ``optimizer_log.json`` (thinned, validated) and warnings."""
    return runfolder.read_optimizer_log(run.path)


def rates_over_steps(log: dict[str, Any]) -> tuple[list[int], list[str], list[list[float | None]]]:
    """Per-group rates ``lr * eta_s`` at every recomputation.

    Returns:
        ``(steps, labels, rates)`` with ``rates[s][i]`` the rate of group s at ``steps[i]``
        (``None`` where the entry is malformed).
    """
    labels = list(log.get("labels") or [])
    steps, rates = [], [[] for _ in labels]
    lr_at = {e["step"]: e["lr"] for e in log["entries"] if isinstance(e.get("lr"), list)}
    for entry in log["entries"]:
        eta = entry.get("eta")
        if not isinstance(eta, list) or len(eta) != len(labels):
            continue
        steps.append(entry["step"])
        lrs = lr_at.get(entry["step"]) or [1.0] * len(labels)
        for s, (value, lr) in enumerate(zip(eta, lrs, strict=False)):
            ok = _number(value) and _number(lr)
            rates[s].append(float(lr) * float(value) if ok else None)
    return steps, labels, rates


LOSS_WINDOW = 50


def loss_over_steps(
    log: dict[str, Any], window: int = LOSS_WINDOW
) -> tuple[list[int], list[float]]:
    """Training loss per step, averaged over a trailing window of ``window`` steps."""
    points = [(e["step"], e["loss"]) for e in log["entries"] if _number(e.get("loss"))]
    steps, values, out = [], [], []
    for step, loss in points:
        values.append(loss)
        steps.append(step)
        tail = values[-window:]
        out.append(sum(tail) / len(tail))
    return steps, out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


__all__ = [
    "RUNS_ENV",
    "Run",
    "StoreError",
    "describe_settings",
    "find_runs",
    "load_run",
    "loss_over_steps",
    "optimizer_log",
    "rates_over_steps",
    "run_roots",
]
