"""Seconds to build each dashboard figure at S = 688 (the 100M-class GPT head by head).

A one-checkpoint run with the real labels of ``Partition.by_head`` of the built-in GPT at
12 layers, 12 heads, width 768 and a random SPD H̄ (``tests.apptools.make_fake_run``), or
``--run FOLDER`` (an analysed run). One JSON line per figure: CPU seconds of this process
(``time.process_time``: another process's load does not count) and wall seconds, the best
of ``--repeats``, against the 3 s target of issue 26. The figures are the ones the pages
draw, from the same functions: Layer interactions at each tree level (``matrix_figure``,
uncached), Block heterogeneity's strip and heatmap, Block-diagonal's three panels, and the
report's figures and whole HTML.

    python benchmarks/bench_views_scale.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET_S = 3.0
KWARGS = {"layers": 12, "heads": 12, "width": 768, "context": 64}


def fake_run(folder: Path) -> Path:
    """The S = 688 run of ``tests/test_app_scale.py``."""
    from hessian_lens.partition import Partition
    from hessian_lens.registry import build_on_meta
    from tests.apptools import make_fake_run

    part = Partition.by_head(build_on_meta("gpt", **KWARGS))
    settings = {"samples": 1, "partition": "by_head", "dtype": "float32", "loss": "next_token"}
    model = {"name": "gpt", "kwargs": KWARGS}
    return make_fake_run(
        folder / "gpt-768x12-fake", part, (0,), model, settings=settings, gradient_norms=True
    )


def timed(fn, repeats: int) -> tuple[float, float]:
    """Best CPU and wall seconds of ``fn()`` over ``repeats`` calls."""
    cpu, wall = [], []
    for _ in range(repeats):
        c, w = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return min(cpu), min(wall)


def figures(run_path: Path) -> dict:
    """name -> a call building that figure as the page does."""
    from hessian_lens import heterogeneity, hierarchy, plots, report
    from hessian_lens.store import ResultStore
    from hessian_lens.ui import interactions
    from hessian_lens.ui.blockdiag import comparison_panels
    from hessian_lens.ui.reads import as_dict

    stored = ResultStore.reader(run_path / "analysis.sqlite").records()[-1]
    rec = as_dict(stored)
    labels = rec["summary"]["labels"]
    build = interactions.matrix_figure.__wrapped__  # the figure itself, not streamlit's cache
    out = {}
    for level in hierarchy.LEVELS:
        r = hierarchy.coarsen(rec, hierarchy.units(labels, level))
        keep = tuple(range(len(r["summary"]["labels"])))
        out[f"interactions_{level}_S{len(keep)}"] = lambda r=r, keep=keep: build(
            r, "H", "raw", "full", keep, None, 760
        )
    m = heterogeneity.of_record(rec, stored.settings)
    types = heterogeneity.type_order(m.blocks)
    out["heterogeneity_strip"] = lambda: plots.curvature_strip(
        m.labels, m.values, m.blocks, m.heads, types, title="c_s"
    )
    rows = hierarchy.order(m.labels, "head")
    out["heterogeneity_heatmap"] = lambda: plots.curvature_heatmap(
        m.labels, [m.name], np.asarray(m.values)[:, None], rows
    )
    out["blockdiag_side"] = lambda: plots.side_by_side(
        comparison_panels(rec, "layer", "raw"), colorbar="raw"
    )
    run = report.open_run(run_path)
    out["report_figures"] = lambda: report.figures(run, report.run_records(run))
    out["report_html"] = lambda: report.build_html(run)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, help="an analysed run (default: the fake S = 688 run)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or fake_run(Path(tmp))
        for name, fn in figures(run).items():
            cpu, wall = timed(fn, args.repeats)
            row = {"figure": name, "cpu_s": round(cpu, 3), "wall_s": round(wall, 3)}
            print(json.dumps(row | {"under_target": cpu < TARGET_S}), flush=True)


if __name__ == "__main__":
    main()
