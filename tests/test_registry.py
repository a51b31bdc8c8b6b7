"""Architectures from every source: torchvision state_dicts, user models, shape inference."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import hessian_lens as hl
from hessian_lens import registry
from hessian_lens.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from hessian_lens.registry import build_model, build_on_meta, infer_kwargs

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
        ("gpt", {"vocab_size": 50, "context": 9, "layers": 3, "width": 8, "mlp_ratio": 2}),
        (
            "torchvision:VisionTransformer",
            {
                "image_size": 16,
                "patch_size": 4,
                "num_layers": 2,
                "hidden_dim": 8,
                "mlp_dim": 12,
                "num_classes": 5,
            },
        ),
    ],
)
def test_infer_kwargs_reads_builtin_shapes(name, kwargs):
    if name == "torchvision:VisionTransformer":
        kwargs = {**kwargs}
        model = build_on_meta(name, num_heads=2, **kwargs)  # heads do not show in the weights
        assert infer_kwargs(name, model.state_dict()) == kwargs
        return
    assert infer_kwargs(name, build_on_meta(name, **kwargs).state_dict()) == kwargs
    assert infer_kwargs(name, {"unrelated.weight": torch.zeros(2)}) == {}


def test_user_models_infer_nothing():
    registry.register_model("doc-linear")(lambda n=3: torch.nn.Linear(2, n))
    try:
        assert infer_kwargs("doc-linear", {"weight": torch.zeros(3, 2)}) == {}
    finally:
        registry.unregister_model("doc-linear")


def perturbed_resnet18() -> torch.nn.Module:
    """resnet18 for 10 classes whose BatchNorm statistics are far from the defaults."""
    torch.manual_seed(0)
    model = build_model("torchvision:resnet18", num_classes=10)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.num_batches_tracked.fill_(7)
    return model.eval()


@pytest.fixture(scope="module")
def resnet_files(tmp_path_factory):
    model = perturbed_resnet18()
    folder = tmp_path_factory.mktemp("resnet")
    torch.save(model.state_dict(), folder / "resnet18.pt")
    save_file(model.state_dict(), str(folder / "resnet18.safetensors"))
    return model, folder


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_torchvision_state_dict_loads_with_inferred_classes(resnet_files, suffix):
    model, folder = resnet_files
    loaded, meta = load_checkpoint(
        folder / f"resnet18{suffix}", architecture="torchvision:resnet18"
    )
    assert meta["model"] == {"name": "torchvision:resnet18", "kwargs": {"num_classes": 10}}
    assert not loaded.training
    for (k, a), (k2, b) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(a, b), k  # running statistics included


def test_pseudo_hessian_of_a_loaded_torchvision_model_equals_the_eager_one(resnet_files):
    model, folder = resnet_files
    loaded, _ = load_checkpoint(folder / "resnet18.pt", architecture="torchvision:resnet18")
    torch.manual_seed(1)
    batch = torch.randn(3, 3, 32, 32), torch.tensor([1, 7, 3])
    stages = {r"(conv1|bn1)\..*": "stem", r"fc\..*": "head"}
    stages.update({rf"layer{i}\..*": f"layer{i}" for i in range(1, 5)})

    def hbar(net):
        part = hl.Partition.from_groups(net, stages)
        return hl.pseudo_hessian(net, F.cross_entropy, batch, partition=part, dtype=torch.float64)

    eager, rebuilt = hbar(model), hbar(loaded)
    assert eager.H.shape == (6, 6)
    torch.testing.assert_close(rebuilt.H, eager.H, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(rebuilt.g, eager.g, rtol=1e-10, atol=1e-12)
    fresh = build_model("torchvision:resnet18", num_classes=10).eval()  # default statistics
    fresh.load_state_dict(
        {k: v for k, v in model.state_dict().items() if "running" not in k}, strict=False
    )
    with torch.no_grad():  # so H̄ would differ if the statistics were not loaded
        assert not torch.allclose(fresh(batch[0]), model(batch[0]), rtol=1e-2)


def test_torchvision_mismatches_name_the_first_differences(resnet_files):
    _, folder = resnet_files
    path = folder / "resnet18.pt"
    with pytest.raises(CheckpointError, match=r"resnet18.pt does not fit ResNet: missing keys"):
        load_checkpoint(path, architecture="torchvision:resnet34")
    with pytest.raises(CheckpointError, match=r"fc.weight: file \(10, 512\) vs model \(7, 512\)"):
        load_checkpoint(path, architecture="torchvision:resnet18", model_kwargs={"num_classes": 7})
    with pytest.raises(CheckpointError, match="no classification builder 'resnet9'"):
        load_checkpoint(path, architecture="torchvision:resnet9")


def test_bare_torchvision_state_dict_says_how_to_name_it(resnet_files, monkeypatch):
    _, folder = resnet_files
    devices = []
    real_build = registry.build_model

    def spy(name, *args, **kwargs):
        devices.append(torch.get_default_device().type)
        return real_build(name, *args, **kwargs)

    monkeypatch.setattr(registry, "build_model", spy)
    with pytest.raises(
        CheckpointError,
        match=r"bare state_dict.*name it.*torchvision:<builder>.*register_model",
    ):
        load_checkpoint(folder / "resnet18.safetensors")
    assert devices and set(devices) == {"meta"}  # detection never allocates a default model


def test_bare_builtin_state_dict_is_detected_on_meta(tmp_path, monkeypatch):
    torch.save(build_model("lenet5").state_dict(), tmp_path / "bare.pt")
    devices = []
    real_build = registry.build_model
    monkeypatch.setattr(
        registry,
        "build_model",
        lambda *a, **k: devices.append(torch.get_default_device().type) or real_build(*a, **k),
    )
    _, meta = load_checkpoint(tmp_path / "bare.pt")
    assert meta["model"]["name"] == "lenet5"
    assert devices.count("cpu") == 1  # the detected model only, after it fitted on meta


USER_MODELS = """
import torch
from torch import nn
from hessian_lens.registry import register_model


