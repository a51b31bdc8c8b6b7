"""Whether a row of heatmap panels would overlap, judged from its plotly layout alone.

The same estimates of text size as :mod:`hessian_lens.plots` (characters of CHAR_EM ems, lines
of LINE_EM ems) at the narrowest width a page draws (plots.MIN_WIDTH); what Chromium really
draws is checked by tests/e2e/layout.py.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from hessian_lens import plots
from tests.apptools import heatmap_z


def _axis_names(fig):
    return sorted(
        (k for k in fig.layout.to_plotly_json() if k.startswith("xaxis")),
        key=lambda k: int(k[5:] or 1),
    )


def layout_problems(fig, width: int = plots.MIN_WIDTH) -> list[str]:
    """What would overlap at ``width`` pixels, from the figure's layout alone (a
    ``go.Figure`` or its JSON, as a page's chart spec)."""
    spec = fig.to_plotly_json() if isinstance(fig, go.Figure) else fig
    shapes = [heatmap_z({"data": [d]}).shape for d in spec["data"]]
    fig = go.Figure(fig)
    lay = fig.layout
    out = []
    m = lay.margin
    if m.autoexpand is not False:
        out.append("margins may grow (colour bars and labels would move)")
    inner_w = width - m.l - m.r
    plot_h = lay.height - m.t - m.b
    line = plots.LINE_EM
    names = _axis_names(fig)
    domains = [lay[x].domain for x in names]
    for i, x in enumerate(names):
        xa, ya = lay[x], lay["y" + x[1:]]
        if xa.automargin or ya.automargin:
            out.append(f"{x}: automatic margins")
        n_rows, n_cols = shapes[i]
        row_px = plot_h / n_rows
        col_px = (domains[i][1] - domains[i][0]) * inner_w / n_cols
        yfont, xfont = ya.tickfont.size, xa.tickfont.size
        if any(np.diff(ya.tickvals) * row_px < line * yfont):
            out.append(f"{x}: y tick labels touch")
        need = {
            0: max(len(t) for t in xa.ticktext) * plots.CHAR_EM * xfont,
            -45: 1.41 * line * xfont,
        }
        if any(np.diff(xa.tickvals) * col_px < need.get(xa.tickangle, line * xfont)):
            out.append(f"{x}: x tick labels touch")
        widest_y = max((len(t) for t in ya.ticktext or ()), default=0) * plots.CHAR_EM * yfont
        room = (domains[i][0] - (domains[i - 1][1] if i else 0.0)) * inner_w + (0 if i else m.l)
        if widest_y + plots.LABEL_GAP > room:
            out.append(f"{x}: y tick labels reach into the panel on their left")
        widest_x = max(len(t) for t in xa.ticktext) * plots.CHAR_EM * xfont
        reach = {0: line * xfont, -45: (widest_x + line * xfont) * 0.72}.get(xa.tickangle, widest_x)
        if reach + plots.LABEL_GAP + plots.COLORBAR_ROOM > m.b + 0.01:
            out.append(f"{x}: x tick labels reach the colour bars")
    for name in [k for k in lay.to_plotly_json() if k.startswith("coloraxis")]:
        axis = lay[name]
        bar = axis.colorbar
        if bar.orientation != "h" or bar.yref != "container" or bar.y != 0:
            out.append(f"{name}: colour bar not flat at the bottom")
        lo, hi = bar.x, bar.x + bar.len  # xanchor left
        end_half = max(len(t) for t in bar.ticktext) * plots.CHAR_EM * bar.tickfont.size / 2
        lo, hi = lo - end_half / inner_w, hi + end_half / inner_w
        own = [d for d in domains if d[0] - 1e-9 <= bar.x <= d[1]]
        if not own:
            out.append(f"{name}: colour bar starts outside every panel")
            continue
        shared = len(fig.data) > 1 and all(t.coloraxis == "coloraxis" for t in fig.data)
        right = domains[-1][1] if shared else own[0][1]
        if lo < own[0][0] - 1e-9 or hi > right + 1e-9:
            out.append(f"{name}: colour bar (with its end numbers) leaves its panel")
        if (min(bar.tickvals), max(bar.tickvals)) != (-axis.cmax, axis.cmax):
            out.append(f"{name}: colour bar does not show its limits")
    return out
