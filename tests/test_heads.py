"""Sub-tensor groups (heads, neurons, Adam-mini blocks) against the float64 brute force."""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

import hessian_lens as hl
from hessian_lens.heads import AttentionLayout, block_of, head_of
from hessian_lens.losses import next_token
from hessian_lens.models import GPT
from hessian_lens.reference import full_derivative
from hessian_lens.registry import build_model
from tests.compare import DEVICES, EXACT, assert_close
from tests.tiny import TinyAttention, perturb


def tiny_attention():
    torch.manual_seed(5)
    return perturb(TinyAttention())


def tiny_gpt():
    torch.manual_seed(6)
    return perturb(GPT(vocab_size=7, context=4, layers=1, heads=2, width=4, mlp_ratio=2), 1, 0.3)


def tiny_vit():
    torch.manual_seed(7)
    vit = build_model(
        "torchvision:VisionTransformer",
        image_size=4,
        patch_size=2,
        num_layers=1,
        num_heads=2,
        hidden_dim=4,
        mlp_dim=4,
        num_classes=3,
    )
    return perturb(vit, 2, 0.3)


def data(name: str, n: int = 5):
    gen = torch.Generator().manual_seed(11)
    if name == "gpt":
        tokens = torch.randint(0, 7, (n, 5), generator=gen)
        return tokens[:, :-1], tokens[:, 1:]
    shape = (n, 3, 4) if name == "attention" else (n, 3, 4, 4)
    return torch.randn(shape, generator=gen, dtype=torch.float64), torch.randint(0, 3, (n,))


MODELS = {"attention": tiny_attention, "gpt": tiny_gpt, "vit": tiny_vit}
LOSS = {"attention": F.cross_entropy, "gpt": next_token, "vit": F.cross_entropy}


def covered_once(part: hl.Partition, model: nn.Module) -> None:
    U = part.matrix([torch.ones_like(p) for p in part.parameters(model)])
    assert torch.equal(U.sum(0), torch.ones(part.numel))
    assert [int(n) for n in (U != 0).sum(1)] == [g.size for g in part.groups]


SCHEMES = ("by_head", "adam_mini", "by_neuron")
CASES = [
    *[(n, s, "loop") for n in MODELS for s in SCHEMES],
    *[("attention", s, "vmap") for s in SCHEMES],
    # GPT and ViT have LayerNorms: torch.func's derivatives of native_layer_norm are wrong,
    # the vmap back end runs them decomposed (vmapped.DecomposedNorms)
    *[(n, "by_head", "vmap") for n in ("gpt", "vit")],
]


@pytest.mark.parametrize("name,scheme,method", CASES)
def test_sub_tensor_groups_match_brute_force(name, scheme, method):
    model, batch, loss_fn = MODELS[name](), data(name), LOSS[name]
    part = hl.Partition.from_name(model, scheme)
    covered_once(part, model)
    with attention_for_derivatives():
        res = hl.pseudo_hessian(model, loss_fn, batch, partition=part, method=method)
    H, g = reference(name, part)
    assert_close(res.H, H, **EXACT)
    assert_close(res.g, g, **EXACT)
    assert res.method == method and not any("fell back" in n for n in res.notes)


@pytest.mark.parametrize("method", ["loop", "vmap"])
@pytest.mark.parametrize("device", DEVICES)
def test_head_groups_on_every_device(device, method):
    """The index tensors follow the computation's device (copied there once)."""
    model, batch = tiny_attention(), data("attention")
    part = hl.Partition.adam_mini(model)
    with attention_for_derivatives():
        res = hl.pseudo_hessian(
            model, F.cross_entropy, batch, partition=part, method=method, device=device
        )
    H, g = reference("attention", part)
    assert_close(res.H, H, **EXACT)
    assert_close(res.g, g, **EXACT)
    assert {d.type for _, d in part._copies} <= {torch.device(device).type}


