"""Image data sets as tensors: torchvision's, image folders, npz and safetensors files.

A data set spec names what to load (:func:`load_dataset`):

==========================  =====================================================
``cifar10``, ``cifar100``,  torchvision, from ``source`` (a root folder) or
``mnist``, ``fashion-mnist``,  ``$HESSIAN_LENS_DATA``; downloaded only with
``svhn``                    ``download=True`` (``--download``). ``cifar10`` also
                            takes an npz file as source.
``imagefolder:DIR``         ``DIR/train/<class>/*.png`` and ``DIR/test/<class>/...``
                            (or one level of class folders, used for both splits).
``npz:PATH``                ``x_train, y_train, x_test, y_test`` (or ``x, y`` for both
                            splits): uint8 NHWC images or float NCHW arrays;
                            integer labels.
``PATH.safetensors``        tensors ``inputs`` / ``targets`` (both splits), or
                            ``train_inputs`` ... ``test_targets``.
``text:PATH``               UTF-8 text as byte tokens, or token arrays (``tokens``)
                            in an npz / safetensors file: :mod:`hessian_lens.text`
                            (``@T`` at the end chooses the context).
==========================  =====================================================

Images are kept as uint8 (N, C, H, W) (or float (N, C, H, W) as given) and normalised per
batch with per-channel statistics: the published ones of the torchvision sets, else those
of the training split; both are recorded in ``run.json``.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from hessian_lens.errors import DataError as DataError
from hessian_lens.errors import DataNotFoundError as DataNotFoundError
from hessian_lens.loader import SHUFFLE_STRIDE, Loader

if TYPE_CHECKING:
    from hessian_lens.text import TextData

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
DATA_ENV = "HESSIAN_LENS_DATA"
DEFAULT_ROOT = Path.home() / ".cache" / "hessian_lens" / "data"
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
SPLIT_SEED = 12345  # the validation split is the same for every run seed
MAX_LABEL = 1_000_000
#: torchvision data sets: (class name, published per-channel mean, std).
TORCHVISION_SETS: dict[str, tuple[str, tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ("CIFAR10", CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": ("CIFAR100", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mnist": ("MNIST", (0.1307,), (0.3081,)),
    "fashion-mnist": ("FashionMNIST", (0.2860,), (0.3530,)),
    "svhn": ("SVHN", (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}
DATASETS = (*TORCHVISION_SETS, "imagefolder:DIR", "npz:PATH", "PATH.safetensors", "text:PATH")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def _how_to_fix(name: str, where: str) -> str:
    return (
        f"{name} was not found {where}. Point Hessian Lens at a local copy: --data-root DIR "
        f"(torchvision's folder), or --data npz:PATH.npz (keys x_train, y_train, x_test, "
        f"y_test, e.g. shared/datasets/cifar10/cifar10.npz), --data imagefolder:DIR, or set "
        f"{DATA_ENV}; or pass --download to let torchvision fetch it when online."
    )


# ---------------------------------------------------------------------------- containers
@dataclass
class ImageData:
    """Images (uint8 or float, (N, C, H, W)) with integer labels; normalised when batched."""

    x: Tensor
    y: Tensor
    source: str
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD

    def __post_init__(self) -> None:
        check_arrays(self.x, self.y, self.source)
        channels = int(self.x.shape[1])
        if len(self.mean) != channels or len(self.std) != channels:
            raise DataError(
                f"{self.source}: {channels}-channel images with {len(self.mean)}-channel "
                "normalisation statistics; give one mean and std per channel."
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one input, e.g. (3, 32, 32)."""
        return tuple(int(s) for s in self.x.shape[1:])

    @property
    def num_classes(self) -> int:
        """1 + the largest label."""
        return int(self.y.max()) + 1 if len(self) else 0

    def subset(self, size: int | None, seed: int = 0) -> ImageData:
        """A deterministic random subset of ``size`` samples (all when None or larger)."""
        if size is None or size >= len(self):
            return self
        if size <= 0:
            raise ValueError(f"subset size must be positive, got {size}")
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=gen)[:size]
        return self.take(idx, f"{self.source}[{size}@{seed}]")

    def take(self, idx: Tensor, source: str) -> ImageData:
        """The samples at ``idx``, same statistics."""
        return ImageData(self.x[idx], self.y[idx], source, self.mean, self.std)

    def prepare(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """``(normalised images, labels)`` of the samples ``idx``."""
        return self.normalize(self.x[idx]), self.y[idx]

    def normalize(self, x: Tensor) -> Tensor:
        """Images -> float32, per-channel standardised (uint8 first scaled to [0, 1])."""
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        return (x - mean) / std

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0) -> Batches:
        """A re-iterable loader of normalised ``(inputs, targets)`` batches."""
        return Batches(self, batch_size, shuffle, seed)

    def fingerprint(self) -> str:
        """Short sha256 of the images and labels (identifies a subset in result stores)."""
        h = hashlib.sha256()
        h.update(self.x.contiguous().numpy().tobytes())
        h.update(self.y.numpy().tobytes())
        return h.hexdigest()[:16]


