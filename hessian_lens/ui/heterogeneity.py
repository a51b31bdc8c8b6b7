"""The Block heterogeneity view: each group's curvature along the gradient, by type and head.

c_s = H̄_ss / ḡ_s for every group (:mod:`hessian_lens.heterogeneity`), drawn as a strip
per block type at one epoch, as the types' medians across epochs, as a groups x epochs
heatmap, and beside a second run (a CNN against a transformer) — read from the stores,
nothing recomputed but S numbers per checkpoint.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import streamlit as st

from hessian_lens import heterogeneity, hierarchy, plots
from hessian_lens.runs import Run, describe_settings
from hessian_lens.ui import reads
from hessian_lens.ui.common import plain, select_epoch
from hessian_lens.ui.exports import figure_downloads

TREND_MODES = {"band": "min–max band", "groups": "a thin line per group"}
FAMILY_NAMES = {"transformer": "transformer", "cnn": "CNN", "other": "neither CNN nor transformer"}
NONE = ""


@st.cache_data(show_spinner=False, max_entries=32)
def _measured(
    store: str, settings_json: str, stamp: float, biases_apart: bool, _recs: list
) -> list[heterogeneity.Measured]:
    return heterogeneity.across(_recs, json.loads(settings_json), biases_apart)


def measured(run: Run, settings: dict, biases_apart: bool) -> list[heterogeneity.Measured]:
    """:func:`hessian_lens.heterogeneity.across` of a run's records (cached per store state)."""
    recs = reads.records(run, settings)
    stamp = reads._stamp(run.store_path)
    key = json.dumps(settings, sort_keys=True)
    return _measured(str(run.store_path), key, stamp, biases_apart, recs)


@st.cache_data(show_spinner=False, max_entries=1024)
def _family(store: str, stamp: float) -> tuple[str, int] | None:
    from hessian_lens.store import ResultStore

    try:
        reader = ResultStore.reader(store)
        first = next(iter(reader.settings()), None)
        recs = reader.records(first, arrays=False) if first is not None else []
    except (ValueError, OSError):
        return None
    if not recs:
        return None
    labels = recs[0].summary.get("labels") or []
    return heterogeneity.family(labels), len(labels)


def family_of(run: Run) -> tuple[str, int] | None:
    """``(family, S)`` of a run's first analysis; None without a readable one."""
    if not run.store_path.exists():
        return None
    return _family(str(run.store_path), reads._stamp(run.store_path))


def gradient_settings(run: Run) -> list[dict[str, Any]]:
    """The run's analyses, those along the gradient first (their curvature is readable)."""
    options = run.settings()
    return sorted(options, key=lambda s: s.get("direction", "gradient") != "gradient")


def render_heterogeneity(
    run: Run, settings: dict, runs: Sequence[Run], key: str = "hetero"
) -> None:
    """The strip, table, trends and heatmap of a run; then the comparison with another."""
    biases = st.toggle(
        "Biases as a block type of their own",
        key=f"{key}-biases",
        help="Off: a bias counts in its layer's type (conv, mlp, o ...). On: every plain "
        "bias is of type 'bias', as the shared roles of docs/transformers.md count it.",
    )
    ms = measured(run, settings, biases)
    values = heterogeneity.matrix(ms)
    recs = reads.records(run, settings)
    rec = select_epoch(recs, key=f"{key}-epoch")
    m = ms[next(i for i, r in enumerate(recs) if r is rec)]
    fam = heterogeneity.family(m.labels)
    st.markdown(
        f"**{plain(run.name)}** · {FAMILY_NAMES[fam]} · S = {len(m.labels)} groups · "
        f"{len(ms)} analysed checkpoints — epoch {plain(m.name)}"
    )
    _metrics(m)
    name = f"heterogeneity_{run.path.name}_epoch{m.name.split(' ')[0]}"
    strip = plots.curvature_strip(
        m.labels,
        m.values,
        m.blocks,
        m.heads,
        heterogeneity.type_order(m.blocks),
        title=f"c_s = H̄_ss / ḡ_s at epoch {m.name}",
    )
    st.plotly_chart(strip, key=f"{key}-strip", config=plots.export_config(name))
    st.caption(
        "Each point a group; inside a column the groups run from the input (left) to the "
        "output (right). Boxes: quartiles of the type. Red rings: negative curvature (its "
        "magnitude is drawn)."
    )
    st.dataframe(_table(m), hide_index=True, key=f"{key}-table")
    figures = {name: strip}
    if len(ms) > 1:
        figures |= _across_epochs(run, ms, values, key)
    _compare(run, m, ms, runs, biases, key, figures)
    figure_downloads(figures, key)


def _metrics(m: heterogeneity.Measured) -> None:
    o = m.stats["overall"]
    undefined, zero = heterogeneity.left_out(m.values)
    cols = st.columns(4)
    cols[0].metric(
        "spread, all groups",
        _fmt(o["log10_std"]),
        help="std of log10 |c_s| over the groups, in decades (1: a factor 10)",
    )
    cols[1].metric(
        "between block types",
        _fmt(o["between_blocks_log10_std"]),
        help="std of log10 of the block types' median |c_s|, in decades (0: all alike)",
    )
    cols[2].metric("negative c_s", f"{o['negative']} of {o['defined']}")
    cols[3].metric(
        "left out", str(undefined + zero), help="groups with ḡ_s = 0 (no curvature) or c_s = 0"
    )


