"""The published claims about transformer Hessians, measured on the shipped runs' stores.

For every analysed checkpoint of a run (read-only, nothing computed but S x S algebra)::

    c_s = H̄_ss / ||U^s||^2 = H̄_ss / ḡ_s      (u = the gradient: the curvature along it, group s)

* query vs value (Ormaniec, Dangel, Singh 2025): median |c| of the query-head groups over
  that of the value-head groups (``q_over_v``), and the same for the raw diagonal H̄_ss;
* block heterogeneity (Zhang et al. 2024): the dispersion of log10 |c_s| over all groups
  (``log10_std``) and between block types (``between_blocks``) — CNN runs as well;
* block-diagonal vs full (Abreu et al. 2025): by layer, the off-block share of the
  normalised H̄⁻¹, the cosine between the full and the block-diagonal steps, and the
  decrease of the order-2 model the block-diagonal step achieves relative to the full one.

Prints one JSON line per checkpoint; ``--markdown`` prints the table docs/transformers.md
quotes and ``--summary`` its per-claim tables (tests/test_benchmarks.py checks that they
agree).

    python benchmarks/transformer_claims.py --runs checkpoints/gpt-text checkpoints/vgg11p-cifar10
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hessian_lens import heads, heterogeneity  # noqa: E402
from hessian_lens.runs import load_run  # noqa: E402

DEFAULT_RUNS = (
    "checkpoints/gpt-text",
    "checkpoints/vit-cifar10",
    "checkpoints/vgg11p-cifar10",
    "checkpoints/resnet18-cifar10",
)


def measure(record) -> dict:
    """The claims' numbers of one analysed checkpoint."""
    labels = record.summary["labels"]
    H = torch.as_tensor(record.arrays["H"]).double()
    het = heterogeneity.measure(labels, H, heterogeneity.norms_sq(record.arrays, record.settings))
    c = torch.tensor(het["curvature"], dtype=torch.float64)
    blocks = [heads.block_of(label) for label in labels]
    layer = record.summary["compare"]["layer"]
    row = {
        "epoch": record.epoch,
        "S": len(labels),
        "loss": record.summary["loss"],
        "defined": het["overall"]["defined"],
        "log10_std": het["overall"]["log10_std"],
        "between_blocks": het["overall"].get("between_blocks_log10_std", math.nan),
        "off_share_Hinv_norm_layer": layer["off_share_Hinv_norm"],
        "cos_eta_layer": layer["cos_eta"],
        "decrease_bd_over_full": layer["decrease_bd"] / layer["decrease_full"],
    }
    q = [i for i, b in enumerate(blocks) if b == "q"]
    v = [i for i, b in enumerate(blocks) if b == "v"]
    if q and v:
        row["q_over_v"] = _ratio(_median(c[q].abs()), _median(c[v].abs()))
        row["q_over_v_raw"] = _ratio(_median(H.diagonal()[q].abs()), _median(H.diagonal()[v].abs()))
    return row


def _ratio(a: float, b: float) -> float:
    """``a / b``, NaN where undefined (no gradient in those groups: torchvision's ViT at init)."""
    return a / b if b != 0 and math.isfinite(a) and math.isfinite(b) else math.nan


def _median(t: torch.Tensor) -> float:
    t = t[torch.isfinite(t)]
    return float(t.median()) if t.numel() else math.nan


def rows(paths) -> list[dict]:
    """Every analysed checkpoint of every run, in epoch order."""
    out = []
    for path in paths:
        run = load_run(REPO / path if not Path(path).is_absolute() else Path(path))
        for record in run.records():
            out.append({"run": run.name, **measure(record)})
    return out


