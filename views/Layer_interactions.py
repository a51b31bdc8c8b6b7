"""Layer interactions: WW / BB / WB heatmaps of H̄ and H̄⁻¹ across epochs."""

import streamlit as st

from hessian_lens.ui import common, live, reads
from hessian_lens.ui.interactions import render_interactions
from hessian_lens.ui.measures import measure_records, render_norm_map

common.page("Layer interactions", "🟥")
st.title("Layer interactions")
st.caption(
    "H̄[s, s'] = (U^s)ᵀ H U^s' with u = the gradient: how a step on tensor s changes "
    "the slope along tensor s'. White ≈ 0, red > 0, blue < 0; limits ±max|value|."
)


def draw(run) -> None:
    recs = reads.records(run, settings)
    st.markdown(f"**{common.plain(run.name)}** · {len(recs)} analysed checkpoints")
    render_interactions(recs, key=common.scoped("interactions"))
    if measure_records(run, "frobenius")[1]:
        with st.expander("Block Frobenius norms ‖H_st‖_F (the whole Hessian's blocks)"):
            render_norm_map(run, key=common.scoped("norms"))


with common.guard():
    run = common.select_run(common.all_runs())
    settings = common.select_settings(run) if run is not None else None
    if settings is not None:
        live.follow(run, draw)
    elif run is not None:
        live.follow(run, lambda _: None)  # no analysis yet: rerun when the first one lands
