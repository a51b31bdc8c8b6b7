"""Block-diagonal vs full inverse of H̄: heatmaps, difference, metrics and their trends."""

import streamlit as st

from hessian_lens.ui import common, live, reads
from hessian_lens.ui.blockdiag import render_block_diagonal

common.page("Block-diagonal vs full", "🧱")
st.title("Block-diagonal vs full inverse")
st.caption(
    "K-FAC-like methods keep only diagonal blocks of the curvature. Here: how far "
    "blockdiag(H̄)⁻¹ is from H̄⁻¹, and how different the per-tensor steps "
    "η = H̄⁻¹ḡ they give are."
)


def draw(run) -> None:
    render_block_diagonal(reads.records(run, settings), key=common.scoped("blockdiag"))


with common.guard():
    run = common.select_run(common.all_runs())
    settings = common.select_settings(run) if run is not None else None
    if settings is not None:
        live.follow(run, draw)
    elif run is not None:
        live.follow(run, lambda _: None)  # no analysis yet: rerun when the first one lands