@register_model("my-net")
class MyNet(nn.Module):
    def __init__(self, hidden: int = 8, num_classes: int = 3):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(12, hidden), nn.Tanh())
        self.norm = nn.BatchNorm1d(hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.head(self.norm(self.body(x)))
"""


@pytest.fixture
def user_models(tmp_path):
    path = tmp_path / "models.py"
    path.write_text(textwrap.dedent(USER_MODELS))
    modules = set(sys.modules)
    yield registry.load_model_files(str(path))
    registry.unregister_model("my-net")
    for name in set(sys.modules) - modules:
        del sys.modules[name]


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_user_model_checkpoint_loads_back(user_models, tmp_path, suffix):
    assert user_models == ["my-net"]
    torch.manual_seed(0)
    model = build_model("my-net", hidden=5, num_classes=4)
    with torch.no_grad():
        model.norm.running_mean.uniform_(-1, 1)
    path = tmp_path / f"epoch_0002{suffix}"
    save_checkpoint(
        path, model, {"model": {"name": "my-net", "kwargs": {"hidden": 5, "num_classes": 4}}}
    )
    loaded, meta = load_checkpoint(path)
    assert meta["model"] == {"name": "my-net", "kwargs": {"hidden": 5, "num_classes": 4}}
    assert type(loaded).__name__ == "MyNet" and not loaded.training
    x = torch.randn(2, 3, 2, 2)
    torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match=r"head.weight: file \(4, 5\) vs model \(3, 5\)"):
        load_checkpoint(path, architecture="my-net", model_kwargs={"hidden": 5})


def test_user_model_state_dict_with_defaults_is_detected(user_models, tmp_path):
    torch.save(build_model("my-net").state_dict(), tmp_path / "bare.pt")
    _, meta = load_checkpoint(tmp_path / "bare.pt")
    assert meta["model"] == {"name": "my-net", "kwargs": {}}


def test_loading_leaves_the_callers_random_state_alone(resnet_files):
    _, folder = resnet_files
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    load_checkpoint(folder / "resnet18.safetensors", architecture="torchvision:resnet18")
    torch.testing.assert_close(torch.rand(3), expected)


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


class Net(torch.nn.Module):
    """A model class only a training script knows (the Recorder records ``user:Net``)."""

    def __init__(self, width: int = 5):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(6, width), torch.nn.Linear(width, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


NET_FILE = """
import torch
import hessian_lens


@hessian_lens.register_model("Net")
class Net(torch.nn.Module):
    def __init__(self, width: int = 5):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(6, width), torch.nn.Linear(width, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))
"""


def test_a_recorded_user_class_is_found_once_registered_by_its_name(tmp_path, capsys):
    """``inspect`` of a Recorder checkpoint of ``Net``: the hint says to register ``Net``,
    and doing exactly that works (it used to give the same error again)."""
    from hessian_lens import cli

    torch.manual_seed(0)
    data = [(torch.randn(8, 6), torch.randint(0, 3, (8,)))]
    with hl.Recorder(tmp_path / "run", Net(), F.cross_entropy, data) as rec:
        rec.log(0)
    ckpt = str(tmp_path / "run" / "epoch_0000.pt")
    assert cli.main(["inspect", ckpt]) == 2
    hint = capsys.readouterr().err
    assert "'user:Net'" in hint and 'register_model("Net")' in hint and "--models" in hint
    (tmp_path / "my_models.py").write_text(NET_FILE)
    try:
        assert cli.main(["inspect", ckpt, "--models", str(tmp_path / "my_models.py")]) == 0
        assert '"parameters": 53' in capsys.readouterr().out
        model, _ = load_checkpoint(ckpt)  # the library too, from the checkpoint alone
        assert isinstance(model, torch.nn.Module) and type(model).__name__ == "Net"
    finally:
        registry.unregister_model("Net")
