"""Safe checkpoints: round trips, atomic writes and one precise message per bad input."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import hessian_lens as hl
from hessian_lens.checkpoint import (
    CheckpointError,
    atomic_write,
    file_sha256,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from hessian_lens.registry import build_model

META = {"model": {"name": "lenet5", "kwargs": {"activation": "tanh"}}, "epoch": 3}


def lenet():
    torch.manual_seed(0)
    return build_model("lenet5")


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".safetensors"])
def test_round_trip(tmp_path, suffix):
    model = lenet()
    path = tmp_path / f"epoch_0003{suffix}"
    save_checkpoint(path, model, META)
    loaded, meta = load_checkpoint(path)
    assert meta["epoch"] == 3 and meta["model"] == META["model"]
    assert meta["format"] == "hessian-lens-checkpoint/1"
    for (k, a), (k2, b) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(a, b)
    assert not loaded.training


def test_bare_state_dicts(tmp_path):
    model = lenet()
    pt, st = tmp_path / "bare.pt", tmp_path / "bare.safetensors"
    torch.save(model.state_dict(), pt)
    save_file(model.state_dict(), str(st))
    for path in (pt, st):
        loaded, meta = load_checkpoint(path)  # recognised: LeNet-5 defaults
        assert meta["model"]["name"] == "lenet5"
        assert torch.equal(loaded.fc3.bias, model.fc3.bias)
    mlp = build_model("mlp", sizes=[3072, 20, 10])
    torch.save({"model_state_dict": mlp.state_dict()}, tmp_path / "mlp.pt")
    with pytest.raises(CheckpointError, match="bare state_dict.*name it"):
        load_checkpoint(tmp_path / "mlp.pt")
    loaded, meta = load_checkpoint(
        tmp_path / "mlp.pt", architecture="mlp", model_kwargs={"sizes": [3072, 20, 10]}
    )
    assert meta["model"] == {"name": "mlp", "kwargs": {"sizes": [3072, 20, 10]}}


def test_pickled_code_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"state_dict": Evil()}, protocol=2))
    with pytest.raises(CheckpointError, match="pickled Python objects.*never runs code"):
        load_checkpoint(path)
    zipped = tmp_path / "evil_zip.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, zipped)
    with zipfile.ZipFile(zipped) as z:
        names = z.namelist()
        contents = {n: z.read(n) for n in names}
    pkl = next(n for n in names if n.endswith("data.pkl"))
    contents[pkl] = pickle.dumps(Evil(), protocol=2)
    with zipfile.ZipFile(zipped, "w") as z:
        for n, data in contents.items():
            z.writestr(n, data)
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_checkpoint(zipped)
    assert not marker.exists()


def test_corrupt_and_truncated_files(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(good, lenet(), META)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(truncated)
    st = tmp_path / "good.safetensors"
    save_checkpoint(st, lenet(), META)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(st.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="corrupt or truncated safetensors"):
        load_checkpoint(cut)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"PK\x03\x04" + os.urandom(2000))
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(garbage)


def test_not_a_checkpoint(tmp_path):
    png = tmp_path / "picture.pt"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(CheckpointError, match="not a checkpoint: neither a PyTorch file"):
        load_checkpoint(png)
    text = tmp_path / "notes.pth"
    text.write_text("just some text")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(text)
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], listed)
    with pytest.raises(CheckpointError, match="found a list"):
        load_checkpoint(listed)
    mixed = tmp_path / "mixed.pt"
    torch.save({"state_dict": {"w": torch.zeros(1), "step": 3}}, mixed)
    with pytest.raises(CheckpointError, match=r"\['step'\] are not tensors"):
        load_checkpoint(mixed)


def test_unknown_architecture(tmp_path):
    path = tmp_path / "x.pt"
    save_checkpoint(path, lenet(), {"model": {"name": "resnet9", "kwargs": {}}})
    with pytest.raises(CheckpointError, match="unknown architecture 'resnet9'"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="bad arguments"):
        load_checkpoint(path, architecture="lenet5", model_kwargs={"layers": 3})


def test_missing_and_extra_keys(tmp_path):
    state = lenet().state_dict()
    state.pop("fc3.bias")
    state["fc4.weight"] = torch.zeros(2, 2)
    path = tmp_path / "keys.pt"
    torch.save({"state_dict": state, "meta": META}, path)
    with pytest.raises(
        CheckpointError,
        match=r"missing keys \['fc3.bias'\].*unexpected keys "
        r"\['fc4.weight'\]",
    ):
        load_checkpoint(path)


def test_wrong_shapes(tmp_path):
    path = tmp_path / "shapes.pt"
    save_checkpoint(path, build_model("lenet5", num_classes=5), META)
    with pytest.raises(
        CheckpointError,
        match=r"shape mismatch for fc3.weight: file \(5, 84\) "
        r"vs model \(10, 84\)",
    ):
        load_checkpoint(path)


def test_non_finite_weights(tmp_path):
    model = lenet()
    with torch.no_grad():
        model.conv1.weight[0, 0, 0, :3] = float("nan")
        model.fc1.bias[0] = float("inf")
    path = tmp_path / "nan.safetensors"
    save_checkpoint(path, model, META)
    with pytest.raises(
        CheckpointError,
        match=r"conv1.weight \(3 NaN, 0 inf\), fc1.bias "
        r"\(0 NaN, 1 inf\)",
    ):
        load_checkpoint(path)


def test_size_limit_and_missing_file(tmp_path):
    path = tmp_path / "big.pt"
    save_checkpoint(path, lenet(), META)
    with pytest.raises(CheckpointError, match="over the 0 MB limit"):
        read_checkpoint(path, max_bytes=1000)
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "absent.pt")


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "run.json"
    path.write_text("old")

    def failing(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, failing)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]
    atomic_write(path, lambda tmp: Path(tmp).write_text("new"))
    assert path.read_text() == "new"
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)


def test_sha256_identifies_content(tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    save_checkpoint(a, lenet(), META)
    b.write_bytes(a.read_bytes())
    assert file_sha256(a) == file_sha256(b) and len(file_sha256(a)) == 64


def test_loaded_model_runs_the_engine(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(
        path,
        build_model("mlp", sizes=[3072, 8, 10]),
        {"model": {"name": "mlp", "kwargs": {"sizes": [3072, 8, 10]}}},
    )
    model, _ = load_checkpoint(path)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    assert hl.pseudo_hessian(model, torch.nn.functional.cross_entropy, (x, y)).H.shape == (4, 4)
