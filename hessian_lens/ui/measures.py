"""The stored measures on the pages: λ_max and tr(H) curves, block spectra, the norm map.

Shown where a run holds analyses with measures (``analyze --measures``, or
``hl.Recorder(measures=...)``); read from the store, nothing recomputed.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from hessian_lens import measured, plots
from hessian_lens.runs import Run
from hessian_lens.ui import reads
from hessian_lens.ui.common import fmt_epoch, select_epoch

MAX_SHOWN_BLOCKS = 8  # densities drawn by default (chosen across the groups)
DECADES = 6  # the norm map's colour range below its largest block


def measure_records(run: Run, *arrays: str) -> tuple[dict | None, list[dict]]:
    """The run's first analysis with measures holding ``arrays``, and its records."""
    for settings in measured.measure_settings(run.settings()):
        recs = [r for r in reads.records(run, settings) if measured.has(r, *arrays)]
        if recs:
            return settings, recs
    return None, []


def curve_figures(run: Run) -> dict:
    """λ_max / λ_min and tr(H) ± 2 se across epochs, from the summaries alone."""
    found = measured.run_series(run)
    if found is None:
        return {}
    settings, series = found
    figures = plots.measure_curves(series, settings.get("curvature", "hessian"))
    return {f"{name}_{run.path.name}": fig for name, fig in figures.items()}


def render_curves(run: Run, key: str, where=st) -> dict:
    """:func:`curve_figures`, drawn in ``where`` (a column, a container); returns them."""
    figures = curve_figures(run)
    for name, fig in figures.items():
        where.plotly_chart(fig, key=f"{key}-{name}", config=plots.export_config(name))
    return figures


def render_spectra(run: Run, key: str) -> dict:
    """Per-block SLQ densities at one epoch and JS⁰ across epochs (if stored)."""
    _, recs = measure_records(run, "spectrum_nodes")
    if not recs:
        return {}
    st.subheader("Block spectra")
    rec = select_epoch(recs, key=f"{key}-spectra-epoch")
    labels = list(rec["summary"].get("labels") or [])
    default = _spread(len(labels), MAX_SHOWN_BLOCKS)
    shown = st.multiselect(
        "Blocks", labels, default=[labels[i] for i in default], key=f"{key}-spectra-blocks"
    )
    figures = {}
    if shown:
        groups = [labels.index(name) for name in shown]
        grid, dens = measured.densities(rec, groups)
        name = f"spectra_{run.path.name}_epoch{fmt_epoch(rec['epoch'])}"
        figures[name] = plots.spectra_figure(
            grid,
            {labels[g]: d for g, d in dens.items()},
            title=f"SLQ densities of the diagonal blocks at epoch {fmt_epoch(rec['epoch'])}",
        )
        st.plotly_chart(figures[name], key=f"{key}-spectra", config=plots.export_config(name))
    s = measured.series(recs)
    if len(recs) > 1 and not np.isnan(s["js0"]).all():
        name = f"js0_{run.path.name}"
        figures[name] = plots.estimate_trends(
            s["epoch"], {"JS⁰": (s["js0"], None)}, title="JS⁰ across epochs (Zhang et al.)"
        )
        st.plotly_chart(figures[name], key=f"{key}-js0", config=plots.export_config(name))
    st.caption(
        "Each block's eigenvalue density by stochastic Lanczos quadrature, smoothed by a "
        "Gaussian of 1% of the span of the drawn blocks' Ritz values. JS⁰: the mean "
        "Jensen-Shannon divergence (nats, at most ln 2 = 0.693) between the blocks' "
        "densities (hessian_lens.spectra.js_divergence)."
    )
    return figures


def render_norm_map(run: Run, key: str) -> dict:
    """The block Frobenius map ‖H_st‖_F at one epoch (log10), with its relative errors."""
    settings, recs = measure_records(run, "frobenius")
    if not recs:
        return {}
    rec = select_epoch(recs, key=f"{key}-norms-epoch")
    labels = list(rec["summary"].get("labels") or [])
    F = np.asarray(rec["arrays"]["frobenius"], dtype=float)
    se = np.asarray(rec["arrays"]["frobenius_se"], dtype=float)
    top = float(F.max()) if F.size and F.max() > 0 else 1.0
    shown = np.clip(np.log10(np.where(F > 0, F, top * 10.0**-DECADES) / top), -DECADES, 0)
    title = "log10 ‖H_st‖_F / max (hover: ‖H_st‖_F)"
    panel = plots.full_panel(shown, labels, raw=F, title=title, separate_layers=True)
    name = f"frobenius_{run.path.name}_epoch{fmt_epoch(rec['epoch'])}"
    fig = plots.heatmap(panel, zmax=float(DECADES), colorbar="decades")
    st.plotly_chart(fig, key=f"{key}-norms", config=plots.export_config(name))
    share = rec["summary"].get("measures", {}).get("diagonal_share")
    rel = np.nanmedian(np.where(F > 0, se / np.where(F > 0, F, 1), np.nan))
    st.caption(
        f"Hutchinson estimates, {settings.get('probes')} probes: median relative standard "
        f"error {rel:.0%}"
        + (f"; the diagonal blocks hold {share:.1%} of ‖H‖_F²." if share is not None else ".")
    )
    return {name: fig}


def _spread(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)`` (all of them when ``n <= k``)."""
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})
