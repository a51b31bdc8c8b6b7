"""Plotly figures of the dashboard, as pure functions of arrays (testable without Streamlit).

Heatmaps use a diverging scale, white at zero, red positive, blue negative, with symmetric
limits ``[-zmax, zmax]``; hovering shows both group labels and the exact (raw) value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import plotly.graph_objects as go

from hessian_lens.heterogeneity import left_out, lower_median, type_order
from hessian_lens.hierarchy import layer_of, order
from hessian_lens.linalg import normalize

SCALES = ("raw", "normalized", "signed log")
COLORSCALE = [
    [0.0, "#053061"],
    [0.25, "#4393c3"],
    [0.5, "#ffffff"],
    [0.75, "#d6604d"],
    [1.0, "#67001f"],
]
BLOCK_NAMES = {"WW": "weights × weights", "BB": "biases × biases", "WB": "weights × biases"}

# Layout, in pixels (see _Geometry)
MIN_WIDTH = 620  # px: the narrowest figure a row must stay legible at
CHAR_EM = 0.55  # width of a tick-label character in ems (Source Sans measures 0.45-0.5)
LINE_EM = 1.4  # height of a line of text in ems
LABEL_GAP = 8  # px between an axis and its tick labels (tick mark and stand-off)
COLORBAR_ROOM = 50  # px under a row for the flat colour bars and their numbers
BAR_TITLE_ROOM = 18  # px more for a colour bar's title
TITLE_FONT = 14
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f")
BAR_FONT = 11
SMALL_FONT = 9  # tick labels of crowded axes
MAX_TICKS = 40  # more rows than this: ticks at module boundaries only
MAX_CELLS_SIDE = 1000  # a heatmap draws at most this many rows and columns (see drawable)
ZWSP = "\u200b"  # prefix of axis categories (see categories)


@dataclass
class Panel:
    """A matrix ready to draw: values shown, raw values (hover), row and column labels."""

    z: np.ndarray
    raw: np.ndarray
    rows: list[str]
    cols: list[str]
    title: str
    bounds: list[int] = field(default_factory=list)  # rows (= columns) starting a new layer


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
    geo = _Geometry.of([panel], height, min_width, bar_right=True)
    fig.update_layout(
        title=dict(text=panel.title, x=0.5, font=dict(size=TITLE_FONT)),
        height=geo.total_height,
        margin=geo.margin(),
        plot_bgcolor="white",
    )
    _label_axes(fig, panel, geo.x[0], geo.y[0])
    _separators(fig, panel)
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
    geo = _Geometry.of([first], height, MIN_WIDTH, bar_right=True)
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
    geo = _Geometry.of(panels, height, min_width, title=bool(title), bar_title=bool(colorbar))
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
        _label_axes(fig, p, geo.x[i - 1], geo.y[i - 1], row=1, col=i)
        _separators(fig, p, row=1, col=i)
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
            colorbar=_flat_bar(domain, colorbar, geo.inner_width, limit),
        )
    for note in fig.layout.annotations:  # the subplot titles, sized to their panel
        note.font = dict(size=_title_size(note.text, geo.panel_width))
    fig.update_layout(
        height=geo.total_height,
        margin=geo.margin(),
        plot_bgcolor="white",
        title=dict(text=title, x=0, xref="paper", xanchor="left", font=dict(size=TITLE_FONT))
        if title
        else None,
    )
    return fig


# ---------------------------------------------------------------------------- geometry


def _text_px(text: str, font: float) -> float:
    """A generous estimate of the width of ``text`` in pixels at ``font`` px."""
    return len(text) * CHAR_EM * font


def _title_size(text: str, width_px: float) -> int:
    """The largest title font (10..14 px) at which ``text`` fits ``width_px``."""
    for size in range(TITLE_FONT, 9, -1):
        if _text_px(text, size) <= width_px:
            return size
    return 10


@dataclass
class _Axis:
    """Tick positions and texts of one axis, their font, angle and reach from the axis (px)."""

    vals: list[int]
    texts: list[str]
    font: int
    angle: int = 0
    extent: float = 0.0


def _widest(texts: Sequence[str], font: int) -> float:
    return max((_text_px(t, font) for t in texts), default=0.0)


def _y_axis(labels: Sequence[str], row_px: float, font: int) -> _Axis:
    """Horizontal labels, thinned so that lines of text never touch."""
    vals, texts = _ticks(labels, min_gap=math.ceil(LINE_EM * font / max(row_px, 1e-9)))
    return _Axis(vals, texts, font, 0, _widest(texts, font) + LABEL_GAP)


def _x_axis(labels: Sequence[str], cell_px: float, font: int) -> _Axis:
    """The x-axis ticks: the largest font and flattest angle that fit.

    Angles 0, -45 and -90 degrees are tried so that no label is dropped and neighbours do not
    touch; when none fits, the smallest font at -90 degrees with labels thinned.
    """
    vals, texts = _ticks(labels)
    small = min(font, SMALL_FONT)
    for f in dict.fromkeys((font, small)):
        line, widest = LINE_EM * f, _widest(texts, f)
        for angle, need in ((0, widest + 6), (-45, line * 1.45), (-90, line)):
            if _ticks(labels, min_gap=math.ceil(need / max(cell_px, 1e-9)))[0] == vals:
                extent = {0: line, -45: (widest + line) * 0.72, -90: widest}[angle]
                return _Axis(vals, texts, f, angle, extent + LABEL_GAP)
    vals, texts = _ticks(labels, min_gap=math.ceil(LINE_EM * small / max(cell_px, 1e-9)))
    return _Axis(vals, texts, small, -90, _widest(texts, small) + LABEL_GAP)


@dataclass
class _Geometry:
    """Margins, gaps and tick layouts of a row of panels, decided at ``min_width`` px.

    Panels with the same row labels show them once, on the first panel.
    """

    top: int
    left: float
    right: float
    bottom: float
    spacing: float
    inner_width: float
    panel_width: float
    plot_height: float
    x: list[_Axis]
    y: list[_Axis]

    @classmethod
    def of(
        cls,
        panels: Sequence[Panel],
        height: int,
        min_width: int,
        title: bool = False,
        bar_right: bool = False,
        bar_title: bool = False,
    ) -> _Geometry:
        n = len(panels)
        font = 11 if max(max(len(p.rows), len(p.cols)) for p in panels) <= 20 else SMALL_FONT
        top = 70 if title else 40
        plot_height = max(height - 80, 120)
        y = [_y_axis(p.rows, plot_height / max(len(p.rows), 1), font) for p in panels]
        if all(p.rows == panels[0].rows for p in panels):
            y[1:] = [_Axis([], [], font) for _ in y[1:]]
        left = y[0].extent + 6
        right = 110 if bar_right else 10  # a vertical colour bar on the right
        inner = max(min_width - left - right, 100)
        gap = max((a.extent for a in y[1:]), default=0.0) + 16
        spacing = min(0.3, gap / inner) if n > 1 else 0.0
        panel_width = inner * (1 - spacing * (n - 1)) / n
        x = [_x_axis(p.cols, panel_width / max(len(p.cols), 1), font) for p in panels]
        bar = 10 if bar_right else COLORBAR_ROOM + (BAR_TITLE_ROOM if bar_title else 0)
        bottom = max(a.extent for a in x) + bar
        return cls(top, left, right, bottom, spacing, inner, panel_width, plot_height, x, y)

    @property
    def total_height(self) -> int:
        return self.top + math.ceil(self.plot_height) + math.ceil(self.bottom)

    def margin(self) -> dict:
        """Fixed margins: plotly must not grow them (that would move the colour bars)."""
        return dict(
            l=math.ceil(self.left),
            r=math.ceil(self.right),
            t=self.top,
            b=math.ceil(self.bottom),
            autoexpand=False,
        )


def short_number(value: float) -> str:
    """A colour-bar number in at most 7 characters.

    Example:
        >>> short_number(0.5), short_number(-1.5e6), short_number(0.0077), short_number(-1090.4)
        ('0.5', '-1.5e6', '7.7e-3', '-1090')
    """
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    if 1e-2 <= abs(value) < 1e3:
        return f"{value:.3g}"
    if 1e3 <= abs(value) < 1e5:
        return f"{value:.0f}"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa.removesuffix('.0')}e{int(exponent)}"


def _flat_bar(domain: Sequence[float], title: str, inner_px: float, limit: float) -> dict:
    """A horizontal colour bar at the bottom, under the x-domain ``domain`` of a subplot.

    The bar and its numbers (-limit, 0, limit: the ends are what matters) stay inside the
    domain at the narrowest width; its title goes under the numbers (plotly.js 4 draws a
    "top" title of a horizontal bar on the bar, and a "right" one on its left).
    """
    ends = [short_number(-limit), short_number(limit)]
    half = _text_px(max(ends, key=len), BAR_FONT) / 2 + 4
    width = domain[1] - domain[0]
    pad = half / inner_px
    length = max(width - 2 * pad, 0.25 * width)
    middle = length * inner_px - 20 >= 4 * half  # room for "0" between the ends
    return dict(
        title=dict(text=title, side="bottom", font=dict(size=BAR_FONT)),
        orientation="h",
        x=domain[0] + pad,
        xanchor="left",
        len=length,
        lenmode="fraction",
        y=0,
        yref="container",
        yanchor="bottom",
        xpad=0,
        ypad=8,
        thickness=10,
        tickmode="array",
        tickvals=[-limit, 0.0, limit] if middle else [-limit, limit],
        ticktext=[ends[0], "0", ends[1]] if middle else ends,
        tickfont=dict(size=BAR_FONT),
    )


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


#: The training curves: (history key, name, colour, dash, on the right axis). Each metric
#: has its own colour, so a run that logs only some of them looks like the others.
CURVES = (
    ("train_loss", "train loss", "#1f77b4", None, False),
    ("test_loss", "test loss", "#ff7f0e", "dot", False),
    ("train_acc", "train accuracy", "#2ca02c", None, True),
    ("test_acc", "test accuracy", "#d62728", "dot", True),
)


def curves(history: Sequence[Mapping], height: int = 260) -> go.Figure:
    """Training curves of a run: loss (left axis) and accuracy (right axis) per epoch."""
    from plotly.subplots import make_subplots

    fig = make_subplots(specs=[[{"secondary_y": True}]])
    epochs = [h["epoch"] for h in history]
    for key, name, colour, dash, right in CURVES:
        values = [h.get(key) if _finite(h.get(key)) else None for h in history]
        if any(v is not None for v in values):
            fig.add_trace(
                go.Scatter(
                    x=epochs,
                    y=values,
                    name=name,
                    mode="lines+markers",
                    line=dict(dash=dash, color=colour),
                ),
                secondary_y=right,
            )
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(title_text="loss", secondary_y=False)
    fig.update_yaxes(
        title_text="accuracy",
        range=[0, 1],
        tickformat=".0%",
        dtick=0.2,
        showgrid=False,
        secondary_y=True,
    )
    fig.update_layout(
        # room for both axes' numbers and titles from the start: a static export (kaleido)
        # could catch the figure before plotly's automatic margins had grown
        height=height,
        margin=dict(l=60, r=70, t=10, b=10),
        legend=dict(orientation="h", y=-0.3),
    )
    return fig


def trends(
    epochs: Sequence[int],
    series: Mapping[str, Sequence[float]],
    title: str = "",
    height: int = 300,
    log_y: bool = False,
) -> go.Figure:
    """Lines of named metrics across epochs."""
    fig = go.Figure(
        [
            go.Scatter(x=list(epochs), y=list(v), name=k, mode="lines+markers")
            for k, v in series.items()
        ]
    )
    fig.update_layout(
        title=title,
        height=height,
        margin=dict(l=10, r=10, t=40, b=10),
        xaxis_title="epoch",
        legend=dict(orientation="h", y=-0.25),
    )
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def lines(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    xlabel: str,
    ylabel: str,
    title: str = "",
    height: int = 340,
    log_y: bool = False,
) -> go.Figure:
    """Named ``(x, y)`` lines (per-group learning rates over steps, loss curves of runs)."""
    fig = go.Figure(
        [go.Scatter(x=list(x), y=list(y), name=k, mode="lines") for k, (x, y) in series.items()]
    )
    fig.update_layout(
        title=title,
        height=height,
        margin=dict(l=10, r=10, t=40, b=10),
        xaxis_title=xlabel,
        yaxis_title=ylabel,
        legend=dict(orientation="h", y=-0.25),
    )
    if log_y:
        fig.update_yaxes(type="log")
    return fig


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


def module_prefixes(labels: Sequence[str]) -> list[str]:
    """Each label's module at the shallowest depth that tells two modules apart.

    The labels themselves when no depth does.

    Example:
        >>> module_prefixes(["conv1.weight", "layer1.0.conv1.weight", "fc.bias"])
        ['conv1', 'layer1', 'fc']
        >>> module_prefixes(["layers.0.weight", "layers.0.bias", "layers.1.weight"])
        ['layers.0', 'layers.0', 'layers.1']
    """
    parts = [str(label).split(".") for label in labels]
    for depth in range(1, max((len(p) for p in parts), default=1)):
        heads = [".".join(p[:depth]) for p in parts]
        if len(set(heads)) >= 2:
            return heads
    return [str(label) for label in labels]


def _ticks(
    labels: Sequence[str], max_ticks: int = MAX_TICKS, min_gap: int = 1
) -> tuple[list[int], list[str]]:
    """Tick positions and texts that do not collide.

    Up to ``max_ticks`` labels: every one. More (deep networks, S up to a few hundred): one
    tick where the layer changes (``blocks.0``, ``blocks.1``, ``layer1.0``, ...; see
    :func:`hessian_lens.hierarchy.layer_of`) when that gives at most ``max_ticks / 2``
    layers, else where the module changes (``layer1``, ``layer2``; see
    :func:`module_prefixes`), the name as text. Then ticks closer than ``min_gap`` rows
    to the previous one kept are dropped, and the rest thinned evenly to ``max_ticks``;
    hovering still names every cell.

    Example:
        >>> _ticks(["a.w", "a.b", "b.w"], max_ticks=2)
        ([0, 2], ['a', 'b'])
        >>> _ticks(["a", "b", "c", "d", "e"], min_gap=2)
        ([0, 2, 4], ['a', 'c', 'e'])
    """
    labels = [str(label) for label in labels]
    if len(labels) <= max_ticks:
        starts, texts = list(range(len(labels))), labels
    else:
        texts = _tick_texts(labels, max_ticks)
        starts = [i for i, h in enumerate(texts) if i == 0 or h != texts[i - 1]]
    kept: list[int] = []
    for i in starts:
        if not kept or i - kept[-1] >= min_gap:
            kept.append(i)
    if len(kept) > max_ticks:
        kept = kept[:: -(-len(kept) // max_ticks)]
    return kept, [texts[i] for i in kept]


def _tick_texts(labels: Sequence[str], max_ticks: int) -> list[str]:
    """Each label's layer, or its module when there are more than ``max_ticks / 2`` layers."""
    layers = [layer_of(x) for x in labels]
    runs = sum(1 for i in range(len(layers)) if i == 0 or layers[i] != layers[i - 1])
    return layers if runs <= max_ticks // 2 else module_prefixes(labels)


