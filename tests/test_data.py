"""CIFAR-10 loading (npz and torchvision), subsets, batches, and the no-data message."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from hessian_lens.data import DataNotFoundError, ImageData, load_cifar10, load_npz


def test_real_cifar10_npz(cifar_npz):
    train = load_cifar10(cifar_npz, train=True)
    test = load_cifar10(cifar_npz, train=False)
    assert (len(train), len(test)) == (50000, 10000)
    assert train.x.dtype == torch.uint8 and train.x.shape[1:] == (3, 32, 32)
    assert torch.equal(torch.bincount(test.y), torch.full((10,), 1000))
    x, _ = next(iter(train.subset(2000, seed=1).batches(2000)))
    assert x.dtype == torch.float32
    assert x.mean(dim=(0, 2, 3)).abs().max() < 0.1  # standardised per channel
    assert (x.std(dim=(0, 2, 3)) - 1).abs().max() < 0.1


def test_npz_folder_and_env_variable(tiny_npz, tmp_path, monkeypatch):
    folder = tmp_path / "root"
    folder.mkdir()
    (folder / "cifar10.npz").write_bytes(tiny_npz.read_bytes())
    assert len(load_cifar10(folder)) == 120
    monkeypatch.setenv("HESSIAN_LENS_DATA", str(tiny_npz))
    assert len(load_cifar10(train=False)) == 40


def test_subsets_are_deterministic(tiny_npz):
    data = load_npz(tiny_npz)
    a, b, c = data.subset(50, seed=3), data.subset(50, seed=3), data.subset(50, seed=4)
    assert torch.equal(a.y, b.y) and torch.equal(a.x, b.x)
    assert not torch.equal(a.x, c.x)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert data.subset(None) is data and data.subset(10_000) is data
    with pytest.raises(ValueError, match="positive"):
        data.subset(0)


def test_batches_cover_everything_and_replay_shuffles(tiny_npz):
    data = load_npz(tiny_npz)
    loader = data.batches(50, shuffle=True, seed=1)
    assert len(loader) == 3
    sizes = [len(y) for _, y in loader]
    assert sizes == [50, 50, 20]
    first = torch.cat([y for _, y in loader])
    assert torch.equal(first, torch.cat([y for _, y in loader]))  # same epoch, same order
    loader.set_epoch(1)
    second = torch.cat([y for _, y in loader])
    assert not torch.equal(first, second)
    assert torch.equal(torch.sort(first).values, torch.sort(second).values)
    with pytest.raises(ValueError, match="batch size"):
        data.batches(0)


def test_missing_data_says_how_to_point_at_a_local_copy(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"--data-root DIR.*--data npz:PATH.npz"):
        load_cifar10(tmp_path / "nothing.npz")
    with pytest.raises(DataNotFoundError, match="HESSIAN_LENS_DATA"):
        load_cifar10(tmp_path, download=False)


def test_torchvision_folder_with_wrong_checksums_is_reported(tmp_path, tiny_npz):
    root = tmp_path / "tv"
    (root / "cifar-10-batches-py").mkdir(parents=True)
    z = np.load(tiny_npz)
    batch = {
        b"data": z["x_train"].transpose(0, 3, 1, 2).reshape(len(z["x_train"]), -1),
        b"labels": z["y_train"].tolist(),
    }
    (root / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps(batch))
    with pytest.raises(DataNotFoundError, match="not found under"):
        load_cifar10(root, download=False)


def test_malformed_npz(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="lacks keys"):
        load_npz(bad)
    wrong = tmp_path / "wrong.npz"
    np.savez(
        wrong,
        x_train=np.zeros((2, 32, 32), np.float32),
        y_train=np.zeros(2),
        x_test=np.zeros(1),
        y_test=np.zeros(1),
    )
    with pytest.raises(ValueError, match=r"float images must be \(N, C, H, W\)"):
        load_npz(wrong)
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a readable npz"):
        load_npz(text)


def test_image_data_normalize_known_values():
    data = ImageData(
        torch.full((1, 3, 1, 1), 255, dtype=torch.uint8), torch.zeros(1, dtype=torch.long), "x"
    )
    out = data.normalize(data.x).reshape(3)
    expected = torch.tensor([(1 - m) / s for m, s in zip(data.mean, data.std, strict=True)])
    assert torch.allclose(out, expected)


def test_augment_flips_and_crops_windows_of_the_padded_image_reproducibly():
    from hessian_lens.data import AUGMENTS, augment, augment_generator

    x = torch.randn(64, 3, 8, 8)
    assert augment(x, "none", augment_generator(0, 1)) is x
    flipped = augment(x, "flip", augment_generator(0, 1))
    same = [bool(torch.equal(a, b)) for a, b in zip(flipped, x, strict=True)]
    mirrored = [bool(torch.equal(a, b.flip(-1))) for a, b in zip(flipped, x, strict=True)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True)) and 10 < sum(same) < 54
    out = augment(x, "crop+flip", augment_generator(0, 1))
    assert torch.equal(out, augment(x, "crop+flip", augment_generator(0, 1)))
    assert not torch.equal(out, augment(x, "crop+flip", augment_generator(0, 2)))
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for img, src in zip(out, padded, strict=True):
        windows = [src[:, a : a + 8, b : b + 8] for a in range(9) for b in range(9)]
        assert any(torch.equal(img, w) or torch.equal(img, w.flip(-1)) for w in windows)
    assert (out == 0).any() and "crop+flip" in AUGMENTS
    with pytest.raises(ValueError, match="image batches"):
        augment(torch.zeros(4, 8), "flip", augment_generator(0, 0))
