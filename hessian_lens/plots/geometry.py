"""Layout arithmetic of the figures: panels, text widths, axes, margins, ticks, separators."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import plotly.graph_objects as go

from hessian_lens.labels import layer_of
from hessian_lens.plots.style import (
    BAR_FONT,
    BAR_TITLE_ROOM,
    CHAR_EM,
    COLORBAR_ROOM,
    LABEL_GAP,
    LINE_EM,
    MAX_TICKS,
    SMALL_FONT,
    TITLE_FONT,
)


@dataclass
class Panel:
    """A matrix ready to draw: values shown, raw values (hover), row and column labels."""

    z: np.ndarray
    raw: np.ndarray
    rows: list[str]
    cols: list[str]
    title: str
    bounds: list[int] = field(default_factory=list)  # rows (= columns) starting a new layer


def _text_px(text: str, font: float) -> float:
    """A generous estimate of the width of ``text`` in pixels at ``font`` px."""
    return len(text) * CHAR_EM * font


def title_size(text: str, width_px: float) -> int:
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
    vals, texts = tick_positions(labels, min_gap=math.ceil(LINE_EM * font / max(row_px, 1e-9)))
    return _Axis(vals, texts, font, 0, _widest(texts, font) + LABEL_GAP)


def _x_axis(labels: Sequence[str], cell_px: float, font: int) -> _Axis:
    """The x-axis ticks: the largest font and flattest angle that fit.

    Angles 0, -45 and -90 degrees are tried so that no label is dropped and neighbours do not
    touch; when none fits, the smallest font at -90 degrees with labels thinned.
    """
    vals, texts = tick_positions(labels)
    small = min(font, SMALL_FONT)
    for f in dict.fromkeys((font, small)):
        line, widest = LINE_EM * f, _widest(texts, f)
        for angle, need in ((0, widest + 6), (-45, line * 1.45), (-90, line)):
            if tick_positions(labels, min_gap=math.ceil(need / max(cell_px, 1e-9)))[0] == vals:
                extent = {0: line, -45: (widest + line) * 0.72, -90: widest}[angle]
                return _Axis(vals, texts, f, angle, extent + LABEL_GAP)
    vals, texts = tick_positions(labels, min_gap=math.ceil(LINE_EM * small / max(cell_px, 1e-9)))
    return _Axis(vals, texts, small, -90, _widest(texts, small) + LABEL_GAP)


@dataclass
class Geometry:
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
    def of(  # noqa: D102 (the class docstring describes the layout)
        cls,
        panels: Sequence[Panel],
        height: int,
        min_width: int,
        title: bool = False,
        bar_right: bool = False,
        bar_title: bool = False,
    ) -> Geometry:
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
        """The figure's height in px: title room, plot area and the room below."""
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


def flat_bar(domain: Sequence[float], title: str, inner_px: float, limit: float) -> dict:
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


def tick_positions(
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
        >>> tick_positions(["a.w", "a.b", "b.w"], max_ticks=2)
        ([0, 2], ['a', 'b'])
        >>> tick_positions(["a", "b", "c", "d", "e"], min_gap=2)
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


def label_axes(fig: go.Figure, panel: Panel, x: _Axis, y: _Axis, **where) -> None:
    """Group labels as ticks (positions are integers: labels may repeat across blocks).

    Margins are fixed by :class:`Geometry`, so axes never push them (``automargin``).
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


def separators(fig: go.Figure, panel: Panel, **where) -> None:
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


def finite(value) -> bool:
    """Whether ``value`` is a finite real number (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def auto_margins(fig: go.Figure) -> go.Figure:
    """Margins that grow to hold the tick labels and axis titles (small, unlike heatmap rows)."""
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)
    return fig


def nan_none(a) -> list:
    """Floats with NaN and infinities as ``None`` (plotly's gaps)."""
    return [float(v) if np.isfinite(v) else None for v in np.asarray(a, dtype=np.float64)]


def rgba(hex_colour: str, alpha: float) -> str:
    """A ``#rrggbb`` colour with transparency ``alpha``, as plotly's ``rgba(...)``."""
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"