#: The loader's former name here (it is not :mod:`hessian_lens.batches`'s contract).
Batches = Loader

AUGMENTS = ("none", "flip", "crop+flip")
AUGMENT_OFFSET = 7_919  # keeps the augmentation stream apart from the shuffle stream
CROP_PAD = 4


def augment_generator(seed: int, epoch: int) -> torch.Generator:
    """The augmentation stream of ``(seed, epoch)``: a resumed run replays the same crops."""
    return torch.Generator().manual_seed(seed * SHUFFLE_STRIDE + epoch + AUGMENT_OFFSET)


def augment(x: Tensor, kind: str, gen: torch.Generator) -> Tensor:
    """Training augmentation of a batch of normalised images ``(N, C, H, W)``.

    ``flip``: each image mirrored left-right with probability 1/2. ``crop+flip``: also a
    random ``H x W`` crop of the image zero-padded by 4 pixels on each side (zero is the
    data mean after normalisation), the standard CIFAR recipe. ``none``: ``x`` itself.
    """
    if kind == "none":
        return x
    if kind not in AUGMENTS:
        raise ValueError(f"unknown augmentation {kind!r}; choose one of {list(AUGMENTS)}")
    if x.dim() != 4:
        raise ValueError(
            f"augmentation {kind!r} needs image batches (N, C, H, W), got {tuple(x.shape)}"
        )
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1).to(x.device), x.flip(-1), x)
    if kind == "crop+flip":
        padded = nn.functional.pad(x, (CROP_PAD,) * 4)
        offsets = torch.randint(0, 2 * CROP_PAD + 1, (n, 2), generator=gen).tolist()
        x = torch.stack([padded[i, :, a : a + h, b : b + w] for i, (a, b) in enumerate(offsets)])
    return x


def check_arrays(x: Tensor, y: Tensor, what: str) -> None:
    """Refuse images or labels that cannot train a classifier, with the reason.

    Raises:
        DataError: not (N, C, H, W), non-finite floats, label count, labels not integer,
            negative, NaN or not 1-D.
    """
    if x.dim() != 4:
        raise DataError(
            f"{what}: images must be (N, C, H, W) or (N, H, W, C), got {tuple(x.shape)}"
        )
    if x.dtype != torch.uint8 and not x.is_floating_point():
        raise DataError(f"{what}: images must be uint8 or float, got {x.dtype}")
    if y.dim() != 1:
        raise DataError(
            f"{what}: labels must be 1-D (one class index per image), got shape {tuple(y.shape)}"
        )
    if len(x) != len(y):
        raise DataError(f"{what}: {len(x)} images but {len(y)} labels")
    if len(y) == 0:
        raise DataError(f"{what}: no samples")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise DataError(f"{what}: labels must be integers (class indices), got {y.dtype}")
    if int(y.min()) < 0 or int(y.max()) > MAX_LABEL:
        raise DataError(
            f"{what}: labels must be class indices 0..C-1, found {int(y.min())}..{int(y.max())}"
        )
    if x.is_floating_point() and not torch.isfinite(x).all():
        raise DataError(f"{what}: images hold NaN or infinite values")


