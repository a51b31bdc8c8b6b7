"""The Paper page through AppTest: figures 1 and 2 at the paper's epochs, the claims table."""

from __future__ import annotations

import numpy as np
import pytest

from hessian_lens import paper, plots
from hessian_lens.partition import Partition
from hessian_lens.registry import build_on_meta
from hessian_lens.store import ResultStore
from tests.apptools import chart, fake_partition, heatmap_z, make_fake_run, no_errors, open_page
from tests.conftest import REPO

PAPER = "views/Paper.py"
SHIPPED = REPO / "checkpoints" / "lenet5-cifar10"


def at_epochs(run, epochs, partition="canonical") -> dict[str, dict]:
    """The records of a run at the paper's epochs, as the page's dicts (read here)."""
    out = {}
    for r in ResultStore.reader(run / "analysis.sqlite").records():
        if r.epoch in epochs and r.settings.get("partition") == partition:
            out[str(int(r.epoch))] = {"summary": r.summary, "arrays": r.arrays}
    return out


@pytest.fixture(scope="module")
def paper_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    make_fake_run(
        root / "my-vgg", fake_partition("vgg11p"), model="vgg11p", epochs=(0, 1, 6), seed=1
    )
    make_fake_run(root / "my-lenet", fake_partition("lenet5"), epochs=(1, 21), seed=2)
    by_layer = Partition.from_name(build_on_meta("lenet5"), "by_layer")
    make_fake_run(
        root / "lenet-by-layer",
        by_layer,
        epochs=(1, 21),
        settings={"samples": 64, "partition": "by_layer", "dtype": "float64"},
    )
    return root


@pytest.fixture
def only_demo_shipped(tmp_path, monkeypatch):
    """checkpoints/ as if it held only the default-init demo run (lenet5-cifar10): the page's
    choices below do not depend on which paper runs the repository ships."""
    from hessian_lens.ui import common

    root = tmp_path / "shipped"
    root.mkdir()
    (root / "lenet5-cifar10").symlink_to(SHIPPED, target_is_directory=True)
    monkeypatch.setattr(common, "REPO_RUNS", root)
    return root


@pytest.fixture
def paper_env(app_env, only_demo_shipped, paper_runs, monkeypatch):
    monkeypatch.setenv("HESSIAN_LENS_RUNS", str(paper_runs))
    return paper_runs


def _claims_table(at) -> list[dict]:
    frame = at.dataframe[0].value
    return frame.to_dict("records")


def _expected(lenet, vgg) -> list[dict]:
    return [
        {
            "figure": c.figure,
            "claim": c.claim,
            "measure": c.measure,
            "raw": round(c.raw, 4),
            "normalised": round(c.normalized, 4),
            "threshold": c.threshold,
            "verdict": c.verdict,
        }
        for c in paper.figure_claims(lenet, vgg)
    ]


def _check_figure(at, fig_id, recs, scale):
    for epoch, rec in recs.items():
        for name in ("H", "Hinv"):
            spec = chart(at, f"paper-{fig_id}-{epoch}-{name}")
            s = rec["summary"]
            want = plots.interaction_blocks(
                plots.transform(rec["arrays"][name], scale), s["kinds"], s["layers"]
            )
            for i, key in enumerate(("WW", "BB", "WB")):
                np.testing.assert_allclose(heatmap_z(spec, i), want[key].z)
            assert (
                spec["layout"]["title"]["text"] == f"{'H̄' if name == 'H' else 'H̄⁻¹'}, epoch {epoch}"
            )


@pytest.mark.parametrize("scale", ["raw", "normalized"])
def test_figures_from_the_shipped_lenet_and_any_vgg_run_and_the_claims(paper_env, scale):
    at = open_page(PAPER)
    at.radio(key="paper-scale").set_value(scale).run()
    no_errors(at)
    assert (
        at.selectbox(key="paper-run1").format_func(at.selectbox(key="paper-run1").value)
        == "lenet5-cifar10"
    )
    assert (
        at.selectbox(key="paper-run2").format_func(at.selectbox(key="paper-run2").value) == "my-vgg"
    )
    lenet = at_epochs(SHIPPED, (1, 21))
    vgg = at_epochs(paper_env / "my-vgg", (1, 6))
    assert list(lenet) == ["1", "21"] and list(vgg) == ["1", "6"]
    _check_figure(at, "1", lenet, scale)
    _check_figure(at, "2", vgg, scale)
    table = _claims_table(at)
    assert table == _expected(lenet, vgg)
    assert len(table) == 2 * 2 + 2 * 4
    captions = [c.value for c in at.caption]
    for fig_id, recs in (("1", lenet), ("2", vgg)):
        for epoch, rec in recs.items():
            top = paper.strongest_long_range(rec)
            text = ", ".join(f"{a}–{b} {v:+.3f}" for a, b, v in top)
            assert any(
                c.startswith(f"Figure {fig_id}, epoch {epoch}:") and c.endswith(text)
                for c in captions
            )


