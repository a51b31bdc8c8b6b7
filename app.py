"""Hessian Lens dashboard: ``streamlit run app.py``.

One page list (``st.navigation``): the home page (the runs found, a card each) and the
pages in ``views/``, whose file names give their addresses (``/Layer_interactions``, ...)
and their titles. The home page links to every other page from the same list.
"""

import streamlit as st

from hessian_lens.ui import common
from hessian_lens.ui.home import render_cards

VIEWS = (  # (file, icon, link label on the home page)
    ("views/Layer_interactions.py", ":material/grid_on:", "Layer interactions →"),
    ("views/Block_diagonal.py", ":material/view_module:", "Block-diagonal vs full →"),
    ("views/Block_heterogeneity.py", ":material/scatter_plot:", "Block heterogeneity →"),
    ("views/Inspect_checkpoint.py", ":material/search:", "Inspect a checkpoint →"),
    ("views/Optimizer.py", ":material/explore:", "Optimizer →"),
    ("views/Paper.py", ":material/description:", "Paper →"),
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
        if run is not None:  # two rows of three: six columns cut the labels at 1500 px
            cols = [*st.columns(3), *st.columns(3)]
            for col, page, (_, _, label) in zip(cols, PAGES[1:], VIEWS, strict=True):
                col.page_link(page, label=label)
        render_cards(runs, run)


PAGES = [
    st.Page(home, title="Runs", icon=":material/home:", default=True),
    *(st.Page(path, icon=icon) for path, icon, _ in VIEWS),
]

st.navigation(PAGES).run()