def _label_axes(fig: go.Figure, panel: Panel, x: _Axis, y: _Axis, **where) -> None:
    """Group labels as ticks (positions are integers: labels may repeat across blocks).

    Margins are fixed by :class:`_Geometry`, so axes never push them (``automargin``).
    """
    common = dict(
        type="category",  # the traces' x and y are labels (categories), ticks positions
        tickmode="array",
        ticks="outside",
        ticklen=3,
        showgrid=False,
        zeroline=False,
        automargin=False,
    )
    fig.update_xaxes(
        tickvals=x.vals,
        ticktext=x.texts,
        tickangle=x.angle,
        tickfont=dict(size=x.font),
        **common,
        **where,
    )
    fig.update_yaxes(
        tickvals=y.vals,
        ticktext=y.texts,
        tickangle=0,
        tickfont=dict(size=y.font),
        autorange="reversed",
        **common,
        **where,
    )


def _separators(fig: go.Figure, panel: Panel, **where) -> None:
    """Thin grey lines between the layers of a panel (its ``bounds``), across and down."""
    n_rows, n_cols = np.shape(panel.z)
    line = dict(color="rgba(90, 90, 90, 0.55)", width=1)
    for b in panel.bounds:
        fig.add_shape(
            type="line", x0=b - 0.5, x1=b - 0.5, y0=-0.5, y1=n_rows - 0.5, line=line, **where
        )
        fig.add_shape(
            type="line", y0=b - 0.5, y1=b - 0.5, x0=-0.5, x1=n_cols - 0.5, line=line, **where
        )


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


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def rates_heatmap(
    steps: Sequence[int], labels: Sequence[str], rates: Sequence[Sequence[float | None]]
) -> go.Figure:
    """Per-group learning rates as a group x step heatmap on a log10 colour scale.

    Rates clipped to 0 (negative raw rates) and missing ones are blank cells, marked with
    a cross, so a drop to zero never looks like a small rate.
    """
    z = np.full((len(labels), len(steps)), np.nan)
    clipped_x, clipped_y = [], []
    for s, row in enumerate(rates):
        for i, value in enumerate(row):
            if value is not None and value > 0:
                z[s, i] = np.log10(value)
            else:
                clipped_x.append(steps[i])
                clipped_y.append(s)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(steps),
            y=categories(labels),  # the hover's label: S strings, not S x steps
            colorscale="Viridis",
            colorbar=dict(title="log10(lr·η)"),
            hovertemplate="%{y}<br>step %{x}<br>log10 rate %{z:.3f}<extra></extra>",
        )
    )
    if clipped_x:
        fig.add_trace(
            go.Scatter(
                x=clipped_x,
                y=clipped_y,
                mode="markers",
                marker=dict(symbol="x-thin", size=6, line=dict(width=1, color="#b2182b")),
                name="clipped to 0",
                hovertemplate="step %{x}: rate clipped to 0<extra></extra>",
            )
        )
    ticks = _ticks(labels)
    fig.update_yaxes(
        type="category",
        tickmode="array",
        tickvals=ticks[0],
        ticktext=ticks[1],
        autorange="reversed",
    )
    fig.update_layout(
        title="per-group learning rates lr·η_s at each recomputation (× = clipped to 0)",
        height=max(320, 22 * len(labels) + 120),
        margin=dict(l=10, r=10, t=40, b=10),
        xaxis_title="step",
        legend=dict(orientation="h", y=-0.2),
    )
    return fig