def test_another_lenet_run_chosen_and_one_without_canonical_analysis(paper_env):
    at = open_page(PAPER)
    picker = at.selectbox(key="paper-run1")
    labels = picker.options  # as shown (run names)
    assert labels[0] == "lenet5-cifar10" and {"my-lenet", "lenet-by-layer"} <= set(labels)
    picker.set_value(labels.index("my-lenet")).run()
    no_errors(at)
    mine = at_epochs(paper_env / "my-lenet", (1, 21))
    _check_figure(at, "1", mine, "raw")
    assert _claims_table(at) == _expected(mine, at_epochs(paper_env / "my-vgg", (1, 6)))
    at.selectbox(key="paper-run1").set_value(labels.index("lenet-by-layer")).run()
    assert not at.exception and not at.error
    assert [w.value for w in at.warning] == [
        "lenet-by-layer has no canonical analysis at the paper's epochs (1, 21)."
    ]
    assert _claims_table(at) == _expected({}, at_epochs(paper_env / "my-vgg", (1, 6)))


def test_the_analysis_covering_the_paper_epochs_is_chosen(paper_env, tmp_path, monkeypatch):
    """A run analysed twice: 5 early epochs with one setting, epochs 1 and 21 with another.
    The figure takes the analysis that has both of the paper's epochs."""
    part = fake_partition("lenet5")
    two = tmp_path / "more" / "lenet-two-analyses"
    early = {"samples": 64, "partition": "canonical", "dtype": "float64", "order3": True}
    make_fake_run(two, part, epochs=(0, 1, 2, 3, 4), seed=5, settings=early)
    make_fake_run(two, part, epochs=(1, 21), seed=6)
    monkeypatch.setenv("HESSIAN_LENS_RUNS", f"{paper_env},{two.parent}")
    at = open_page(PAPER)
    picker = at.selectbox(key="paper-run1")
    picker.set_value(picker.options.index("lenet-two-analyses")).run()
    no_errors(at)
    late = {
        str(int(r.epoch)): {"summary": r.summary, "arrays": r.arrays}
        for r in ResultStore.reader(two / "analysis.sqlite").records()
        if not r.settings.get("order3")
    }
    assert list(late) == ["1", "21"]
    _check_figure(at, "1", late, "raw")


def test_no_vgg_run_says_how_to_make_one(app_env, only_demo_shipped):
    at = open_page(PAPER)
    no_errors(at)
    assert [i.value for i in at.info] == [
        "No analysed vgg11p run found: train one (`python -m hessian_lens train --model vgg11p "
        "--data cifar10 --epochs 6 --out checkpoints/vgg11p-cifar10`) and analyse it "
        "(`python -m hessian_lens analyze checkpoints/vgg11p-cifar10`)."
    ]
    assert [row["figure"] for row in _claims_table(at)] == [
        "Fig. 1, LeNet-5, epoch 1",
        "Fig. 1, LeNet-5, epoch 1",
        "Fig. 1, LeNet-5, epoch 21",
        "Fig. 1, LeNet-5, epoch 21",
    ]


def test_the_shipped_paper_runs_draw_both_figures(app_env):
    """With the repository's own checkpoints/: figure 1 from lenet5-cifar10-paper (its
    analysis at epochs 1 and 21), figure 2 from vgg11p-cifar10, and the claims table of
    docs/reproduction.md computed from them."""
    shipped = REPO / "checkpoints"

    def paper_records(run, epochs):
        return {
            str(int(r.epoch)): {"summary": r.summary, "arrays": r.arrays}
            for r in ResultStore.reader(run / "analysis.sqlite").records()
            if r.epoch in epochs and not r.settings.get("order3")
        }

    at = open_page(PAPER)
    no_errors(at)
    for key, name in (("paper-run1", "lenet5-cifar10-paper"), ("paper-run2", "vgg11p-cifar10")):
        box = at.selectbox(key=key)
        assert box.format_func(box.value) == name
    lenet = paper_records(shipped / "lenet5-cifar10-paper", (1, 21))
    vgg = paper_records(shipped / "vgg11p-cifar10", (1, 6))
    assert list(lenet) == ["1", "21"] and list(vgg) == ["1", "6"]
    _check_figure(at, "1", lenet, "raw")
    _check_figure(at, "2", vgg, "raw")
    assert _claims_table(at) == _expected(lenet, vgg)
