"""The views at S = 688: the 100M-class GPT (12 layers x 12 heads, width 768) head by head.

The run is written without training or analysis (:func:`tests.apptools.make_fake_run`:
a random SPD H̄ with the real labels of ``Partition.by_head`` on the meta device), so the
pages are checked at the size of the shipped gpt-768x12 run in CI's time.
"""

from __future__ import annotations

import numpy as np
import pytest

from hessian_lens import hierarchy, report
from hessian_lens.partition import Partition
from hessian_lens.registry import build_on_meta
from hessian_lens.store import ResultStore
from tests.apptools import chart, chart_keys, heatmap_z, make_fake_run, no_errors, open_page

KWARGS = {"layers": 12, "heads": 12, "width": 768, "context": 64}
SETTINGS = {"samples": 1, "partition": "by_head", "dtype": "float32", "loss": "next_token"}


@pytest.fixture(scope="module")
def big_run(tmp_path_factory):
    """A one-checkpoint run at S = 688 (made once: the derived arrays take a minute)."""
    part = Partition.by_head(build_on_meta("gpt", **KWARGS))
    assert len(part.labels) == 688
    folder = tmp_path_factory.mktemp("runs") / "gpt-768x12-fake"
    model = {"name": "gpt", "kwargs": KWARGS}
    return make_fake_run(
        folder, part, epochs=(0,), model=model, settings=SETTINGS, gradient_norms=True
    )


@pytest.fixture
def env(big_run, tmp_path, monkeypatch):
    import streamlit as st

    monkeypatch.setenv("HESSIAN_LENS_RUNS", str(big_run.parent))
    monkeypatch.setenv("HESSIAN_LENS_CACHE", str(tmp_path / "cache"))
    st.cache_data.clear()
    return big_run


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


def test_block_heterogeneity_and_block_diagonal_open_at_s_688(env):
    at = open_page("views/Block_heterogeneity.py", env, timeout=300)
    no_errors(at)
    assert "hetero-strip" in chart_keys(at)  # the heatmap needs two checkpoints
    at = open_page("views/Block_diagonal.py", env, timeout=300)
    no_errors(at)
    assert chart_keys(at)


def test_the_report_draws_the_run_at_s_688(env):
    run = report.open_run(env)
    stored = report.run_records(run)
    recs, level = report.shown_records(stored)
    assert level == report.tree_level(stored[0]["summary"]["labels"]) != "group"
    assert len(recs[0]["summary"]["labels"]) <= report.MAX_GROUPS
    html = report.build_html(run)
    assert "gpt-768x12-fake" in html and "Plotly" in html
