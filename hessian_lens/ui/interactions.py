"""The layer-interactions view: H̄ and H̄⁻¹ as WW / BB / WB blocks or in full, across epochs."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import streamlit as st

from hessian_lens import hierarchy, plots
from hessian_lens.matching import MAX_PATTERN, PatternError, label_matcher
from hessian_lens.ui.common import fmt_epoch, plain, select_epoch
from hessian_lens.ui.exports import figure_downloads

MATRICES = {"H": "H̄ (pseudo-Hessian)", "Hinv": "H̄⁻¹ (inverse)"}
SCALE_HELP = (
    "raw: the values; normalized: diag(|M|)^-½ M diag(|M|)^-½, invariant when a "
    "layer is rescaled, comparable across layers and epochs; signed log: "
    "sign · log10(1 + |M|/t), to see orders of magnitude"
)
FILTER_ABOVE = 24  # more groups than this: offer the module filter open


def group_filter(summary: dict, key: str) -> list[int]:
    """Indices of the groups to show: all, or those of chosen top-level modules / a regex."""
    labels = summary["labels"]
    module_of = plots.module_prefixes(labels)
    heads = list(dict.fromkeys(module_of))
    with st.expander(f"Groups: {len(labels)}", expanded=len(labels) > FILTER_ABOVE):
        c1, c2 = st.columns([2, 1])
        chosen = c1.multiselect(
            "Modules",
            heads,
            default=heads,
            key=f"{key}-modules",
            help="Zoom on part of a deep network; hover still names every cell.",
        )
        pattern = c2.text_input(
            "and labels matching (regex)",
            "",
            key=f"{key}-regex",
            max_chars=MAX_PATTERN,
            help="RE2 syntax (linear time: no back-references or look-around)",
        )
    try:
        matches = label_matcher(pattern) if pattern else None
    except PatternError as err:
        st.warning(f"Not a regular expression ({plain(err)}); showing all of those modules.")
        matches = None
    keep = [
        i
        for i, label in enumerate(labels)
        if module_of[i] in chosen and (matches is None or matches(label))
    ]
    if len(keep) < len(labels):
        st.caption(
            f"Showing {len(keep)} of {len(labels)} groups; H̄⁻¹ is always the inverse of "
            "the whole H̄, cut afterwards."
        )
    return keep


def tree_controls(recs: Sequence[dict], key: str) -> list[dict]:
    """The records regrouped as the user asks: layer -> head -> block type, collapsible.

    Offered when the partition has attention heads or more than ``FILTER_ABOVE`` groups.
    Collapsed branches are exact unions of groups (``M^T H̄ M``, H̄⁻¹ recomputed); the
    records come back unchanged when nothing is asked.
    """
    labels = recs[-1]["summary"]["labels"]
    heads = hierarchy.has_heads(labels)
    if not heads and len(labels) <= FILTER_ABOVE:
        return list(recs)
    layers = list(dict.fromkeys(hierarchy.layer_of(x) for x in labels))
    levels = [lv for lv in hierarchy.LEVELS if heads or lv != "head"]
    title = "Layers → heads → Q / K / V / O / MLP" if heads else "Layers"
    with st.expander(title, expanded=heads):
        c1, c2, c3 = st.columns([1.3, 2, 1])
        level = c1.selectbox(
            "Show",
            levels,
            index=levels.index(hierarchy.default_level(labels)),
            format_func=hierarchy.LEVEL_NAMES.get,
            key=f"{key}-level",
            help="A collapsed branch is the union of its groups: its H̄ entries are the "
            "exact sums (U^A = Σ U^s), its H̄⁻¹ the inverse of that smaller H̄.",
        )
        opened = c2.multiselect(
            "Open layers (every group)",
            layers,
            default=[],
            key=f"{key}-open",
            disabled=level == "group",
        )
        within = "head"
        if heads:
            within = c3.radio(
                "Inside a layer",
                hierarchy.ORDERS,
                key=f"{key}-within",
                format_func={"head": "head → Q/K/V/O", "block": "Q/K/V/O → head"}.get,
            )
    return [
        hierarchy.coarsen(r, hierarchy.units(r["summary"]["labels"], level, set(opened), within))
        for r in recs
    ]


def has_blocks(summary: dict, keep: Sequence[int]) -> bool:
    """Whether the WW / BB / WB split applies: weights and biases in two layers at least.

    Never when a group mixes weights and biases (a head's Q rows with their bias entries,
    a layer): the split would leave such groups out of every panel.
    """
    kinds = [summary["kinds"][i] for i in keep]
    return "mixed" not in kinds and kinds.count("weight") >= 2 and kinds.count("bias") >= 2


def matrix_panels(rec: dict, name: str, scale: str, view: str, keep: Sequence[int]) -> list:
    """Panels of matrix ``name`` ("H" or "Hinv") of a record in a view ("blocks"/"full")."""
    summary, raw = rec["summary"], rec["arrays"][name]
    shown = plots.transform(raw, scale)
    if list(keep) != list(range(len(summary["labels"]))):  # a filter: cut (copies)
        idx = np.ix_(keep, keep)
        shown, raw = shown[idx], raw[idx]
    labels = [summary["labels"][i] for i in keep]
    if view == "blocks":
        kinds = [summary["kinds"][i] for i in keep]
        layers = [summary["layers"][i] for i in keep]
        return list(plots.interaction_blocks(shown, kinds, layers, raw).values())
    tree = hierarchy.has_heads(labels) or len(labels) > FILTER_ABOVE
    return [plots.full_panel(shown, labels, raw, MATRICES[name], separate_layers=tree)]


@st.cache_data(max_entries=64, show_spinner=False)
def matrix_figure(
    rec: dict, name: str, scale: str, view: str, keep: tuple, limits: tuple | None, height: int
) -> dict:
    """The heatmap row of one matrix, as plotly JSON.

    Cached: a warm page skips plotly's slow figure building (~40 ms a figure).
    """
    panels = matrix_panels(rec, name, scale, view, keep)
    colorbar = scale if scale != "raw" else ""
    return plots.panel_row(panels, zmax=limits, colorbar=colorbar, height=height).to_dict()


def _matrix_only(rec: dict, name: str) -> dict:
    """The part of a record one matrix's figure needs (what the cache hashes)."""
    return {"summary": rec["summary"], "arrays": {name: rec["arrays"][name]}}


