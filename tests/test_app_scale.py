"""The views at S = 688: the shipped 100M-class GPT (12 layers x 12 heads, width 768) head
by head, ``checkpoints/gpt-768x12-text-init`` (its store only: the checkpoint is not
shipped).
"""

from __future__ import annotations

import numpy as np
import pytest

from hessian_lens import hierarchy, report
from hessian_lens.store import ResultStore
from tests.apptools import chart, chart_keys, heatmap_z, no_errors, open_page
from tests.conftest import REPO

RUN = REPO / "checkpoints" / "gpt-768x12-text-init"


@pytest.fixture
def env(tmp_path, monkeypatch):
    import streamlit as st

    monkeypatch.setenv("HESSIAN_LENS_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("HESSIAN_LENS_CACHE", str(tmp_path / "cache"))
    st.cache_data.clear()
    return RUN


def test_layer_interactions_open_one_group_per_layer_at_s_688(env):
    """The default level is 'layer' above 200 groups: 15 rows (two embeddings, 12 blocks,
    the final norm), each entry the exact sum M^T H̄ M of the stored H̄; every group on
    demand."""
    at = open_page("views/Layer_interactions.py", env, timeout=300)
    no_errors(at)
    assert at.selectbox(key="interactions-level").value == "layer"
    rec = ResultStore.reader(env / "analysis.sqlite").records()[-1]
    units = hierarchy.units(rec.summary["labels"], "layer")
    M = hierarchy.membership(688, units)
    z = heatmap_z(chart(at, "interactions-H"))
    assert z.shape == (len(units), len(units)) == (15, 15)
    np.testing.assert_allclose(z, M.T @ rec.arrays["H"] @ M, rtol=1e-9)
    at.selectbox(key="interactions-level").set_value("group").run()
    no_errors(at)
    assert heatmap_z(chart(at, "interactions-H")).shape == (688, 688)


def test_a_small_partition_still_opens_every_group():
    assert hierarchy.default_level([f"blocks.{i}.w" for i in range(54)]) == "group"
    assert hierarchy.default_level([f"blocks.{i}.w" for i in range(688)]) == "layer"


def test_block_heterogeneity_block_diagonal_and_inspect_open_at_s_688(env):
    at = open_page("views/Block_heterogeneity.py", env, timeout=300)
    no_errors(at)
    assert "hetero-strip" in chart_keys(at)  # the heatmap needs two checkpoints
    strip = chart(at, "hetero-strip")
    assert sum(len(t.get("customdata") or []) for t in strip["data"]) > 0
    at = open_page("views/Block_diagonal.py", env, timeout=300)
    no_errors(at)
    assert chart_keys(at) == ["blockdiag-side"]
    no_errors(open_page("views/Inspect_checkpoint.py", env, timeout=300))  # no checkpoint here


def test_the_report_draws_the_run_at_s_688(env):
    run = report.open_run(env)
    stored = report.run_records(run)
    recs, level = report.shown_records(stored)
    assert level == report.tree_level(stored[0]["summary"]["labels"]) != "group"
    assert len(recs[0]["summary"]["labels"]) <= report.MAX_GROUPS
    html = report.build_html(run)
    assert "gpt-768x12-text-init" in html and "Plotly" in html
