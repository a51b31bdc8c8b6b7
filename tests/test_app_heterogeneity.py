"""The Block heterogeneity page through AppTest, on the shipped GPT and VGG-11' runs.

The strip is checked point by point against c_s computed here from the store, at the
epoch the slider picks; the comparison against the run picked to compare with.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hessian_lens import heterogeneity, plots
from hessian_lens.runs import load_run, one_per_epoch
from hessian_lens.store import ResultStore
from hessian_lens.ui.reads import as_dict
from tests.apptools import (
    axis_values,
    chart,
    chart_keys,
    fake_partition,
    make_fake_run,
    no_errors,
    open_page,
)
from tests.conftest import REPO

PAGE = "views/Block_heterogeneity.py"
SHIPPED = REPO / "checkpoints"
CHARTS = ["hetero-strip", "hetero-trends", "hetero-heatmap", "hetero-side"]


@pytest.fixture
def env(tmp_path, monkeypatch):
    """The shipped runs plus a folder of extra runs; a fresh cache and clean st caches."""
    import streamlit as st

    extra = tmp_path / "runs"
    extra.mkdir()
    monkeypatch.setenv("HESSIAN_LENS_RUNS", str(extra))
    monkeypatch.setenv("HESSIAN_LENS_CACHE", str(tmp_path / "cache"))
    for name in ("HESSIAN_LENS_MODELS", "HESSIAN_LENS_DATA", "HESSIAN_LENS_CACHE_MB"):
        monkeypatch.delenv(name, raising=False)
    st.cache_data.clear()
    return extra


def measured(run, epoch=None) -> heterogeneity.Measured:
    recs = ResultStore.reader(run / "analysis.sqlite").records()
    rec = recs[-1] if epoch is None else next(r for r in recs if r.epoch == epoch)
    return heterogeneity.of_record(as_dict(rec), rec.settings)


def strip_points(spec) -> dict[str, float]:
    return {
        cd[0]: y
        for tr in spec["data"]
        if tr["type"] == "scatter" and tr.get("customdata")
        for cd, y in zip(tr["customdata"], axis_values(tr["y"]), strict=True)
    }


def assert_strip_is(spec, m: heterogeneity.Measured) -> None:
    want = {lab: np.log10(abs(v)) for lab, v in zip(m.labels, m.values, strict=True)}
    got = strip_points(spec)
    assert sorted(got) == sorted(want)
    np.testing.assert_allclose([got[k] for k in want], list(want.values()), rtol=1e-12)


def table_types(at) -> list[str]:
    return list(at.dataframe[0].value["block type"])


def test_gpt_strip_slider_and_the_comparison_picked(env):
    gpt, vgg = SHIPPED / "gpt-text", SHIPPED / "vgg11p-cifar10"
    at = open_page(PAGE, gpt)
    no_errors(at)
    assert chart_keys(at) == CHARTS
    assert_strip_is(chart(at, "hetero-strip"), measured(gpt))
    assert table_types(at) == ["embedding", "q", "k", "v", "o", "mlp", "norm"]
    box = at.selectbox(key="hetero-compare")  # a CNN by default, for a transformer
    assert box.value and heterogeneity.family(measured(Path(box.value)).labels) == "cnn"

    at.select_slider(key="hetero-epoch").set_value("0").run()
    no_errors(at)
    strip = chart(at, "hetero-strip")
    assert strip["layout"]["title"]["text"].startswith("c_s = H̄_ss / ḡ_s at epoch 0")
    assert_strip_is(strip, measured(gpt, 0.0))

    at.selectbox(key="hetero-compare").set_value(str(vgg)).run()
    no_errors(at)
    side = chart(at, "hetero-side")
    titles = [a["text"] for a in side["layout"]["annotations"]]
    assert titles[0] == "gpt-text, epoch 0"
    assert titles[1] == "vgg11p-cifar10, epoch 8"  # one analysis per epoch: the file kept
    stored = ResultStore.reader(vgg / "analysis.sqlite").records()
    recs = [as_dict(r) for r in one_per_epoch(stored, [p.name for p in load_run(vgg).checkpoints])]
    _, between, overall = heterogeneity.spreads(heterogeneity.across(recs))
    lines = {t["name"]: t["y"] for t in side["data"] if ": " in (t.get("name") or "")}
    np.testing.assert_allclose(axis_values(lines["vgg11p-cifar10: between block types"]), between)
    np.testing.assert_allclose(axis_values(lines["vgg11p-cifar10: all groups"]), overall)


def test_vgg_without_heads_and_biases_as_their_own_type(env):
    vgg = SHIPPED / "vgg11p-cifar10"
    (env / "broken-store").mkdir()  # not offered to compare with, and spoils nothing
    (env / "broken-store" / "run.json").write_text('{"name": "broken-store"}')
    (env / "broken-store" / "analysis.sqlite").write_bytes(b"garbage" * 64)
    at = open_page(PAGE, vgg)
    no_errors(at)
    assert not [p for p in at.selectbox(key="hetero-compare").options if "broken" in p]
    assert chart_keys(at) == CHARTS
    assert table_types(at) == ["conv", "output"]
    box = at.selectbox(key="hetero-compare")
    assert heterogeneity.family(measured(Path(box.value)).labels) == "transformer"
    names = {t["name"] for t in chart(at, "hetero-strip")["data"] if t["type"] == "scatter"}
    assert names == {"no head"}
    at.toggle(key="hetero-biases").set_value(True).run()
    no_errors(at)
    assert table_types(at) == ["conv", "output", "bias"]
    assert at.dataframe[0].value["groups"].tolist() == [8, 1, 9]
    at.selectbox(key="hetero-compare").set_value("").run()  # none: no comparison drawn
    no_errors(at)
    assert "hetero-side" not in chart_keys(at)


def test_groups_without_gradient_are_left_out_and_another_direction_is_refused(env):
    import streamlit as st

    part = fake_partition("lenet5")
    g0 = np.array([0.0] * 8 + [1.0, 2.0])  # epoch 0: only the last layer has a gradient
    ones = np.ones(10)
    make_fake_run(env / "zero-grad", part, epochs=(0, 1), overrides={0: {"g": g0}, 1: {"g": ones}})
    at = open_page(PAGE, env / "zero-grad")
    no_errors(at)
    at.select_slider(key="hetero-epoch").set_value("0").run()
    no_errors(at)
    strip = chart(at, "hetero-strip")
    assert "8 of 10 groups left out: ḡ_s = 0" in strip["layout"]["title"]["text"]
    assert sorted(strip_points(strip)) == ["fc3.bias", "fc3.weight"]
    heat = chart(at, "hetero-heatmap")["layout"]["title"]["text"]
    assert "8 of 20 (group, checkpoint) cells left out" in heat
    assert [m.value for m in at.metric if m.label == "left out"] == ["8"]

    given = {"samples": 64, "partition": "canonical", "dtype": "float64", "direction": "given"}
    make_fake_run(env / "given", part, settings=given, overrides={0: {"g": ones}, 1: {"g": ones}})
    st.cache_data.clear()  # the folder listing is cached for a few seconds
    at = open_page(PAGE, env / "given")
    assert not at.exception
    assert len(at.error) == 1 and "direction 'given'" in at.error[0].value
    assert plots.left_out_note(np.ones(3)) == ""


def test_the_page_follows_a_run_being_written(env):
    """A run marked recording (as a Recorder leaves it): a new analysis shows on the next
    redraw, and the slider, left at the last epoch, moves on to it."""
    part, ones = fake_partition("lenet5"), {"g": np.ones(10)}
    grads = {0: ones, 1: ones, 2: ones}
    run = make_fake_run(
        env / "live-run", part, epochs=(0, 1), overrides=grads, manifest={"state": "recording"}
    )
    at = open_page(PAGE, run)
    no_errors(at)
    assert any("● live" in c.value for c in at.caption)
    assert at.select_slider(key="hetero-epoch").options == ["0", "1"]
    later = env / "later"  # epoch 2 lands in the live run's store
    make_fake_run(later, part, epochs=(0, 1, 2), overrides=grads, seed=5)
    (rec,) = [r for r in ResultStore(later / "analysis.sqlite").records() if r.epoch == 2]
    ResultStore(run / "analysis.sqlite").put(rec)
    at.run()
    no_errors(at)
    epoch = at.select_slider(key="hetero-epoch")
    assert epoch.options == ["0", "1", "2"] and epoch.value == "2"
    assert_strip_is(chart(at, "hetero-strip"), measured(run, 2.0))
