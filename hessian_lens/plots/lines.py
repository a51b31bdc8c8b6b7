"""Line figures: training curves, trends, learning rates, the Taylor view, the measures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from hessian_lens.plots.geometry import finite, nan_none, rgba, tick_positions
from hessian_lens.plots.heatmaps import categories
from hessian_lens.plots.style import PALETTE, TITLE_FONT

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
        values = [h.get(key) if finite(h.get(key)) else None for h in history]
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
    ticks = tick_positions(labels)
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
                y=nan_none(y),
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
        y=nan_none(hi) + nan_none(lo[::-1]),
        fill="toself",
        fillcolor=rgba(colour, 0.2),
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
