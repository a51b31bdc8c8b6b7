"""The Layer interactions and Block-diagonal pages through streamlit.testing.v1.AppTest.

Every check compares what a page drew with the stored arrays (exact content), so a view
that draws the wrong matrix, epoch, scale, subset or limits fails.
"""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import torch

from hessian_lens import hierarchy, linalg, plots
from hessian_lens.partition import blocks_of
from hessian_lens.store import ResultStore
from tests.apptools import (
    Downloads,
    chart,
    fake_partition,
    heatmap_z,
    make_fake_run,
    no_errors,
    open_page,
)
from tests.conftest import REPO
from tests.layoutcheck import layout_problems

INTERACTIONS = "views/Layer_interactions.py"
BLOCKDIAG = "views/Block_diagonal.py"


def stored(run):
    return ResultStore(run / "analysis.sqlite").records()


def blocks(rec, name="H", scale="raw"):
    s = rec.summary
    return plots.interaction_blocks(
        plots.transform(rec.arrays[name], scale), s["kinds"], s["layers"]
    )


def zs(spec):
    return [heatmap_z(spec, i) for i in range(len(spec["data"]))]


def test_interactions_draws_the_stored_blocks_of_the_last_epoch(app_env):
    run, _ = app_env
    at = open_page(INTERACTIONS, run)
    no_errors(at)
    last = stored(run)[-1]
    for name in ("H", "Hinv"):
        spec = chart(at, f"interactions-{name}")
        want = blocks(last, name)
        assert len(spec["data"]) == 3
        for z, key in zip(zs(spec), ("WW", "BB", "WB"), strict=True):
            np.testing.assert_array_equal(z, want[key].z)
        assert [a["text"] for a in spec["layout"]["annotations"]] == [
            "weights × weights",
            "biases × biases",
            "weights × biases",
        ]
        assert spec["layout"]["yaxis"]["ticktext"] == ["conv1", "conv2", "fc1", "fc2", "fc3"]
        for i, (axis, key) in enumerate(zip(("", "2", "3"), ("WW", "BB", "WB"), strict=True)):
            limits = spec["layout"][f"coloraxis{axis}"]
            assert limits["cmax"] == -limits["cmin"] == np.abs(want[key].z).max(), i
        assert layout_problems(spec) == []
    assert f"epoch {int(last.epoch)}" in " ".join(m.value for m in at.markdown)


def test_slider_changes_the_epoch_shown(app_env):
    run, _ = app_env
    at = open_page(INTERACTIONS, run)
    assert at.select_slider(key="interactions-epoch").value == "2"
    at.select_slider(key="interactions-epoch").set_value("0").run()
    no_errors(at)
    first = stored(run)[0]
    np.testing.assert_array_equal(zs(chart(at, "interactions-H"))[1], blocks(first)["BB"].z)
    np.testing.assert_array_equal(
        zs(chart(at, "interactions-Hinv"))[0], blocks(first, "Hinv")["WW"].z
    )
    assert any("— epoch 0" in m.value for m in at.markdown)


@pytest.mark.parametrize("scale", plots.SCALES)
def test_every_scale_in_both_views(app_env, scale):
    run, _ = app_env
    at = open_page(INTERACTIONS, run)
    at.radio(key="interactions-scale").set_value(scale).run()
    no_errors(at)
    last = stored(run)[-1]
    np.testing.assert_allclose(
        zs(chart(at, "interactions-Hinv"))[2], blocks(last, "Hinv", scale)["WB"].z
    )
    at.radio(key="interactions-view").set_value("full").run()
    no_errors(at)
    for name in ("H", "Hinv"):
        spec = chart(at, f"interactions-{name}")
        np.testing.assert_allclose(heatmap_z(spec), plots.transform(last.arrays[name], scale))
        assert spec["layout"]["yaxis"]["ticktext"] == last.summary["labels"]
        assert layout_problems(spec) == []


