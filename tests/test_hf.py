"""Hugging Face head layouts against the float64 brute force, on tiny configs (no download).

Each family's per-head groups (``by_head``), Adam-mini blocks and neurons give the same H̄
and ḡ as the full Hessian contracted with the groups; a head's group moves exactly the
features of that head (read at the input of the output projection); and the built-in
``gpt``'s weights mapped into a ``GPT2LMHeadModel`` give the same per-head H̄.
"""

from __future__ import annotations

import functools
import types

import pytest
import torch
import torch.nn.functional as F

import hessian_lens as hl
from hessian_lens.heads import block_of, head_of, heads_of
from hessian_lens.losses import next_token
from hessian_lens.models import GPT
from hessian_lens.reference import full_derivative
from hessian_lens.registry import build_model
from tests.compare import EXACT, assert_close
from tests.tiny import perturb

transformers = pytest.importorskip("transformers")

T, V = 4, 7
CONFIGS = {
    "gpt2": (
        "hf:gpt2",
        {"n_layer": 1, "n_head": 2, "n_embd": 4, "vocab_size": V, "n_positions": T},
    ),
    "bert": (
        "hf:BertForSequenceClassification",
        {
            "vocab_size": V,
            "hidden_size": 4,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 4,
            "max_position_embeddings": T,
            "num_labels": 3,
        },
    ),
    "roberta": (
        "hf:RobertaForSequenceClassification",
        {
            "vocab_size": V,
            "hidden_size": 4,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 4,
            "max_position_embeddings": T + 2,
            "num_labels": 3,
        },
    ),
    "llama": (
        "hf:llama",
        {
            "vocab_size": V,
            "hidden_size": 8,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "intermediate_size": 4,
            "max_position_embeddings": T,
        },
    ),
    "mistral": (
        "hf:mistral",
        {
            "vocab_size": V,
            "hidden_size": 8,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "intermediate_size": 4,
            "max_position_embeddings": T,
            "head_dim": 2,
        },
    ),
    "qwen2": (
        "hf:qwen2",
        {
            "vocab_size": V,
            "hidden_size": 8,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "intermediate_size": 4,
            "max_position_embeddings": T,
        },
    ),
    "vit": (
        "hf:ViTForImageClassification",
        {
            "image_size": 4,
            "patch_size": 2,
            "num_channels": 3,
            "hidden_size": 4,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 4,
            "num_labels": 3,
        },
    ),
}
CAUSAL = ("gpt2", "llama", "mistral", "qwen2")


def tiny(family: str):
    """The family's tiny model, float64, weights moved off their initialisation."""
    name, config = CONFIGS[family]
    torch.manual_seed(3)
    model = perturb(build_model(name, **config), 4, 0.3)
    transformers.AttentionInterface.register("float64_eager", attention_in_float64)
    model.config._attn_implementation = "float64_eager"
    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm"):
            module.forward = types.MethodType(rms_norm_in_float64, module)
    return model


def attention_in_float64(module, query, key, value, attention_mask, scaling, dropout=0.0, **kw):
    """Hugging Face's eager attention without its float32 softmax (grouped K / V repeated)."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    weights = query @ key.transpose(2, 3) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = weights.softmax(-1)
    return (weights @ value).transpose(1, 2).contiguous(), weights


def rms_norm_in_float64(self, x: torch.Tensor) -> torch.Tensor:
    """Llama's RMSNorm without its float32 upcast (its rounding would hide 1e-9 errors)."""
    return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


def data(family: str, n: int = 5):
    gen = torch.Generator().manual_seed(11)
    if family in CAUSAL:
        tokens = torch.randint(0, V, (n, T + 1), generator=gen)
        return tokens[:, :-1], tokens[:, 1:]
    labels = torch.randint(0, 3, (n,), generator=gen)
    if family == "vit":
        return torch.randn(n, 3, 4, 4, generator=gen, dtype=torch.float64), labels
    return torch.randint(2, V, (n, T), generator=gen), labels  # no padding token (1)


def loss_of(family: str):
    return next_token if family in CAUSAL else F.cross_entropy


@functools.cache
def brute_force(family: str) -> tuple[torch.Tensor, torch.Tensor]:
    model, batch = tiny(family), data(family)
    return tuple(full_derivative(model, loss_of(family), batch, k) for k in (1, 2))


