"""The optimizer view: runs side by side, PartitionNewton's per-group rates, the Taylor view."""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from hessian_lens import plots
from hessian_lens.runfolder import OPTIMIZER_LOG
from hessian_lens.runs import (
    LOSS_WINDOW,
    Run,
    loss_over_steps,
    optimizer_log,
    rates_over_steps,
)
from hessian_lens.ui.common import plain

COMPARED = 8  # runs compared by default


def render_optimizer(runs: Sequence[Run], key: str = "optim", selected: Run | None = None) -> None:
    """Loss / accuracy curves of runs side by side; rates and Taylor view of a PN run.

    The sidebar's run (``selected``) is among the compared runs by default and, when it
    used PartitionNewton, is the one whose rates are drawn.
    """
    with_history = [r for r in runs if r.history]
    if not with_history:
        st.info("No run with a training history yet.")
        return
    names = [r.name for r in with_history]
    default = names[:COMPARED]
    mine = next((r.name for r in with_history if selected and r.path == selected.path), None)
    if mine is not None and mine not in default:
        default = [*default[: COMPARED - 1], mine]
    chosen = st.multiselect("Runs to compare", names, default=default, key=f"{key}-runs")
    picked = [r for r in with_history if r.name in chosen]
    _curves(picked, key)
    logs = {r.name: optimizer_log(r) for r in picked}
    for r in picked:  # a log that cannot be read: say so, not "no PartitionNewton run"
        for warning in logs[r.name][1]:
            st.warning(plain(f"{r.name}: {warning}"))
    # Every run with a log, those compared above first (the others' logs are read when picked).
    by_name = {r.name: r for r in [*picked, *with_history]}  # compared ones first
    newton = [r for r in by_name.values() if (r.path / OPTIMIZER_LOG).is_file()]
    newton = [r for r in newton if r.name not in logs or logs[r.name][0] is not None]
    if not newton:
        st.info(
            "No run used PartitionNewton. Train one with `python -m "
            "hessian_lens train --optimizer partition-newton --init paper --lr 0.3 ...`."
        )
        return
    newton_names = [r.name for r in newton]
    pick = st.selectbox(
        "PartitionNewton run",
        newton_names,
        index=newton_names.index(mine) if mine in newton_names else 0,
        key=f"{key}-pn",
    )
    run = newton[[r.name for r in newton].index(pick)]
    log, warnings = logs.get(run.name) or optimizer_log(run)
    if run.name not in logs:  # those of the compared runs are said above
        for warning in warnings:
            st.warning(plain(f"{run.name}: {warning}"))
    if log is None:
        return
    _rates(log, key)
    with st.expander("Taylor view: why did a step help or hurt?", expanded=False):
        render_taylor(run, key=f"{key}-taylor")


def _curves(picked: Sequence[Run], key: str) -> None:
    for col, metric, title, log_y in zip(
        st.columns(2),
        ("train_loss", "test_acc"),
        ("training loss", "test accuracy"),
        (True, False),
        strict=True,
    ):
        series = {
            _label(r): (
                [h["epoch"] for h in r.history if metric in h],
                [h[metric] for h in r.history if metric in h],
            )
            for r in picked
        }
        col.plotly_chart(
            plots.lines(series, "epoch", title, f"{title} per epoch", log_y=log_y),
            key=f"{key}-{metric}",
        )


def _rates(log: dict, key: str) -> None:
    steps, labels, rates = rates_over_steps(log)
    if not steps:
        st.info("This run has not updated its rates yet (still in its warm-up).")
    else:
        st.plotly_chart(plots.rates_heatmap(steps, labels, rates), key=f"{key}-rates")
    s, loss = loss_over_steps(log)
    st.plotly_chart(
        plots.lines(
            {"loss": (s, loss)},
            "step",
            f"loss ({LOSS_WINDOW}-step mean)",
            "training loss per step",
            log_y=all(v > 0 for v in loss),
        ),
        key=f"{key}-steps",
    )
    if log.get("total_entries", 0) > len(log["entries"]):
        st.caption(f"Log thinned to {len(log['entries']):,} of {log['total_entries']:,} entries.")
    errors = [e for e in log["entries"] if e.get("error")]
    if errors:
        st.caption(
            f"{len(errors)} recomputations kept the previous rates: {plain(errors[-1]['error'])}"
        )


@st.cache_resource(show_spinner="Replaying the run to its first update…", max_entries=4)
def _replay(path: str, updates: int):
    """The Taylor view of a run's first update(s) (torch imported only when opened)."""
    from hessian_lens.taylor import first_update_view

    r = first_update_view(path, updates=updates, ts=[i / 20 for i in range(0, 31)])
    return r.view, r.step, r.eta, r.lr, r.labels


def render_taylor(run: Run, key: str) -> None:
    """The true loss along the run's first update(s) against Taylor polynomials of order 1–4."""
    st.caption(
        "Replays the run from its initialisation (same data order, same curvature batches) "
        "to its first update, then draws L(θ + t·v) for the step v it took, against "
        "L + Σ_{d≤k} t^d/d! · d^dL[v,…,v] (exact, by nested forward mode). A large "
        "positive order-3 or order-4 term is a wall the order-2 model cannot see."
    )
    c1, c2 = st.columns(2)
    period = int(run.manifest.optimizer.get("period") or 10)
    updates = c1.radio(
        "Step",
        sorted({1, max(period, 1)}),  # a period of 1: one choice (two equal options confused it)
        key=f"{key}-updates",
        horizontal=True,
        format_func=lambda k: "first update" if k == 1 else f"first {k} updates (one period)",
    )
    go = c2.button("Replay and draw", key=f"{key}-go")
    if not (go or st.session_state.get(f"{key}-done") == (str(run.path), updates)):
        return
    view, step, eta, lr, labels = _replay(str(run.path), int(updates))
    st.session_state[f"{key}-done"] = (str(run.path), updates)
    st.plotly_chart(
        plots.taylor_figure(
            view.t, view.loss, view.polynomials, f"{run.name}: step {step}, lr {lr:g}"
        ),
        key=f"{key}-fig",
    )
    contrib = view.contributions(1.0)
    cols = st.columns(len(contrib) + 1)
    cols[0].metric("true change at t = 1", f"{view.loss[view.t.index(1.0)] - view.loss0:+.4g}")
    for d, (col, value) in enumerate(zip(cols[1:], contrib, strict=True), start=1):
        col.metric(f"order {d} term / {d}!", f"{value:+.4g}")
    if eta is not None:
        top = sorted(zip(labels, eta, strict=False), key=lambda p: -abs(p[1]))[:4]
        st.caption("Largest rates lr·η_s: " + ", ".join(f"{n} {lr * e:.3g}" for n, e in top))


def _label(run: Run) -> str:
    opt = run.manifest.optimizer
    return f"{run.name} ({opt.get('name', '?')}, lr {opt.get('lr', '?')})"
