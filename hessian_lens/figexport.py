"""Figures as PNG / SVG / PDF files for papers (plotly's kaleido, drawn by local Chromium).

Kaleido (an optional dependency: ``pip install kaleido``) drives a Chromium to draw each
figure; here that is Debian's ``/usr/bin/chromium`` (``$HESSIAN_LENS_chromium_path()``), so
nothing is downloaded and it works offline. Several figures share one browser session.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import plotly.graph_objects as go

from hessian_lens.settings import chromium_path

FORMATS = ("png", "svg", "pdf")
MIME = {"png": "image/png", "svg": "image/svg+xml", "pdf": "application/pdf"}
SCALE = 2  # PNG pixels per CSS pixel: sharp in print
WIDTH = 1000  # px: a figure without its own width is drawn as wide as a page's main column


class ExportError(RuntimeError):
    """Static export is not possible here (kaleido or a browser missing)."""


def _ready() -> None:
    """Kaleido importable and pointed at the local Chromium."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        raise ExportError(
            "static export needs kaleido: pip install kaleido==1.5.0 (the HTML report and "
            "the SVG camera button of each chart work without it)"
        ) from None
    if "BROWSER_PATH" not in os.environ and Path(chromium_path()).exists():
        os.environ["BROWSER_PATH"] = chromium_path()


def _check(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown figure format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return fmt


def check_formats(formats: tuple[str, ...]) -> None:
    """Refuse an empty or unknown list of formats (before anything is written).

    Raises:
        ValueError: naming the format and the choices.
    """
    if not formats:
        raise ValueError(f"no figure format given; choose among {', '.join(FORMATS)}")
    for fmt in formats:
        _check(fmt)


def figure_bytes(fig: go.Figure, fmt: str) -> bytes:
    """One figure as PNG, SVG or PDF bytes.

    Raises:
        ValueError: an unknown format.
        ExportError: kaleido missing, or no browser to draw with.
    """
    _check(fmt)
    _ready()
    width, height = size(fig)
    try:
        return fig.to_image(
            format=fmt, scale=SCALE if fmt == "png" else 1, width=width, height=height
        )
    except (RuntimeError, OSError) as err:
        raise ExportError(
            f"static export failed ({err}); is {chromium_path()} installed?"
        ) from None


def size(fig: go.Figure) -> tuple[int, int]:
    """``(width, height)`` to draw a figure at: its layout's, else :data:`WIDTH` and 500.

    The height of a heatmap row is sized to its labels (:func:`hessian_lens.plots.panel_row`):
    drawn at kaleido's default 700 x 500 instead, a 108-group matrix was squeezed into 140
    pixels.

    Example:
        >>> size(go.Figure(layout=dict(height=900))), size(go.Figure())
        ((1000, 900), (1000, 500))
    """
    return int(fig.layout.width or WIDTH), int(fig.layout.height or 500)


def safe_stem(name: str) -> str:
    """A file-name stem from a figure name (letters, digits, ``-``, ``_``, ``.``).

    Example:
        >>> safe_stem("H̄ / epoch 3")
        'H_epoch_3'
    """
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return stem or "figure"


def write_figures(
    figures: Mapping[str, go.Figure], folder: str | Path, formats: tuple[str, ...] = FORMATS
) -> list[Path]:
    """Write each named figure in each format into ``folder`` (one browser session).

    Returns:
        The files written, ``<name>.<format>``.
    """
    check_formats(formats)
    _ready()
    import plotly.io as pio

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    figs, paths, scales, sizes = [], [], [], []
    for name, fig in figures.items():
        for fmt in formats:
            figs.append(fig)
            paths.append(folder / f"{safe_stem(name)}.{fmt}")
            scales.append(SCALE if fmt == "png" else 1)
            sizes.append(size(fig))
    try:
        pio.write_images(
            figs,
            paths,
            scale=scales,
            width=[w for w, _ in sizes],
            height=[h for _, h in sizes],
        )
    except (RuntimeError, OSError) as err:
        raise ExportError(
            f"static export failed ({err}); is {chromium_path()} installed?"
        ) from None
    return paths


def _failed(err: Exception) -> str:
    return f"static export failed ({err}); is {chromium_path()} installed?"
