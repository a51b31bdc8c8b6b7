"""Hessian Lens dashboard: ``streamlit run app.py``.

The home page lists the runs found (a card each); the other pages live in ``pages/``
(Streamlit's page directory; ``st.navigation`` is not used because mixing it with a
``pages/`` directory breaks direct page URLs).
"""

import streamlit as st

from hessian_lens import plots, ui
from hessian_lens.runs import Run, describe_settings


def card(run: Run, selected: bool) -> None:
    """One run: architecture, data, optimizer, epochs, curves, what is analysed."""
    model = run.manifest.get("model", {})
    data = run.manifest.get("data", {})
    opt = run.manifest.get("optimizer", {})
    history = run.history
    analysed = run.records(arrays=False)
    with st.container(border=True):
        left, right = st.columns([1, 2])
        left.subheader(("▶ " if selected else "") + run.name)
        momentum = f", momentum {opt['momentum']}" if opt.get("momentum") else ""
        left.markdown(
            f"**Architecture** `{model.get('name', '?')}` {model.get('kwargs') or ''}  \n"
            f"**Data** {data.get('name', '?')} · {data.get('train_size', '?'):,} training "
            f"images  \n**Optimizer** {opt.get('name', '?')} (lr {opt.get('lr', '?')}"
            f"{momentum}) · batch {run.manifest.get('batch_size', '?')}  \n"
            f"**Epochs** {max((h['epoch'] for h in history), default=0)} trained · "
            f"{len(run.checkpoints)} checkpoints"
        )
        if history:
            last = history[-1]
            left.markdown(
                f"**Last epoch** train loss {last['train_loss']:.3f} · test "
                f"accuracy {last['test_acc']:.1%}"
            )
            right.plotly_chart(plots.curves(history), key=f"curves-{run.path}")
        if analysed:
            epochs = [a.epoch for a in analysed]
            left.markdown(
                f"**Analysed** {len(analysed)} checkpoints (epochs {min(epochs)}–"
                f"{max(epochs)}): {describe_settings(run.settings()[0])}"
            )
        else:
            left.warning(f"Not analysed yet: `python -m hessian_lens analyze {run.path}`")


def home() -> None:
    ui.page("Runs")
    st.title("Hessian Lens")
    st.markdown(
        "How the layers of a network interact through the curvature of its loss: the "
        "**pseudo-Hessian** H̄ (one entry per pair of weight/bias tensors, exact, about S "
        "Hessian-vector products) and its inverse, across training "
        "([Wolinski, arXiv 2312.03885](https://arxiv.org/abs/2312.03885))."
    )
    with ui.guard():
        runs = ui.all_runs()
        run = ui.select_run(runs)
        if run is not None:
            c1, c2, c3, c4 = st.columns(4)
            c1.page_link("pages/1_Layer_interactions.py", label="Layer interactions →")
            c2.page_link("pages/2_Block_diagonal.py", label="Block-diagonal vs full →")
            c3.page_link("pages/3_Inspect_checkpoint.py", label="Inspect a checkpoint →")
            c4.page_link("pages/4_Optimizer.py", label="Optimizer →")
        for r in runs:
            card(r, run is not None and r.path == run.path)


home()
