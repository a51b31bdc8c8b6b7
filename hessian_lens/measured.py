"""The stored measures as the views read them: curves across epochs, densities, norms.

An analysis with ``--measures`` (or ``hl.Recorder(measures=...)``) stores, beside H̄, the
block traces ``trace`` / ``trace_se``, the Frobenius map ``frobenius`` / ``frobenius_se``,
the per-group SLQ nodes and weights ``spectrum_nodes`` / ``spectrum_weights`` and the whole
model's ``model_nodes`` / ``model_weights``, with the scalars in ``summary["measures"]``
(:func:`hessian_lens.measures.stored_measures`). This module turns records (the views'
plain dicts) into what the figures draw; numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "DENSITY_POINTS",
    "densities",
    "has",
    "measure_settings",
    "run_series",
    "series",
]

DENSITY_POINTS = 400  # grid points of a drawn density
SERIES = ("lmax", "lmin", "trace_total", "trace_total_se", "js0", "diagonal_share")


def measure_settings(settings: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The analyses (settings) that stored measures."""
    return [s for s in settings if s.get("measures")]


def run_series(run) -> tuple[dict[str, Any], dict[str, list[float]]] | None:
    """``(settings, series)`` of a run's first analysis with measures, from summaries only.

    One record per epoch (:func:`hessian_lens.runs.one_per_epoch`); ``None`` without any.
    """
    from hessian_lens.runs import one_per_epoch

    kept = [p.name for p in run.checkpoints]
    for settings in measure_settings(run.settings()):
        recs = one_per_epoch(run.records(settings, arrays=False), kept)
        if recs:
            rows = [{"epoch": r.epoch, "summary": r.summary} for r in recs]
            return settings, series(rows)
    return None


def has(record: dict[str, Any], *arrays: str) -> bool:
    """Whether a record holds every one of ``arrays``."""
    return all(a in record.get("arrays", {}) for a in arrays)


def series(records: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
    """The measures' scalars across epochs: ``epoch`` and each of :data:`SERIES` (NaN: none)."""
    out: dict[str, list[float]] = {"epoch": [r["epoch"] for r in records]}
    for key in SERIES:
        out[key] = [_number((r["summary"].get("measures") or {}).get(key)) for r in records]
    return out


def densities(
    record: dict[str, Any], groups: Sequence[int], points: int = DENSITY_POINTS, width: float = 0.01
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """The chosen groups' SLQ densities, Gaussian-smoothed on one grid.

    ``density(t) = mean_k sum_i tau_ki N(t; theta_ki, sigma)`` with ``sigma = width`` times
    the span of the groups' Ritz values (:func:`hessian_lens.spectra.smooth`); the grid
    covers every node plus 4 sigma.
    """
    nodes = np.asarray(record["arrays"]["spectrum_nodes"], dtype=float)
    weights = np.asarray(record["arrays"]["spectrum_weights"], dtype=float)
    chosen = nodes[list(groups)]
    lo, hi = float(chosen.min()), float(chosen.max())
    sigma = max(width * (hi - lo), 1e-12 * max(abs(lo), abs(hi), 1.0))
    grid = np.linspace(lo - 4 * sigma, hi + 4 * sigma, points)
    from hessian_lens.spectra import smooth

    return grid, {s: smooth(grid, nodes[s], weights[s], sigma) for s in groups}


def _number(value: Any) -> float:
    return (
        float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool)
        else math.nan
    )
