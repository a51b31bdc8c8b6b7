"""Architectures from every source: torchvision state_dicts, user models, shape inference."""

from __future__ import annotations

import pytest
import torch

from hessian_lens import registry
from hessian_lens.registry import build_on_meta, infer_kwargs

TORCHVISION_SHAPES = [
    ("resnet18", {"num_classes": 10}),
    ("vgg11", {"num_classes": 7}),
    ("mobilenet_v3_small", {"num_classes": 7}),
    ("efficientnet_b0", {"num_classes": 7}),
    ("densenet121", {"num_classes": 7}),
    ("convnext_tiny", {"num_classes": 7}),
    ("regnet_y_400mf", {"num_classes": 7}),
    ("vit_b_16", {"num_classes": 7, "image_size": 32}),
    ("googlenet", {"num_classes": 7, "aux_logits": False}),
    ("inception_v3", {"num_classes": 5, "aux_logits": True}),
]


def on_meta(model: torch.nn.Module) -> bool:
    return all(t.device.type == "meta" for t in (*model.parameters(), *model.buffers()))


@pytest.mark.parametrize(
    "builder,kwargs", TORCHVISION_SHAPES, ids=[b for b, _ in TORCHVISION_SHAPES]
)
def test_infer_kwargs_reads_torchvision_shapes_on_meta(builder, kwargs):
    name = f"torchvision:{builder}"
    model = build_on_meta(name, **kwargs)
    assert on_meta(model)  # regnet computes its widths with tensors: still nothing allocated
    inferred = infer_kwargs(name, model.state_dict())
    assert {k: inferred.get(k) for k in kwargs} == kwargs


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("lenet5", {"num_classes": 7, "in_channels": 1}),
        ("vgg11p", {"num_classes": 3, "width": 0.25, "in_channels": 3}),
        ("mlp", {"sizes": [12, 5, 4, 3]}),
    ],
)
def test_infer_kwargs_reads_builtin_shapes(name, kwargs):
    assert infer_kwargs(name, build_on_meta(name, **kwargs).state_dict()) == kwargs
    assert infer_kwargs(name, {"unrelated.weight": torch.zeros(2)}) == {}


def test_user_models_infer_nothing():
    registry.register_model("doc-linear")(lambda n=3: torch.nn.Linear(2, n))
    try:
        assert infer_kwargs("doc-linear", {"weight": torch.zeros(3, 2)}) == {}
    finally:
        registry.unregister_model("doc-linear")


def test_build_on_meta_refuses_what_needs_values():
    @registry.register_model("needs-values")
    def needs_values(n: int = 3):
        net = torch.nn.Linear(n, n)
        _ = int(net.weight.sum())  # data-dependent: impossible without allocating
        return net

    try:
        with pytest.raises(registry.ArchitectureError, match="needs-values"):
            build_on_meta("needs-values")
    finally:
        registry.unregister_model("needs-values")
