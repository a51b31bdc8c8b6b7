"""The group tree: places, order, collapsing, and collapsing equal to the coarser partition."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hessian_lens as hl
from hessian_lens import hierarchy
from tests.compare import EXACT, assert_close
from tests.test_heads import MODELS, reference

GPT_LABELS = [
    "tok_emb.weight",
    "blocks.0.ln1.weight",
    "blocks.0.attn.q.head0",
    "blocks.0.attn.q.head1",
    "blocks.0.attn.k.head0",
    "blocks.0.attn.k.head1",
    "blocks.0.attn.out_proj.bias",
    "blocks.0.mlp.fc1.weight",
    "blocks.1.attn.q.head0",
    "ln_f.weight",
]


def test_places_of_gpt_vit_and_cnn_labels():
    assert hierarchy.place("blocks.0.attn.k.head1") == hierarchy.Place("blocks.0", 1, "k")
    vit = "encoder.layers.encoder_layer_3.self_attention.v.head2"
    assert hierarchy.place(vit) == hierarchy.Place("encoder.layers.encoder_layer_3", 2, "v")
    assert hierarchy.layer_of("features.3.weight") == "features.3"
    assert hierarchy.layer_of("encoder.pos_embedding") == "encoder"
    assert hierarchy.has_heads(GPT_LABELS) and not hierarchy.has_heads(["fc.weight"])


def test_order_is_layer_then_head_then_type_and_keeps_norms_and_mlp_around():
    by_head = [GPT_LABELS[i] for i in hierarchy.order(GPT_LABELS, "head")]
    assert by_head[:7] == [
        "tok_emb.weight",
        "blocks.0.ln1.weight",
        "blocks.0.attn.q.head0",
        "blocks.0.attn.k.head0",
        "blocks.0.attn.q.head1",
        "blocks.0.attn.k.head1",
        "blocks.0.attn.out_proj.bias",
    ]
    by_type = [GPT_LABELS[i] for i in hierarchy.order(GPT_LABELS, "block")]
    assert by_type[2:6] == GPT_LABELS[2:6]
    assert sorted(hierarchy.order(GPT_LABELS)) == list(range(len(GPT_LABELS)))
    with pytest.raises(ValueError, match="within"):
        hierarchy.order(GPT_LABELS, "size")


def test_units_collapse_each_level_and_expanded_layers_stay_whole():
    names = lambda level, **kw: [u for u, _ in hierarchy.units(GPT_LABELS, level, **kw)]  # noqa: E731
    assert names("layer") == ["tok_emb.weight", "blocks.0", "blocks.1.attn.q.head0", "ln_f.weight"]
    assert "blocks.0.head1" in names("head") and "blocks.0.mlp.fc1.weight" in names("head")
    assert "blocks.0.q" in names("block") and "blocks.0.k" in names("block")
    opened = names("layer", expanded={"blocks.0"})
    assert opened[1:8] == [GPT_LABELS[i] for i in hierarchy.order(GPT_LABELS)][1:8]
    assert opened[-2:] == ["blocks.1.attn.q.head0", "ln_f.weight"]
    for level in hierarchy.LEVELS:
        members = sorted(i for _, m in hierarchy.units(GPT_LABELS, level) for i in m)
        assert members == list(range(len(GPT_LABELS)))
    with pytest.raises(ValueError, match="level"):
        hierarchy.units(GPT_LABELS, "neuron")


def test_membership_refuses_units_that_are_not_a_partition():
    with pytest.raises(ValueError, match="exactly once"):
        hierarchy.membership(3, [("a", [0, 1]), ("b", [1])])


def _coarse_partition(model, fine: hl.Partition, units) -> hl.Partition:
    """The partition whose groups are the units (unions of fine groups), built from masks."""
    unit_of = torch.empty(len(fine), dtype=torch.long)
    for u, (_, members) in enumerate(units):
        unit_of[members] = u
    ids = {
        n: unit_of[torch.full(s, a) if isinstance(a, int) else a]
        for n, s, a in zip(fine.names, fine.shapes, fine.assignment, strict=True)
    }
    groups = [
        (label, {n: ids[n] == u for n in fine.names if bool((ids[n] == u).any())})
        for u, (label, _) in enumerate(units)
    ]
    return hl.Partition.from_index_sets(model, groups)


@pytest.mark.parametrize("name", ["gpt", "vit"])
@pytest.mark.parametrize("level", ["head", "block", "layer"])
def test_collapsing_equals_the_coarser_partitions_brute_force(name, level):
    """M^T H M of the per-head H̄ is the H̄ of the partition into unions (float64)."""
    model = MODELS[name]()
    fine = hl.Partition.by_head(model)
    H, g = reference(name, fine)
    rec = {
        "summary": {
            "labels": fine.labels,
            "kinds": fine.kinds,
            "layers": fine.layers,
            "sizes": [grp.size for grp in fine.groups],
        },
        "arrays": {"H": H.numpy(), "g": g.numpy()},
    }
    units = hierarchy.units(fine.labels, level)
    assert len(units) < len(fine)
    coarse = hierarchy.coarsen(rec, units)
    part = _coarse_partition(model, fine, units)
    Hc, gc = reference(name, part)
    at = [part.labels.index(label) for label in coarse["summary"]["labels"]]
    assert_close(torch.from_numpy(coarse["arrays"]["H"]), Hc[at][:, at], **EXACT)
    assert_close(torch.from_numpy(coarse["arrays"]["g"]), gc[at], **EXACT)
    assert coarse["summary"]["sizes"] == [part.groups[i].size for i in at]
    inv = hl.linalg.inverse(Hc[at][:, at]).inv.numpy()
    np.testing.assert_allclose(coarse["arrays"]["Hinv"], inv, rtol=1e-8, atol=1e-12)


def test_reordering_alone_moves_the_stored_matrices_without_recomputing():
    labels = ["b.0.k.head0", "b.0.q.head1", "b.0.q.head0"]
    H = np.array([[1.0, 2.0, 3.0], [2.0, 5.0, 6.0], [3.0, 6.0, 9.0]])
    rec = {
        "summary": {
            "labels": labels,
            "kinds": ["w"] * 3,
            "layers": ["b.0"] * 3,
            "sizes": [1, 2, 3],
        },
        "arrays": {
            "H": H,
            "Hinv": H * 10,
            "g": np.array([1.0, 2.0, 3.0]),
            "eigenvalues": np.ones(3),
        },
    }
    out = hierarchy.coarsen(rec, hierarchy.units(labels, "group"))
    assert out["summary"]["labels"] == ["b.0.q.head0", "b.0.k.head0", "b.0.q.head1"]
    assert out["arrays"]["Hinv"][0].tolist() == [90.0, 30.0, 60.0]  # stored, only moved
    assert out["arrays"]["g"].tolist() == [3.0, 1.0, 2.0] and out["summary"]["sizes"] == [3, 1, 2]
    assert "eigenvalues" not in out["arrays"]