def taylor_figure(
    t: Sequence[float], loss: Sequence[float], polynomials, title: str = ""
) -> go.Figure:
    """The true loss along a step against its Taylor polynomials of orders 1..k.

    The y range follows the true loss (with margin), so a polynomial that runs off does
    not flatten the curve that matters.
    """
    fig = go.Figure(
        go.Scatter(
            x=list(t),
            y=list(loss),
            name="true loss L(θ + t·v)",
            mode="lines+markers",
            line=dict(color="black", width=3),
        )
    )
    dashes = ["dot", "dash", "dashdot", "longdash", "solid"]
    for k, values in enumerate(polynomials, start=1):
        fig.add_trace(
            go.Scatter(
                x=list(t),
                y=list(values),
                name=f"Taylor order {k}",
                mode="lines",
                line=dict(dash=dashes[(k - 1) % len(dashes)]),
            )
        )
    finite = [v for v in loss if np.isfinite(v)]
    if finite:
        lo, hi = min(finite), max(finite)
        pad = max(0.25 * (hi - lo), 0.05 * abs(hi), 1e-3)
        fig.update_yaxes(range=[lo - pad, hi + pad])
    fig.update_layout(
        title=title or "loss along the step (t = 1: the step taken)",
        height=420,
        margin=dict(l=10, r=10, t=40, b=10),
        xaxis_title="t",
        yaxis_title="loss",
        legend=dict(orientation="h", y=-0.25),
    )
    fig.add_vline(x=1.0, line=dict(color="#999", dash="dot"))
    return fig


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


