"""Per-group curvature figures: strips by block type, trends, heatmaps, comparisons."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from hessian_lens.labels import layer_of
from hessian_lens.linalg import left_out, lower_median
from hessian_lens.plots.geometry import auto_margins, nan_none, rgba
from hessian_lens.plots.style import (
    HEAD_COLOURS,
    LINE_EM,
    MAX_TICKS,
    NEGATIVE,
    NO_HEAD,
    SMALL_FONT,
    STRIP_WIDTH,
    TYPE_COLOURS,
)


def log_abs(values) -> np.ndarray:
    """log10 |c|, NaN where c is undefined (NaN) or 0.

    Example:
        >>> log_abs([100.0, -0.1, 0.0, float("nan")]).tolist()
        [2.0, -1.0, nan, nan]
    """
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v) & (v != 0)
    return np.where(ok, np.log10(np.abs(np.where(ok, v, 1.0))), np.nan)


def left_out_note(values) -> str:
    """What a log-scale figure of curvatures leaves out, in words ('' when nothing).

    ``values``: one per group, or groups x checkpoints (then cells are counted).

    Example:
        >>> left_out_note([1.0, float("nan"), float("nan"), 0.0])
        '2 of 4 groups left out: ḡ_s = 0 (no gradient on them); 1 with c_s = 0'
    """
    v = np.asarray(values, dtype=np.float64)
    undefined, zero = left_out(v.ravel())
    noun = "groups" if v.ndim == 1 else "(group, checkpoint) cells"
    parts = []
    if undefined:
        parts.append(f"{undefined} of {v.size} {noun} left out: ḡ_s = 0 (no gradient on them)")
    if zero:
        parts.append(f"{zero} with c_s = 0" if parts else f"{zero} {noun} left out: c_s = 0")
    return "; ".join(parts)


def _strip_traces(labels, values, blocks, heads, types, seen: set | None = None) -> list:
    """Box and point traces of a curvature strip, the block ``types`` at x = 0, 1, ..."""
    seen = set() if seen is None else seen
    y, v = log_abs(values), np.asarray(values, dtype=np.float64)
    x = np.zeros(len(labels))
    for pos, t in enumerate(types):
        members = [i for i, b in enumerate(blocks) if b == t]
        offsets = np.linspace(-STRIP_WIDTH / 2, STRIP_WIDTH / 2, len(members) + 2)[1:-1]
        x[members] = pos + offsets
    traces: list = []
    for pos, t in enumerate(types):
        ys = [y[i] for i, b in enumerate(blocks) if b == t and np.isfinite(y[i])]
        if ys:
            traces.append(_box(pos, ys, t))
    for h in sorted({h for h in heads}, key=lambda h: (h is None, h if h is not None else 0)):
        idx = [i for i in range(len(labels)) if heads[i] == h and np.isfinite(y[i])]
        name = "no head" if h is None else f"head {h}"
        colour = NO_HEAD if h is None else HEAD_COLOURS[h % len(HEAD_COLOURS)]
        if idx:
            traces.append(_points(idx, x, y, v, labels, blocks, name, colour, name not in seen))
            seen.add(name)
    neg = [i for i in range(len(labels)) if np.isfinite(y[i]) and v[i] < 0]
    if neg:
        traces.append(_rings(neg, x, y, "c_s < 0 (ringed)" not in seen))
        seen.add("c_s < 0 (ringed)")
    return traces


def _box(pos: int, ys: list, block: str) -> go.Box:
    return go.Box(
        x=[pos] * len(ys),
        y=ys,
        name=block,
        width=0.8,
        boxpoints=False,
        fillcolor="rgba(0,0,0,0.04)",
        line=dict(color="#999", width=1),
        showlegend=False,
        hoverinfo="skip",
    )


def _points(idx, x, y, v, labels, blocks, name, colour, legend) -> go.Scatter:
    return go.Scatter(
        x=x[idx],
        y=y[idx],
        mode="markers",
        name=name,
        legendgroup=name,
        showlegend=legend,
        marker=dict(color=colour, size=7, line=dict(width=0.5, color="white")),
        customdata=[[labels[i], float(v[i]), blocks[i]] for i in idx],
        hovertemplate=(
            "%{customdata[0]}<br>%{customdata[2]} · " + name + "<br>c = %{customdata[1]:.4g}"
            "<br>log10|c| = %{y:.3f}<extra></extra>"
        ),
    )


def _rings(idx, x, y, legend: bool) -> go.Scatter:
    return go.Scatter(
        x=x[idx],
        y=y[idx],
        mode="markers",
        name="c_s < 0 (ringed)",
        legendgroup="negative",
        showlegend=legend,
        marker=dict(symbol="circle-open", size=14, color=NEGATIVE, line=dict(width=2)),
        hoverinfo="skip",
    )


HALF_WIDTH_TYPES = 4  # more block types than this in half a figure: slanted labels


def _type_axis(types: Sequence[str], blocks: Sequence[str]) -> dict:
    return dict(
        tickmode="array",
        tickvals=list(range(len(types))),
        ticktext=[f"{t} ({list(blocks).count(t)})" for t in types],
        range=[-0.6, len(types) - 0.4],
        zeroline=False,
    )


def _with_note(title: str, values) -> str:
    note = left_out_note(values)
    return f"{title}<br><sup>{note}</sup>" if note else title


def curvature_strip(
    labels: Sequence[str],
    values: Sequence[float],
    blocks: Sequence[str],
    heads: Sequence[int | None],
    types: Sequence[str],
    title: str = "curvature along the gradient, per group",
    height: int = 420,
) -> go.Figure:
    """log10 |c_s| of every group, one column per block type, points coloured by head.

    ``types``: the block types in column order (every type of ``blocks``; the caller's
    order, e.g. :func:`hessian_lens.heterogeneity.type_order`).

    A box per type summarises its groups; inside a column the groups run left to right in
    network order; negative curvatures are ringed in red; hovering gives the label and the
    signed value. Groups without a curvature (NaN: ``ḡ_s = 0``) or with ``c_s = 0`` have
    no logarithm: they are left out and the subtitle says how many.
    """
    traces = _strip_traces(labels, values, blocks, heads, types)
    fig = go.Figure(traces)
    fig.update_layout(
        title=_with_note(title, values),
        height=height,
        margin=dict(l=10, r=10, t=70, b=10),
        yaxis_title="log10 |c_s|",
        xaxis=_type_axis(types, blocks),
        legend=dict(orientation="h", y=-0.15),
    )
    return auto_margins(fig)


def block_trends(
    x: Sequence[float],
    values: np.ndarray,
    blocks: Sequence[str],
    labels: Sequence[str],
    types: Sequence[str],
    mode: str = "band",
    title: str = "median |c_s| of each block type across epochs",
    height: int = 400,
) -> go.Figure:
    """Each block type's median |c_s| across checkpoints (log y).

    The median is :func:`hessian_lens.linalg.lower_median`, as in the spreads.

    Args:
        x: the checkpoints' epochs.
        values: ``c_s``, groups x checkpoints (NaN where undefined).
        blocks: the block type of every group.
        labels: the group labels (hover of the thin lines).
        types: the block types drawn, in legend order.
        mode: ``band`` (min-max of the type's |c_s| shaded) or ``groups`` (a thin line
            per group).
        title: figure title.
        height: figure height in px.
    """
    if mode not in ("band", "groups"):
        raise ValueError(f"mode must be 'band' or 'groups', got {mode!r}")
    mag = 10.0 ** log_abs(values)  # NaN where undefined or 0
    x = list(x)
    fig = go.Figure()
    for t in types:
        rows = mag[[i for i, b in enumerate(blocks) if b == t]]
        colour = TYPE_COLOURS.get(t, "#555555")
        if mode == "band":
            _band(fig, x, rows, t, colour)
        else:
            for i in (i for i, b in enumerate(blocks) if b == t):
                fig.add_trace(_thin(x, mag[i], labels[i], t, colour))
        fig.add_trace(
            go.Scatter(
                x=x,
                y=nan_none(_column_stat(rows, lower_median)),
                name=t,
                legendgroup=t,
                mode="lines+markers",
                line=dict(color=colour, width=2.5),
                hovertemplate=f"{t}: median |c| %{{y:.4g}} at epoch %{{x}}<extra></extra>",
            )
        )
    fig.update_yaxes(type="log", title_text="|c_s|")
    fig.update_layout(
        title=_with_note(title, values),
        height=height,
        margin=dict(l=10, r=10, t=70, b=10),
        xaxis_title="epoch",
        legend=dict(orientation="h", y=-0.2),
    )
    return auto_margins(fig)


def _column_stat(rows: np.ndarray, stat) -> np.ndarray:
    """``stat`` of each column over its finite entries (NaN for a column without any)."""
    out = np.full(rows.shape[1], np.nan)
    for j in range(rows.shape[1]):
        col = rows[:, j][np.isfinite(rows[:, j])]
        if col.size:
            out[j] = stat(col)
    return out


def _band(fig: go.Figure, x: list, rows: np.ndarray, block: str, colour: str) -> None:
    lo, hi = _column_stat(rows, np.min), _column_stat(rows, np.max)
    common = dict(x=x, mode="lines", line=dict(width=0), legendgroup=block, showlegend=False)
    fig.add_trace(go.Scatter(y=nan_none(hi), hoverinfo="skip", **common))
    fig.add_trace(
        go.Scatter(
            y=nan_none(lo),
            fill="tonexty",
            fillcolor=rgba(colour, 0.15),
            hoverinfo="skip",
            **common,
        )
    )


def _thin(x: list, y: np.ndarray, label: str, block: str, colour: str) -> go.Scatter:
    return go.Scatter(
        x=x,
        y=nan_none(y),
        mode="lines",
        legendgroup=block,
        showlegend=False,
        line=dict(color=rgba(colour, 0.35), width=1),
        hovertemplate=f"{label}: |c| %{{y:.4g}} at epoch %{{x}}<extra></extra>",
    )


def curvature_heatmap(
    labels: Sequence[str],
    names: Sequence[str],
    values: np.ndarray,
    rows: Sequence[int],
    title: str = "log10 |c_s|, group by checkpoint",
) -> go.Figure:
    """log10 |c_s| as a groups x checkpoints heatmap, the groups in the order ``rows``.

    ``rows``: group indices top to bottom (e.g. :func:`hessian_lens.hierarchy.order`'s
    layer -> head -> type); cells without a logarithm
    (``ḡ_s = 0`` or ``c_s = 0``) are blank, negative curvatures are marked with a cross;
    hovering gives the label, the checkpoint and the signed value. Past
    :data:`MAX_TICKS` groups the y ticks name the layers where they start.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (len(labels), len(names)):
        raise ValueError(
            f"values must be groups x checkpoints {len(labels), len(names)}, got {values.shape}"
        )
    rows = list(rows)
    shown = [str(labels[i]) for i in rows]
    v = values[rows]
    z = log_abs(v)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(len(names))),
            y=list(range(len(shown))),
            customdata=np.dstack([v]),
            text=[[f"{lab} · {n}" for n in names] for lab in shown],
            colorscale="Viridis",
            colorbar=dict(title="log10 |c|"),
            xgap=1 if len(names) <= MAX_TICKS else 0,
            hovertemplate="%{text}<br>c = %{customdata[0]:.4g}<br>log10|c| = %{z:.3f}"
            "<extra></extra>",
        )
    )
    neg_y, neg_x = np.nonzero(np.isfinite(z) & (v < 0))
    if neg_y.size:
        fig.add_trace(
            go.Scatter(
                x=neg_x.tolist(),
                y=neg_y.tolist(),
                mode="markers",
                name="c_s < 0",
                marker=dict(symbol="x-thin", size=7, line=dict(width=1.5, color=NEGATIVE)),
                hoverinfo="skip",
            )
        )
    height, row_px, font = _heatmap_rows(len(shown))
    tick_rows, tick_text = _layer_ticks(shown, [layer_of(x) for x in shown], row_px, font)
    fig.update_yaxes(
        tickmode="array",
        tickvals=tick_rows,
        ticktext=tick_text,
        tickfont=dict(size=font),
        autorange="reversed",
    )
    fig.update_xaxes(tickmode="array", tickvals=list(range(len(names))), ticktext=list(names))
    fig.update_layout(
        title=_with_note(title, values),
        height=height,
        margin=dict(l=10, r=10, t=70, b=10),
        xaxis_title="checkpoint (epoch)",
        legend=dict(orientation="h", y=-0.1),
    )
    return auto_margins(fig)