def test_fixed_colour_range_is_the_max_over_epochs(app_env):
    run, _ = app_env
    at = open_page(INTERACTIONS, run)
    at.radio(key="interactions-scale").set_value("signed log")
    at.toggle(key="interactions-same").set_value(True).run()
    no_errors(at)
    recs = stored(run)
    wider = 0
    for name in ("H", "Hinv"):
        spec = chart(at, f"interactions-{name}")
        for axis, key in zip(("", "2", "3"), ("WW", "BB", "WB"), strict=True):
            top = max(np.abs(blocks(r, name, "signed log")[key].z).max() for r in recs)
            assert spec["layout"][f"coloraxis{axis}"]["cmax"] == pytest.approx(top)
            wider += top > np.abs(blocks(recs[-1], name, "signed log")[key].z).max()
    assert wider >= 2  # the limits really come from other epochs than the one shown
    at.toggle(key="interactions-same").set_value(False).run()
    own = np.abs(blocks(recs[-1], "H", "signed log")["BB"].z).max()
    assert chart(at, "interactions-H")["layout"]["coloraxis2"]["cmax"] == pytest.approx(own)


def test_animation_has_every_epoch_of_the_chosen_block(app_env):
    run, _ = app_env
    at = open_page(INTERACTIONS, run)
    at.toggle(key="interactions-animate").set_value(True).run()
    at.selectbox(key="interactions-anim-matrix").set_value("Hinv")
    at.selectbox(key="interactions-anim-block").set_value(1).run()  # biases × biases
    no_errors(at)
    anim = chart(at, "interactions-anim")
    recs = stored(run)
    assert [f["name"] for f in anim["frames"]] == ["0", "1", "2"]
    assert [s["label"] for s in anim["layout"]["sliders"][0]["steps"]] == ["0", "1", "2"]
    frames = [blocks(r, "Hinv")["BB"].z for r in recs]
    for frame, want in zip(anim["frames"], frames, strict=True):
        np.testing.assert_array_equal(heatmap_z(frame), want)
    assert anim["data"][0]["zmax"] == pytest.approx(max(np.abs(f).max() for f in frames))
    assert anim["layout"]["title"]["text"] == "biases × biases — epoch 0"


def test_downloads_hold_the_matrices_shown(app_env, monkeypatch):
    run, _ = app_env
    downloads = Downloads(monkeypatch)
    at = open_page(INTERACTIONS, run)
    at.radio(key="interactions-scale").set_value("normalized").run()
    no_errors(at)
    last = stored(run)[-1]
    labels = last.summary["labels"]
    with np.load(io.BytesIO(downloads.files["hbar_epoch2_normalized.npz"])) as z:
        assert z["labels"].tolist() == labels
        assert z["kinds"].tolist() == last.summary["kinds"] and int(z["epoch"]) == 2
        for name in ("H", "Hinv", "g"):
            np.testing.assert_array_equal(z[name], last.arrays[name])
        np.testing.assert_allclose(z["H_shown"], plots.transform(last.arrays["H"], "normalized"))
    for name in ("H", "Hinv"):
        rows = list(
            csv.reader(io.StringIO(downloads.files[f"{name}_epoch2_normalized.csv"].decode()))
        )
        assert rows[0] == ["", *labels] and [r[0] for r in rows[1:]] == labels
        values = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
        np.testing.assert_allclose(
            values, plots.transform(last.arrays[name], "normalized"), rtol=1e-9
        )
    assert [b.label for b in at.get("download_button")] == [
        "⬇ NPZ (H̄, H̄⁻¹, labels)",
        "⬇ CSV H̄ (normalized)",
        "⬇ CSV H̄⁻¹ (normalized)",
    ]
    at.toggle(key="interactions-fig-export").set_value(True).run()  # figures, on click
    labels = [b.label for b in at.get("download_button")]
    assert labels[:2] == ["⬇ H_blocks_epoch2.png", "⬇ Hinv_blocks_epoch2.png"]


