"""Page setup, the error guard and the pickers every page shares."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import streamlit as st

from hessian_lens import settings
from hessian_lens.runs import Run, describe_settings, run_roots
from hessian_lens.ui import reads

REPO_RUNS = Path(__file__).resolve().parents[2] / "checkpoints"


_MARKUP = re.compile(r"[\\`\[\]<>$]")


def plain(value: Any) -> str:
    r"""A value read from a file, as markdown that shows it as text.

    Every element of Streamlit renders markdown: a run name ``![x](http://...)`` would make
    the browser fetch that address, ``<...>`` is HTML or a link, ``$...$`` math. Brackets,
    angle brackets, dollars, backticks and backslashes are escaped and line breaks dropped
    (no new block); other text, names like ``lenet5_cifar-10`` included, is unchanged.

    Example:
        >>> plain("![x](http://a/b.png) $1$")
        '!\\[x\\](http://a/b.png) \\$1\\$'
    """
    text = str(value).replace("\r", " ").replace("\n", " ")
    return _MARKUP.sub(lambda m: "\\" + m.group(0), text)


def page(title: str, icon: str = "🔭") -> None:
    """Page configuration, the sidebar title, and a stop with a message on bad settings."""
    st.set_page_config(page_title=f"{title} · Hessian Lens", page_icon=icon, layout="wide")
    st.sidebar.markdown("### Hessian Lens")
    try:
        settings.check_all()
    except settings.SettingsError as err:
        st.error(f"Settings: {plain(err)}")
        st.stop()


@contextlib.contextmanager
def guard() -> Iterator[None]:
    """Show failures as ``st.error`` with what to do, never a traceback.

    Every error of the package is a ValueError (CheckpointError, DataError, PartitionError,
    StoreError, ...), an OSError (DataNotFoundError, ...) or a MemoryError (MemoryGuardError).
    """
    try:
        yield
    except (ValueError, OSError, MemoryError) as err:
        st.error(plain(err))
    except Exception as err:
        if type(err).__name__ in ("StopException", "RerunException"):  # Streamlit control flow
            raise
        st.error(
            f"Unexpected error ({type(err).__name__}: {plain(str(err)[:300])}). The page could not "
            "be drawn; please report it with the steps that led here."
        )


def default_root() -> Path:
    """``checkpoints/`` beside the app (the repository), else in the working directory."""
    return REPO_RUNS if REPO_RUNS.is_dir() else Path.cwd() / "checkpoints"


def all_runs() -> list[Run]:
    """Runs under ``checkpoints/``, ``$HESSIAN_LENS_RUNS`` and the sidebar's extra folders."""
    extra = st.sidebar.text_input(
        "More run folders",
        key="extra_roots_input",
        value=st.session_state.get("extra_roots", ""),
        help="Folders holding runs (or runs themselves), separated by commas. "
        "$HESSIAN_LENS_RUNS adds more.",
    )
    st.session_state["extra_roots"] = extra
    return reads.runs(tuple(str(r) for r in run_roots(default_root(), extra)))


#: The sidebar's analysis picker (its key is :func:`scoped`: one picker per run).
SETTINGS_KEY = "settings_select"
#: How many times the run was switched in this session (:func:`scoped`).
SWITCHES = "run_switches"

#: The run the pages open on when nothing is chosen yet (the shipped 22-checkpoint demo).
DEMO_RUN = "lenet5-cifar10"


def select_run(runs: Sequence[Run], hint: bool = True) -> Run | None:
    """Sidebar run picker; the choice is kept across pages.

    A change of run counts as a switch (:func:`scoped`). ``hint``: without runs, say how to
    make one (pages that need none say nothing).
    """
    if not runs:
        if hint:
            st.info(
                "No runs found. Train one with `python -m hessian_lens train ... --out "
                "checkpoints/<run>` and analyse it with `python -m hessian_lens analyze "
                "checkpoints/<run>`, record one from your own loop with `hl.Recorder`, or add "
                "a folder in the sidebar."
            )
        return None
    paths = [str(r.path) for r in runs]
    wanted = st.session_state.get("run_path") or _run_from_url(runs)
    index = paths.index(wanted) if wanted in paths else _first_choice(runs)
    choice = st.sidebar.selectbox(
        "Run", paths, index=index, key="run_select", format_func=lambda p: Path(p).name
    )
    previous = st.session_state.get("run_path")
    if previous is not None and previous != choice:
        st.session_state[SWITCHES] = st.session_state.get(SWITCHES, 0) + 1
    st.session_state["run_path"] = choice
    return runs[paths.index(choice)]


def chosen(run: Run | None) -> Run | None:
    """``run`` when the user chose it (switched to it, or named it with ``?run=``), else None.

    The pages about several runs (Paper, Optimizer) follow the sidebar's run once it is
    chosen, not the demo run it starts on.
    """
    asked = st.session_state.get(SWITCHES, 0) > 0 or bool(st.query_params.get("run"))
    return run if asked else None


def scoped(key: str) -> str:
    """The widget key ``key`` of the current run: new after every switch of run.

    Streamlit identifies a keyed widget by its key alone, and the browser keeps showing (and
    sending back) its value when only its options change: after a switch from LeNet-5 to a
    ViT, a group filter would keep LeNet's modules and show none of the ViT's groups. A key
    renewed by each switch makes every widget of the run a new one, drawn from the new run's
    defaults. The key is ``key`` itself until the first switch of the session.
    """
    switches = st.session_state.get(SWITCHES, 0)
    return f"{key}~{switches}" if switches else key


def _first_choice(runs: Sequence[Run]) -> int:
    """The demo run (:data:`DEMO_RUN`) when it is there, else the first analysed run."""
    for i, r in enumerate(runs):
        if r.path.name == DEMO_RUN and r.store_path.exists():
            return i
    return next((i for i, r in enumerate(runs) if r.store_path.exists()), 0)


def _run_from_url(runs: Sequence[Run]) -> str | None:
    """The run a link names (``?run=<name or folder>``), for a session without a choice yet."""
    name = st.query_params.get("run")
    if not name:
        return None
    return next((str(r.path) for r in runs if name in (r.name, r.path.name, str(r.path))), None)


def select_settings(run: Run) -> dict[str, Any] | None:
    """Sidebar picker among the analyses stored for a run."""
    options = run.settings()
    if not options:
        st.warning(
            f"Run **{plain(run.name)}** has no analysis yet: `python -m hessian_lens analyze "
            f"{plain(run.path)}` computes one (a progress bar shows how long)."
        )
        return None
    labels = [describe_settings(s) for s in options]
    pick = st.sidebar.selectbox(
        "Analysis",
        range(len(options)),
        key=scoped(SETTINGS_KEY),
        format_func=lambda i: labels[i],
    )
    return options[pick]


def fmt_epoch(epoch: float | None) -> str:
    """``3`` for whole epochs, ``0.25`` for fractions, ``?`` when unknown.

    Example:
        >>> fmt_epoch(3.0), fmt_epoch(0.25), fmt_epoch(None)
        ('3', '0.25', '?')
    """
    if epoch is None:
        return "?"
    return str(int(epoch)) if float(epoch).is_integer() else f"{epoch:g}"


def select_epoch(recs: Sequence[dict], key: str, label: str = "Epoch") -> dict:
    """An epoch slider over analysed checkpoints (hidden for a single one).

    It starts at the last epoch and, while left there, moves on to each epoch added
    later (a run being written); an epoch picked by hand stays picked.
    """
    if len(recs) == 1:
        return recs[0]
    names = [fmt_epoch(r["epoch"]) if r["epoch"] is not None else r["checkpoint"] for r in recs]
    names = [
        n if names.count(n) == 1 else f"{n} ({r['checkpoint']})"
        for n, r in zip(names, recs, strict=True)
    ]
    last_key = f"{key}-last"
    if st.session_state.get(key) in (None, st.session_state.get(last_key)) or (
        st.session_state.get(key) not in names
    ):
        st.session_state[key] = names[-1]
    st.session_state[last_key] = names[-1]
    name = st.select_slider(label, options=names, key=key)
    return recs[names.index(name)]
