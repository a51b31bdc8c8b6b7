"""Hessian Lens dashboard: ``streamlit run app.py``.

The home page lists the runs found (a card each); the other pages live in ``pages/``
(Streamlit's page directory; ``st.navigation`` is not used because mixing it with a
``pages/`` directory breaks direct page URLs).
"""

import streamlit as st

from hessian_lens.ui import common
from hessian_lens.ui.home import render_cards

PAGES = (
    ("pages/1_Layer_interactions.py", "Layer interactions →"),
    ("pages/2_Block_diagonal.py", "Block-diagonal vs full →"),
    ("pages/3_Inspect_checkpoint.py", "Inspect a checkpoint →"),
    ("pages/4_Optimizer.py", "Optimizer →"),
    ("pages/5_Paper.py", "Paper →"),
)


def home() -> None:
    common.page("Runs")
    st.title("Hessian Lens")
    st.markdown(
        "How the layers of a network interact through the curvature of its loss: the "
        "**pseudo-Hessian** H̄ (one entry per pair of weight/bias tensors, exact, about S "
        "Hessian-vector products) and its inverse, across training "
        "([Wolinski, arXiv 2312.03885](https://arxiv.org/abs/2312.03885))."
    )
    with common.guard():
        runs = common.all_runs()
        run = common.select_run(runs)
        if run is not None:
            for col, (path, label) in zip(st.columns(len(PAGES)), PAGES, strict=True):
                col.page_link(path, label=label)
        render_cards(runs, run)


home()