def markdown(table: list[dict]) -> str:
    """The table docs/transformers.md quotes (3 significant digits)."""
    head = (
        "| run | epoch | S | loss | q/v curvature | q/v raw H̄_ss | log10 spread | between "
        "types | off-block H̄⁻¹ (norm.) | cos(η_bd, η) | bd decrease / full |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in table:
        cells = [
            r["run"],
            f"{r['epoch']:g}",
            str(r["S"]),
            _fmt(r["loss"]),
            _fmt(r.get("q_over_v")),
            _fmt(r.get("q_over_v_raw")),
            _fmt(r["log10_std"]),
            _fmt(r["between_blocks"]),
            _fmt(100 * r["off_share_Hinv_norm_layer"], "%"),
            _fmt(r["cos_eta_layer"]),
            _fmt(r["decrease_bd_over_full"]),
        ]
        lines.append(_row(cells))
    return "\n".join(lines)


def summary(table: list[dict]) -> str:
    """The three claims' tables docs/transformers.md quotes, one row per run."""
    runs = {}
    for r in table:
        runs.setdefault(r["run"], {}).setdefault(r["epoch"], r)  # a float16 twin: the first
    return "\n\n".join([_query_value(runs), _heterogeneity(runs), _block_diagonal(runs)])


def _at(rows: dict, epoch: float) -> dict:
    """The row at ``epoch``, else the first one after it ({} when none)."""
    later = [e for e in sorted(rows) if e >= epoch]
    return rows[later[0]] if later else {}


def _span(values) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return f"{_fmt(min(values))} to {_fmt(max(values))}" if values else "–"


def _query_value(runs: dict) -> str:
    lines = [
        "| run | q/v curvature at init | at epoch 0.5 | at epoch 1 | last (epoch) "
        "| raw H̄_ss q/v at init | last |",
        "|" + "---|" * 7,
    ]
    for run, rows in runs.items():
        if not any("q_over_v" in r for r in rows.values()):
            continue
        first, last = rows[min(rows)], rows[max(rows)]
        cells = [
            run,
            _fmt(first.get("q_over_v")),
            _fmt(_at(rows, 0.5).get("q_over_v")),
            _fmt(_at(rows, 1).get("q_over_v")),
            f"{_fmt(last.get('q_over_v'))} ({last['epoch']:g})",
            _fmt(first.get("q_over_v_raw")),
            _fmt(last.get("q_over_v_raw")),
        ]
        lines.append(_row(cells))
    return "\n".join(lines)


def _heterogeneity(runs: dict) -> str:
    lines = [
        "| run | S (with gradient at init) | spread at init | spread from epoch 0.5 on "
        "| between types at init | between types from epoch 0.5 on |",
        "|" + "---|" * 6,
    ]
    for run, rows in runs.items():
        first = rows[min(rows)]
        later = [r for e, r in rows.items() if e >= 0.5]
        cells = [
            run,
            f"{first['S']} ({first['defined']})",
            _fmt(first["log10_std"]),
            _span(r["log10_std"] for r in later),
            _fmt(first["between_blocks"]),
            _span(r["between_blocks"] for r in later),
        ]
        lines.append(_row(cells))
    return "\n".join(lines)


def _block_diagonal(runs: dict) -> str:
    lines = [
        "| run | checkpoints | off-block H̄⁻¹ (norm.) | bd decrease / full "
        "| cos(η_bd, η) from epoch 2 on |",
        "|" + "---|" * 5,
    ]
    for run, rows in runs.items():
        # only where every group has a gradient: with one group moving, any blocking is exact
        rows = {e: r for e, r in rows.items() if r["defined"] == r["S"]}
        off = [100 * r["off_share_Hinv_norm_layer"] for r in rows.values()]
        cells = [
            run,
            str(len(rows)),
            f"{_fmt(min(off))}% to {_fmt(max(off))}%",
            _span(r["decrease_bd_over_full"] for r in rows.values()),
            _span(r["cos_eta_layer"] for e, r in rows.items() if e >= 2),
        ]
        lines.append(_row(cells))
    return "\n".join(lines)


def _row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def _fmt(x, unit: str = "") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.3g}{unit}"


def main() -> None:
    """Print the JSON lines (or the markdown table)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS))
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--summary", action="store_true", help="the per-claim tables")
    args = parser.parse_args()
    table = rows(args.runs)
    if args.markdown or args.summary:
        print(markdown(table) if args.markdown else summary(table))
        return
    for r in table:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
