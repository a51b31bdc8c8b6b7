"""PartitionNewton runs: per-group learning rates over steps, loss curves side by side."""

import streamlit as st

from hessian_lens import ui

ui.page("Optimizer", "🧭")
st.title("Optimizer: one learning rate per tensor")
st.caption(
    "PartitionNewton sets η = H̄⁻¹ḡ (cubic-regularised with the order-3 summary) every "
    "few steps: one rate per weight or bias tensor. Compare its runs with SGD and Adam."
)

with ui.guard():
    ui.render_optimizer(ui.all_runs())
