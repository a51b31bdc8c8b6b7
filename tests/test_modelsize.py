"""The closed-form sizes of the built-in architectures against the models they build."""

from __future__ import annotations

import pytest

from hessian_lens.modelsize import MAX_MODULES, builtin_size, check_size, too_large
from hessian_lens.registry import build_on_meta

CASES = [
    ("lenet5", {}),
    ("lenet5", {"num_classes": 7, "in_channels": 1, "pool": "avg", "activation": "relu"}),
    ("vgg11p", {}),
    ("vgg11p", {"width": 0.3, "num_classes": 3, "in_channels": 1}),
    ("vgg11p", {"width": 0.01}),  # every layer at its floor of one channel
    ("mlp", {}),
    ("mlp", {"sizes": [5, 3]}),
    ("mlp", {"sizes": [5, 3, 4, 2, 9]}),
    ("gpt", {}),
    ("gpt", {"layers": 3, "heads": 2, "width": 8, "context": 5, "vocab_size": 11}),
    ("gpt", {"layers": 1, "heads": 1, "width": 4, "mlp_ratio": 3}),
    (
        "torchvision:VisionTransformer",
        {
            "image_size": 32,
            "patch_size": 4,
            "num_layers": 2,
            "num_heads": 2,
            "hidden_dim": 16,
            "mlp_dim": 8,
            "num_classes": 10,
        },
    ),
    (
        "torchvision:VisionTransformer",
        {
            "image_size": 28,
            "patch_size": 7,
            "num_layers": 3,
            "num_heads": 2,
            "hidden_dim": 8,
            "mlp_dim": 5,
            "num_classes": 4,
            "representation_size": 6,
        },
    ),
]


@pytest.mark.parametrize(("key", "kwargs"), CASES)
def test_the_closed_form_is_the_built_model(key, kwargs):
    model = build_on_meta(key, **kwargs)
    built = (sum(p.numel() for p in model.parameters()), len(list(model.modules())))
    assert builtin_size(key, kwargs) == built


def test_sizes_over_the_limits_are_refused_and_others_pass():
    assert builtin_size("torchvision:resnet18", {}) is None  # counted while built instead
    assert too_large("x", 10, MAX_MODULES) is None
    assert "20,001 modules" in too_large("x", 10, MAX_MODULES + 1)
    check_size("gpt", {"layers": 1999})  # 19,995 modules
    with pytest.raises(ValueError, match="20,005 modules"):
        check_size("gpt", {"layers": 2000})
    with pytest.raises(ValueError, match="parameters"):
        check_size("mlp", {"sizes": [100_000, 100_000]})