# ---------------------------------------------------------------------------- deep models
@pytest.fixture(scope="module")
def deep_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("deep")
    make_fake_run(
        root / "resnet18-fake",
        fake_partition("torchvision:resnet18", num_classes=10),
        model="torchvision:resnet18",
        epochs=(0, 1),
    )
    make_fake_run(
        root / "resnet50-fake",
        fake_partition("torchvision:resnet50", num_classes=10),
        model="torchvision:resnet50",
        epochs=(3,),
    )
    make_fake_run(
        root / "mlp45-fake",
        fake_partition("mlp", sizes=[3072] + [16] * 44 + [10]),
        model="mlp",
        epochs=(0, 1),
    )
    return root


@pytest.fixture
def deep_env(app_env, deep_runs, monkeypatch):
    monkeypatch.setenv("HESSIAN_LENS_RUNS", str(deep_runs))
    return deep_runs


def test_resnet18_ticks_at_module_boundaries_and_the_group_filter(deep_env):
    run = deep_env / "resnet18-fake"
    at = open_page(INTERACTIONS, run)
    no_errors(at)
    last = stored(run)[-1]
    labels = last.summary["labels"]
    assert len(labels) == 62
    assert at.radio(key="interactions-view").options == ["full S × S"]  # no bias blocks
    modules = at.multiselect(key="interactions-modules")
    assert modules.options == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"]
    spec = chart(at, "interactions-H")
    np.testing.assert_array_equal(heatmap_z(spec), last.arrays["H"])
    starts = {}
    for i, label in enumerate(labels):
        starts.setdefault(hierarchy.layer_of(label), i)
    blocks = [f"layer{m}.{b}" for m in range(1, 5) for b in (0, 1)]
    assert list(starts) == ["conv1", "bn1", *blocks, "fc"]
    for axis in ("xaxis", "yaxis"):  # bn1 starts one row after conv1: no room for its tick
        assert spec["layout"][axis]["ticktext"] == ["conv1", *blocks, "fc"]
        assert spec["layout"][axis]["tickvals"] == [0, *list(starts.values())[2:]]
    lines = {s["x0"] + 0.5 for s in spec["layout"]["shapes"] if s["x0"] == s["x1"]}
    assert lines == set(list(starts.values())[1:])  # a line between every two layers
    assert layout_problems(spec) == []

    modules.set_value(["layer1"]).run()
    no_errors(at)
    keep = [i for i, label in enumerate(labels) if label.startswith("layer1.")]
    assert len(keep) == 12
    for name in ("H", "Hinv"):
        spec = chart(at, f"interactions-{name}")
        np.testing.assert_array_equal(heatmap_z(spec), last.arrays[name][np.ix_(keep, keep)])
        assert spec["layout"]["yaxis"]["ticktext"] == [labels[i] for i in keep]
        assert layout_problems(spec) == []
    assert any("Showing 12 of 62 groups" in c.value for c in at.caption)

    at.text_input(key="interactions-regex").set_value(r"\.bn\d\.weight").run()
    no_errors(at)
    keep = [i for i in keep if ".bn" in labels[i] and labels[i].endswith("weight")]
    np.testing.assert_array_equal(
        heatmap_z(chart(at, "interactions-H")), last.arrays["H"][np.ix_(keep, keep)]
    )
    at.text_input(key="interactions-regex").set_value("(").run()
    assert not at.exception
    assert any("Not a regular expression" in w.value for w in at.warning)
    modules.set_value([]).run()
    assert any("No group left" in i.value for i in at.info)
    assert not at.get("plotly_chart")


def test_resnet50_full_matrix_of_161_groups(deep_env):
    run = deep_env / "resnet50-fake"
    at = open_page(INTERACTIONS, run)
    no_errors(at)
    rec = stored(run)[-1]
    spec = chart(at, "interactions-Hinv")
    np.testing.assert_array_equal(heatmap_z(spec), rec.arrays["Hinv"])
    assert heatmap_z(spec).shape == (161, 161)
    blocks = [f"layer{m}.{b}" for m, n in enumerate((3, 4, 6, 3), start=1) for b in range(n)]
    assert spec["layout"]["yaxis"]["ticktext"] == ["conv1", *blocks, "fc"]  # 16 blocks
    assert layout_problems(spec) == []


