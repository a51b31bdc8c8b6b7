"""Models of the paper and the registry."""

from __future__ import annotations

import pytest
import torch

import hessian_lens as hl
from hessian_lens.models import MLP, LeNet5, VGG11Prime
from hessian_lens.registry import build_model


def test_lenet5_layout():
    model = LeNet5()
    assert sum(p.numel() for p in model.parameters()) == 62006
    assert isinstance(model.act, torch.nn.Tanh)
    assert len(hl.Partition.canonical(model)) == 10
    assert isinstance(LeNet5(activation="relu", pool="avg").pool, torch.nn.AvgPool2d)


def test_vgg11_prime_layout():
    model = VGG11Prime()
    part = hl.Partition.canonical(model)
    assert len(part) == 18  # 8 convolutions + 1 linear head, weight and bias each
    assert part.labels[-2:] == ["classifier.weight", "classifier.bias"]
    assert model.classifier.in_features == 512
    assert isinstance(model.features[1], torch.nn.ELU)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert VGG11Prime(width=0.25)(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_mlp_and_registry():
    model = build_model("mlp", sizes=[12, 7, 3], activation="elu")
    assert isinstance(model, MLP)
    assert model(torch.zeros(4, 3, 2, 2)).shape == (4, 3)
    assert isinstance(build_model("VGG-11'"), VGG11Prime)
    assert isinstance(build_model("LeNet"), LeNet5)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: build_model("resnet50"), "unknown architecture 'resnet50'"),
        (lambda: build_model("lenet5", depth=3), "bad arguments for 'lenet5'"),
        (lambda: build_model("lenet5", activation="swish"), "activation must be one of"),
        (lambda: build_model("mlp", sizes=[3]), "sizes must be a list of 2 or more"),
        (lambda: build_model("lenet5", pool="min"), "pool must be"),
        (lambda: build_model("gpt", width=0.5), "gpt: width must be an integer >= 1"),
        (lambda: build_model("gpt", width=6, heads=4), "not divisible by heads"),
        (
            lambda: build_model("torchvision:VisionTransformer", image_size=32),
            "bad arguments for 'torchvision:VisionTransformer'",
        ),
        (lambda: build_model("torchvision:Nope"), "classes built by name"),
    ],
)
def test_registry_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    "name,kwargs,gain",
    [
        ("lenet5", {}, 1.0),
        ("vgg11p", {"width": 0.25}, 2**0.5),
        ("mlp", {"activation": "elu"}, 2**0.5),
    ],
)
def test_paper_init_draws_n0_gain2_over_fan_in_and_zero_biases(name, kwargs, gain):
    torch.manual_seed(0)
    model = build_model(name, init="paper", **kwargs)
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            w = module.weight.detach()
            expected = gain / w[0].numel() ** 0.5
            assert abs(float(w.std()) / expected - 1) < (0.2 if w.numel() < 500 else 0.05)
            assert abs(float(w.mean())) < 4 * expected / w.numel() ** 0.5
            assert float(module.bias.detach().abs().max()) == 0.0
    torch.manual_seed(0)
    default = build_model(name, **kwargs)
    assert any(
        float(m.bias.detach().abs().max()) > 0
        for m in default.modules()
        if isinstance(m, torch.nn.Linear)
    )


def test_unknown_init_is_refused():
    with pytest.raises(ValueError, match="unknown init 'xavier'"):
        build_model("lenet5", init="xavier")


def test_gpt_is_causal_pre_norm_with_tied_embeddings():
    torch.manual_seed(0)
    model = build_model("gpt", layers=2, heads=2, width=16, context=8)
    names = [n for n, _ in model.named_parameters()]
    assert names[:2] == ["tok_emb.weight", "pos_emb.weight"] and names[-1] == "ln_f.bias"
    assert "blocks.1.attn.qkv.weight" in names and not any("head" in n for n in names)
    tokens = torch.randint(0, 256, (3, 8))
    out = model(tokens)
    assert out.shape == (3, 8, 256)
    changed = tokens.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % 256
    assert torch.allclose(model(changed)[:, :5], out[:, :5], atol=1e-6)  # no peeking ahead
    assert not torch.allclose(model(changed)[:, 5:], out[:, 5:])
    x = model.tok_emb.weight.detach()  # logits are the final features times the embedding
    feats = model.ln_f(model.blocks(model.tok_emb(tokens) + model.pos_emb(torch.arange(8))))
    assert torch.allclose(out, feats @ x.T, atol=1e-5)
    std = float(model.blocks[0].attn.out_proj.weight.detach().std())
    assert abs(std / (0.02 / 2) - 1) < 0.15  # GPT-2's residual scaling 1 / sqrt(2 layers)
    with pytest.raises(ValueError, match="T <= 8"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_vision_transformer_class_by_name():
    vit = build_model(
        "torchvision:VisionTransformer",
        image_size=32,
        patch_size=4,
        num_layers=4,
        num_heads=4,
        hidden_dim=128,
        mlp_dim=256,
        num_classes=10,
    )
    assert vit(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert sum(p.numel() for p in vit.parameters()) == 546_186
    assert "torchvision:VisionTransformer" in hl.registry.model_names()
