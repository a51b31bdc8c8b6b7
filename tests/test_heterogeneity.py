"""Block heterogeneity from stored analyses: c_s = H̄_ss / ||U^s||^2 grouped by type and head."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hessian_lens import heterogeneity
from hessian_lens.runs import load_run
from hessian_lens.ui.reads import as_dict
from tests.conftest import REPO


def low_median(x):
    """The lower median (torch.median's), written out."""
    x = np.sort(np.asarray(x, dtype=float))
    return x[(len(x) - 1) // 2]


LABELS = [
    "tok_emb.weight",
    "blocks.0.attn.q.head0",
    "blocks.0.attn.q.head1",
    "blocks.0.attn.v.head0",
    "blocks.0.attn.v.head1",
    "blocks.0.mlp.fc1.weight",
    "blocks.0.mlp.fc1.bias",
]
KINDS = ["weight", "mixed", "mixed", "mixed", "mixed", "weight", "bias"]


def record(diag, g, epoch=1.0, u_sq=None, checkpoint="epoch_0001.pt"):
    H = np.diag(np.asarray(diag, dtype=float)) + 0.01  # off-diagonal entries play no part
    arrays = {"H": H, "g": np.asarray(g, dtype=float)}
    if u_sq is not None:
        arrays["u_sq"] = np.asarray(u_sq, dtype=float)
    summary = {"labels": LABELS, "kinds": KINDS}
    return {"epoch": epoch, "checkpoint": checkpoint, "summary": summary, "arrays": arrays}


def test_curvature_is_the_diagonal_over_the_squared_norms_grouped_by_type_and_head():
    diag = np.array([8.0, 0.01, -0.04, 2.0, 3.0, 0.5, 0.0])
    g = np.array([2.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.0])
    m = heterogeneity.of_record(record(diag + 0.01 * 0, g))
    want = (diag + 0.01) / np.where(g > 0, g, np.nan)
    np.testing.assert_allclose(m.values, want, rtol=1e-12)
    assert math.isnan(m.values[-1])  # ḡ_s = 0: no direction, no curvature
    assert m.blocks == ["embedding", "q", "q", "v", "v", "mlp", "mlp"]
    assert m.heads == [None, 0, 1, 0, 1, None, None]
    q = m.stats["by_block"]["q"]
    assert q["negative"] == 1 and q["abs_median"] == pytest.approx(low_median(np.abs(want[1:3])))
    assert m.stats["by_head"][1]["count"] == 2
    medians = [low_median(np.abs(want[i])) for i in ([0], [1, 2], [3, 4], [5])]
    between = np.std(np.log10(medians))
    assert m.stats["overall"]["between_blocks_log10_std"] == pytest.approx(between)


def test_stored_u_sq_is_the_norm_and_another_direction_without_it_is_refused():
    diag, g = [1.0] * 7, [1.0] * 7
    m = heterogeneity.of_record(record(diag, g, u_sq=[2.0] * 7), {"direction": "given"})
    np.testing.assert_allclose(m.values, 1.01 / 2.0)
    with pytest.raises(ValueError, match="direction 'given'.*u_sq"):
        heterogeneity.of_record(record(diag, g), {"direction": "given"})


def test_biases_apart_families_progress_and_partner():
    m = heterogeneity.of_record(record([1.0] * 7, [1.0] * 7), biases_apart=True)
    assert m.blocks[-1] == "bias" and m.blocks[-2] == "mlp"
    assert heterogeneity.family(LABELS) == "transformer"
    assert heterogeneity.family(["features.0.weight", "classifier.weight"]) == "cnn"
    assert heterogeneity.family(["fc1.weight", "fc2.bias"]) == "other"
    assert heterogeneity.progress([0.0, 0.05, 6.0]) == [0.0, 0.05 / 6, 1.0]
    assert heterogeneity.progress([0.0, 0.0]) == [0.0, 0.0]
    cands = [("cnn", 10), None, ("transformer", 108), ("cnn", 62), ("other", 5)]
    assert heterogeneity.partner("transformer", 54, cands) == 3  # 62 is closer than 10
    assert heterogeneity.partner("transformer", 12, cands) == 0
    assert heterogeneity.partner("cnn", 18, cands) == 2
    assert heterogeneity.partner("other", 18, cands) == 2
    assert heterogeneity.partner("cnn", 18, [("cnn", 10)]) is None


def test_across_names_two_checkpoints_of_one_epoch_and_refuses_mixed_partitions():
    recs = [
        record([1.0] * 7, [1.0] * 7, epoch=0.0, checkpoint="epoch_0000.pt"),
        record([2.0] * 7, [1.0] * 7, epoch=8.0, checkpoint="epoch_0008.pt"),
        record([3.0] * 7, [1.0] * 7, epoch=8.0, checkpoint="epoch_0008.safetensors"),
    ]
    ms = heterogeneity.across(recs)
    assert [m.name for m in ms] == ["0", "8 (epoch_0008.pt)", "8 (epoch_0008.safetensors)"]
    V = heterogeneity.matrix(ms)
    assert V.shape == (7, 3) and V[0, 2] == pytest.approx(3.01)
    prog, between, overall = heterogeneity.spreads(ms)
    assert prog == [0.0, 1.0, 1.0]
    np.testing.assert_allclose([between, overall], 0.0, atol=1e-12)  # all groups alike
    ms[1].labels = ms[1].labels[::-1]
    with pytest.raises(ValueError, match="groups of checkpoint 8"):
        heterogeneity.matrix(ms)
    with pytest.raises(ValueError, match="no analysed checkpoint"):
        heterogeneity.matrix([])


def test_the_shipped_gpt_against_an_independent_numpy_computation():
    run = load_run(REPO / "checkpoints" / "gpt-text")
    recs = [as_dict(r) for r in run.records()]
    ms = heterogeneity.across(recs, run.settings()[0])
    for rec, m in zip(recs, ms, strict=True):
        c = np.diag(rec["arrays"]["H"]).astype(float) / rec["arrays"]["g"].astype(float)
        np.testing.assert_allclose(m.values, c, rtol=1e-12)
        types = sorted(set(m.blocks))
        assert types == ["embedding", "k", "mlp", "norm", "o", "q", "v"]
        med = [low_median(np.abs(c[[b == t for b in m.blocks]])) for t in types]
        assert m.stats["overall"]["between_blocks_log10_std"] == pytest.approx(
            np.std(np.log10(med)), rel=1e-6
        )
        assert m.stats["overall"]["log10_std"] == pytest.approx(np.std(np.log10(np.abs(c))))
    assert sum(h is not None for h in ms[0].heads) == 32  # 2 layers x 4 heads x q, k, v, o


def test_block_table_rows_in_type_order():
    m = heterogeneity.of_record(record([1.0, 1, -1, 10, 100, 1, 1], [1.0] * 7))
    rows = heterogeneity.block_table(m.stats, heterogeneity.type_order(m.blocks))
    assert [r["block type"] for r in rows] == ["embedding", "q", "v", "mlp"]
    v = rows[2]
    assert (
        v["groups"] == 2
        and v["negative"] == 0
        and v["max/min |c|"] == pytest.approx(100.01 / 10.01)
    )
    assert rows[1]["negative"] == 1


def test_roles_are_comparable_across_cnns_and_transformers():
    """Every group of the four shipped runs gets a role; ResNet's downsample layers are typed
    (convolution: hidden, BatchNorm: norm), the first convolution is the input, a tied
    embedding is the input and not the output, and the shared roles fold attention in."""
    seen = {}
    for name in ("gpt-text", "vit-cifar10", "vgg11p-cifar10", "resnet18-cifar10"):
        rec = next(iter(load_run(REPO / "checkpoints" / name).records(arrays=False)))
        labels, kinds = rec.summary["labels"], rec.summary["kinds"]
        mine = dict(zip(labels, heterogeneity.roles(labels, kinds), strict=True))
        assert "other" not in mine.values(), name
        seen[name] = set(heterogeneity.shared_roles(labels, kinds))
        if name == "resnet18-cifar10":
            assert mine["layer2.0.downsample.0.weight"] == "hidden"
            assert mine["layer2.0.downsample.1.bias"] == "norm"
            assert (mine["conv1.weight"], mine["fc.weight"]) == ("input", "output")
        if name == "gpt-text":
            assert mine["tok_emb.weight"] == "input" and "output" not in mine.values()
            assert mine["blocks.0.attn.q.head1"] == "q"
    assert all(s <= {"input", "hidden", "norm", "bias", "output"} for s in seen.values())
    assert all({"input", "hidden"} <= s for s in seen.values())
