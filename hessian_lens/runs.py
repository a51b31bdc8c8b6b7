"""Finding runs on disk and reading their analyses (what the dashboard browses).

A run is a folder with ``run.json`` or ``epoch_*.pt`` checkpoints; runs are looked for in
each root and in its immediate subfolders.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hessian_lens.analyze import STORE_NAME, run_checkpoints
from hessian_lens.store import Record, ResultStore

RUNS_ENV = "HESSIAN_LENS_RUNS"


@dataclass
class Run:
    """A run folder, its manifest and checkpoints."""

    path: Path
    manifest: dict[str, Any] = field(default_factory=dict)
    checkpoints: list[Path] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.manifest.get("name") or self.path.name

    @property
    def store_path(self) -> Path:
        return self.path / STORE_NAME

    @property
    def history(self) -> list[dict[str, Any]]:
        return list(self.manifest.get("history") or [])

    def settings(self) -> list[dict[str, Any]]:
        """Settings analysed in this run's store (most checkpoints first)."""
        return ResultStore(self.store_path).settings() if self.store_path.exists() else []

    def records(self, settings: dict[str, Any] | None = None, arrays: bool = True) -> list[Record]:
        """Analysed checkpoints of one settings (default: the most complete one)."""
        if not self.store_path.exists():
            return []
        store = ResultStore(self.store_path)
        settings = settings or next(iter(store.settings()), None)
        return store.records(settings, arrays) if settings else []


def is_run(folder: Path) -> bool:
    """Whether a folder looks like a run."""
    return folder.is_dir() and ((folder / "run.json").is_file() or any(folder.glob("epoch_*.pt")))


def load_run(folder: str | Path) -> Run:
    """A run folder with its manifest (``{}`` when run.json is missing or unreadable)."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / "run.json").read_text())
    except (OSError, json.JSONDecodeError):
        manifest = {}
    return Run(folder, manifest if isinstance(manifest, dict) else {}, run_checkpoints(folder))


def find_runs(roots: Iterable[str | Path]) -> list[Run]:
    """Runs in each root (the root itself or its subfolders), without duplicates."""
    seen, runs = set(), []
    for root in roots:
        root = Path(root).expanduser()
        if not root.is_dir():
            continue
        candidates = [root] if is_run(root) else sorted(p for p in root.iterdir() if is_run(p))
        for folder in candidates:
            key = folder.resolve()
            if key not in seen:
                seen.add(key)
                runs.append(load_run(folder))
    return runs


def run_roots(default: str | Path, extra: str | None = None) -> list[Path]:
    """The default root, then those of ``$HESSIAN_LENS_RUNS`` and ``extra``
    (both separated by ``os.pathsep`` or commas)."""
    roots = [Path(default)]
    for text in (os.environ.get(RUNS_ENV, ""), extra or ""):
        roots += [
            Path(p.strip()) for p in text.replace(",", os.pathsep).split(os.pathsep) if p.strip()
        ]
    return roots


def describe_settings(settings: dict[str, Any]) -> str:
    """One line for a settings dict, e.g. ``canonical · 10,000 samples · float32``."""
    parts = [
        settings.get("partition", "?"),
        f"{settings.get('samples', 0):,} samples",
        settings.get("dtype", "?"),
        f"seed {settings.get('seed', 0)}",
    ]
    if settings.get("order3"):
        parts.append("+ D³ diagonal")
    return " · ".join(str(p) for p in parts)


def optimizer_log(run: Run) -> dict[str, Any] | None:
    """A PartitionNewton run's ``optimizer_log.json`` (``labels``, ``entries``), or None."""
    try:
        log = json.loads((run.path / "optimizer_log.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return log if isinstance(log, dict) and "entries" in log else None


def rates_over_steps(log: dict[str, Any]) -> tuple[list[int], dict[str, list[float]]]:
    """Per-group rates ``lr * eta_s`` at every recomputation (steps, {label: rates})."""
    labels = log.get("labels") or []
    steps, rates = [], {label: [] for label in labels}
    lr_at = {e["step"]: e["lr"] for e in log["entries"] if "lr" in e}
    for entry in log["entries"]:
        if entry.get("eta") is None:
            continue
        steps.append(entry["step"])
        lrs = lr_at.get(entry["step"], [1.0] * len(labels))
        for label, eta, lr in zip(labels, entry["eta"], lrs, strict=False):
            rates[label].append(lr * eta)
    return steps, rates


def loss_over_steps(log: dict[str, Any], window: int = 50) -> tuple[list[int], list[float]]:
    """Training loss per step, averaged over a trailing window."""
    points = [(e["step"], e["loss"]) for e in log["entries"] if "loss" in e]
    steps, values, out = [], [], []
    for step, loss in points:
        values.append(loss)
        steps.append(step)
        tail = values[-window:]
        out.append(sum(tail) / len(tail))
    return steps, out
