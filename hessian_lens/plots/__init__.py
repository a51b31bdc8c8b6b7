"""Plotly figures of the dashboard, as pure functions of arrays (testable without Streamlit).

Heatmaps use a diverging scale, white at zero, red positive, blue negative, with symmetric
limits ``[-zmax, zmax]``; hovering shows both group labels and the exact (raw) value.

One module per kind of figure (:mod:`~hessian_lens.plots.heatmaps`,
:mod:`~hessian_lens.plots.lines`, :mod:`~hessian_lens.plots.curvature`), on a shared look
(:mod:`~hessian_lens.plots.style`) and layout arithmetic (:mod:`~hessian_lens.plots.geometry`).
The figures know no domain rule: orderings (block types, rows) come in as arguments.
"""

from hessian_lens.plots.curvature import (  # noqa: F401
    HALF_WIDTH_TYPES,
    HEATMAP_FRAME,
    StripSide,
    block_trends,
    curvature_heatmap,
    curvature_strip,
    heterogeneity_comparison,
    left_out_note,
    log_abs,
)
from hessian_lens.plots.geometry import (  # noqa: F401
    Panel,
    module_prefixes,
    short_number,
)
from hessian_lens.plots.heatmaps import (  # noqa: F401
    ANIMATION_BUTTONS,
    ANIMATION_SLIDER,
    FRAME_KEYS,
    SLIDER_ROOM,
    animated_heatmap,
    categories,
    drawable,
    epoch_slider,
    export_config,
    full_panel,
    heatmap,
    interaction_blocks,
    layer_bounds,
    matrix_rgb,
    panel_row,
    side_by_side,
    symmetric_limit,
    to_csv,
    transform,
)
from hessian_lens.plots.lines import (  # noqa: F401
    CURVES,
    curves,
    estimate_trends,
    lines,
    measure_curves,
    rates_heatmap,
    spectra_figure,
    taylor_figure,
    trends,
)
from hessian_lens.plots.style import (  # noqa: F401
    BAR_FONT,
    BAR_TITLE_ROOM,
    BLOCK_NAMES,
    CHAR_EM,
    COLORBAR_ROOM,
    COLORSCALE,
    HEAD_COLOURS,
    LABEL_GAP,
    LINE_EM,
    MAX_CELLS_SIDE,
    MAX_TICKS,
    MIN_WIDTH,
    NEGATIVE,
    NO_HEAD,
    PALETTE,
    SCALES,
    SMALL_FONT,
    STRIP_WIDTH,
    TITLE_FONT,
    TYPE_COLOURS,
    ZWSP,
)
