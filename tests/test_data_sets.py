"""Data beyond CIFAR-10: image folders, npz (uint8 NHWC and float NCHW), safetensors,
torchvision sets from a root; labels and shapes checked with clear messages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from hessian_lens.data import (
    DataError,
    DataNotFoundError,
    ImageData,
    check_model_fits,
    load_dataset,
    split_validation,
)
from hessian_lens.registry import build_model


def image_folder(root, classes=("cat", "dog", "eel"), per_class=4, size=(12, 10), mode="RGB"):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(
                    folder / f"{i}.png"
                )
    return root


def test_image_folder_classes_splits_and_statistics(tmp_path):
    root = image_folder(tmp_path / "imgs")
    train = load_dataset(f"imagefolder:{root}", train=True)
    test = load_dataset(f"imagefolder:{root}", train=False)
    assert train.x.shape == (12, 3, 10, 12) and train.x.dtype == torch.uint8
    assert train.y.tolist() == [0] * 4 + [1] * 4 + [2] * 4 and len(test) == 12
    x = train.x.float() / 255
    assert np.allclose(train.mean, x.mean(dim=(0, 2, 3)).numpy(), atol=1e-4)
    batch, _labels = next(iter(train.batches(12)))
    assert abs(float(batch.mean())) < 1e-3 and abs(float(batch.std()) - 1) < 0.05
    gray = load_dataset(f"imagefolder:{image_folder(tmp_path / 'gray', mode='L')}")
    assert gray.shape == (1, 10, 12)
    with pytest.raises(DataNotFoundError, match="no such folder"):
        load_dataset(f"imagefolder:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        load_dataset(f"imagefolder:{tmp_path / 'empty'}")


def test_npz_float_nchw_and_labels_checked(tmp_path):
    path = tmp_path / "f.npz"
    x = np.random.default_rng(0).normal(size=(6, 2, 5, 5)).astype(np.float32)
    np.savez(path, x_train=x, y_train=np.arange(6) % 3, x_test=x[:2], y_test=np.array([0, 1]))
    data = load_dataset(f"npz:{path}")
    assert data.x.dtype == torch.float32 and data.shape == (2, 5, 5) and data.num_classes == 3
    for y, match in (
        (np.array([0, 1, 2, -1, 0, 1]), "class indices 0..C-1, found -1"),
        (np.array([0, 1, np.nan, 0, 1, 2]), "whole class indices"),
        (np.zeros((6, 2), np.int64), "labels must be 1-D"),
        (np.array([0.5] * 6), "whole class indices"),
    ):
        bad = tmp_path / f"bad{len(list(tmp_path.iterdir()))}.npz"
        np.savez(bad, x_train=x, y_train=y, x_test=x, y_test=np.zeros(6, np.int64))
        with pytest.raises(DataError, match=match):
            load_dataset(str(bad))
    empty = tmp_path / "empty.npz"
    np.savez(empty, x_train=x[:0], y_train=np.zeros(0, np.int64), x_test=x, y_test=np.zeros(6))
    with pytest.raises(DataError, match="no samples"):
        load_dataset(str(empty))


def test_npz_with_plain_x_and_y_serves_both_splits(tmp_path):
    path = tmp_path / "xy.npz"
    x = np.random.default_rng(1).integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)
    np.savez(path, x=x, y=np.array([0, 1, 2, 3, 1]))
    train, test = load_dataset(f"npz:{path}"), load_dataset(f"npz:{path}", train=False)
    assert train.shape == (1, 8, 8) and train.num_classes == 4 and len(train.y) == 5
    assert torch.equal(train.x, test.x) and torch.equal(train.x[:, 0], torch.as_tensor(x[..., 0]))
    np.savez(tmp_path / "x-only.npz", x=x)
    with pytest.raises(DataError, match=r"lacks keys .* \(or x and y, used for both splits\)"):
        load_dataset(str(tmp_path / "x-only.npz"))


def test_safetensors_data_with_splits(tmp_path):
    path = tmp_path / "d.safetensors"
    x = torch.randint(0, 256, (5, 8, 8, 3), dtype=torch.uint8)  # NHWC
    save_file({"inputs": x, "targets": torch.tensor([0, 1, 0, 1, 1])}, str(path))
    data = load_dataset(str(path))
    assert data.shape == (3, 8, 8) and data.y.tolist() == [0, 1, 0, 1, 1]
    split = tmp_path / "s.safetensors"
    save_file(
        {
            "train_inputs": torch.rand(4, 1, 6, 6),
            "train_targets": torch.tensor([0, 1, 2, 3]),
            "test_inputs": torch.rand(2, 1, 6, 6),
            "test_targets": torch.tensor([1, 1]),
        },
        str(split),
    )
    assert len(load_dataset(str(split), train=False)) == 2
    save_file({"images": x}, str(tmp_path / "no.safetensors"))
    with pytest.raises(DataError, match="needs tensors 'inputs' and 'targets'"):
        load_dataset(str(tmp_path / "no.safetensors"))


def test_torchvision_sets_never_create_or_download_without_asking(tmp_path):
    for spec in ("mnist", "fashion-mnist", "svhn", "cifar100", "cifar10"):
        with pytest.raises(DataNotFoundError, match="--download"):
            load_dataset(spec, tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()
    (tmp_path / "root").mkdir()
    with pytest.raises(DataNotFoundError):
        load_dataset("mnist", tmp_path / "root")
    assert list((tmp_path / "root").iterdir()) == []
    with pytest.raises(DataError, match="unknown data set 'imagenet'"):
        load_dataset("imagenet")


def test_one_channel_images_are_never_broadcast_to_three():
    with pytest.raises(DataError, match="1-channel images with 3-channel normalisation"):
        ImageData(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), "gray")


def test_data_that_does_not_fit_the_model_is_one_message():
    gray = ImageData(
        torch.zeros(3, 1, 28, 28, dtype=torch.uint8), torch.tensor([0, 1, 2]), "m", (0.5,), (0.5,)
    )
    with pytest.raises(DataError, match="expects 3x32x32 inputs, the data gives 1x28x28"):
        check_model_fits(build_model("lenet5"), gray)
    with pytest.raises(DataError, match="expects 3-channel inputs, the data gives 1x28x28"):
        check_model_fits(build_model("torchvision:resnet18", num_classes=10), gray)
    small = ImageData(torch.zeros(3, 3, 28, 28, dtype=torch.uint8), torch.tensor([0, 1, 2]), "c")
    with pytest.raises(DataError, match="expects 3x32x32 inputs, the data gives 3x28x28"):
        check_model_fits(build_model("lenet5"), small)
    many = ImageData(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.tensor([0, 12]), "c")
    with pytest.raises(DataError, match="labels up to 12 but the model has 10 outputs"):
        check_model_fits(build_model("lenet5"), many)
    check_model_fits(build_model("lenet5", num_classes=13), many)


def test_validation_split_is_fixed_and_disjoint():
    data = ImageData(
        torch.arange(50, dtype=torch.uint8).view(50, 1, 1, 1).expand(50, 3, 1, 1).contiguous(),
        torch.arange(50) % 10,
        "d",
    )
    train, val = split_validation(data, 10)
    _again, val2 = split_validation(data, 10)
    assert torch.equal(val.x, val2.x) and len(train) == 40
    assert not set(train.x[:, 0, 0, 0].tolist()) & set(val.x[:, 0, 0, 0].tolist())
    with pytest.raises(DataError, match="--val-size"):
        split_validation(data, 50)