def test_deep_mlp_blocks_of_a_chosen_subset(deep_env):
    run = deep_env / "mlp45-fake"
    at = open_page(INTERACTIONS, run)
    no_errors(at)
    rec = stored(run)[-1]
    modules = at.multiselect(key="interactions-modules")
    layers = [f"layers.{2 * i}" for i in range(45)]  # Linear, activation, Linear, ...
    assert modules.options == layers  # the second level: the first is only "layers"
    spec = chart(at, "interactions-H")
    assert len(spec["layout"]["yaxis"]["ticktext"]) < 45  # thinned to the row height
    assert layout_problems(spec) == []
    modules.set_value(layers[3:9]).run()
    no_errors(at)
    keep = [i for i, lay in enumerate(rec.summary["layers"]) if lay in layers[3:9]]
    s = rec.summary
    want = plots.interaction_blocks(
        rec.arrays["Hinv"][np.ix_(keep, keep)],
        [s["kinds"][i] for i in keep],
        [s["layers"][i] for i in keep],
    )
    spec = chart(at, "interactions-Hinv")
    for z, key in zip(zs(spec), ("WW", "BB", "WB"), strict=True):
        np.testing.assert_array_equal(z, want[key].z)
        assert want[key].z.shape == (6, 6)
    assert spec["layout"]["yaxis"]["ticktext"] == layers[3:9]


# ---------------------------------------------------------------------------- block-diagonal
def _stored_bd(S, by):
    """A blockdiag(H̄)⁻¹ no computation would give, to tell stored from recomputed."""
    return np.full((S, S), {"layer": 0.25, "tensor": -0.5, "kind": 0.75}[by]) + np.eye(S)


@pytest.fixture(scope="module")
def bd_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bd")
    part = fake_partition("lenet5")
    S = len(part.labels)
    overrides = {
        e: {f"Hinv_bd_{by}": _stored_bd(S, by) for by in ("layer", "tensor", "kind")}
        for e in (0, 1, 5)
    }
    make_fake_run(root / "stored-bd", part, epochs=(0, 1, 5), overrides=overrides)
    old = make_fake_run(root / "old-records", part, epochs=(4,))
    store = ResultStore(old / "analysis.sqlite")  # a record from before Hinv_bd_* were stored
    rec = store.records()[0]
    rec.arrays = {k: v for k, v in rec.arrays.items() if not k.startswith("Hinv_bd_")}
    rec.checkpoint_sha, rec.checkpoint, rec.epoch = "old-sha", "epoch_0005.pt", 5
    store.put(rec)
    return root


@pytest.mark.parametrize("by", ["layer", "tensor", "kind"])
def test_block_diagonal_draws_the_stored_inverse(app_env, bd_runs, monkeypatch, by):
    monkeypatch.setenv("HESSIAN_LENS_RUNS", str(bd_runs))
    run = bd_runs / "stored-bd"
    at = open_page(BLOCKDIAG, run)
    at.radio(key="blockdiag-by").set_value(by).run()
    no_errors(at)
    recs = stored(run)
    last = recs[-1]
    S = len(last.summary["labels"])
    full, bd, diff = zs(chart(at, "blockdiag-side"))
    np.testing.assert_array_equal(full, last.arrays["Hinv"])
    np.testing.assert_array_equal(bd, _stored_bd(S, by))
    np.testing.assert_array_equal(diff, last.arrays["Hinv"] - _stored_bd(S, by))
    m = last.summary["compare"][by]
    metrics = {x.label: x.value for x in at.metric}
    assert metrics == {
        "relative error": f"{m['rel_error']:.3f}",
        "|H̄| outside": f"{m['off_share_H']:.1%}",
        "|H̄⁻¹| outside": f"{m['off_share_Hinv']:.1%}",
        "cos(η_full, η_bd)": f"{m['cos_eta']:.3f}",
        "decrease, full": f"{m['decrease_full']:.4g}",
        "decrease, block-diag": f"{m['decrease_bd']:.4g}",
    }
    trend = chart(at, "blockdiag-trend")
    assert [t["name"] for t in trend["data"]] == [
        "rel_error",
        "off_share_H",
        "off_share_Hinv",
        "cos_eta",
    ]
    for t in trend["data"]:
        assert t["x"] == [0, 1, 5]
        assert t["y"] == [r.summary["compare"][by][t["name"]] for r in recs]
    decrease = chart(at, "blockdiag-decrease")
    assert decrease["data"][1]["y"] == [r.summary["compare"][by]["decrease_bd"] for r in recs]
    spec = chart(at, "blockdiag-side")
    assert spec["layout"]["coloraxis"]["cmax"] == pytest.approx(
        max(np.abs(M).max() for M in (full, bd, diff))
    )
    assert layout_problems(spec) == []