def render_interactions(recs: Sequence[dict], key: str) -> None:
    """Heatmaps of H̄ and H̄⁻¹ (WW / BB / WB or full), epoch slider, play, downloads."""
    recs = tree_controls(recs, key)
    keep = group_filter(recs[-1]["summary"], key)
    if not keep:
        st.info("No group left to show: widen the filter.")
        return
    c1, c2, c3 = st.columns([1.2, 1.4, 1.4])
    views = ["blocks", "full"] if has_blocks(recs[-1]["summary"], keep) else ["full"]
    view = c1.radio(
        "View",
        views,
        key=f"{key}-view",
        format_func=lambda v: {"blocks": "WW · BB · WB blocks", "full": "full S × S"}[v],
        horizontal=True,
    )
    scale = c2.radio("Scale", plots.SCALES, key=f"{key}-scale", horizontal=True, help=SCALE_HELP)
    same = c3.toggle(
        "Fixed colour range",
        key=f"{key}-same",
        disabled=len(recs) < 2,
        help="The same limits for every epoch (max |value| over all of them), so change "
        "over time shows.",
    )
    rec = select_epoch(recs, key=f"{key}-epoch")
    inverse_note(rec["summary"])
    big = len(keep) > FILTER_ABOVE
    drawn = {}
    for name in MATRICES:
        st.markdown(f"**{MATRICES[name]}**{_at(rec)}")
        limits = _limits(recs, name, scale, view, keep) if same else None
        fig = matrix_figure(
            _matrix_only(rec, name),
            name,
            scale,
            view,
            tuple(keep),
            tuple(limits) if limits else None,
            380 if view == "blocks" else (760 if big else 520),
        )
        st.plotly_chart(
            fig,
            key=f"{key}-{name}",
            config=plots.export_config(f"{name}_{view}{_at(rec, '_epoch')}"),
        )
        drawn[f"{name}_{view}{_at(rec, '_epoch')}"] = fig
    figure_downloads(drawn, key)
    if len(recs) > 1 and st.toggle("Animate across epochs", key=f"{key}-animate"):
        _animation(recs, key, scale, view, keep)
    _downloads(rec, scale, key)


