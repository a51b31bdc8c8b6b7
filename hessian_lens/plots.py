"""Plotly figures of the dashboard, as pure functions of arrays (testable without Streamlit).

Heatmaps use a diverging scale, white at zero, red positive, blue negative, with symmetric
limits ``[-zmax, zmax]``; hovering shows both group labels and the exact (raw) value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

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


@dataclass
class Panel:
    """A matrix ready to draw: values shown, raw values (hover), row and column labels."""

    z: np.ndarray
    raw: np.ndarray
    rows: list[str]
    cols: list[str]
    title: str


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
    M: np.ndarray, labels: Sequence[str], raw: np.ndarray | None = None, title: str = "all groups"
) -> Panel:
    """The whole S x S matrix as a panel labelled by group."""
    return Panel(
        np.asarray(M), np.asarray(M if raw is None else raw), list(labels), list(labels), title
    )


def symmetric_limit(*arrays: np.ndarray) -> float:
    """``max |.|`` over arrays (1 when all are zero): the colour range is [-it, it]."""
    top = max((float(np.nanmax(np.abs(a))) for a in arrays if np.size(a)), default=0.0)
    return top if top > 0 and np.isfinite(top) else 1.0


def heatmap(
    panel: Panel, zmax: float | None = None, colorbar: str = "", height: int = 360
) -> go.Figure:
    """A diverging heatmap of a panel (row 0 at the top)."""
    zmax = symmetric_limit(panel.z) if zmax is None else zmax
    fig = go.Figure(_trace(panel, zmax, colorbar))
    fig.update_layout(
        title=dict(text=panel.title, x=0.5, font=dict(size=14)),
        height=height,
        margin=dict(l=10, r=10, t=40, b=10),
        plot_bgcolor="white",
    )
    _label_axes(fig, panel)
    return fig


def animated_heatmap(
    frames: Sequence[tuple[int, Panel]],
    zmax: float,
    colorbar: str = "",
    height: int = 480,
    duration_ms: int = 600,
) -> go.Figure:
    """One heatmap animated across epochs: play / pause buttons and an epoch slider."""
    if not frames:
        raise ValueError("no epochs to animate")
    first = frames[0][1]
    fig = heatmap(first, zmax, colorbar, height)
    fig.frames = [go.Frame(data=[_trace(p, zmax, colorbar)], name=str(e)) for e, p in frames]
    play = dict(
        frame=dict(duration=duration_ms, redraw=True), fromcurrent=True, transition=dict(duration=0)
    )
    fig.update_layout(
        title=dict(text=f"{first.title} — epoch {frames[0][0]}"),
        updatemenus=[
            dict(
                type="buttons",
                direction="left",
                x=0.0,
                y=-0.12,
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
                y=-0.05,
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
        margin=dict(l=10, r=10, t=40, b=90),
    )
    return fig


def panel_row(
    panels: Sequence[Panel],
    zmax: float | Sequence[float | None] | None = None,
    colorbar: str = "",
    height: int = 380,
    shared: bool = False,
    title: str = "",
) -> go.Figure:
    """Panels in one figure, one row: a symmetric colour scale per panel, or one shared.

    Each colour bar lies flat under its own panel (never over a neighbour's tick labels);
    a shared scale has one bar under the whole row.

    Args:
        zmax: limits: None (each panel's own max |z|, or the max over all when shared),
            one number for every panel, or one per panel (None entries: their own).
        shared: one colour scale (and colour bar) for all panels.
        title: a title above the row (the panels keep their own).
    """
    from plotly.subplots import make_subplots

    limits = _row_limits(panels, zmax, shared)
    longest = max((len(label) for p in panels for label in _ticks(p.rows)[1]), default=4)
    fig = make_subplots(
        rows=1,
        cols=len(panels),
        subplot_titles=[p.title for p in panels],
        horizontal_spacing=min(0.2, 0.03 + 0.0075 * longest) if len(panels) > 1 else 0.0,
    )
    for i, (p, limit) in enumerate(zip(panels, limits, strict=True), start=1):
        axis = "coloraxis" if shared or i == 1 else f"coloraxis{i}"
        trace = _trace(p, limit, colorbar)
        trace.update(coloraxis=axis)
        fig.add_trace(trace, row=1, col=i)
        _label_axes(fig, p, row=1, col=i)
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
            colorbar=_flat_bar(domain, colorbar),
        )
    top = 70 if title else 40
    fig.update_layout(
        height=height + COLORBAR_ROOM,
        margin=dict(l=10, r=10, t=top, b=COLORBAR_ROOM),
        plot_bgcolor="white",
        title=dict(text=title, x=0, xref="paper", xanchor="left", font=dict(size=14))
        if title
        else None,
    )
    return fig


COLORBAR_ROOM = 70  # pixels under a row of heatmaps for the flat colour bars


def _flat_bar(domain: Sequence[float], title: str) -> dict:
    """A horizontal colour bar under the x-domain ``domain`` of a subplot."""
    width = domain[1] - domain[0]
    return dict(
        title=dict(text=title, side="right"),
        orientation="h",
        x=(domain[0] + domain[1]) / 2,
        xanchor="center",
        len=0.9 * width,
        lenmode="fraction",
        y=0,
        yref="container",
        yanchor="bottom",
        thickness=10,
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


def curves(history: Sequence[Mapping], height: int = 260) -> go.Figure:
    """Training curves of a run: loss (left axis) and accuracy (right axis) per epoch."""
    from plotly.subplots import make_subplots

    fig = make_subplots(specs=[[{"secondary_y": True}]])
    epochs = [h["epoch"] for h in history]
    for key, name, dash, right in (
        ("train_loss", "train loss", None, False),
        ("test_loss", "test loss", "dot", False),
        ("train_acc", "train accuracy", None, True),
        ("test_acc", "test accuracy", "dot", True),
    ):
        values = [h.get(key) if _finite(h.get(key)) else None for h in history]
        if any(v is not None for v in values):
            fig.add_trace(
                go.Scatter(
                    x=epochs, y=values, name=name, mode="lines+markers", line=dict(dash=dash)
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
        height=height, margin=dict(l=10, r=10, t=10, b=10), legend=dict(orientation="h", y=-0.3)
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


MAX_TICKS = 40  # more rows than this: ticks at module boundaries only


def _ticks(labels: Sequence[str], max_ticks: int = MAX_TICKS) -> tuple[list[int], list[str]]:
    """Tick positions and texts that do not collide.

    Up to ``max_ticks`` labels: every one. More (deep networks, S up to a few hundred): one
    tick where the top-level module changes (``layer1``, ``layer2``, ...), the prefix as
    text, thinned evenly if still too many; hovering still names every cell.

    Example:
        >>> _ticks(["a.w", "a.b", "b.w"], max_ticks=2)
        ([0, 2], ['a', 'b'])
    """
    labels = list(labels)
    if len(labels) <= max_ticks:
        return list(range(len(labels))), labels
    heads = [label.split(".")[0] for label in labels]
    starts = [i for i, h in enumerate(heads) if i == 0 or h != heads[i - 1]]
    if len(starts) > max_ticks:
        step = -(-len(starts) // max_ticks)
        starts = starts[::step]
    return starts, [heads[i] for i in starts]


def _label_axes(fig: go.Figure, panel: Panel, **where) -> None:
    """Group labels as ticks (positions are integers: labels may repeat across blocks)."""
    cols, rows = _ticks(panel.cols), _ticks(panel.rows)
    size = 11 if max(len(panel.cols), len(panel.rows)) <= 20 else 9
    fig.update_xaxes(
        tickmode="array",
        tickvals=cols[0],
        ticktext=cols[1],
        tickangle=-45,
        tickfont=dict(size=size),
        showgrid=False,
        zeroline=False,
        **where,
    )
    fig.update_yaxes(
        tickmode="array",
        tickvals=rows[0],
        ticktext=rows[1],
        tickfont=dict(size=size),
        autorange="reversed",
        showgrid=False,
        zeroline=False,
        **where,
    )


def _trace(panel: Panel, zmax: float, colorbar: str) -> go.Heatmap:
    n_rows, n_cols = np.shape(panel.z)
    text = np.array(
        [[f"{panel.rows[i]} × {panel.cols[j]}" for j in range(n_cols)] for i in range(n_rows)]
    )
    return go.Heatmap(
        z=panel.z,
        x=list(range(n_cols)),
        y=list(range(n_rows)),
        customdata=np.dstack([panel.raw]),
        text=text,
        colorscale=COLORSCALE,
        zmin=-zmax,
        zmax=zmax,
        zmid=0,
        colorbar=dict(title=colorbar),
        xgap=1 if n_cols <= MAX_TICKS else 0,
        ygap=1 if n_rows <= MAX_TICKS else 0,
        hovertemplate="%{text}<br>shown: %{z:.4g}<br>value: %{customdata[0]:.6g}<extra></extra>",
    )


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
            y=list(range(len(labels))),
            text=[[labels[s]] * len(steps) for s in range(len(labels))],
            colorscale="Viridis",
            colorbar=dict(title="log10(lr·η)"),
            hovertemplate="%{text}<br>step %{x}<br>log10 rate %{z:.3f}<extra></extra>",
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
    fig.update_yaxes(tickmode="array", tickvals=ticks[0], ticktext=ticks[1], autorange="reversed")
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