@functools.cache
def brute_force(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Full gradient (P) and Hessian (P x P) of a tiny model, float64, computed once."""
    model, batch, loss_fn = MODELS[name](), data(name), LOSS[name]
    with attention_for_derivatives():
        return tuple(full_derivative(model, loss_fn, batch, k) for k in (1, 2))


def reference(name: str, part: hl.Partition) -> tuple[torch.Tensor, torch.Tensor]:
    """``H_bar = U H U^T`` and ``g_bar = U grad`` with ``U`` the gradient's group rows."""
    grad, hess = brute_force(name)
    pieces = grad.split([s.numel() for s in part.shapes])
    U = part.matrix([t.reshape(s) for t, s in zip(pieces, part.shapes, strict=True)])
    return U @ hess @ U.T, U @ grad


@contextlib.contextmanager
def attention_for_derivatives():
    """The math SDPA kernel, and no native fast path of nn.MultiheadAttention in eval mode.

    Neither the fused CPU kernels nor ``_native_multi_head_attention`` have the higher
    (or forward-mode) derivatives the engine takes.
    """
    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(was)


def test_torch_layer_norm_reverse_over_forward_is_still_wrong():
    """Why vmap runs layer norms decomposed (vmapped.DecomposedNorms, VMAP_WRONG_OPS).

    This fails once torch is fixed: then the decomposition and the screen can go.
    """
    x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    w = torch.linspace(0.5, 1.5, 4, dtype=torch.float64)

    def f(w):
        return torch.tanh(F.layer_norm(x * w, (4,))).pow(3).sum()

    hessian = torch.autograd.functional.hessian(f, w)
    assert torch.allclose(torch.func.jacfwd(torch.func.jacrev(f))(w), hessian)
    assert not torch.allclose(torch.func.jacrev(torch.func.jacfwd(f))(w), hessian)


def test_fused_qkv_heads_are_the_right_rows_and_columns():
    model = tiny_attention()
    part = hl.Partition.by_head(model)
    assert part.labels == [
        "attn.q.head0",
        "attn.q.head1",
        "attn.k.head0",
        "attn.k.head1",
        "attn.v.head0",
        "attn.v.head1",
        "attn.o.head0",
        "attn.o.head1",
        "attn.out_proj.bias",
        "fc.weight",
        "fc.bias",
    ]
    ids = {lab: s for s, lab in enumerate(part.labels)}
    w, b = part.assignment[0], part.assignment[1]  # in_proj_weight (12, 4), in_proj_bias (12)
    assert w[2:4].eq(ids["attn.q.head1"]).all() and b[2:4].eq(ids["attn.q.head1"]).all()
    assert w[4:6].eq(ids["attn.k.head0"]).all() and w[10:12].eq(ids["attn.v.head1"]).all()
    o = part.assignment[2]  # out_proj.weight: head h owns columns 2h, 2h + 1
    assert o[:, 2:].eq(ids["attn.o.head1"]).all() and o[:, :2].eq(ids["attn.o.head0"]).all()
    assert [g.size for g in part.groups[:8]] == [10] * 6 + [8, 8]
    assert [block_of(x) for x in part.labels] == [*"qqkkvvoo", "o", "linear", "linear"]
    assert [head_of(x) for x in part.labels[:3]] == [0, 1, 0]


def test_one_head_changes_only_its_own_rows():
    """A head's group moves exactly the query rows that head's attention reads."""
    model = tiny_attention()
    part = hl.Partition.by_head(model)
    s = part.labels.index("attn.q.head1")
    U = part.matrix([torch.ones_like(p) for p in part.parameters(model)])[s]
    moved = U[: 12 * 4].reshape(12, 4).abs().sum(1).nonzero().flatten().tolist()
    assert moved == [2, 3]


def test_user_heads_spec_and_refusals():
    model = tiny_attention()
    spec = {"attn": {"num_heads": 2, "qkv": ["attn.in_proj_weight", "attn.in_proj_bias"]}}
    part = hl.Partition.by_head(model, heads=spec)
    assert part.labels[:6] == [f"attn.{r}.head{h}" for r in "qkv" for h in (0, 1)]
    assert "attn.out_proj.weight" in part.labels  # no "o" given: the projection stays whole
    same = hl.Partition.by_head(model, heads=[AttentionLayout("x", 2, qkv=spec["attn"]["qkv"])])
    assert same.labels[0] == "x.q.head0"
    with pytest.raises(hl.PartitionError, match="do not split into 3 heads"):
        hl.Partition.by_head(model, heads={"a": {"num_heads": 3, "qkv": "attn.in_proj_weight"}})
    with pytest.raises(hl.PartitionError, match="not a trainable parameter"):
        hl.Partition.by_head(model, heads={"a": {"num_heads": 2, "q": "nope"}})
    with pytest.raises(hl.PartitionError, match="needs attention layers.*pass heads="):
        hl.Partition.by_head(nn.Linear(2, 2))


def test_adam_mini_rule_on_gpt():
    model = GPT(vocab_size=5, context=3, layers=2, heads=2, width=4, mlp_ratio=2)
    part = hl.Partition.adam_mini(model)
    labels = part.labels
    assert labels[:5] == [f"tok_emb.token{j}" for j in range(5)]
    assert "pos_emb.position2" in labels
    assert [x for x in labels if x.startswith("blocks.0.attn.q")] == [
        "blocks.0.attn.q.head0",
        "blocks.0.attn.q.head1",
        "blocks.0.attn.q.bias",
    ]
    assert sum(x.startswith("blocks.1.attn.v.neuron") for x in labels) == 4
    assert sum(x.startswith("blocks.1.attn.o.neuron") for x in labels) == 4
    assert "blocks.1.attn.out_proj.bias" in labels
    assert sum(x.startswith("blocks.0.mlp.fc1.neuron") for x in labels) == 8
    assert "blocks.0.mlp.fc1.bias" in labels and "blocks.0.ln1.weight" in labels
    covered_once(part, model)


def test_by_neuron_on_chosen_modules():
    model = tiny_attention()
    part = hl.Partition.by_neuron(model, modules=["fc"])
    assert part.labels[-3:] == ["fc.neuron0", "fc.neuron1", "fc.neuron2"]
    assert part.groups[-1].params == ("fc.weight", "fc.bias") and part.groups[-1].size == 5
    everything = hl.Partition.by_neuron(model)
    assert everything.labels[:2] == ["attn.q.neuron0", "attn.q.neuron1"]
    assert len(everything) == 12 + 4 + 3  # in_proj rows, out_proj rows, fc rows
    covered_once(everything, model)


def test_from_index_sets_refuses_overlaps_gaps_and_bad_indices():
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    whole = {"0.bias": None, "2.weight": None, "2.bias": None}
    with pytest.raises(hl.PartitionError, match="overlap: groups 'a' and 'b'"):
        hl.Partition.from_index_sets(
            net, [("a", {"0.weight": slice(0, 2)}), ("b", {"0.weight": 1})]
        )
    with pytest.raises(hl.PartitionError, match="gap: 3 scalars of '0.weight'"):
        hl.Partition.from_index_sets(net, [("a", {"0.weight": slice(0, 3)}), ("r", whole)])
    with pytest.raises(hl.PartitionError, match="does not fit '0.weight'"):
        hl.Partition.from_index_sets(net, [("a", {"0.weight": (0, 0, 0)})], rest="tensor")
    with pytest.raises(hl.PartitionError, match="selects nothing"):
        hl.Partition.from_index_sets(net, [("a", {"0.weight": slice(5, 9)})], rest="tensor")
    with pytest.raises(hl.PartitionError, match="not a trainable parameter"):
        hl.Partition.from_index_sets(net, [("a", {"1.weight": None})], rest="tensor")


def test_groups_are_ordered_by_their_first_tensor_and_pruning_stays_right():
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    part = hl.Partition.from_index_sets(
        net,
        [
            ("late", {"2.weight": (slice(None), slice(0, 2))}),
            ("mixed", {"2.bias": None, "0.weight": slice(2, 4)}),
            ("early", {"0.weight": slice(0, 2)}),
        ],
        rest="tensor",
    )
    assert part.labels == ["mixed", "early", "0.bias", "late", "2.weight.rest"]
    for s in range(len(part)):
        holders = {i for t in range(s, len(part)) for i in part.params_of(t)}
        assert set(part.params_from(s)) == holders


def test_block_types_of_canonical_labels():
    vit = tiny_vit()
    kinds = {lab: block_of(lab) for lab in hl.Partition.canonical(vit).labels}
    assert kinds["encoder.layers.encoder_layer_0.self_attention.in_proj_weight"] == "qkv"
    assert kinds["encoder.layers.encoder_layer_0.mlp.0.weight"] == "mlp"
    assert kinds["encoder.pos_embedding"] == kinds["conv_proj.weight"] == "embedding"
    assert kinds["encoder.layers.encoder_layer_0.ln_1.bias"] == "norm"
    assert kinds["heads.head.weight"] == "output"
    assert block_of("features.3.weight") == "conv" and block_of("fc1.bias") == "linear"


def test_grouped_fused_and_transposed_layouts_split_where_they_say():
    """A fused [Q; K; V] with 4 query and 2 K/V heads of width 2: rows 0-7, 8-11, 12-15;
    stored in x out, the same split runs over the columns."""
    layout = AttentionLayout("a", 4, qkv=("w",), num_kv_heads=2)
    rows = [(r, s.start, s.stop) for r, _, s in layout.role_rows({"w": (16, 3)})]
    assert rows == [("q", 0, 8), ("k", 8, 12), ("v", 12, 16)]
    assert [layout.head_label(r, h) for r in "qk" for h in range(2)] == [
        "head0",
        "head1",
        "head0-1",
        "head2-3",
    ]
    flipped = AttentionLayout("a", 4, qkv=("w",), num_kv_heads=2, transposed=("w",))
    assert [s.stop for _, _, s in flipped.role_rows({"w": (3, 16)})] == [8, 12, 16]
    assert flipped.index("w", {"w": (3, 16)}, slice(0, 2)) == (slice(None), slice(0, 2))
    with pytest.raises(hl.PartitionError, match="num_kv_heads must be an integer >= 1 dividing"):
        AttentionLayout("a", 4, qkv=("w",), num_kv_heads=3).check({"w": (20, 3)})
