"""Cached, read-only loading for the pages (nothing here writes to disk)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import streamlit as st

from hessian_lens.runs import Run, find_runs, load_run, one_per_epoch
from hessian_lens.store import ResultStore

RUNS_TTL_S = 10
RECORDS_TTL_S = 900  # a store's records leave the cache a while after their last use


@st.cache_data(ttl=RUNS_TTL_S, show_spinner=False)
def _run_paths(roots: tuple[str, ...]) -> list[str]:
    return [str(r.path) for r in find_runs(roots)]


def runs(roots: tuple[str, ...]) -> list[Run]:
    """The runs under ``roots`` (folder listing cached a few seconds)."""
    return [load_run(p) for p in _run_paths(roots)]


def _stamp(path: Path) -> float:
    """Last change of a store (its WAL included): the cache key of its records."""
    stamps = []
    for p in (path, Path(f"{path}-wal")):
        try:
            stamps.append(p.stat().st_mtime)
        except OSError:
            continue
    return max(stamps, default=0.0)


@st.cache_resource(show_spinner=False, max_entries=16, ttl=RECORDS_TTL_S)
def _records(
    store: str, settings_json: str, stamp: float, kept: tuple[str, ...]
) -> list[dict[str, Any]]:
    """The records of a store, one per epoch, one copy per server, their arrays read-only.

    A resource, not data: never pickled and copied for each rerun (the arrays of one
    5,000-group record are 400 MB); read-only so that no view changes what another
    session sees. Of two analyses of one epoch, the one :func:`one_per_epoch` picks.
    """
    found = ResultStore.reader(store).records(json.loads(settings_json))
    recs = [as_dict(r) for r in one_per_epoch(found, kept)]
    for rec in recs:
        for array in rec["arrays"].values():
            array.setflags(write=False)
    return recs


def records(run: Run, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The analysed checkpoints of a run under settings, one per epoch.

    Of two analyses of one epoch, :func:`~hessian_lens.runs.one_per_epoch` picks the one
    shown. Cached until the store changes.
    """
    return _records(
        str(run.store_path),
        json.dumps(settings, sort_keys=True),
        _stamp(run.store_path),
        tuple(p.name for p in run.checkpoints),
    )


def as_dict(record) -> dict[str, Any]:
    """A store record as the plain dict the views take."""
    return {
        "epoch": record.epoch,
        "checkpoint": record.checkpoint,
        "summary": record.summary,
        "arrays": record.arrays,
        "seconds": record.seconds,
    }
