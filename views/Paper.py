"""The paper's figures 1 and 2, redrawn from the shipped runs, and its claims measured."""

import streamlit as st

from hessian_lens.ui import common, live
from hessian_lens.ui.paper import render_paper

common.page("Paper", "📄")
st.title("The paper, reproduced")
st.caption(
    "Wolinski, arXiv 2312.03885, figures 1 (LeNet-5, epochs 1 and 21) and 2 (VGG-11', "
    "epochs 1 and 6): H̄ and H̄⁻¹ in WW / BB / WB blocks, and each claim of the text beside "
    "the number that tests it, on the raw and the rescaling-invariant scale."
)

with common.guard():
    runs = common.all_runs()
    run = common.chosen(common.select_run(runs))
    key = common.scoped("paper")
    live.follow_runs(runs, lambda fresh: render_paper(fresh, key, selected=run))
