"""Block-diagonal vs full inverse of H̄: heatmaps, difference, metrics and their trends."""

import streamlit as st

from hessian_lens import ui

ui.page("Block-diagonal vs full", "🧱")
st.title("Block-diagonal vs full inverse")
st.caption(
    "K-FAC-like methods keep only diagonal blocks of the curvature. Here: how far "
    "blockdiag(H̄)⁻¹ is from H̄⁻¹, and how different the per-tensor steps "
    "η = H̄⁻¹ḡ they give are."
)

with ui.guard():
    run = ui.select_run(ui.all_runs())
    settings = ui.select_settings(run) if run is not None else None
    if settings is not None:
        ui.render_block_diagonal(ui.records(run, settings), key="blockdiag")
