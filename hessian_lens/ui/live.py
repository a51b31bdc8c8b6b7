"""Following a run that is still being written: a fragment redrawn on a timer.

A page draws its body through :func:`follow`. For a live run (:meth:`Run.live`) the body
is a Streamlit fragment that reruns every :data:`REFRESH_S` seconds with the run read
again from disk, so new checkpoints, metrics and analyses appear without a reload; the
epoch slider, kept at its last epoch, moves on to each new one
(:func:`hessian_lens.ui.common.select_epoch`). What it reads is always whole: records are
committed rows of the SQLite store and ``run.json`` is replaced atomically.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import streamlit as st

from hessian_lens.runs import Run, load_run

REFRESH_S = 2.0
LIVE_MARK = "● live"


def live_caption(run: Run) -> None:
    """The "live" mark under a page's title while its run is being written."""
    st.caption(
        f":red[{LIVE_MARK}] — {run.name} is being written; this page follows it "
        f"(every {REFRESH_S:g} s)."
    )


def follow(run: Run, draw: Callable[[Run], None]) -> None:
    """``draw(run)``; for a live run, in a fragment redrawn every :data:`REFRESH_S` seconds.

    The whole page reruns when the run's analyses change kind (a first analysis, new
    settings: the sidebar's pickers are outside the fragment) and once the run stops
    being live (the timer then stops).
    """
    if not run.live():
        draw(run)
        return
    settings = run.settings()

    @st.fragment(run_every=REFRESH_S)
    def body() -> None:
        fresh = load_run(run.path)
        if fresh.settings() != settings or not fresh.live():
            st.rerun(scope="app")
        live_caption(fresh)
        draw(fresh)

    body()


def follow_runs(runs: Sequence[Run], draw: Callable[[list[Run]], None]) -> None:
    """``draw(runs)`` for a page about several runs; redrawn while any of them is live.

    Each redraw reads every run again from disk; the whole page reruns once none is live.
    """
    if not any(r.live() for r in runs):
        draw(list(runs))
        return

    @st.fragment(run_every=REFRESH_S)
    def body() -> None:
        fresh = [load_run(r.path) for r in runs]
        live = [r for r in fresh if r.live()]
        if not live:
            st.rerun(scope="app")
        for r in live:
            live_caption(r)
        draw(fresh)

    body()