def reference(family: str, part: hl.Partition) -> tuple[torch.Tensor, torch.Tensor]:
    grad, hess = brute_force(family)
    pieces = grad.split([s.numel() for s in part.shapes])
    U = part.matrix([t.reshape(s) for t, s in zip(pieces, part.shapes, strict=True)])
    return U @ hess @ U.T, U @ grad


@pytest.mark.parametrize("scheme", ["by_head", "adam_mini", "by_neuron"])
@pytest.mark.parametrize("family", list(CONFIGS))
def test_hf_groups_match_brute_force(family, scheme):
    model = tiny(family)
    part = hl.Partition.from_name(model, scheme)
    U = part.matrix([torch.ones_like(p) for p in part.parameters(model)])
    assert torch.equal(U.sum(0), torch.ones(part.numel))  # every scalar in one group
    if scheme == "by_head":
        assert sum(head_of(x) is not None for x in part.labels) >= 4
    res = hl.pseudo_hessian(model, loss_of(family), data(family), partition=part)
    H, g = reference(family, part)
    assert_close(res.H, H, **EXACT)
    assert_close(res.g, g, **EXACT)


# ---------------------------------------------------------------------------- semantics
O_PROJ = {
    "gpt2": "transformer.h.0.attn.c_proj",
    "bert": "bert.encoder.layer.0.attention.output.dense",
    "roberta": "roberta.encoder.layer.0.attention.output.dense",
    "llama": "model.layers.0.self_attn.o_proj",
    "mistral": "model.layers.0.self_attn.o_proj",
    "qwen2": "model.layers.0.self_attn.o_proj",
    "vit": "vit.layers.0.attention.o_proj",
}


def head_outputs(model, family: str) -> torch.Tensor:
    """The input of the layer's output projection: (N, T, H, d), the heads' outputs."""
    seen = {}
    module = model.get_submodule(O_PROJ[family])
    handle = module.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    try:
        with torch.no_grad():
            model.eval()(data(family)[0])
    finally:
        handle.remove()
    x = seen["x"]
    return x.reshape(*x.shape[:-1], CONFIGS[family][1].get("num_attention_heads", 2), -1)


@pytest.mark.parametrize("family", list(CONFIGS))
def test_a_heads_group_moves_exactly_the_heads_it_names(family):
    """Moving the scalars of ``q/k/v.head<h>`` (or ``k.head<a>-<b>``) changes only those heads."""
    model = tiny(family)
    part = hl.Partition.by_head(model)
    before = head_outputs(model, family)
    params = part.parameters(model)
    checked = 0
    for s, label in enumerate(part.labels):
        if block_of(label) not in ("q", "k", "v") or heads_of(label) is None:
            continue
        direction = [torch.ones_like(p) for p in params]
        for ones, ids in zip(direction, part.assignment, strict=True):
            ones.mul_(torch.as_tensor(ids == s).to(ones.dtype))
        with torch.no_grad():
            for p, d in zip(params, direction, strict=True):
                p.add_(0.5 * d)
            moved = (head_outputs(model, family) - before).abs().amax(dim=(0, 1, 3)) > 1e-12
            for p, d in zip(params, direction, strict=True):
                p.sub_(0.5 * d)
        assert moved.nonzero().flatten().tolist() == list(heads_of(label)), label
        checked += 1
    assert checked >= 6


def test_gpt2_fused_conv1d_heads_are_column_blocks():
    """c_attn is in x out: head h of Q owns columns h*d..(h+1)*d, of K 4 + ..., c_proj's rows."""
    model = tiny("gpt2")
    part = hl.Partition.by_head(model)
    ids = {lab: s for s, lab in enumerate(part.labels)}
    names = [n for n, _ in model.named_parameters()]
    w = part.assignment[names.index("transformer.h.0.attn.c_attn.weight")]  # (4, 12)
    b = part.assignment[names.index("transformer.h.0.attn.c_attn.bias")]
    o = part.assignment[names.index("transformer.h.0.attn.c_proj.weight")]  # (4, 4)
    assert w[:, 2:4].eq(ids["transformer.h.0.attn.q.head1"]).all()
    assert w[:, 4:6].eq(ids["transformer.h.0.attn.k.head0"]).all()
    assert b[10:12].eq(ids["transformer.h.0.attn.v.head1"]).all()
    assert o[2:].eq(ids["transformer.h.0.attn.o.head1"]).all()


