"""The block-diagonal view: H̄⁻¹ vs blockdiag(H̄)⁻¹, their difference, metrics and trends."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import streamlit as st

from hessian_lens import plots
from hessian_lens.ui.common import fmt_epoch, select_epoch
from hessian_lens.ui.exports import figure_downloads

BLOCK_CHOICES = {
    "layer": "per layer (weight + bias)",
    "tensor": "per tensor (diagonal)",
    "kind": "weights vs biases",
}
TREND_METRICS = ("rel_error", "off_share_H", "off_share_Hinv", "cos_eta")


def block_inverse(rec: dict, by: str) -> np.ndarray:
    """blockdiag(H̄)⁻¹ as stored by the analysis (older records: recomputed from H̄)."""
    stored = rec["arrays"].get(f"Hinv_bd_{by}")
    if stored is not None:
        return stored
    import torch

    from hessian_lens import linalg
    from hessian_lens.partition import blocks_of

    summary = rec["summary"]
    blocks = blocks_of(by, summary["layers"], summary["kinds"])
    return linalg.block_inverse(torch.from_numpy(rec["arrays"]["H"]), blocks).numpy()


def comparison_panels(rec: dict, by: str, scale: str) -> list[plots.Panel]:
    """H̄⁻¹, blockdiag(H̄)⁻¹ and their difference, optionally on the invariant scale of H̄⁻¹."""
    full, bd = rec["arrays"]["Hinv"], block_inverse(rec, by)
    d = np.abs(np.diag(full))
    s = np.where(d > 0, 1 / np.sqrt(np.where(d > 0, d, 1)), 1.0) if scale == "normalized" else 1.0
    scale_of = (lambda M: s[:, None] * M * s[None, :]) if scale == "normalized" else (lambda M: M)
    labels = rec["summary"]["labels"]
    mats = [(full, "H̄⁻¹ (full)"), (bd, "blockdiag(H̄)⁻¹"), (full - bd, "difference")]
    return [plots.full_panel(scale_of(M), labels, M, title) for M, title in mats]


def render_block_diagonal(recs: Sequence[dict], key: str) -> None:
    """H̄⁻¹ vs blockdiag(H̄)⁻¹ and their difference; metrics of an epoch and their trends."""
    c1, c2 = st.columns(2)
    by = c1.radio(
        "Blocks",
        list(BLOCK_CHOICES),
        format_func=BLOCK_CHOICES.get,
        key=f"{key}-by",
        horizontal=True,
    )
    scale = c2.radio(
        "Scale",
        ["raw", "normalized"],
        key=f"{key}-scale",
        horizontal=True,
        help="normalized: all three scaled by diag(|H̄⁻¹|)^-½ (invariant)",
    )
    rec = select_epoch(recs, key=f"{key}-epoch")
    name = f"blockdiag_{by}" + (
        f"_epoch{fmt_epoch(rec['epoch'])}" if rec["epoch"] is not None else ""
    )
    fig = plots.side_by_side(comparison_panels(rec, by, scale), colorbar=scale)
    st.plotly_chart(fig, key=f"{key}-side", config=plots.export_config(name))
    figure_downloads({name: fig}, key)
    rows = metric_rows(rec["summary"]["compare"][by])
    for start in (0, 3):  # two rows of three: six columns truncate the numbers at 1100 px
        for col, (label, value, help_) in zip(st.columns(3), rows[start : start + 3], strict=True):
            col.metric(label, value, help=help_)
    if len(recs) > 1:
        _trends(recs, by, key)


def _trends(recs: Sequence[dict], by: str, key: str) -> None:
    epochs = [r["epoch"] for r in recs]
    series = {k: [r["summary"]["compare"][by][k] for r in recs] for k in TREND_METRICS}
    dec = {
        k: [r["summary"]["compare"][by][k] for r in recs] for k in ("decrease_full", "decrease_bd")
    }
    a, b = st.columns(2)
    a.plotly_chart(
        plots.trends(epochs, series, "block-diagonal vs full, across epochs"), key=f"{key}-trend"
    )
    b.plotly_chart(
        plots.trends(
            epochs,
            dec,
            "decrease of the order-2 model",
            log_y=all(v > 0 for vs in dec.values() for v in vs),
        ),
        key=f"{key}-decrease",
    )


def metric_rows(m: dict) -> list[tuple[str, str, str]]:
    """The six metrics of a comparison: (label, formatted value, help)."""
    return [
        ("relative error", f"{m['rel_error']:.3f}", "‖H̄⁻¹ − blockdiag(H̄)⁻¹‖_F / ‖H̄⁻¹‖_F"),
        ("|H̄| outside", f"{m['off_share_H']:.1%}", "share of Σ|H̄| outside the blocks"),
        ("|H̄⁻¹| outside", f"{m['off_share_Hinv']:.1%}", "share of Σ|H̄⁻¹| outside the blocks"),
        ("cos(η_full, η_bd)", f"{m['cos_eta']:.3f}", "η = H̄⁻¹ḡ vs blockdiag(H̄)⁻¹ḡ"),
        ("decrease, full", f"{m['decrease_full']:.4g}", "ḡ·η − ηᵀH̄η/2 with η_full"),
        ("decrease, block-diag", f"{m['decrease_bd']:.4g}", "ḡ·η − ηᵀH̄η/2 with η_bd"),
    ]