def check_model_fits(model: nn.Module, data: ImageData, classes: bool = True) -> None:
    """One forward pass on two samples: the inputs fit and the labels are within the outputs.

    Raises:
        DataError: "the model expects 3x32x32 inputs, the data gives 1x28x28" and the like.
    """
    if hasattr(data, "check_model"):  # token windows check themselves
        data.check_model(model)
        return
    expected = expected_input(model)
    given = "x".join(str(s) for s in data.shape)
    features = getattr(model, "input_features", None)
    if features is not None and features != math.prod(data.shape):
        raise DataError(
            f"the model expects {features} input values per sample, the data gives {given} "
            f"= {math.prod(data.shape)}"
        )
    if expected is not None and tuple(expected) != data.shape[: len(expected)]:
        raise DataError(f"the model expects {_shape_text(expected)}, the data gives {given}")
    x = data.normalize(data.x[:2]).to(next(model.parameters()).dtype)
    modes = [(m, m.training) for m in model.modules()]
    for m, _ in modes:  # not model.eval(): torch.export modules refuse it
        m.training = False
    try:
        with torch.no_grad():
            out = model(x.to(next(model.parameters()).device))
    except (RuntimeError, ValueError, IndexError) as err:
        want = _shape_text(expected) if expected else "other inputs"
        raise DataError(
            f"the model expects {want}, the data gives {given} ({str(err).splitlines()[0][:120]})"
        ) from None
    finally:
        for m, was in modes:
            m.training = was
    if classes and out.dim() == 2 and data.num_classes > out.shape[1]:
        raise DataError(
            f"the data has labels up to {data.num_classes - 1} but the model has "
            f"{out.shape[1]} outputs; build it with num_classes={data.num_classes}"
        )


def _shape_text(shape: tuple[int, ...]) -> str:
    """``3x32x32 inputs``, or ``3-channel inputs`` when only the channels are known."""
    if len(shape) == 1:
        return f"{shape[0]}-channel inputs"
    return f"{'x'.join(map(str, shape))} inputs"


def expected_input(model: nn.Module) -> tuple[int, ...] | None:
    """(C, H, W) a model declares (``input_shape``), or (C,) of its first convolution."""
    declared = getattr(model, "input_shape", None)
    if declared is not None:
        return tuple(int(s) for s in declared)
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return (first.in_channels,) if first is not None else None


# ---------------------------------------------------------------------------- loading
def load_dataset(
    spec: str,
    source: str | os.PathLike | None = None,
    train: bool = True,
    download: bool = False,
    tokenizer: str | os.PathLike | None = None,
) -> ImageData | TextData:
    """One split of a data set spec (module docstring).

    Args:
        spec: ``cifar10`` ... ``svhn``, ``imagefolder:DIR``, ``npz:PATH``, ``PATH.npz``,
            ``PATH.safetensors``.
        source: where a torchvision set lives (root folder; for ``cifar10`` also an npz);
            ``None``: ``$HESSIAN_LENS_DATA`` or ``~/.cache/hessian_lens/data``.
        train: the training split or the test split.
        download: let torchvision download when missing (never done otherwise; no folder
            is created without it).
        tokenizer: for ``text:`` specs, a ``tokenizer.json`` (file, folder or zip) whose
            token ids replace the bytes (:mod:`hessian_lens.tokenized`).

    Raises:
        DataNotFoundError: with the ways to point at a local copy.
        DataError: a file that is there but unusable.
    """
    from hessian_lens import text

    spec, context = text.split_context(str(spec).strip())
    lowered = spec.lower()
    if tokenizer is not None:
        if not lowered.startswith("text:"):
            raise DataError(f"--tokenizer applies to text:PATH data, not {spec}")
        from hessian_lens.tokenized import load_tokenized

        return load_tokenized(spec, tokenizer, train, context)
    if lowered.startswith("text:"):
        return text.load_text(spec, train, context)
    tokens = _token_file(spec)
    if tokens is not None:
        return text.load_tokens(tokens, spec, train, context)
    if context is not None:
        raise DataError(f"{spec}: @{context} (a context) only applies to text and token data")
    if lowered.startswith("imagefolder:"):
        return load_image_folder(spec.split(":", 1)[1], train)
    if lowered.startswith("npz:") or lowered.endswith(".npz"):
        return load_npz(spec.split(":", 1)[1] if lowered.startswith("npz:") else spec, train)
    if lowered.startswith("safetensors:") or lowered.endswith(".safetensors"):
        path = spec.split(":", 1)[1] if lowered.startswith("safetensors:") else spec
        return load_safetensors_data(path, train)
    key = lowered.replace("_", "-").replace("fashionmnist", "fashion-mnist")
    if key not in TORCHVISION_SETS:
        raise DataError(f"unknown data set '{spec}'; choose one of {list(DATASETS)}")
    if key == "cifar10":
        return load_cifar10(source, train, download)
    return _torchvision(key, _root(source), train, download)