HEATMAP_FRAME = 170  # px of a curvature heatmap outside its rows (title, x ticks, legend)


def _heatmap_rows(n: int) -> tuple[int, float, int]:
    """``(height, px per row, tick font)``: rows of 18 px with every label, else 12 px."""
    row = 18 if n <= MAX_TICKS else 12
    height = int(min(1600, max(340, row * n + HEATMAP_FRAME)))
    font = 11 if n <= MAX_TICKS else SMALL_FONT
    return height, max(height - HEATMAP_FRAME, 1) / max(n, 1), font


def _layer_ticks(labels, layers, row_px: float, font: int) -> tuple[list[int], list[str]]:
    """Every label up to :data:`MAX_TICKS`; past it, a tick where a layer starts.

    Ticks closer than a line of text to the one before are dropped, the rest thinned to
    :data:`MAX_TICKS`.

    Example:
        >>> _layer_ticks(["a.w", "b.w", "c.0.w", "c.0.b"], ["a", "b", "c.0", "c.0"], 10.0, 9)
        ([0, 2], ['a', 'c.0'])
    """
    if len(labels) <= MAX_TICKS and row_px >= font * LINE_EM:
        return list(range(len(labels))), [str(x) for x in labels]
    gap = math.ceil(font * LINE_EM / row_px)
    kept: list[int] = []
    for i in range(len(layers)):
        if (i == 0 or layers[i] != layers[i - 1]) and (not kept or i - kept[-1] >= gap):
            kept.append(i)
    kept = kept[:: -(-len(kept) // MAX_TICKS)] if kept else kept
    return kept, [layers[i] for i in kept]


@dataclass
class StripSide:
    """One run's groups at one checkpoint, for :func:`heterogeneity_comparison`."""

    title: str
    labels: list[str]
    values: np.ndarray
    blocks: list[str]
    heads: list[int | None]
    types: list[str]  # the block types in column order


def heterogeneity_comparison(
    left: StripSide,
    right: StripSide,
    spreads: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]],
    height: int = 760,
) -> go.Figure:
    """Two runs side by side (a CNN and a transformer): strips, and spreads across training.

    The two strips (:func:`curvature_strip`) share one log10 scale; below, each run's
    dispersion of log10 |c_s| between block types (solid) and over all groups (dotted)
    against training progress.

    Args:
        left: the first run's checkpoint (strip on the left).
        right: the second run's checkpoint (strip on the right).
        spreads: ``{run: (progress, between block types, overall)}``: training progress
            (epoch / last epoch) and the two log10 standard deviations at each checkpoint
            (:func:`hessian_lens.linalg.heterogeneity`'s ``between_blocks_log10_std`` and
            ``log10_std``).
        height: figure height in px.
    """
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=2,
        cols=2,
        specs=[[{}, {}], [{"colspan": 2}, None]],
        subplot_titles=[
            _with_note(left.title, left.values),
            _with_note(right.title, right.values),
            "spread of log10 |c_s| across training",
        ],
        vertical_spacing=0.2,
        horizontal_spacing=0.08,
    )
    seen: set = set()
    for col, side in ((1, left), (2, right)):
        types = side.types
        traces = _strip_traces(side.labels, side.values, side.blocks, side.heads, types, seen)
        for tr in traces:
            fig.add_trace(tr, row=1, col=col)
        axis = _type_axis(types, side.blocks)
        if len(types) > HALF_WIDTH_TYPES:  # half a row is too narrow for them side by side
            axis.update(tickangle=-45, automargin=True)
        fig.update_xaxes(axis, row=1, col=col)
    logs = np.concatenate([log_abs(left.values), log_abs(right.values)])
    logs = logs[np.isfinite(logs)]
    if logs.size:
        lo, hi = float(logs.min()), float(logs.max())
        pad = 0.08 * max(hi - lo, 1.0)
        fig.update_yaxes(range=[lo - pad, hi + pad], row=1, col=1)
        fig.update_yaxes(range=[lo - pad, hi + pad], matches="y", row=1, col=2)
    fig.update_yaxes(title_text="log10 |c_s|", row=1, col=1)
    for k, (run, (prog, between, overall)) in enumerate(spreads.items()):
        colour = HEAD_COLOURS[(k * 3) % len(HEAD_COLOURS)] if k else "#111111"
        for ys, what, dash in (
            (between, "between block types", None),
            (overall, "all groups", "dot"),
        ):
            fig.add_trace(
                go.Scatter(
                    x=list(prog),
                    y=nan_none(ys),
                    name=f"{run}: {what}",
                    mode="lines+markers",
                    line=dict(color=colour, dash=dash),
                    hovertemplate=f"{run}, {what}<br>progress %{{x:.3f}}: %{{y:.3f}} decades"
                    "<extra></extra>",
                ),
                row=2,
                col=1,
            )
    fig.update_xaxes(title_text="training progress (epoch / last epoch)", row=2, col=1)
    fig.update_yaxes(title_text="std of log10 |c| (decades)", rangemode="tozero", row=2, col=1)
    fig.update_layout(
        height=height, margin=dict(l=10, r=10, t=80, b=10), legend=dict(orientation="h", y=-0.12)
    )
    return auto_margins(fig)
