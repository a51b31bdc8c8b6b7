"""Heatmaps as labelled pictures (RGB arrays) for loggers that take images.

TensorBoard, W&B and Aim show images, not plotly figures, and a training loop has no
browser to draw one with. :func:`heatmap_image` draws the matrix with Pillow (a dependency
of torchvision, with its bundled font): the dashboard's colours (white 0, red > 0, blue
< 0), a title, group names on both axes (a tick where each layer starts when the names
would not fit, :func:`hessian_lens.plots.layer_bounds`), lines between layers and a colour
bar with its limits. Text is kept to ASCII: the bundled font has no combining marks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hessian_lens import plots
from hessian_lens.hierarchy import layer_of

FONT_PX = 12
LINE_PX = 16  # a line of text
SIDE_PX = 640  # the matrix's side, about (whole cells of 2 to 32 px)
PAD = 10
BAR_PX = 12  # the colour bar's thickness
INK = (34, 34, 34)
RULE = (140, 140, 140)  # lines between layers


@dataclass
class HeatmapImage:
    """A drawn heatmap: its pixels and where the matrix lies in them.

    Attributes:
        pixels: (height, width, 3) uint8 RGB.
        left, top: the pixel of the matrix's first cell's top-left corner.
        cell: the side of one cell in pixels.
    """

    pixels: np.ndarray
    left: int
    top: int
    cell: int


def ticks(labels: Sequence[str], cell: int) -> list[tuple[int, str]]:
    """``(position, text)`` of the axis labels.

    Every group when a line of text fits a cell, else one where each layer starts (those
    too close to the one before left out).

    Example:
        >>> ticks(["a.0.w", "a.0.b", "a.1.w", "a.1.b"], cell=20)
        [(0, 'a.0.w'), (1, 'a.0.b'), (2, 'a.1.w'), (3, 'a.1.b')]
        >>> ticks(["a.0.w", "a.0.b", "a.1.w", "a.1.b"], cell=8)
        [(0, 'a.0'), (2, 'a.1')]
    """
    labels = [str(x) for x in labels]
    if cell >= LINE_PX:
        return list(enumerate(labels))
    layers = [layer_of(x) for x in labels]
    gap = -(-LINE_PX // max(cell, 1))
    out: list[tuple[int, str]] = []
    for i, layer in enumerate(layers):
        if (i == 0 or layer != layers[i - 1]) and (not out or i - out[-1][0] >= gap):
            out.append((i, layer))
    return out


def heatmap_image(
    M: np.ndarray, labels: Sequence[str], title: str = "", zmax: float | None = None
) -> HeatmapImage:
    """The S x S matrix ``M`` drawn with its labels, layer lines and colour bar.

    Args:
        M: the values, coloured on ``[-zmax, zmax]`` (default max |M|).
        labels: one name per row (= column).
        title: above the matrix.
        zmax: the colour limit.
    """
    from PIL import Image, ImageDraw, ImageFont

    M = np.asarray(M, dtype=np.float64)
    n = max(M.shape[0], 1)
    cell = int(np.clip(SIDE_PX // n, 2, 32))
    font = ImageFont.load_default(size=FONT_PX)
    marks = ticks(labels, cell)
    reach = max((_width(font, text) for _, text in marks), default=0) + PAD
    left, top = reach + PAD, LINE_PX * 2 + PAD
    side = cell * n
    bottom = top + side + reach + PAD + BAR_PX + LINE_PX + PAD
    image = Image.new("RGB", (left + side + 3 * PAD, bottom), "white")
    limit = plots.symmetric_limit(M) if zmax is None else float(zmax)
    cells = Image.fromarray(plots.matrix_rgb(M, zmax=limit, cell=1)).resize(
        (side, side), Image.Resampling.NEAREST
    )
    image.paste(cells, (left, top))
    draw = ImageDraw.Draw(image)
    draw.text((left, PAD), _ascii(title), font=font, fill=INK)
    _layer_lines(draw, labels, left, top, cell)
    for i, text in marks:
        middle = top + i * cell + cell // 2
        draw.text((left - PAD // 2, middle), _ascii(text), font=font, fill=INK, anchor="rm")
        _column_label(image, _ascii(text), font, left + i * cell + cell // 2, top + side + 4)
    _colour_bar(image, draw, font, left, top + side + reach + PAD, side, limit)
    return HeatmapImage(np.asarray(image), left, top, cell)


def _width(font, text: str) -> int:
    box = font.getbbox(_ascii(text))
    return int(box[2] - box[0])


def _ascii(text: str) -> str:
    """``text`` as the bundled font can draw it (other characters become ``?``)."""
    return str(text).encode("ascii", "replace").decode("ascii")


def _layer_lines(draw, labels: Sequence[str], left: int, top: int, cell: int) -> None:
    side = cell * len(labels)
    for b in plots.layer_bounds(labels):
        at = b * cell
        draw.line([(left, top + at), (left + side - 1, top + at)], fill=RULE)
        draw.line([(left + at, top), (left + at, top + side - 1)], fill=RULE)


def _column_label(image, text: str, font, x_mid: int, y_top: int) -> None:
    """A column's label written downwards, centred on its column."""
    from PIL import Image, ImageDraw

    width = _width(font, text) + 2
    strip = Image.new("RGB", (width, LINE_PX), "white")
    ImageDraw.Draw(strip).text((0, LINE_PX // 2), text, font=font, fill=INK, anchor="lm")
    turned = strip.rotate(90, expand=True)  # reads bottom-up, its top at the matrix
    image.paste(turned, (x_mid - LINE_PX // 2, y_top))


def _colour_bar(image, draw, font, left: int, top: int, side: int, limit: float) -> None:
    """A flat colour bar under the matrix, its ends and middle numbered."""
    from PIL import Image

    ramp = np.linspace(-limit, limit, max(side, 2))[None, :]
    bar = Image.fromarray(plots.matrix_rgb(ramp, zmax=limit, cell=1)).resize((side, BAR_PX))
    image.paste(bar, (left, top))
    y = top + BAR_PX + 2
    for x, value, anchor in ((left, -limit, "la"), (left + side // 2, 0.0, "ma"),
                             (left + side, limit, "ra")):  # fmt: skip
        draw.text((x, y), plots.short_number(value), font=font, fill=INK, anchor=anchor)
