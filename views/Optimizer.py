"""PartitionNewton runs: per-group learning rates, loss curves side by side, Taylor view."""

import streamlit as st

from hessian_lens.ui import common, live
from hessian_lens.ui.optimizer import render_optimizer

common.page("Optimizer", "🧭")
st.title("Optimizer: one learning rate per tensor")
st.caption(
    "PartitionNewton sets η = H̄⁻¹ḡ (cubic-regularised with the order-3 summary) every "
    "few steps: one rate per weight or bias tensor. Compare its runs with SGD and Adam."
)

with common.guard():
    runs = common.all_runs()
    run = common.chosen(common.select_run(runs))
    key = common.scoped("optim")
    live.follow_runs(runs, lambda fresh: render_optimizer(fresh, key, selected=run))
