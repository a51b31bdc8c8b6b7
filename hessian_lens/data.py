"""CIFAR-10 from torchvision (downloads when online) or from an npz file, as uint8 tensors
normalised per batch; deterministic subsets; a re-iterable batch loader.

An npz file holds ``x_train`` (N, 32, 32, 3) uint8 HWC, ``y_train`` (N,), ``x_test``,
``y_test`` (the layout of ``shared/datasets/cifar10/cifar10.npz``; any user can write one).
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
DATA_ENV = "HESSIAN_LENS_DATA"
DEFAULT_ROOT = Path.home() / ".cache" / "hessian_lens" / "data"
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


class DataNotFoundError(FileNotFoundError):
    """The data set is neither on disk nor downloadable; the message says what to do."""


def _how_to_fix(where: str) -> str:
    return (
        f"CIFAR-10 was not found {where}. Point Hessian Lens at a local copy: "
        "--data PATH.npz (keys x_train, y_train, x_test, y_test, e.g. "
        "shared/datasets/cifar10/cifar10.npz), or --data-root DIR holding torchvision's "
        f"cifar-10-batches-py folder, or set {DATA_ENV} to either; or go online so that "
        "torchvision can download it."
    )


@dataclass
class ImageData:
    """Images as uint8 (N, C, H, W) with integer labels; normalised when batched."""

    x: Tensor
    y: Tensor
    source: str
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, size: int | None, seed: int = 0) -> ImageData:
        """A deterministic random subset of ``size`` samples (all when None or larger)."""
        if size is None or size >= len(self):
            return self
        if size <= 0:
            raise ValueError(f"subset size must be positive, got {size}")
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=gen)[:size]
        return ImageData(
            self.x[idx], self.y[idx], f"{self.source}[{size}@{seed}]", self.mean, self.std
        )

    def normalize(self, x: Tensor) -> Tensor:
        """uint8 images -> float32, per-channel standardised."""
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        return (x.float().div_(255.0) - mean) / std

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0) -> Batches:
        """A re-iterable loader of normalised ``(inputs, targets)`` batches."""
        return Batches(self, batch_size, shuffle, seed)

    def fingerprint(self) -> str:
        """Short sha256 of the images and labels (identifies a subset in result stores)."""
        h = hashlib.sha256()
        h.update(self.x.numpy().tobytes())
        h.update(self.y.numpy().tobytes())
        return h.hexdigest()[:16]


class Batches:
    """Re-iterable batches of an :class:`ImageData`; shuffling depends on (seed, epoch)."""

    def __init__(
        self, data: ImageData, batch_size: int, shuffle: bool = False, seed: int = 0
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        self.data, self.batch_size, self.shuffle, self.seed = data, batch_size, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the shuffle order of ``epoch`` (resuming a run replays the same order)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.data) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.data)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            yield self.data.normalize(self.data.x[idx]), self.data.y[idx]


def load_cifar10(
    source: str | os.PathLike | None = None, train: bool = True, download: bool = True
) -> ImageData:
    """CIFAR-10, train or test split.

    Args:
        source: an ``.npz`` file, or a directory (torchvision root, or one holding
            ``cifar10.npz``); ``None`` means ``$HESSIAN_LENS_DATA`` or
            ``~/.cache/hessian_lens/data``.
        train: the training split (50,000 images) or the test split (10,000).
        download: let torchvision download into a directory root when missing.

    Raises:
        DataNotFoundError: with the ways to point at a local copy.
    """
    source = Path(source or os.environ.get(DATA_ENV) or DEFAULT_ROOT).expanduser()
    if source.suffix == ".npz" or (source.is_file() and source.suffix != ""):
        return load_npz(source, train)
    if (source / "cifar10.npz").is_file():
        return load_npz(source / "cifar10.npz", train)
    return _torchvision_cifar10(source, train, download)


def load_npz(path: str | os.PathLike, train: bool = True) -> ImageData:
    """One split of an npz data set (``x_*`` uint8 NHWC, ``y_*`` labels)."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise DataNotFoundError(_how_to_fix(f"at {path} (no such file)"))
    x, y = _read_npz(str(path), path.stat().st_mtime_ns, train)
    return ImageData(x, y, f"{path.name}:{'train' if train else 'test'}")


@functools.lru_cache(maxsize=4)
def _read_npz(path: str, mtime_ns: int, train: bool) -> tuple[Tensor, Tensor]:
    split = "train" if train else "test"
    try:
        z = np.load(path, allow_pickle=False)
        files = z.files
    except (OSError, EOFError, ValueError, AttributeError) as err:
        raise ValueError(f"{path} is not a readable npz file ({err})") from err
    with z:
        missing = [k for k in NPZ_KEYS if k not in files]
        if missing:
            raise ValueError(f"{path} lacks keys {missing}; an npz data set needs {list(NPZ_KEYS)}")
        x, y = z[f"x_{split}"], z[f"y_{split}"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3) or len(x) != len(y):
        raise ValueError(
            f"{path}: x_{split} must be uint8 (N, H, W, C) with C in (1, 3) and "
            f"as many labels; got {x.dtype} {x.shape} and {len(y)} labels"
        )
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    return images, torch.from_numpy(y.astype(np.int64))


def _torchvision_cifar10(root: Path, train: bool, download: bool) -> ImageData:
    import torchvision

    try:
        ds = torchvision.datasets.CIFAR10(str(root), train=train, download=download)
    except (RuntimeError, OSError) as err:  # not found / corrupted / offline (URLError)
        raise DataNotFoundError(_how_to_fix(f"under {root} ({err})")) from err
    x = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
    return ImageData(
        x, torch.tensor(ds.targets, dtype=torch.int64), f"cifar10:{'train' if train else 'test'}"
    )
