"""Models of the paper and the registry."""

from __future__ import annotations

import pytest
import torch

import hessian_lens as hl
from hessian_lens.models import MLP, LeNet5, VGG11Prime, build_model


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
        (lambda: build_model("lenet5", activation="swish"), "unknown activation 'swish'"),
        (lambda: build_model("mlp", sizes=[3]), "sizes needs"),
        (lambda: build_model("lenet5", pool="min"), "pool must be"),
    ],
)
def test_registry_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
