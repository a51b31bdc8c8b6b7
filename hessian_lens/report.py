"""A run as one self-contained HTML page, and its figures as files for papers.

``python -m hessian_lens report RUN -o run.html`` writes one page with the run's card,
its training curves, H̄ and H̄⁻¹ heatmaps (WW / BB / WB blocks, or the full matrix) with an
epoch slider, and the block-diagonal metrics with their trends. plotly.js is embedded:
the page opens offline, in any browser, and can be mailed or attached as it is.
``--figures DIR`` also writes every figure as PNG / SVG / PDF (:mod:`hessian_lens.figexport`).

A per-head run (hundreds of groups) is drawn on the layer -> head tree
(:mod:`hessian_lens.hierarchy`) at the finest level with at most :data:`MAX_GROUPS` groups:
one per head for the shipped ViT (108 groups -> 33). A collapsed branch is the exact union
of its groups (H̄ entries summed, H̄⁻¹ recomputed, with torch); the page says so.

Read-only: the run's folder is never written to (the store is opened as a viewer).
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go

from hessian_lens import hierarchy, measured, plots, runcard
from hessian_lens.io.files import atomic_write
from hessian_lens.runfolder import is_run
from hessian_lens.runs import Run, describe_settings, load_run, one_per_epoch

MATRICES = {"H": "H̄ (pseudo-Hessian)", "Hinv": "H̄⁻¹ (inverse)"}
BLOCKS = "layer"  # the block-diagonal comparison shown: per layer (weight + bias)
MAX_GROUPS = 40  # more groups than this: a coarser level of the layer -> head tree
TREE_ABOVE = 24  # more groups than this (or heads): lines between layers, as the dashboard
METRICS = (
    ("rel_error", "relative error ‖H̄⁻¹ − blockdiag(H̄)⁻¹‖_F / ‖H̄⁻¹‖_F", "{:.3f}"),
    ("off_share_H", "share of Σ|H̄| outside the blocks", "{:.1%}"),
    ("off_share_Hinv", "share of Σ|H̄⁻¹| outside the blocks", "{:.1%}"),
    ("cos_eta", "cos(η_full, η_bd)", "{:.3f}"),
    ("decrease_full", "decrease of the order-2 model, full", "{:.4g}"),
    ("decrease_bd", "decrease of the order-2 model, block-diagonal", "{:.4g}"),
)


def _epoch_name(rec: dict) -> str:
    epoch = rec["epoch"]
    if epoch is None:
        return rec["checkpoint"]
    return str(int(epoch)) if float(epoch).is_integer() else f"{epoch:g}"


def open_run(path: str | Path) -> Run:
    """The run folder at ``path``.

    Raises:
        ValueError: not a run folder (no run.json and no checkpoint).
    """
    if not is_run(path):
        raise ValueError(
            f"{path} is not a run folder (no run.json and no checkpoint): give the folder "
            "train, analyze or a Recorder wrote."
        )
    return load_run(path)


def run_records(run: Run) -> list[dict[str, Any]]:
    """The run's analysed checkpoints (its most complete analysis) as plain dicts, by epoch.

    One per epoch (:func:`~hessian_lens.runs.one_per_epoch`: of two analyses of an epoch,
    that of the checkpoint still in the folder).
    """
    kept = [p.name for p in run.checkpoints]
    return [
        {"epoch": r.epoch, "checkpoint": r.checkpoint, "summary": r.summary, "arrays": r.arrays}
        for r in one_per_epoch(run.records(), kept)
    ]


def tree_level(labels: Sequence[str]) -> str:
    """The finest level of the layer -> head tree with at most :data:`MAX_GROUPS` groups.

    Example:
        >>> qv = [f"b.{i}.{t}.head{h}" for i in range(3) for t in "qv" for h in range(8)]
        >>> tree_level(qv)  # 48 groups, 24 heads
        'head'
        >>> tree_level(["fc1.weight", "fc1.bias"])
        'group'
    """
    for level in hierarchy.LEVELS:
        if len(hierarchy.units(labels, level)) <= MAX_GROUPS:
            return level
    return hierarchy.LEVELS[-1]


def shown_records(recs: Sequence[dict]) -> tuple[list[dict], str]:
    """The records the heatmaps draw, and the tree level they are drawn at.

    A partition with heads, or more groups than :data:`MAX_GROUPS`, is ordered layer ->
    head -> Q / K / V / O and collapsed to :func:`tree_level` (exact unions of groups);
    any other comes back as it is, at level ``group``.
    """
    labels = recs[-1]["summary"]["labels"] if recs else []
    if not recs or not (hierarchy.has_heads(labels) or len(labels) > MAX_GROUPS):
        return list(recs), "group"
    level = tree_level(labels)
    groups = hierarchy.units(labels, level)
    return [hierarchy.coarsen(r, groups) for r in recs], level


def has_blocks(summary: dict) -> bool:
    """Whether the WW / BB / WB split applies: weights and biases in two layers at least.

    Never when a group mixes both (a head's Q rows with their biases, a layer).
    """
    kinds = summary["kinds"]
    return "mixed" not in kinds and kinds.count("weight") >= 2 and kinds.count("bias") >= 2


def matrix_figure(recs: Sequence[dict], name: str, level: str = "group") -> go.Figure:
    """H̄ or H̄⁻¹ of every analysed epoch with an epoch slider (each its own colour range).

    Weight / bias blocks when the partition has them (:func:`has_blocks`), else the full
    matrix, with lines between layers when it is large or has heads (give
    :func:`shown_records`' records and level for a per-head run). One epoch: no slider,
    the epoch in the title.
    """
    summary = recs[-1]["summary"]
    blocks = has_blocks(summary)
    tree = hierarchy.has_heads(summary["labels"]) or len(summary["labels"]) > TREE_ABOVE
    what = hierarchy.LEVEL_NAMES[level] if tree else "all groups"

    def panels(rec: dict) -> list[plots.Panel]:
        M, s = rec["arrays"][name], rec["summary"]
        if blocks:
            return list(plots.interaction_blocks(M, s["kinds"], s["layers"]).values())
        return [plots.full_panel(M, s["labels"], title=what, separate_layers=tree)]

    height = 380 if blocks else (760 if tree else 520)
    title = MATRICES[name]
    if len(recs) == 1 and recs[0]["epoch"] is not None:
        title += f" — epoch {_epoch_name(recs[0])}"
    figs = [plots.panel_row(panels(r), height=height, title=title) for r in recs]
    if len(figs) == 1:
        return figs[0]
    return plots.epoch_slider(figs, [_epoch_name(r) for r in recs])


def figures(run: Run, recs: Sequence[dict]) -> dict[str, go.Figure]:
    """The report's figures by file-name stem: curves, H̄, H̄⁻¹ (slider), trends.

    For static files the heatmaps are the last analysed epoch's (a file has no slider).
    """
    out: dict[str, go.Figure] = {}
    if run.history:
        out["curves"] = plots.curves(run.history)
    found = measured.run_series(run)
    if found is not None:
        out |= plots.measure_curves(found[1], found[0].get("curvature", "hessian"))
    if recs:
        shown, level = shown_records(recs)
        for name in MATRICES:
            out[name] = matrix_figure(shown, name, level)
        if len(recs) > 1:
            series = {k: [r["summary"]["compare"][BLOCKS][k] for r in recs] for k, *_ in METRICS}
            epochs = [r["epoch"] for r in recs]
            keep = ("rel_error", "off_share_H", "off_share_Hinv", "cos_eta")
            out["blockdiag_trends"] = plots.trends(
                epochs,
                {k: series[k] for k in keep},
                "block-diagonal (per layer) vs full, across epochs",
            )
    return out


def static_figures(run: Run, recs: Sequence[dict]) -> dict[str, go.Figure]:
    """The figures for files: as :func:`figures`, the heatmaps at the last epoch only."""
    out = figures(run, recs[-1:] if recs else [])
    if len(recs) > 1:
        out.update({k: v for k, v in figures(run, recs).items() if k == "blockdiag_trends"})
        epoch = _epoch_name(recs[-1])
        out = {(f"{k}_epoch{epoch}" if k in MATRICES else k): v for k, v in out.items()}
    return out


def card_rows(run: Run, recs: Sequence[dict]) -> list[tuple[str, str]]:
    """The run card: (label, text) rows, in words (:mod:`hessian_lens.runcard`)."""
    m = run.manifest
    trained = max((h["epoch"] for h in run.history), default=0)
    rows = [
        ("Run", run.name),
        ("Architecture", runcard.model_text(m.model)),
        ("Data", runcard.data_text(m.data)),
        ("Loss", m.loss or "?"),
        ("Training", runcard.training_text(m)),
        (
            "Epochs",
            f"{trained:g} trained · {runcard.checkpoints_text(len(run.checkpoints), len(recs))}",
        ),
    ]
    if run.history:
        last = run.history[-1]
        metrics = ", ".join(
            f"{k} {v:.4g}" for k, v in last.items() if k != "epoch" and isinstance(v, float | int)
        )
        rows.append(("Last entry", f"epoch {last['epoch']:g}: {metrics}"))
    settings = run.settings()
    if recs and settings:
        span = runcard.epochs_span([r["epoch"] for r in recs])
        rows.append(
            (
                "Analysis",
                f"{len(recs)} checkpoints{f' ({span})' if span else ''}: "
                f"{describe_settings(settings[0])}",
            )
        )
        rows += _tree_row(recs)
    else:
        rows.append(("Analysis", "none yet (python -m hessian_lens analyze RUN)"))
    return rows


def _tree_row(recs: Sequence[dict]) -> list[tuple[str, str]]:
    """What the heatmaps collapse, when they do (:func:`shown_records`)."""
    labels = recs[-1]["summary"]["labels"]
    if not (hierarchy.has_heads(labels) or len(labels) > MAX_GROUPS):
        return []
    level = tree_level(labels)
    units = len(hierarchy.units(labels, level))
    what = hierarchy.LEVEL_NAMES[level]
    if units == len(labels):
        return [("Heatmaps", f"{what}, layer by layer, head by head")]
    return [
        (
            "Heatmaps",
            f"{what}: the {len(labels)} groups collapsed into {units} (a collapsed branch is "
            "the exact union of its groups: H̄ entries summed, H̄⁻¹ recomputed). Every group: "
            "the dashboard's Layer interactions page.",
        )
    ]


def metrics_table(recs: Sequence[dict]) -> str:
    """The block-diagonal metrics of every analysed epoch as an HTML table."""
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label, _ in METRICS)
    rows = []
    for rec in recs:
        m = rec["summary"]["compare"][BLOCKS]
        cells = "".join(
            f"<td>{html.escape(fmt.format(m[k]))}</td>" if _finite(m.get(k)) else "<td>–</td>"
            for k, _, fmt in METRICS
        )
        rows.append(f"<tr><td>{html.escape(_epoch_name(rec))}</td>{cells}</tr>")
    return f"<table><tr><th>epoch</th>{head}</tr>{''.join(rows)}</table>"


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and bool(np.isfinite(value))


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 4px 8px; text-align: left; }
th { background: #f3f3f3; }
.card td:first-child { font-weight: bold; }
figure { margin: 1.5em 0; }
.note { color: #666; font-size: 0.9em; }
"""


def script_safe(json_text: str) -> str:
    r"""JSON text safe inside an HTML ``<script>`` element, and still the same JSON.

    ``<``, ``>`` and ``&`` become ``\u003c``, ``\u003e``, ``\u0026`` and the JavaScript
    line breaks U+2028 / U+2029 their escapes: a string holding ``</script>`` or ``<!--``
    (a run folder may be named ``x<!--<script>``) can then neither end the script nor
    switch the HTML parser into the state where the next ``</script>`` no longer ends it.
    Outside strings JSON has none of these characters, so nothing else changes.

    Example:
        >>> script_safe('{"name": "x<!--<script>&"}')
        '{"name": "x\\u003c!--\\u003cscript\\u003e\\u0026"}'
    """
    for char, escape in _SCRIPT_ESCAPES:
        json_text = json_text.replace(char, escape)
    return json_text


_SCRIPT_ESCAPES = (
    ("&", "\\u0026"),
    ("<", "\\u003c"),
    (">", "\\u003e"),
    ("\u2028", "\\u2028"),
    ("\u2029", "\\u2029"),
)


def figure_html(fig: go.Figure, div_id: str, config: dict) -> str:
    """A figure as a ``<div>`` and the script drawing it (plotly.js loaded by the page).

    Like plotly's ``to_html`` (``responsive``, frames added after the first draw, the
    layout's height), but every string in the script is :func:`script_safe`.
    """
    height = f"{fig.layout.height}px" if fig.layout.height else "100%"
    spec = script_safe(fig.to_json())
    options = script_safe(json.dumps({**config, "responsive": True}))
    target = json.dumps(div_id)
    return (
        f'<div style="height:{height}; width:100%;"><div id="{html.escape(div_id)}" '
        'class="plotly-graph-div" style="height:100%; width:100%;"></div><script>'
        f"(function () {{ var fig = {spec}; Plotly.newPlot({target}, fig.data, fig.layout, "
        f"{options}).then(function () {{ if (fig.frames) {{ return Plotly.addFrames("
        f"{target}, fig.frames); }} }}); }})();</script></div>"
    )


def build_html(run: Run) -> str:
    """The whole report page as a string (plotly.js embedded once)."""
    from plotly.offline import get_plotlyjs

    recs = run_records(run)
    card = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
        for k, v in card_rows(run, recs)
    )
    parts = [f"<h1>{html.escape(run.name)}</h1>", f"<table class='card'>{card}</table>"]
    for key, fig in figures(run, recs).items():
        div = figure_html(fig, f"fig-{key}", plots.export_config(f"{run.path.name}_{key}"))
        parts.append(f"<figure>{div}</figure>")
    if recs:
        parts.append("<h2>Block-diagonal vs full inverse (blocks: one per layer)</h2>")
        parts.append(metrics_table(recs))
    parts.append(
        "<p class='note'>Written by hessian-lens report. H̄[s, s'] = (U^s)ᵀ H U^s' with u "
        "the gradient; white ≈ 0, red &gt; 0, blue &lt; 0; limits ±max|value| of each panel.</p>"
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(run.name)} · Hessian Lens</title><style>{STYLE}</style>"
        f"<script>{get_plotlyjs()}</script></head><body>{''.join(parts)}</body></html>"
    )


def write_report(
    run_path: str | Path,
    out: str | Path,
    figures_dir: str | Path | None = None,
    formats: tuple[str, ...] = ("png", "svg", "pdf"),
) -> list[Path]:
    """Write the HTML report of a run to ``out`` (atomically), and its figures if asked.

    Returns:
        The files written (the page first).
    """
    run = open_run(run_path)
    if figures_dir is not None:
        from hessian_lens.figexport import check_formats

        check_formats(formats)
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"{out} is a folder; give the report's file name (-o run.html)")
    text = build_html(run)
    atomic_write(out, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    written = [out]
    if figures_dir is not None:
        from hessian_lens.figexport import write_figures

        written += write_figures(static_figures(run, run_records(run)), figures_dir, formats)
    return written
