"""The figures' shared look: colour scales, fonts, pixel sizes, limits."""

from __future__ import annotations

SCALES = ("raw", "normalized", "signed log")


COLORSCALE = [
    [0.0, "#053061"],
    [0.25, "#4393c3"],
    [0.5, "#ffffff"],
    [0.75, "#d6604d"],
    [1.0, "#67001f"],
]


BLOCK_NAMES = {"WW": "weights × weights", "BB": "biases × biases", "WB": "weights × biases"}


# Layout, in pixels (see Geometry)
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
