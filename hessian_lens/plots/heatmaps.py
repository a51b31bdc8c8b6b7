"""Heatmaps of S x S matrices: pooling, rows of panels, epoch sliders, CSV and exports."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from hessian_lens.labels import layer_of
from hessian_lens.linalg import normalize
from hessian_lens.plots.geometry import (
    Geometry,
    Panel,
    flat_bar,
    label_axes,
    separators,
    title_size,
)
from hessian_lens.plots.style import (
    BLOCK_NAMES,
    COLORSCALE,
    MAX_CELLS_SIDE,
    MAX_TICKS,
    MIN_WIDTH,
    SCALES,
    TITLE_FONT,
    ZWSP,
)


def transform(M: np.ndarray, scale: str, linthresh: float | None = None) -> np.ndarray:
    """The values a heatmap shows.

    ``raw``: as is. ``normalized``: ``diag(|M|)^(-1/2) M diag(|M|)^(-1/2)``, the
    rescaling-invariant form. ``signed log``: ``sign(M) log10(1 + |M| / t)`` with ``t``
    (default ``1e-6 max|M|``) so that orders of magnitude get colours.

    Example:
        >>> transform(np.array([[4.0, -2.0], [-2.0, 1.0]]), "normalized").tolist()
        [[1.0, -1.0], [-1.0, 1.0]]
    """
    M = np.asarray(M, dtype=np.float64)
    if scale == "raw":
        return M
    if scale == "normalized":
        return normalize(_tensor(M)).numpy()
    if scale == "signed log":
        top = float(np.abs(M).max()) if M.size else 0.0
        t = linthresh or (1e-6 * top if top > 0 else 1.0)
        return np.sign(M) * np.log10(1.0 + np.abs(M) / t)
    raise ValueError(f"unknown scale '{scale}'; choose one of {SCALES}")


def interaction_blocks(
    M: np.ndarray, kinds: Sequence[str], layers: Sequence[str], raw: np.ndarray | None = None
) -> dict[str, Panel]:
    """Cut an S x S matrix into the paper's blocks, indexed by layer.

    ``WW``: weights of layer l1 vs weights of layer l2; ``BB``: biases vs biases;
    ``WB``: row = weights of layer l1, column = bias of layer l2.

    Raises:
        ValueError: the partition has no weight/bias structure (e.g. ``by_layer``).

    Example:
        >>> M = np.arange(16.0).reshape(4, 4)
        >>> b = interaction_blocks(M, ["weight", "bias"] * 2, ["fc1", "fc1", "fc2", "fc2"])
        >>> b["WB"].z.tolist(), b["WB"].rows, b["WB"].cols
        ([[1.0, 3.0], [9.0, 11.0]], ['fc1', 'fc2'], ['fc1', 'fc2'])
    """
    raw = M if raw is None else raw
    w = [i for i, k in enumerate(kinds) if k == "weight"]
    b = [i for i, k in enumerate(kinds) if k == "bias"]
    if not w or not b:
        raise ValueError(
            "weight/bias blocks need groups of kind 'weight' and 'bias' (the "
            "canonical partition); use the full view for this partition"
        )
    out = {}
    for name, rows, cols in (("WW", w, w), ("BB", b, b), ("WB", w, b)):
        ix = np.ix_(rows, cols)
        out[name] = Panel(
            np.asarray(M)[ix],
            np.asarray(raw)[ix],
            [layers[i] for i in rows],
            [layers[i] for i in cols],
            BLOCK_NAMES[name],
        )
    return out


def full_panel(
    M: np.ndarray,
    labels: Sequence[str],
    raw: np.ndarray | None = None,
    title: str = "all groups",
    separate_layers: bool = False,
) -> Panel:
    """The whole S x S matrix as a panel labelled by group.

    ``separate_layers``: thin lines between layers (:func:`layer_bounds`).
    """
    bounds = layer_bounds(labels) if separate_layers else []
    raw = np.asarray(M if raw is None else raw)
    return Panel(np.asarray(M), raw, list(labels), list(labels), title, bounds)


def drawable(panel: Panel, side: int | None = None) -> Panel:
    """The panel with at most ``side`` x ``side`` cells (default :data:`MAX_CELLS_SIDE`).

    What a browser can draw and a page can send. A larger panel is pooled in blocks of
    ``k`` rows x ``k`` columns (``k`` the smallest that fits): each cell shows the entry
    of largest ``|z|`` in its block (its raw value too), so signs, extremes and the colour
    range survive; a row is labelled by its first group and how many more it holds.
    Smaller panels come back unchanged.

    Example:
        >>> big = full_panel(np.diag(np.arange(6.0) - 2), [f"g{i}" for i in range(6)])
        >>> small = drawable(big, side=3)
        >>> small.z.tolist(), small.rows
        ([[-2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]], ['g0 (+1)', 'g2 (+1)', 'g4 (+1)'])
    """
    side = MAX_CELLS_SIDE if side is None else side
    n_rows, n_cols = np.shape(panel.z)
    k = max(-(-n_rows // side), -(-n_cols // side))
    if k <= 1:
        return panel
    z, raw = _pool(np.asarray(panel.z, float), np.asarray(panel.raw, float), k)
    bounds = sorted({b // k for b in panel.bounds} - {0})
    return Panel(z, raw, _pooled(panel.rows, k), _pooled(panel.cols, k), panel.title, bounds)


def _pool(z: np.ndarray, raw: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Max-|z| pooling in k x k blocks, the raw values taken at the same places.

    NaN never wins over a number; one strip of k rows at a time (memory: k rows).
    """
    R, C = -(-z.shape[0] // k), -(-z.shape[1] // k)
    out_z, out_raw = np.empty((R, C)), np.empty((R, C))
    for i in range(R):
        zs, rs = (_blocks(a[i * k : (i + 1) * k], k, C) for a in (z, raw))
        at = np.argmax(np.nan_to_num(np.abs(zs), nan=-1.0), axis=-1)[:, None]
        out_z[i] = np.take_along_axis(zs, at, -1)[:, 0]
        out_raw[i] = np.take_along_axis(rs, at, -1)[:, 0]
    return out_z, out_raw


def _blocks(strip: np.ndarray, k: int, C: int) -> np.ndarray:
    """A strip of at most k rows as C blocks of k x k values (padded with zeros)."""
    padded = np.pad(strip, ((0, k - strip.shape[0]), (0, C * k - strip.shape[1])))
    return padded.reshape(k, C, k).transpose(1, 0, 2).reshape(C, k * k)


def _pooled(labels: Sequence[str], k: int) -> list[str]:
    return [
        f"{labels[i]} (+{len(labels[i : i + k]) - 1})" if len(labels[i : i + k]) > 1 else labels[i]
        for i in range(0, len(labels), k)
    ]


def layer_bounds(labels: Sequence[str]) -> list[int]:
    """Positions where a new layer starts (:func:`hessian_lens.hierarchy.layer_of`), not 0.

    Example:
        >>> layer_bounds(["b.0.q.head0", "b.0.k.head0", "b.1.q.head0", "ln_f.weight"])
        [2, 3]
    """
    layers = [layer_of(x) for x in labels]
    return [i for i in range(1, len(layers)) if layers[i] != layers[i - 1]]


def symmetric_limit(*arrays: np.ndarray) -> float:
    """``max |.|`` over arrays (1 when all are zero): the colour range is [-it, it]."""
    top = max((float(np.nanmax(np.abs(a))) for a in arrays if np.size(a)), default=0.0)
    return top if top > 0 and np.isfinite(top) else 1.0


def heatmap(
    panel: Panel,
    zmax: float | None = None,
    colorbar: str = "",
    height: int = 360,
    min_width: int = MIN_WIDTH,
) -> go.Figure:
    """A diverging heatmap of a panel (row 0 at the top), its colour bar on the right."""
    panel = drawable(panel)
    zmax = symmetric_limit(panel.z) if zmax is None else zmax
    fig = go.Figure(_trace(panel, zmax, colorbar))
    geo = Geometry.of([panel], height, min_width, bar_right=True)
    fig.update_layout(
        title=dict(text=panel.title, x=0.5, font=dict(size=TITLE_FONT)),
        height=geo.total_height,
        margin=geo.margin(),
        plot_bgcolor="white",
    )
    label_axes(fig, panel, geo.x[0], geo.y[0])
    separators(fig, panel)
    return fig


def animated_heatmap(
    frames: Sequence[tuple[int, Panel]],
    zmax: float,
    colorbar: str = "",
    height: int = 480,
    duration_ms: int = 600,
) -> go.Figure:
    """One heatmap animated across epochs, with play / pause buttons and an epoch slider.

    Both controls sit under the tick labels.
    """
    if not frames:
        raise ValueError("no epochs to animate")
    frames = [(e, drawable(p)) for e, p in frames]
    first = frames[0][1]
    fig = heatmap(first, zmax, colorbar, height)
    geo = Geometry.of([first], height, MIN_WIDTH, bar_right=True)
    fig.frames = [go.Frame(data=[_trace(p, zmax, colorbar)], name=str(e)) for e, p in frames]
    play = dict(
        frame=dict(duration=duration_ms, redraw=True), fromcurrent=True, transition=dict(duration=0)
    )
    below = -(geo.x[0].extent + 6) / geo.plot_height  # paper units: just under the tick labels
    fig.update_layout(
        title=dict(text=f"{first.title} — epoch {frames[0][0]}"),
        updatemenus=[
            dict(
                type="buttons",
                direction="left",
                x=0.0,
                xanchor="left",
                y=below - ANIMATION_SLIDER / geo.plot_height,
                yanchor="top",
                showactive=False,
                buttons=[
                    dict(label="▶ Play", method="animate", args=[None, play]),
                    dict(
                        label="❚❚ Pause",
                        method="animate",
                        args=[[None], dict(mode="immediate", frame=dict(duration=0))],
                    ),
                ],
            )
        ],
        sliders=[
            dict(
                active=0,
                y=below,
                yanchor="top",
                len=1.0,
                pad=dict(t=0, b=0),
                currentvalue=dict(prefix="epoch "),
                steps=[
                    dict(
                        label=str(e),
                        method="animate",
                        args=[
                            [str(e)],
                            dict(mode="immediate", frame=dict(duration=0, redraw=True)),
                        ],
                    )
                    for e, _ in frames
                ],
            )
        ],
        height=geo.total_height + ANIMATION_SLIDER + ANIMATION_BUTTONS,
        margin=dict(geo.margin(), b=geo.bottom + ANIMATION_SLIDER + ANIMATION_BUTTONS),
    )
    return fig


ANIMATION_SLIDER = 70  # px under the tick labels for the epoch slider (with its value)


ANIMATION_BUTTONS = 40  # px under the slider for play / pause


def panel_row(
    panels: Sequence[Panel],
    zmax: float | Sequence[float | None] | None = None,
    colorbar: str = "",
    height: int = 380,
    shared: bool = False,
    title: str = "",
    min_width: int = MIN_WIDTH,
) -> go.Figure:
    """Panels in one figure, one row: a symmetric colour scale per panel, or one shared.

    Nothing overlaps down to a figure ``min_width`` pixels wide (the page's main column
    in a 1100 px window): margins and gaps are sized from the tick labels (never left to
    plotly's automatic margins), tick labels are rotated, then thinned, until neighbours do
    not touch, each colour bar lies flat under its own panel with its title inside that
    panel's width, and a shared scale has one bar under the whole row.

    Args:
        panels: the matrices to draw, left to right.
        zmax: limits: None (each panel's own max |z|, or the max over all when shared),
            one number for every panel, or one per panel (None entries: their own).
        shared: one colour scale (and colour bar) for all panels.
        colorbar: the colour bars' title (the scale, e.g. "normalized").
        title: a title above the row (the panels keep their own).
        min_width: the narrowest figure, in pixels, that must show without overlap.
        height: the height of the heatmaps plus 80 px (the colour bars and tick labels
            add their own room).
    """
    from plotly.subplots import make_subplots

    panels = [drawable(p) for p in panels]
    limits = _row_limits(panels, zmax, shared)
    geo = Geometry.of(panels, height, min_width, title=bool(title), bar_title=bool(colorbar))
    fig = make_subplots(
        rows=1,
        cols=len(panels),
        subplot_titles=[p.title for p in panels],
        horizontal_spacing=geo.spacing,
    )
    for i, (p, limit) in enumerate(zip(panels, limits, strict=True), start=1):
        axis = "coloraxis" if shared or i == 1 else f"coloraxis{i}"
        trace = _trace(p, limit, colorbar)
        trace.update(coloraxis=axis)
        fig.add_trace(trace, row=1, col=i)
        label_axes(fig, p, geo.x[i - 1], geo.y[i - 1], row=1, col=i)
        separators(fig, p, row=1, col=i)
        if shared and i > 1:
            continue
        domain = fig.layout[f"xaxis{i if i > 1 else ''}"].domain
        if shared:
            domain = (
                fig.layout.xaxis.domain[0],
                fig.layout[f"xaxis{len(panels) if len(panels) > 1 else ''}"].domain[1],
            )
        fig.layout[axis] = dict(
            colorscale=COLORSCALE,
            cmin=-limit,
            cmax=limit,
            cmid=0,
            colorbar=flat_bar(domain, colorbar, geo.inner_width, limit),
        )
    for note in fig.layout.annotations:  # the subplot titles, sized to their panel
        note.font = dict(size=title_size(note.text, geo.panel_width))
    fig.update_layout(
        height=geo.total_height,
        margin=geo.margin(),
        plot_bgcolor="white",
        title=dict(text=title, x=0, xref="paper", xanchor="left", font=dict(size=TITLE_FONT))
        if title
        else None,
    )
    return fig


def side_by_side(
    panels: Sequence[Panel], zmax: float | None = None, colorbar: str = "", height: int = 380
) -> go.Figure:
    """Panels in one row sharing one symmetric colour scale."""
    return panel_row(panels, zmax, colorbar, height, shared=True)


def _row_limits(panels: Sequence[Panel], zmax, shared: bool) -> list[float]:
    if shared:
        top = symmetric_limit(*[p.z for p in panels]) if zmax is None else float(zmax)
        return [top] * len(panels)
    if zmax is None or isinstance(zmax, (int, float)):
        zmax = [zmax] * len(panels)
    return [
        symmetric_limit(p.z) if z is None else float(z) for p, z in zip(panels, zmax, strict=True)
    ]


def to_csv(M: np.ndarray, labels: Sequence[str]) -> str:
    """A labelled matrix as CSV (first row and column: group labels).

    Example:
        >>> print(to_csv(np.eye(2), ["a", "b"]), end="")
        ,a,b
        a,1,0
        b,0,1
    """
    lines = ["," + ",".join(labels)]
    lines += [
        f"{lab}," + ",".join(f"{v:.10g}" for v in row)
        for lab, row in zip(labels, np.asarray(M), strict=True)
    ]
    return "\n".join(lines) + "\n"


def export_config(filename: str) -> dict:
    """Plotly chart config: the camera button exports an SVG named ``filename``."""
    return {"toImageButtonOptions": {"format": "svg", "filename": filename}, "displaylogo": False}


def _trace(panel: Panel, zmax: float, colorbar: str) -> go.Heatmap:
    """The heatmap of a panel; hovering names the row and column groups and both values.

    The hover text is the axes' categories (:func:`categories`, ``%{y} × %{x}``): S + S
    strings, not one per cell (S² copies of the labels: 22 GiB for one 1 MB label).
    """
    n_rows, n_cols = np.shape(panel.z)
    return go.Heatmap(
        z=panel.z,
        x=categories(panel.cols),
        y=categories(panel.rows),
        customdata=np.dstack([panel.raw]),
        colorscale=COLORSCALE,
        zmin=-zmax,
        zmax=zmax,
        zmid=0,
        colorbar=dict(title=colorbar),
        xgap=1 if n_cols <= MAX_TICKS else 0,
        ygap=1 if n_rows <= MAX_TICKS else 0,
        hovertemplate="%{y} × %{x}<br>shown: %{z:.4g}<br>value: %{customdata[0]:.6g}"
        "<extra></extra>",
    )


def categories(labels: Sequence[str]) -> list[str]:
    """Labels as the categories of a heatmap axis: shown as they are, never taken for numbers.

    Each starts with a zero-width space (a label ``"3"`` would otherwise be category 3,
    which plotly reads before position 3 for ticks and lines); a repeated label gets one
    more zero-width space per repeat (equal categories would share one row).

    Example:
        >>> categories(["fc1", "fc1", "3"]) == ["\u200bfc1", "\u200b\u200bfc1", "\u200b3"]
        True
    """
    seen: dict[str, int] = {}
    out = []
    for label in map(str, labels):
        seen[label] = seen.get(label, 0) + 1
        out.append(ZWSP * seen[label] + label)
    return out


def _tensor(M: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(M))


SLIDER_ROOM = 96  # px above a figure for the epoch slider of :func:`epoch_slider`


def epoch_slider(figures: Sequence[go.Figure], names: Sequence[str]) -> go.Figure:
    """Figures of the same layout, one per epoch, as one figure with an epoch slider above.

    The last figure is shown first; the slider swaps in the traces and colour axes (limits
    and colour bars) of the others (plotly frames), so every figure must have the same
    traces and axes (e.g. :func:`panel_row` of the same groups). Works in a static HTML page.
    """
    if not figures or len(figures) != len(names):
        raise ValueError("epoch_slider needs one name per figure, and one figure at least")
    names = [str(n) for n in names]
    fig = go.Figure(figures[-1])
    height = fig.layout.height or 450
    margin = fig.layout.margin
    top, bottom = (margin.t or 0), (margin.b or 0)
    plot_px = max(height - top - bottom, 1)
    fig.frames = [
        go.Frame(data=[_changing(t) for t in f.data], layout=_colour_axes(f), name=n)
        for f, n in zip(figures, names, strict=True)
    ]
    step = dict(mode="immediate", frame=dict(duration=0, redraw=True), transition=dict(duration=0))
    fig.update_layout(
        height=height + SLIDER_ROOM,
        margin=dict(t=top + SLIDER_ROOM),
        title=dict(
            y=1 - (SLIDER_ROOM - 6) / (height + SLIDER_ROOM), yref="container", yanchor="top"
        ),
        sliders=[
            dict(
                active=len(names) - 1,
                x=0,
                len=1.0,
                y=1 + (top + SLIDER_ROOM - 4) / plot_px,
                yanchor="top",
                pad=dict(t=0, b=0),
                currentvalue=dict(prefix="epoch "),
                steps=[dict(label=n, method="animate", args=[[n], step]) for n in names],
            )
        ],
    )
    return fig


#: What a frame of :func:`epoch_slider` carries of each trace: what changes between epochs.
#: The rest (hover names of every cell, ticks, colour scale) is the shown figure's, once:
#: plotly merges a frame's traces into the figure's.
FRAME_KEYS = ("type", "z", "zmin", "zmax", "zmid", "customdata", "x", "y")


def _changing(trace) -> dict:
    """The part of a trace a frame needs (:data:`FRAME_KEYS`), as plotly JSON.

    Arrays go as float32 (7 significant digits, more than the hover's 6): half the bytes
    of a page with a dozen epochs.

    Example:
        >>> frame = _changing(go.Heatmap(z=[[1.0]], text=[["a × a"]], zmax=1))
        >>> sorted(frame), frame["z"].dtype
        (['type', 'z', 'zmax'], dtype('float32'))
    """
    spec = trace.to_plotly_json()
    out = {k: spec[k] for k in FRAME_KEYS if k in spec}
    for k in ("z", "customdata"):
        if k in out:
            out[k] = np.asarray(out[k], dtype=np.float32)
    return out


def _colour_axes(fig: go.Figure) -> dict:
    """The colour axes of a figure's layout (``coloraxis``, ``coloraxis2``, ...)."""
    return {k: fig.layout[k] for k in fig.layout if k.startswith("coloraxis")}


def matrix_rgb(M: np.ndarray, zmax: float | None = None, cell: int = 8) -> np.ndarray:
    """A matrix as an RGB image (``uint8``, rows x cols x 3) in the dashboard's colours.

    White at 0, red positive, blue negative, limits ``[-zmax, zmax]`` (default max |M|);
    each entry a ``cell`` x ``cell`` square (at most 1024 px a side). For loggers that take
    images (TensorBoard, W&B): no browser needed.

    Example:
        >>> img = matrix_rgb(np.array([[1.0, 0.0], [0.0, -1.0]]), cell=1)
        >>> img.shape, img[0, 0].tolist(), img[0, 1].tolist(), img[1, 1].tolist()
        ((2, 2, 3), [103, 0, 31], [255, 255, 255], [5, 48, 97])
    """
    M = np.nan_to_num(np.asarray(M, dtype=np.float64))
    top = symmetric_limit(M) if zmax is None else float(zmax)
    t = np.clip((M / top + 1) / 2, 0, 1)  # 0 .. 1, 0.5 = zero
    stops = np.array([s for s, _ in COLORSCALE])
    rgb = np.array([[int(c[i : i + 2], 16) for i in (1, 3, 5)] for _, c in COLORSCALE], float)
    channels = [np.interp(t, stops, rgb[:, k]) for k in range(3)]
    img = np.rint(np.stack(channels, axis=-1)).astype(np.uint8)
    cell = max(1, min(cell, 1024 // max(max(M.shape, default=1), 1)))
    return np.repeat(np.repeat(img, cell, axis=0), cell, axis=1)