# ---------------------------------------------------------------------------- heterogeneity
#: Colours of the attention heads (head h gets HEAD_COLOURS[h % len]); groups without a head.
HEAD_COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
)
NO_HEAD = "#34495e"
NEGATIVE = "#d62728"
#: One colour per block type, the same in every figure (unknown types: grey).
TYPE_COLOURS = {
    "q": "#1f77b4",
    "k": "#ff7f0e",
    "v": "#2ca02c",
    "o": "#d62728",
    "qkv": "#9467bd",
    "mlp": "#8c564b",
    "embedding": "#e377c2",
    "norm": "#17becf",
    "output": "#bcbd22",
    "conv": "#1f77b4",
    "linear": "#ff7f0e",
    "bias": "#7f7f7f",
    "other": "#555555",
}
STRIP_WIDTH = 0.6  # of a block type's column: the groups spread left to right in network order


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


def _strip_traces(labels, values, blocks, heads, seen: set | None = None) -> tuple[list, list]:
    """Box and point traces of a curvature strip, and the block types (x = 0, 1, ...)."""
    seen = set() if seen is None else seen
    y, v = log_abs(values), np.asarray(values, dtype=np.float64)
    types = type_order(blocks)
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
    return traces, types


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
    title: str = "curvature along the gradient, per group",
    height: int = 420,
) -> go.Figure:
    """log10 |c_s| of every group, one column per block type, points coloured by head.

    A box per type summarises its groups; inside a column the groups run left to right in
    network order; negative curvatures are ringed in red; hovering gives the label and the
    signed value. Groups without a curvature (NaN: ``ḡ_s = 0``) or with ``c_s = 0`` have
    no logarithm: they are left out and the subtitle says how many.
    """
    traces, types = _strip_traces(labels, values, blocks, heads)
    fig = go.Figure(traces)
    fig.update_layout(
        title=_with_note(title, values),
        height=height,
        margin=dict(l=10, r=10, t=70, b=10),
        yaxis_title="log10 |c_s|",
        xaxis=_type_axis(types, blocks),
        legend=dict(orientation="h", y=-0.15),
    )
    return _auto_margins(fig)


