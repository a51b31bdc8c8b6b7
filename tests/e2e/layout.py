"""Overlap checks on plotly figures as Chromium drew them (DOM geometry, not pixels).

Every text and mark of a figure is taken as the quadrilateral it covers on screen (its SVG
bounding box through its screen transform, so rotated tick labels are exact), then:

* tick labels of one axis must not touch each other;
* no tick label, colour bar (bar, numbers, title) or title may touch a heatmap, and no two
  of them that belong to different things may touch (a colour bar on a neighbour's tick
  labels, a subplot title on another, an x tick label on the next panel's y labels);
* everything lies inside its figure (nothing cut off at an edge).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

TOLERANCE_PX = 0.5

_COLLECT = """
() => {
  const quad = (el) => {
    let b;
    try { b = el.getBBox(); } catch (e) { return null; }
    const m = el.getScreenCTM();
    if (!m || b.width < 0.5 || b.height < 0.5) return null;
    return [[b.x, b.y], [b.x + b.width, b.y], [b.x + b.width, b.y + b.height],
            [b.x, b.y + b.height]].map(([x, y]) => {
      const p = new DOMPoint(x, y).matrixTransform(m);
      return [p.x, p.y];
    });
  };
  return [...document.querySelectorAll('.js-plotly-plot')].map((plot) => {
    const items = [];
    const add = (kind, owner, el) => {
      const q = quad(el);
      if (q && (kind === 'heatmap' || kind === 'cbfill' || el.textContent.trim() !== ''))
        items.push({kind, owner, quad: q, text: el.textContent || ''});
    };
    plot.querySelectorAll('.cartesianlayer .subplot').forEach((sp) => {
      const id = [...sp.classList].find((c) => c !== 'subplot');
      sp.querySelectorAll('.xaxislayer-above text').forEach((t) => add('xtick', id, t));
      sp.querySelectorAll('.yaxislayer-above text').forEach((t) => add('ytick', id, t));
      sp.querySelectorAll('.heatmaplayer image').forEach((t) => add('heatmap', id, t));
    });
    plot.querySelectorAll('.infolayer g.colorbar').forEach((cb, i) => {
      cb.querySelectorAll('.cbfills rect, .cbfill').forEach((t) => add('cbfill', 'cb' + i, t));
      cb.querySelectorAll('.cbaxis text').forEach((t) => add('colorbar', 'cb' + i, t));
      cb.querySelectorAll('.cbtitle text').forEach((t) => add('cbtitle', 'cb' + i, t));
    });
    plot.querySelectorAll('.infolayer .annotation text, .infolayer .g-gtitle text')
      .forEach((t, i) => add('title', 't' + i, t));
    plot.querySelectorAll('.slider-container, .updatemenu-container')
      .forEach((t, i) => add('control', 'c' + i, t));
    const svg = plot.querySelector('.main-svg').getBoundingClientRect();
    return {items, box: [svg.left, svg.top, svg.right, svg.bottom],
            title: (plot.querySelector('.g-gtitle') || {}).textContent || ''};
  });
}
"""


def collect(page) -> list[dict]:
    """Every plotly figure on the page: ``{"items": [...], "box": [l, t, r, b], "title"}``."""
    return page.evaluate(_COLLECT)


def _project(quad: Sequence[Sequence[float]], axis: tuple[float, float]) -> tuple[float, float]:
    values = [x * axis[0] + y * axis[1] for x, y in quad]
    return min(values), max(values)


def _axes(quad: Sequence[Sequence[float]]) -> list[tuple[float, float]]:
    out = []
    for (x0, y0), (x1, y1) in zip(quad, [*quad[1:], quad[0]], strict=True):
        dx, dy = x1 - x0, y1 - y0
        norm = (dx * dx + dy * dy) ** 0.5
        if norm > 1e-9:
            out.append((-dy / norm, dx / norm))
    return out


def touch(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]], tol: float = TOLERANCE_PX):
    """Whether two convex quadrilaterals overlap by more than ``tol`` pixels (separating
    axis theorem)."""
    for axis in _axes(a) + _axes(b):
        lo_a, hi_a = _project(a, axis)
        lo_b, hi_b = _project(b, axis)
        if min(hi_a, hi_b) - max(lo_a, lo_b) <= tol:
            return False
    return True


def _clash(p: dict, q: dict) -> bool:
    """Whether items p and q must not touch."""
    kinds = {p["kind"], q["kind"]}
    if kinds == {"heatmap"} or kinds == {"cbfill"}:
        return False  # panels never overlap (make_subplots domains); a bar's fill is slices
    if p["owner"] == q["owner"]:
        # texts of one axis or one colour bar must not touch, nor a heatmap its own labels,
        # nor a colour bar's title anything; a bar's fill and its own numbers may, and so
        # may a panel's x and y labels
        if p["kind"] == q["kind"]:
            return p["kind"] in ("xtick", "ytick", "colorbar")
        return "heatmap" in kinds or "cbtitle" in kinds
    return True


def problems(figures: Sequence[dict], where: str = "") -> list[str]:
    """Every overlap and every item outside its figure, in words."""
    out = []
    for n, fig in enumerate(figures):
        name = f"{where}figure {n} {fig['title']!r}".strip()
        items = fig["items"]
        left, top, right, bottom = fig["box"]
        for it in items:
            xs = [x for x, _ in it["quad"]]
            ys = [y for _, y in it["quad"]]
            inside = left - 1 <= min(xs) and max(xs) <= right + 1
            if not (inside and top - 1 <= min(ys) and max(ys) <= bottom + 1):
                out.append(f"{name}: {it['kind']} {it['text']!r} ({it['owner']}) is cut off")
        for p, q in combinations(items, 2):
            if _clash(p, q) and touch(p["quad"], q["quad"]):
                out.append(
                    f"{name}: {p['kind']} {p['text']!r} ({p['owner']}) overlaps "
                    f"{q['kind']} {q['text']!r} ({q['owner']})"
                )
    return out
