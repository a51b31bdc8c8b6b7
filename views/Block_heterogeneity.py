"""Block heterogeneity: each group's curvature along the gradient, by block type and head."""

import streamlit as st

from hessian_lens.ui import common, live
from hessian_lens.ui.heterogeneity import render_heterogeneity
from hessian_lens.ui.measures import render_spectra

common.page("Block heterogeneity", "🧬")
st.title("Block heterogeneity")
st.caption(
    "c_s = H̄_ss / ḡ_s: the curvature of the loss along the gradient restricted to group s "
    "(u = the gradient, so ḡ_s = ‖U^s‖²), grouped by block type (q / k / v / o / mlp / "
    "embedding / norm / conv / linear / output) and by attention head. Do the blocks of a "
    "transformer differ more than those of a CNN?"
)


def draw(run) -> None:
    render_heterogeneity(run, settings, runs, key=common.scoped("hetero"))
    render_spectra(run, key=common.scoped("spectra"))


with common.guard():
    runs = common.all_runs()
    run = common.select_run(runs)
    settings = common.select_settings(run) if run is not None else None
    if settings is not None:
        live.follow(run, draw)
    elif run is not None:
        live.follow(run, lambda _: None)  # no analysis yet: rerun when the first one lands