def block_trends(
    x: Sequence[float],
    values: np.ndarray,
    blocks: Sequence[str],
    labels: Sequence[str],
    mode: str = "band",
    title: str = "median |c_s| of each block type across epochs",
    height: int = 400,
) -> go.Figure:
    """Each block type's median |c_s| across checkpoints (log y).

    The median is :func:`hessian_lens.heterogeneity.lower_median`, as in the spreads.

    Args:
        x: the checkpoints' epochs.
        values: ``c_s``, groups x checkpoints (NaN where undefined).
        blocks: the block type of every group.
        labels: the group labels (hover of the thin lines).
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
    for t in type_order(blocks):
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
                y=_nan_none(_column_stat(rows, lower_median)),
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
    return _auto_margins(fig)


def _auto_margins(fig: go.Figure) -> go.Figure:
    """Margins that grow to hold the tick labels and axis titles (small, unlike heatmap rows)."""
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)
    return fig


def _column_stat(rows: np.ndarray, stat) -> np.ndarray:
    """``stat`` of each column over its finite entries (NaN for a column without any)."""
    out = np.full(rows.shape[1], np.nan)
    for j in range(rows.shape[1]):
        col = rows[:, j][np.isfinite(rows[:, j])]
        if col.size:
            out[j] = stat(col)
    return out


def _nan_none(a) -> list:
    return [float(v) if np.isfinite(v) else None for v in np.asarray(a, dtype=np.float64)]


def _band(fig: go.Figure, x: list, rows: np.ndarray, block: str, colour: str) -> None:
    lo, hi = _column_stat(rows, np.min), _column_stat(rows, np.max)
    common = dict(x=x, mode="lines", line=dict(width=0), legendgroup=block, showlegend=False)
    fig.add_trace(go.Scatter(y=_nan_none(hi), hoverinfo="skip", **common))
    fig.add_trace(
        go.Scatter(
            y=_nan_none(lo),
            fill="tonexty",
            fillcolor=_rgba(colour, 0.15),
            hoverinfo="skip",
            **common,
        )
    )


def _thin(x: list, y: np.ndarray, label: str, block: str, colour: str) -> go.Scatter:
    return go.Scatter(
        x=x,
        y=_nan_none(y),
        mode="lines",
        legendgroup=block,
        showlegend=False,
        line=dict(color=_rgba(colour, 0.35), width=1),
        hovertemplate=f"{label}: |c| %{{y:.4g}} at epoch %{{x}}<extra></extra>",
    )


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def curvature_heatmap(
    labels: Sequence[str],
    names: Sequence[str],
    values: np.ndarray,
    title: str = "log10 |c_s|, group by checkpoint",
) -> go.Figure:
    """log10 |c_s| as a groups x checkpoints heatmap, groups layer -> head -> type.

    The rows follow :func:`hessian_lens.hierarchy.order`; cells without a logarithm
    (``ḡ_s = 0`` or ``c_s = 0``) are blank, negative curvatures are marked with a cross;
    hovering gives the label, the checkpoint and the signed value. Past
    :data:`MAX_TICKS` groups the y ticks name the layers where they start.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (len(labels), len(names)):
        raise ValueError(
            f"values must be groups x checkpoints {len(labels), len(names)}, got {values.shape}"
        )
    rows = order(labels, "head")
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
    return _auto_margins(fig)


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
        traces, types = _strip_traces(side.labels, side.values, side.blocks, side.heads, seen)
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
                    y=_nan_none(ys),
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
    return _auto_margins(fig)