def inverse_note(summary: dict) -> None:
    """What kind of inverse is shown (exact, regularised, saddle-free)."""
    inv = summary["inverse"]
    if inv["status"] == "indefinite":
        st.caption(
            f"H̄ is indefinite ({inv['n_negative']} negative eigenvalues of its "
            "normalised form C = S H̄ S, S = diag(|H̄|)^-1/2): H̄⁻¹ shown is S |C|⁻¹ S, the "
            "absolute eigenvalues of C inverted and scaled back (not |H̄|⁻¹, which would "
            f"change with the units of each layer; condition number {inv['condition']:.3g})."
        )
    elif inv["status"] == "singular":
        st.caption(f"H̄ is singular ({inv['n_floored']} eigenvalues floored): H̄⁻¹ is regularised.")
    else:
        st.caption(
            f"H̄ is positive definite (condition number {inv['condition']:.3g}): H̄⁻¹ is exact."
        )


def _limits(recs, name, scale, view, keep) -> list[float]:
    per_epoch = [[p.z for p in matrix_panels(r, name, scale, view, keep)] for r in recs]
    return [plots.symmetric_limit(*[zs[i] for zs in per_epoch]) for i in range(len(per_epoch[0]))]


def _animation(recs, key, scale, view, keep) -> None:
    c1, c2 = st.columns(2)
    name = c1.selectbox(
        "Matrix", list(MATRICES), format_func=MATRICES.get, key=f"{key}-anim-matrix"
    )
    titles = [p.title for p in matrix_panels(recs[0], name, scale, view, keep)]
    which = c2.selectbox(
        "Block", range(len(titles)), format_func=lambda i: titles[i], key=f"{key}-anim-block"
    )
    frames = [
        (fmt_epoch(r["epoch"]), matrix_panels(r, name, scale, view, keep)[which]) for r in recs
    ]
    zmax = plots.symmetric_limit(*[p.z for _, p in frames])
    st.plotly_chart(
        plots.animated_heatmap(frames, zmax, colorbar=scale),
        key=f"{key}-anim",
        config=plots.export_config(f"{name}_animation"),
    )


def _downloads(rec: dict, scale: str, key: str) -> None:
    """NPZ and CSV downloads of the matrices shown (the full S x S, never the drawn cells).

    Past :data:`hessian_lens.plots.MAX_CELLS_SIDE` groups the files are made when their
    button is clicked (S = 5,000: a CSV is about 500 MB), not at every render.
    """
    summary = rec["summary"]
    stem = f"{_at(rec, 'epoch')}_{scale.replace(' ', '_')}".lstrip("_")
    later = len(summary["labels"]) > plots.MAX_CELLS_SIDE

    def data(make):
        return make if later else make()

    c1, c2, c3 = st.columns(3)
    c1.download_button(
        "⬇ NPZ (H̄, H̄⁻¹, labels)",
        data(lambda: _npz(rec, scale)),
        f"hbar_{stem}.npz",
        key=f"{key}-npz",
        on_click="ignore" if later else "rerun",
    )
    for col, name in ((c2, "H"), (c3, "Hinv")):
        col.download_button(
            f"⬇ CSV {MATRICES[name].split()[0]} ({scale})",
            data(lambda name=name: plots.to_csv(_shown(rec, name, scale), summary["labels"])),
            f"{name}_{stem}.csv",
            mime="text/csv",
            key=f"{key}-csv-{name}",
            on_click="ignore" if later else "rerun",
        )


def _shown(rec: dict, name: str, scale: str) -> np.ndarray:
    return plots.transform(rec["arrays"][name], scale)


def _npz(rec: dict, scale: str) -> bytes:
    summary, arrays = rec["summary"], rec["arrays"]
    buf = io.BytesIO()
    np.savez(
        buf,
        labels=np.array(summary["labels"]),
        kinds=np.array(summary["kinds"]),
        layers=np.array(summary["layers"]),
        epoch=np.array(rec["epoch"] if rec["epoch"] is not None else -1),
        g=arrays["g"],
        **{n: arrays[n] for n in MATRICES},
        **{f"{n}_shown": _shown(rec, n, scale) for n in MATRICES},
    )
    return buf.getvalue()


def _at(rec: dict, prefix: str = " — epoch ") -> str:
    """``prefix`` and the record's epoch; nothing when it has none (an uploaded file)."""
    return f"{prefix}{fmt_epoch(rec['epoch'])}" if rec["epoch"] is not None else ""