def test_gqa_labels_name_the_query_heads_sharing_each_kv_head():
    labels = hl.Partition.by_head(tiny("mistral")).labels
    assert [x.split("self_attn.")[1] for x in labels if ".k.head" in x or ".v.head" in x] == [
        "k.head0-3",
        "v.head0-3",
    ]
    mini = hl.Partition.adam_mini(tiny("llama")).labels
    assert "model.layers.0.self_attn.k.head2-3" in mini
    assert "model.layers.0.self_attn.v.neuron3" in mini


# ---------------------------------------------------------------------------- built-in twin
def gpt2_from_builtin(gpt: GPT) -> torch.nn.Module:
    """A GPT2LMHeadModel computing what the built-in GPT computes, with its weights."""
    width, layers = gpt.tok_emb.weight.shape[1], len(gpt.blocks)
    model = build_model(
        "hf:gpt2",
        vocab_size=gpt.vocab_size,
        n_positions=gpt.context,
        n_embd=width,
        n_layer=layers,
        n_head=gpt.blocks[0].attn.heads,
        n_inner=gpt.blocks[0].mlp.fc1.out_features,
        activation_function="gelu",  # nn.GELU(): the exact erf form
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    ).double()
    src = gpt.state_dict()
    dst = {
        "transformer.wte.weight": src["tok_emb.weight"],
        "transformer.wpe.weight": src["pos_emb.weight"],
    }
    for i in range(layers):
        a, b = f"blocks.{i}.", f"transformer.h.{i}."
        pairs = {
            "ln1": "ln_1",
            "ln2": "ln_2",
            "attn.qkv": "attn.c_attn",
            "attn.out_proj": "attn.c_proj",
            "mlp.fc1": "mlp.c_fc",
            "mlp.fc2": "mlp.c_proj",
        }
        for mine, theirs in pairs.items():
            weight = src[f"{a}{mine}.weight"]
            dst[f"{b}{theirs}.weight"] = weight.T if mine.startswith(("attn", "mlp")) else weight
            dst[f"{b}{theirs}.bias"] = src[f"{a}{mine}.bias"]
    dst["transformer.ln_f.weight"], dst["transformer.ln_f.bias"] = (
        src["ln_f.weight"],
        src["ln_f.bias"],
    )
    dst["lm_head.weight"] = src["tok_emb.weight"]
    model.load_state_dict(dst, strict=True)
    return model.eval()


def test_builtin_gpt_in_a_gpt2_lm_head_model_has_the_same_per_head_curvature():
    torch.manual_seed(6)
    gpt = perturb(GPT(vocab_size=V, context=T, layers=2, heads=2, width=4, mlp_ratio=2), 1, 0.3)
    hf_model = gpt2_from_builtin(gpt)
    batch = data("gpt2")
    assert_close(hf_model(batch[0]), gpt(batch[0]), **EXACT)
    ours = hl.pseudo_hessian(gpt, next_token, batch, partition=hl.Partition.by_head(gpt))
    theirs = hl.pseudo_hessian(
        hf_model, next_token, batch, partition=hl.Partition.by_head(hf_model)
    )
    rename = {
        "tok_emb.weight": "transformer.wte.weight",
        "pos_emb.weight": "transformer.wpe.weight",
        "ln_f.weight": "transformer.ln_f.weight",
        "ln_f.bias": "transformer.ln_f.bias",
    }
    words = [
        ("blocks.", "transformer.h."),
        (".ln1.", ".ln_1."),
        (".ln2.", ".ln_2."),
        ("attn.out_proj", "attn.c_proj"),
        ("mlp.fc1", "mlp.c_fc"),
        ("mlp.fc2", "mlp.c_proj"),
    ]

    def hf_label(label: str) -> str:
        if label in rename:
            return rename[label]
        for a, b in words:
            label = label.replace(a, b)
        return label

    order = [theirs.labels.index(hf_label(x)) for x in ours.labels]
    assert sum(".head" in x for x in ours.labels) == 2 * 4 * 2  # q, k, v, o x 2 heads x 2 layers
    assert_close(theirs.H[order][:, order], ours.H, **EXACT)
    assert_close(theirs.g[order], ours.g, **EXACT)