# ---------------------------------------------------------------------------- measures
def spectra_figure(
    grid: np.ndarray, densities: Mapping[str, np.ndarray], title: str = "", height: int = 340
) -> go.Figure:
    """Spectral densities of blocks on one grid (log density: the tails show)."""
    floor = max((float(np.max(d)) for d in densities.values()), default=1.0) * 1e-6
    fig = go.Figure(
        [
            go.Scatter(x=grid, y=np.maximum(d, floor), name=name, mode="lines")
            for name, d in densities.items()
        ]
    )
    fig.update_layout(
        title=dict(text=title, x=0.5, font=dict(size=TITLE_FONT)),
        height=height,
        margin=dict(l=10, r=10, t=40, b=10),
        xaxis_title="eigenvalue",
        yaxis_title="density",
        legend=dict(orientation="h", y=-0.3),
    )
    fig.update_yaxes(type="log", exponentformat="power")
    return fig


def estimate_trends(
    epochs: Sequence[float],
    series: Mapping[str, tuple[Sequence[float], Sequence[float] | None]],
    title: str = "",
    height: int = 300,
) -> go.Figure:
    """Named estimates across epochs, each with a band of two standard errors when given."""
    fig = go.Figure()
    for i, (name, (values, se)) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        y = np.asarray(values, dtype=float)
        if se is not None:
            half = 2 * np.asarray(se, dtype=float)
            fig.add_trace(_band_trace(list(epochs), y - half, y + half, colour, name))
        fig.add_trace(
            go.Scatter(
                x=list(epochs),
                y=_nan_none(y),
                name=name,
                mode="lines+markers",
                line=dict(color=colour),
            )
        )
    fig.update_layout(
        title=dict(text=title, x=0.5, font=dict(size=TITLE_FONT)),
        height=height,
        margin=dict(l=10, r=10, t=40, b=10),
        xaxis_title="epoch",
        legend=dict(orientation="h", y=-0.3),
    )
    return fig