def _token_file(spec: str) -> dict[str, np.ndarray] | None:
    """The token arrays of an npz / safetensors spec holding ``tokens``, else None."""
    lowered = spec.lower()
    path = spec.split(":", 1)[1] if lowered.startswith(("npz:", "safetensors:")) else spec
    if not Path(path).expanduser().is_file():
        return None
    path = str(Path(path).expanduser())
    if path.lower().endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as z:
                keys = [k for k in ("tokens", "train_tokens", "test_tokens") if k in z.files]
                _check_npz_sizes(z, keys, path)
                return {k: z[k] for k in keys} if keys else None
        except DataError:
            raise
        except (OSError, EOFError, ValueError):
            return None
    if path.lower().endswith(".safetensors"):
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(path, framework="np") as f:
                keys = [k for k in ("tokens", "train_tokens", "test_tokens") if k in f.keys()]  # noqa: SIM118 (safe_open has no __contains__)
                _check_safetensors_sizes(f, keys, path)
                return {k: f.get_tensor(k) for k in keys} if keys else None
        except (SafetensorError, OSError):
            return None
    return None


def load_cifar10(
    source: str | os.PathLike | None = None, train: bool = True, download: bool = False
) -> ImageData:
    """CIFAR-10 from an ``.npz`` file, a folder holding ``cifar10.npz``, or torchvision's root.

    ``source=None`` means ``$HESSIAN_LENS_DATA`` or ``~/.cache/hessian_lens/data``.
    """
    source = _root(source)
    if source.suffix == ".npz" or (source.is_file() and source.suffix != ""):
        return load_npz(source, train)
    if (source / "cifar10.npz").is_file():
        return load_npz(source / "cifar10.npz", train)
    return _torchvision("cifar10", source, train, download)


def _root(source: str | os.PathLike | None) -> Path:
    return Path(source or os.environ.get(DATA_ENV) or DEFAULT_ROOT).expanduser()


