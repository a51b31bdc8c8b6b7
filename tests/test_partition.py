"""Partitions: coverage, labels, kinds, layers, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hessian_lens as hl
from hessian_lens.models import LeNet5
from tests.tiny import frozen


def lenet():
    torch.manual_seed(0)
    return LeNet5()


def covered_once(part: hl.Partition, model: nn.Module) -> None:
    u = [torch.ones_like(p) for p in part.parameters(model)]
    U = part.matrix(u)
    assert U.shape == (len(part), part.numel)
    assert torch.equal(U.sum(0), torch.ones(part.numel))  # every scalar in one group
    assert [int(n) for n in (U != 0).sum(1)] == [g.size for g in part.groups]


def test_canonical_is_one_group_per_tensor_in_order():
    part = hl.Partition.canonical(lenet())
    assert part.labels == [
        "conv1.weight",
        "conv1.bias",
        "conv2.weight",
        "conv2.bias",
        "fc1.weight",
        "fc1.bias",
        "fc2.weight",
        "fc2.bias",
        "fc3.weight",
        "fc3.bias",
    ]
    assert part.kinds == ["weight", "bias"] * 5
    assert part.layers == [
        "conv1",
        "conv1",
        "conv2",
        "conv2",
        "fc1",
        "fc1",
        "fc2",
        "fc2",
        "fc3",
        "fc3",
    ]
    assert [g.layer_index for g in part.groups] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert part.groups[0].size == 6 * 3 * 5 * 5
    covered_once(part, lenet())


@pytest.mark.parametrize(
    "maker,labels",
    [
        (hl.Partition.by_layer, ["conv1", "conv2", "fc1", "fc2", "fc3"]),
        (hl.Partition.by_kind, ["weights", "biases"]),
        (hl.Partition.trivial, ["all"]),
    ],
)
def test_coarse_partitions(maker, labels):
    model = lenet()
    part = maker(model)
    assert part.labels == labels
    covered_once(part, model)


def test_by_layer_and_kind_metadata():
    model = lenet()
    assert set(hl.Partition.by_layer(model).kinds) == {"mixed"}
    kinds = hl.Partition.by_kind(model)
    assert kinds.kinds == ["weight", "bias"]
    assert kinds.groups[0].layer_index == -1


def test_discrete_one_group_per_scalar():
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
    part = hl.Partition.discrete(model)
    assert len(part) == part.numel == 13
    assert part.labels[:3] == ["0.weight[0,0]", "0.weight[0,1]", "0.weight[1,0]"]
    assert part.labels[6] == "0.bias[0]"
    covered_once(part, model)


def test_discrete_refuses_large_models():
    with pytest.raises(hl.PartitionError, match="P = 62,006"):
        hl.Partition.discrete(lenet())


def test_frozen_parameters_are_excluded():
    model = frozen()
    part = hl.Partition.canonical(model)
    assert "2.weight" not in part.labels and "2.bias" in part.labels
    assert (
        len(hl.Partition.discrete(model))
        == part.numel
        == sum(p.numel() for p in model.parameters() if p.requires_grad)
    )


def test_from_groups_names_and_patterns():
    model = lenet()
    part = hl.Partition.from_groups(
        model, {"conv1.weight": "first", r"conv.*": "convs", r"fc.*": "head"}
    )
    assert part.labels == ["first", "convs", "head"]
    assert part.groups[1].params == ("conv1.bias", "conv2.weight", "conv2.bias")
    covered_once(part, model)


def test_from_groups_errors():
    model = lenet()
    with pytest.raises(hl.PartitionError, match="overlap.*conv1.weight"):
        hl.Partition.from_groups(model, {r"conv1\..*": "a", r".*weight": "b", r".*": "c"})
    with pytest.raises(hl.PartitionError, match="gap.*fc3.bias"):
        hl.Partition.from_groups(model, {r"conv.*": "a", r"fc[12].*": "b", "fc3.weight": "c"})
    with pytest.raises(hl.PartitionError, match="match no trainable.*nothing"):
        hl.Partition.from_groups(model, {r".*": "all", "nothing": "x"})


def test_low_level_constructor_rejects_bad_assignments():
    shapes = [torch.Size([2])]
    group = hl.Group("g", "weight", "", 0, 2, ("w",))
    with pytest.raises(hl.PartitionError, match="does not exist"):
        hl.Partition(["w"], shapes, [3], [group])
    with pytest.raises(hl.PartitionError, match="empty groups"):
        hl.Partition(["w"], shapes, [0], [group, group])


def test_all_frozen_model_is_an_error():
    model = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(hl.PartitionError, match="no trainable parameter"):
        hl.Partition.canonical(model)


def test_blocks():
    part = hl.Partition.canonical(lenet())
    assert part.blocks("layer")[0] == [0, 1]
    assert part.blocks("kind") == [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]]
    assert part.blocks("tensor") == [[s] for s in range(10)]
    with pytest.raises(ValueError, match="unknown block"):
        part.blocks("rows")


def test_check_against_another_model():
    part = hl.Partition.canonical(lenet())
    with pytest.raises(hl.PartitionError, match="shape"):
        part.check(LeNet5(num_classes=5))


def resnet_like():
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU())
    return nn.Sequential(
        nn.Sequential(block, nn.Sequential(nn.Conv2d(4, 4, 1), nn.LayerNorm([4, 1, 1]))),
        nn.Flatten(),
        nn.Linear(4, 2),
    )


def test_norm_parameters_are_their_own_kind():
    part = hl.Partition.canonical(resnet_like())
    kinds = dict(zip(part.labels, part.kinds, strict=True))
    assert kinds["0.0.0.weight"] == "weight"
    assert kinds["0.0.1.weight"] == "norm_weight" and kinds["0.0.1.bias"] == "norm_bias"
    assert kinds["0.1.1.weight"] == "norm_weight"  # LayerNorm too
    assert kinds["2.bias"] == "bias"
    by_kind = hl.Partition.by_kind(resnet_like())
    assert by_kind.labels == ["weights", "norm_weights", "norm_biases", "biases"]
    covered_once(by_kind, resnet_like())


def test_by_module_depths_and_scheme_names():
    model = resnet_like()
    assert hl.Partition.by_module(model, 1).labels == ["0", "2"]
    assert hl.Partition.by_module(model, 2).labels == ["0.0", "0.1", "2.weight", "2.bias"]
    assert hl.Partition.from_name(model, "by_module:2").scheme == "by_module:2"
    covered_once(hl.Partition.by_module(model, 3), model)
    for bad in ("by_module:0", "by_module:x", "blocks"):
        with pytest.raises(hl.PartitionError, match="unknown partition"):
            hl.Partition.from_name(model, bad)
    with pytest.raises(hl.PartitionError, match="depth"):
        hl.Partition.by_module(model, 0)


def test_by_regex_first_match_wins_and_the_rest_stay_alone():
    model = resnet_like()
    part = hl.Partition.by_regex(model, [(r"\.1\.(weight|bias)$", "norms"), (r"weight$", "W")])
    assert part.labels == ["W", "norms", "0.1.0.bias", "2.bias"]
    covered_once(part, model)
    with pytest.raises(hl.PartitionError, match="bad regular expression"):
        hl.Partition.by_regex(model, [("(", "x")])