def _band_trace(x: list, lo: np.ndarray, hi: np.ndarray, colour: str, name: str) -> go.Scatter:
    """A filled band from ``lo`` to ``hi`` (one closed polygon)."""
    return go.Scatter(
        x=x + x[::-1],
        y=_nan_none(hi) + _nan_none(lo[::-1]),
        fill="toself",
        fillcolor=_rgba(colour, 0.2),
        line=dict(width=0),
        hoverinfo="skip",
        name=f"{name} ± 2 se",
        showlegend=False,
    )


def measure_curves(series: Mapping[str, Sequence[float]], curvature: str = "hessian") -> dict:
    """``lambda`` (λ_max, λ_min) and ``trace`` (tr ± 2 se) figures of stored measures.

    ``series``: :func:`hessian_lens.measured.series`; a figure only where values exist.
    """
    what = "G" if curvature == "ggn" else "H"
    out = {}
    if not np.isnan(np.asarray(series["lmax"], dtype=float)).all():
        out["lambda"] = estimate_trends(
            series["epoch"],
            {"λ_max": (series["lmax"], None), "λ_min": (series["lmin"], None)},
            title=f"extreme eigenvalues of {what} (Lanczos)",
        )
    if not np.isnan(np.asarray(series["trace_total"], dtype=float)).all():
        out["trace"] = estimate_trends(
            series["epoch"],
            {f"tr({what})": (series["trace_total"], series["trace_total_se"])},
            title=f"tr({what}) = Σ_s tr({what}_ss), Hutchinson ± 2 se",
        )
    return out