def load_npz(path: str | os.PathLike, train: bool = True) -> ImageData:
    """One split of an npz data set (``x_*`` uint8 NHWC or float NCHW, ``y_*`` labels)."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise DataNotFoundError(_how_to_fix("The data set", f"at {path} (no such file)"))
    x, y = _read_npz(str(path), path.stat().st_mtime_ns, train)
    split = "train" if train else "test"
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if _cifar_like(x) else _statistics(str(path), x)
    return ImageData(x, y, f"{path.name}:{split}", mean, std)


def _cifar_like(x: Tensor) -> bool:
    return x.dtype == torch.uint8 and tuple(x.shape[1:]) == (3, 32, 32)


@functools.lru_cache(maxsize=4)
def _read_npz(path: str, mtime_ns: int, train: bool) -> tuple[Tensor, Tensor]:
    split = "train" if train else "test"
    try:
        z = np.load(path, allow_pickle=False)
        files = z.files
    except (OSError, EOFError, ValueError, AttributeError) as err:
        raise DataError(f"{path} is not a readable npz file ({err})") from None
    with z:
        keys = _npz_keys(path, files, split)
        _check_npz_sizes(z, keys, path)
        try:
            x, y = z[keys[0]], z[keys[1]]
        except (ValueError, OSError, EOFError) as err:
            raise DataError(f"{path}: cannot read {keys[0]} / {keys[1]} ({err})") from None
    return _images(x, f"{Path(path).name}:{keys[0]}"), _labels(y, f"{Path(path).name}:{keys[1]}")


def _check_npz_sizes(z: np.lib.npyio.NpzFile, keys: Sequence[str], path: str) -> None:
    """Refuse members that declare more than the data limit, before inflating them.

    The sizes come from the zip's directory (what ``np.load`` would allocate); a 4 MB npz
    can declare gigabytes.
    """
    try:
        declared = sum(z.zip.getinfo(f"{key}.npy").file_size for key in keys)
    except (KeyError, AttributeError):
        return  # an uncompressed-name oddity: np.load reports it
    _check_declared(declared, keys, path, "once decompressed")


def _check_safetensors_sizes(f, keys: Sequence[str], path: str) -> None:
    """Refuse tensors whose header declares more than the data limit, before reading them."""
    declared = 0
    for key in keys:
        piece = f.get_slice(key)
        itemsize = _SAFETENSORS_ITEMSIZE.get(piece.get_dtype(), 8)
        declared += math.prod(piece.get_shape()) * itemsize
    _check_declared(declared, keys, path, "as their header declares")


#: Bytes of an item by safetensors dtype name (unknown names: 8, the largest).
_SAFETENSORS_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2}
_SAFETENSORS_ITEMSIZE |= {"U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4}


def _check_declared(declared: int, keys: Sequence[str], path: str, how: str) -> None:
    from hessian_lens.settings import DATA_LIMIT_ENV, data_limit_bytes

    limit = data_limit_bytes()
    if declared > limit:
        raise DataError(
            f"{path}: {' and '.join(keys)} hold {declared / 2**20:,.0f} MB {how}, over the "
            f"{limit / 2**20:,.0f} MB limit for one split; set {DATA_LIMIT_ENV} higher if "
            "you trust the file"
        )


def _npz_keys(path: str, files: list[str], split: str) -> tuple[str, str]:
    """``x_<split>`` / ``y_<split>``, or ``x`` / ``y`` (one set serving both splits)."""
    if all(k in files for k in NPZ_KEYS):
        return f"x_{split}", f"y_{split}"
    if "x" in files and "y" in files:
        return "x", "y"
    missing = [k for k in NPZ_KEYS if k not in files]
    raise DataError(
        f"{path} lacks keys {missing}; an npz data set needs {list(NPZ_KEYS)} "
        "(or x and y, used for both splits)"
    )


def _images(x: np.ndarray, what: str) -> Tensor:
    """uint8 NHWC (or NHW) -> uint8 NCHW; float NCHW kept (float32)."""
    if x.dtype == np.uint8:
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
            raise DataError(f"{what}: uint8 images must be (N, H, W, C), got {x.shape}")
        return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    if np.issubdtype(x.dtype, np.floating):
        if x.ndim != 4:
            raise DataError(f"{what}: float images must be (N, C, H, W), got {x.shape}")
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    raise DataError(
        f"{what}: images must be uint8 (N, H, W, C) or float (N, C, H, W), got {x.dtype}"
    )


def _labels(y: np.ndarray, what: str) -> Tensor:
    if y.ndim != 1:
        raise DataError(f"{what}: labels must be 1-D, got shape {y.shape}")
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise DataError(f"{what}: labels must be whole class indices (found NaN or fractions)")
    elif not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{what}: labels must be integers, got {y.dtype}")
    return torch.from_numpy(y.astype(np.int64))


@functools.lru_cache(maxsize=8)
def _statistics(key: str, x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean / std of images in [0, 1] (uint8 scaled), from up to 10,000 images."""
    sample = x[:: max(1, len(x) // 10_000)]
    v = sample.float().div(255.0) if sample.dtype == torch.uint8 else sample.float()
    mean = v.mean(dim=(0, 2, 3))
    std = v.std(dim=(0, 2, 3))
    if len(v) > 1 and bool((std == 0).any()):
        raise DataError(
            f"{key}: the images are constant (one value in every pixel of a channel, e.g. all "
            "zero): they carry nothing to train on or analyse; check the data set"
        )
    # rounded as recorded in run.json, never to 0 (a division by zero: NaN inputs)
    return tuple(round(float(m), 4) for m in mean), tuple(
        max(round(float(s), 4), 1e-4) for s in std
    )


def split_validation(data: ImageData, size: int) -> tuple[ImageData, ImageData]:
    """``(train, validation)``: ``size`` samples held out by a fixed permutation.

    The permutation is seeded with :data:`SPLIT_SEED`, the same for every run seed.
    """
    if not 0 < size < len(data):
        raise DataError(f"--val-size must be between 1 and {len(data) - 1}, got {size}")
    gen = torch.Generator().manual_seed(SPLIT_SEED)
    order = torch.randperm(len(data), generator=gen)
    keep, held = order[:-size].sort().values, order[-size:].sort().values
    return (
        data.take(keep, f"{data.source}[-val{size}]"),
        data.take(held, f"{data.source}[val{size}]"),
    )


def load_image_folder(folder: str | os.PathLike, train: bool = True) -> ImageData:
    """``DIR/train/<class>/*`` and ``DIR/test/<class>/*`` (or ``DIR/<class>/*`` for both)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataNotFoundError(_how_to_fix("The image folder", f"at {root} (no such folder)"))
    split = root / ("train" if train else "test")
    base = split if split.is_dir() else root
    classes = sorted(p.name for p in base.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{base} holds no class folders (DIR/<class>/image.png)")
    x, y = _read_images(base, classes)
    mean, std = _statistics(str(base), x)
    return ImageData(x, y, f"imagefolder:{root.name}:{base.name}", mean, std)


def _read_images(base: Path, classes: list[str]) -> tuple[Tensor, Tensor]:
    from hessian_lens.settings import data_limit_bytes

    files = [
        (label, path)
        for label, name in enumerate(classes)
        for path in sorted((base / name).iterdir())
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    ]
    budget = _ImageBudget(len(files), data_limit_bytes())
    images, labels, size = [], [], None
    for label, path in files:
        arr = _decode(path, budget)
        arr = arr[..., None] if arr.ndim == 2 else arr
        if size is None:
            size = arr.shape
        if arr.shape != size:
            raise DataError(f"{path} is {arr.shape}, other images are {size}: resize them")
        images.append(arr)
        labels.append(label)
    if not images:
        raise DataError(f"{base}: no images ({', '.join(IMAGE_SUFFIXES)}) in the class folders")
    x = torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).copy())
    return x, torch.tensor(labels, dtype=torch.int64)


MAX_IMAGE_PIXELS = 4096 * 4096


def _decode(path: Path, budget: _ImageBudget) -> np.ndarray:
    """One image as uint8 (H, W[, C]), its size checked from its header before decoding."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                budget.check(path, im)
                return np.asarray(im.convert("RGB" if im.mode not in ("L",) else "L"))
    except Image.DecompressionBombError:
        raise budget.too_many_pixels(path) from None
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{path} is not a readable image ({err})") from None


@dataclass
class _ImageBudget:
    """What a folder of images may cost once decoded, checked from each image's header."""

    count: int
    limit: int

    def check(self, path: Path, im) -> None:
        """Refuse an image too large, or a folder of such images over the data limit."""
        from hessian_lens.settings import DATA_LIMIT_ENV

        width, height = im.size
        if width * height > MAX_IMAGE_PIXELS:
            raise self.too_many_pixels(path, width * height)
        total = self.count * width * height * (1 if im.mode == "L" else 3)
        if total > self.limit:
            raise DataError(
                f"{path.parent.parent}: {self.count} images of {width}x{height} pixels hold "
                f"{total / 2**20:,.0f} MB decoded, over the {self.limit / 2**20:,.0f} MB limit; "
                f"resize them or set {DATA_LIMIT_ENV} higher"
            )

    def too_many_pixels(self, path: Path, pixels: int | None = None) -> DataError:
        """The error of an image with more than :data:`MAX_IMAGE_PIXELS` pixels."""
        count = f"{pixels / 1e6:,.0f} M" if pixels else "too many "
        return DataError(
            f"{path} has {count}pixels (limit {MAX_IMAGE_PIXELS / 1e6:.0f} M, checked before "
            "decoding it); a data set's images are small: resize it"
        )


def load_safetensors_data(path: str | os.PathLike, train: bool = True) -> ImageData:
    """``inputs`` / ``targets`` (both splits) or ``train_inputs`` ... ``test_targets``."""
    from safetensors import SafetensorError, safe_open

    path = Path(path).expanduser()
    if not path.is_file():
        raise DataNotFoundError(_how_to_fix("The data set", f"at {path} (no such file)"))
    split = "train" if train else "test"
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            names = next(
                (
                    (a, b)
                    for a, b in ((f"{split}_inputs", f"{split}_targets"), ("inputs", "targets"))
                    if a in keys and b in keys
                ),
                None,
            )
            if names is None:
                raise DataError(
                    f"{path.name} needs tensors 'inputs' and 'targets' (or "
                    f"'{split}_inputs' / '{split}_targets'); it has {sorted(keys)[:8]}"
                )
            _check_safetensors_sizes(f, names, path.name)
            x, y = f.get_tensor(names[0]), f.get_tensor(names[1])
    except (SafetensorError, OSError) as err:
        raise DataError(f"{path.name} is not a readable safetensors file ({err})") from None
    x = x if x.dtype == torch.uint8 else x.float()
    if (
        x.dtype == torch.uint8
        and x.dim() == 4
        and x.shape[-1] in (1, 3)
        and x.shape[1] not in (1, 3)
    ):
        x = x.permute(0, 3, 1, 2).contiguous()
    if y.dtype in (torch.bfloat16, torch.float16):  # numpy has no bfloat16: exact in float32
        y = y.float()
    y = _labels(y.numpy(), f"{path.name}:{names[1]}")
    mean, std = _statistics(str(path) + split, x)
    return ImageData(x, y, f"{path.name}:{split}", mean, std)


def _torchvision(key: str, root: Path, train: bool, download: bool) -> ImageData:
    import torchvision

    cls_name, mean, std = TORCHVISION_SETS[key]
    if not download and not root.is_dir():
        raise DataNotFoundError(_how_to_fix(cls_name, f"under {root} (no such folder)"))
    cls = getattr(torchvision.datasets, cls_name)
    kwargs = {"split": "train" if train else "test"} if key == "svhn" else {"train": train}
    try:
        ds = cls(str(root), download=download, **kwargs)
    except (RuntimeError, OSError) as err:  # not found / corrupted / offline (URLError)
        raise DataNotFoundError(_how_to_fix(cls_name, f"under {root} ({err})")) from None
    x = _torchvision_images(ds)
    labels = ds.labels if key == "svhn" else ds.targets
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    return ImageData(x, y, f"{key}:{'train' if train else 'test'}", mean, std)


def _torchvision_images(ds) -> Tensor:
    data = ds.data
    if isinstance(data, Tensor):  # MNIST family: (N, H, W) uint8
        return data.unsqueeze(1).contiguous()
    data = np.asarray(data)
    if data.ndim == 4 and data.shape[1] in (1, 3) and data.shape[-1] not in (1, 3):  # SVHN NCHW
        return torch.from_numpy(np.ascontiguousarray(data))
    return torch.from_numpy(np.ascontiguousarray(data.transpose(0, 3, 1, 2)))