def test_block_diagonal_normalized_scale(app_env, bd_runs, monkeypatch):
    monkeypatch.setenv("HESSIAN_LENS_RUNS", str(bd_runs))
    run = bd_runs / "stored-bd"
    at = open_page(BLOCKDIAG, run)
    at.radio(key="blockdiag-scale").set_value("normalized").run()
    no_errors(at)
    Hinv = stored(run)[-1].arrays["Hinv"]
    s = 1 / np.sqrt(np.abs(np.diag(Hinv)))
    full, bd, _ = zs(chart(at, "blockdiag-side"))
    np.testing.assert_allclose(full, s[:, None] * Hinv * s[None, :])
    np.testing.assert_allclose(bd, s[:, None] * _stored_bd(len(s), "layer") * s[None, :])
    np.testing.assert_allclose(np.abs(np.diag(full)), 1.0)


def test_block_diagonal_recomputes_for_records_without_the_stored_inverse(
    app_env, bd_runs, monkeypatch
):
    monkeypatch.setenv("HESSIAN_LENS_RUNS", str(bd_runs))
    run = bd_runs / "old-records"
    at = open_page(BLOCKDIAG, run)
    at.radio(key="blockdiag-by").set_value("kind").run()
    no_errors(at)
    old = stored(run)[-1]
    assert old.epoch == 5 and "Hinv_bd_kind" not in old.arrays
    s = old.summary
    want = linalg.block_inverse(
        torch.from_numpy(old.arrays["H"]), blocks_of("kind", s["layers"], s["kinds"])
    )
    np.testing.assert_allclose(zs(chart(at, "blockdiag-side"))[1], want.numpy())


def test_the_weight_bias_split_is_not_offered_when_a_group_mixes_them():
    from hessian_lens.ui.interactions import has_blocks

    kinds = ["weight", "bias", "weight", "bias"]
    assert has_blocks({"kinds": kinds}, range(4))
    assert not has_blocks({"kinds": [*kinds, "mixed"]}, range(5))  # e.g. a head's Q group
    assert has_blocks({"kinds": [*kinds, "mixed"]}, range(4))  # filtered out: split again


GPT_TEXT = REPO / "checkpoints" / "gpt-text"


