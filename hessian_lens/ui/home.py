"""The home page's run cards: one per run, each failing alone, filtered and paged."""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from hessian_lens import plots, runcard
from hessian_lens.runs import Run, describe_settings, load_run, one_per_epoch
from hessian_lens.ui.common import fmt_epoch, plain
from hessian_lens.ui.live import LIVE_MARK, REFRESH_S
from hessian_lens.ui.measures import render_curves

PAGE_SIZE = 10


def render_cards(runs: Sequence[Run], selected: Run | None, key: str = "home") -> None:
    """A filter box, then the cards of one page of runs (10 a page).

    While a run is being written the cards are redrawn every few seconds from disk.
    """
    if any(r.live() for r in runs):
        st.fragment(run_every=REFRESH_S)(_fresh_cards)(runs, selected, key)
    else:
        _cards(runs, selected, key)


def _fresh_cards(runs: Sequence[Run], selected: Run | None, key: str) -> None:
    fresh = [load_run(r.path) for r in runs]
    if not any(r.live() for r in fresh):
        st.rerun(scope="app")  # the last live run finished: stop the timer
    _cards(fresh, selected, key)


def _cards(runs: Sequence[Run], selected: Run | None, key: str) -> None:
    shown = list(runs)
    if len(runs) > PAGE_SIZE:
        c1, c2 = st.columns([3, 1])
        text = c1.text_input("Filter runs", "", key=f"{key}-filter", placeholder="name or folder")
        shown = [r for r in runs if text.lower() in f"{r.name} {r.path}".lower()]
        pages = max(1, -(-len(shown) // PAGE_SIZE))
        page = c2.number_input(f"Page (of {pages})", 1, pages, 1, key=f"{key}-page")
        st.caption(f"{len(shown)} of {len(runs)} runs")
        shown = shown[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    for run in shown:
        card(run, selected is not None and run.path == selected.path)


def card(run: Run, selected: bool) -> None:
    """One run's card; anything unreadable in it becomes a warning on this card only."""
    with st.container(border=True):
        left, right = st.columns([1, 2])
        left.subheader(("▶ " if selected else "") + plain(run.name))
        if run.live():
            left.markdown(f":red[{LIVE_MARK}] — being written; this card follows it")
        for warning in run.warnings:
            left.warning(plain(warning))
        try:
            _card_body(run, left, right)
        except (ValueError, OSError, TypeError, KeyError) as err:
            left.warning(f"Part of this run cannot be shown: {plain(err)}")


def _card_body(run: Run, left, right) -> None:
    m = run.manifest
    analysed = one_per_epoch(run.records(arrays=False), [p.name for p in run.checkpoints])
    trained = max((h["epoch"] for h in run.history), default=0)
    left.markdown(
        f"**Architecture** {plain(runcard.model_text(m.model))}"
        + (f" · init {plain(m.raw['init'])}" if isinstance(m.raw.get("init"), str) else "")
        + f"  \n**Data** {plain(runcard.data_text(m.data))}"
        + f"  \n**Training** {plain(runcard.training_text(m))}  \n"
        f"**Epochs** {fmt_epoch(trained)} trained"
        f" · {runcard.checkpoints_text(len(run.checkpoints), len(analysed))}"
    )
    history = run.history
    if history:
        last = history[-1]
        loss, acc = last.get("train_loss"), last.get("test_acc")
        left.markdown(
            "**Last epoch** "
            + (f"train loss {loss:.3f}" if isinstance(loss, (int, float)) else "")
            + (f" · test accuracy {acc:.1%}" if isinstance(acc, (int, float)) else "")
        )
        right.plotly_chart(plots.curves(history), key=f"curves-{run.path}")
    render_curves(run, f"measures-{run.path}", right)
    _analysed(run, analysed, left)


def _analysed(run: Run, analysed: list, left) -> None:
    if analysed:
        span = runcard.epochs_span([a.epoch for a in analysed])
        left.markdown(
            f"**Analysed** {len(analysed)} checkpoints{f' ({span})' if span else ''}: "
            f"{plain(describe_settings(run.settings()[0]))}"
        )
    else:
        left.info(f"Not analysed yet: `python -m hessian_lens analyze {plain(run.path)}`")