def _table(m: heterogeneity.Measured) -> list[dict]:
    rows = heterogeneity.block_table(m.stats, heterogeneity.type_order(m.blocks))
    return [{k: _fmt(v) if isinstance(v, float) else v for k, v in r.items()} for r in rows]


def _fmt(value: float) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.3g}"


def _across_epochs(run: Run, ms, values, key: str) -> dict:
    mode = st.radio(
        "Across epochs",
        list(TREND_MODES),
        format_func=TREND_MODES.get,
        key=f"{key}-mode",
        horizontal=True,
    )
    epochs = [mm.epoch if mm.epoch is not None else i for i, mm in enumerate(ms)]
    m = ms[-1]
    types = heterogeneity.type_order(m.blocks)
    trends = plots.block_trends(epochs, values, m.blocks, m.labels, types, mode=mode)
    rows = hierarchy.order(m.labels, "head")
    heat = plots.curvature_heatmap(m.labels, [mm.name for mm in ms], values, rows)
    stem = f"heterogeneity_{run.path.name}"
    st.plotly_chart(trends, key=f"{key}-trends", config=plots.export_config(f"{stem}_trends"))
    st.plotly_chart(heat, key=f"{key}-heatmap", config=plots.export_config(f"{stem}_heatmap"))
    st.caption("Rows: layer by layer, head by head, then Q / K / V / O. ✕: c_s < 0.")
    return {f"{stem}_trends": trends, f"{stem}_heatmap": heat}


def _compare(run: Run, m, ms, runs: Sequence[Run], biases: bool, key: str, figures) -> None:
    st.subheader("Side by side")
    other = _pick_other(run, m, runs, key)
    if other is None:
        st.caption("Pick a run to compare with (a CNN beside a transformer, or the reverse).")
        return
    options = gradient_settings(other)
    if not options:
        st.info(f"{plain(other.name)} has no analysis yet.")
        return
    pick = 0
    if len(options) > 1:
        labels = [describe_settings(s) for s in options]
        pick = st.selectbox(
            f"Analysis of {plain(other.name)}",
            range(len(options)),
            key=f"{key}-compare-settings",
            format_func=lambda i: labels[i],
        )
    try:
        ms_b = measured(other, options[pick], biases)
        heterogeneity.matrix(ms_b)
    except ValueError as err:
        st.warning(f"{plain(other.name)}: {plain(err)}")
        return
    recs_b = reads.records(other, options[pick])
    rec_b = select_epoch(recs_b, key=f"{key}-compare-epoch", label=f"Epoch of {other.name}")
    mb = ms_b[next(i for i, r in enumerate(recs_b) if r is rec_b)]
    fig = plots.heterogeneity_comparison(
        _side(run, m),
        _side(other, mb),
        {run.name: heterogeneity.spreads(ms), other.name: heterogeneity.spreads(ms_b)},
    )
    name = f"heterogeneity_{run.path.name}_vs_{other.path.name}"
    st.plotly_chart(fig, key=f"{key}-side", config=plots.export_config(name))
    st.caption(
        "Zhang et al. (arXiv 2402.16788): the Hessian's blocks look alike in CNNs and differ "
        "across block types in transformers. Below: the spread between the types' medians "
        "(solid) and over all groups (dotted), against epoch / last epoch of each run."
    )
    figures[name] = fig


def _side(run: Run, m: heterogeneity.Measured) -> plots.StripSide:
    title = f"{run.name}, epoch {m.name}"
    types = heterogeneity.type_order(m.blocks)
    return plots.StripSide(title, m.labels, m.values, m.blocks, m.heads, types)


def _pick_other(run: Run, m, runs: Sequence[Run], key: str) -> Run | None:
    """The "compare with" picker: a CNN for a transformer and vice versa by default.

    Only runs with a readable analysis are offered (a broken store is not one).
    """
    families = {str(r.path): family_of(r) for r in runs if r.path != run.path}
    candidates = [r for r in runs if families.get(str(r.path)) is not None]  # readable ones
    paths = [NONE] + [str(r.path) for r in candidates]
    state = f"{key}-compare"
    if st.session_state.get(f"{state}-of") != str(run.path) or (
        st.session_state.get(state) not in paths
    ):
        st.session_state.pop(state, None)  # a new run: its own default partner
        st.session_state[f"{state}-of"] = str(run.path)
    found = heterogeneity.partner(
        heterogeneity.family(m.labels), len(m.labels), [families[p] for p in paths[1:]]
    )
    names = {str(r.path): r.name for r in candidates}
    choice = st.selectbox(
        "Compare with",
        paths,
        index=0 if found is None else found + 1,
        key=state,
        format_func=lambda p: names.get(p, "— none —"),
    )
    return candidates[paths.index(choice) - 1] if choice != NONE else None