def test_gpt_heads_collapse_per_layer_head_and_type_exactly(app_env):
    """The shipped GPT (per-head, S = 54): each level is M^T H̄ M of the stored H̄."""
    at = open_page(INTERACTIONS, GPT_TEXT)
    no_errors(at)
    rec = stored(GPT_TEXT)[-1]
    labels = rec.summary["labels"]
    assert at.selectbox(key="interactions-level").value == "group"
    spec = chart(at, "interactions-H")
    at_order = hierarchy.order(labels)
    assert spec["layout"]["yaxis"]["ticktext"] == ["tok_emb", "blocks.0", "blocks.1", "ln_f"]
    np.testing.assert_array_equal(heatmap_z(spec), rec.arrays["H"][np.ix_(at_order, at_order)])
    for level, size in (("layer", 5), ("block", 15), ("head", 17)):
        at.selectbox(key="interactions-level").set_value(level).run()
        no_errors(at)
        units = hierarchy.units(labels, level)
        M = hierarchy.membership(len(labels), units)
        H = M.T @ rec.arrays["H"] @ M
        assert len(units) == size
        np.testing.assert_allclose(heatmap_z(chart(at, "interactions-H")), H, rtol=1e-12)
        inv = linalg.inverse(torch.from_numpy(H)).inv.numpy()
        np.testing.assert_allclose(heatmap_z(chart(at, "interactions-Hinv")), inv, rtol=1e-9)
    at.multiselect(key="interactions-open").set_value(["blocks.1"]).run()
    no_errors(at)
    shown = chart(at, "interactions-H")["layout"]["yaxis"]
    opened = hierarchy.units(labels, "head", expanded={"blocks.1"})
    assert len(opened) == 17 - 7 + 25  # blocks.1's 7 units give way to its 25 groups
    M = hierarchy.membership(len(labels), opened)
    np.testing.assert_allclose(heatmap_z(chart(at, "interactions-H")), M.T @ rec.arrays["H"] @ M)
    assert "blocks.1.attn.q.head0" in shown["ticktext"]
    assert layout_problems(chart(at, "interactions-H")) == []
    at.radio(key="interactions-within").set_value("block").run()
    no_errors(at)


VIT = REPO / "checkpoints" / "vit-cifar10"


def test_the_shipped_vit_on_every_page(app_env):
    """vit-cifar10 (per head, S = 108): every page opens on it, the tree collapses exactly."""
    from tests.apptools import plotly_specs

    rec = stored(VIT)[-1]
    labels = rec.summary["labels"]
    assert len(labels) == 108 and hierarchy.has_heads(labels)
    at = open_page(INTERACTIONS, VIT)
    no_errors(at)
    at.selectbox(key="interactions-level").set_value("head").run()
    no_errors(at)
    units = hierarchy.units(labels, "head")
    M = hierarchy.membership(len(labels), units)
    np.testing.assert_allclose(heatmap_z(chart(at, "interactions-H")), M.T @ rec.arrays["H"] @ M)
    assert layout_problems(chart(at, "interactions-H")) == []
    for page in (BLOCKDIAG, "views/Block_heterogeneity.py", "app.py"):
        at = open_page(page, VIT)
        no_errors(at)
        assert plotly_specs(at), page


HF_GPT2 = REPO / "checkpoints" / "hf-gpt2-text"


def test_the_shipped_hf_gpt2_on_every_page(app_env):
    """hf-gpt2-text (a transformers GPT2LMHeadModel, per head, S = 54) opens on every page."""
    from tests.apptools import plotly_specs

    rec = stored(HF_GPT2)[-1]
    labels = rec.summary["labels"]
    assert len(labels) == 54 and "transformer.h.1.attn.k.head3" in labels
    assert rec.summary["model"]["name"] == "hf:gpt2"
    at = open_page(INTERACTIONS, HF_GPT2)
    no_errors(at)
    at.selectbox(key="interactions-level").set_value("head").run()
    no_errors(at)
    units = hierarchy.units(labels, "head")
    assert [u for u, _ in units][2:9] == [  # embeddings, then per layer:
        "transformer.h.0.norm",  # ln_1 and ln_2
        *[f"transformer.h.0.head{h}" for h in range(4)],  # Q, K, V, O of each head
        "transformer.h.0.attn.c_proj.bias",
        "transformer.h.0.mlp",
    ]
    assert len(units) == 17
    M = hierarchy.membership(len(labels), units)
    np.testing.assert_allclose(heatmap_z(chart(at, "interactions-H")), M.T @ rec.arrays["H"] @ M)
    assert layout_problems(chart(at, "interactions-H")) == []
    for page in (BLOCKDIAG, "views/Block_heterogeneity.py", "app.py"):
        at = open_page(page, HF_GPT2)
        no_errors(at)
        assert plotly_specs(at), page
    for page in ("views/Optimizer.py", "views/Paper.py"):  # not their kind of run: no error
        no_errors(open_page(page, HF_GPT2))
