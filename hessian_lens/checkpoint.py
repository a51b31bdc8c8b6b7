"""Models from files: a checkpoint's weights in the model they belong to.

A run checkpoint names its architecture in its meta; a bare state_dict is accepted when
its architecture is named (or recognised among the registry's default models); a ``.pt2``
from ``torch.export`` carries its own graph (:mod:`hessian_lens.io.pt2`). Files are read
by :mod:`hessian_lens.io.torchfiles` (weights-only, bounded). A model is built on the
``meta`` device first and allocated only once the file's names and shapes fit it, and the
memory it needs fits what the file stores.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hessian_lens import registry
from hessian_lens.errors import ArchitectureError, CheckpointError
from hessian_lens.io.files import atomic_write as atomic_write
from hessian_lens.io.files import file_sha256 as file_sha256
from hessian_lens.io.files import write_json as write_json
from hessian_lens.io.pt2 import is_exported_archive, load_exported
from hessian_lens.io.torchfiles import (  # the reading and writing, re-exported for callers
    DEFAULT_MAX_BYTES,
    MEMORY_SLACK_BYTES,
    SUFFIXES,
    check_finite,
    check_keys,
    check_pickle,
    check_tensors,
    meta_problem,
    read_checkpoint,
    save_checkpoint,
    short_key,
    stored_bytes,
)
from hessian_lens.models import MODELS

__all__ = [
    "DEFAULT_MAX_BYTES",
    "SUFFIXES",
    "CheckpointError",
    "build_from_state",
    "check_pickle",
    "load_checkpoint",
    "meta_problem",
    "read_checkpoint",
    "save_checkpoint",
]


# ---------------------------------------------------------------------------- load
def load_checkpoint(
    path: str | os.PathLike,
    architecture: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    display_name: str | None = None,
) -> tuple[nn.Module, dict]:
    """Rebuild the model of a checkpoint and load its validated weights.

    Args:
        path: ``.pt`` / ``.pth`` / ``.safetensors``: a run checkpoint or a bare state_dict.
        architecture: registry name (built-in, ``torchvision:<builder>`` or registered);
            overrides the file's meta. Shape arguments missing from ``model_kwargs``
            (``num_classes``, ViT ``image_size``, ...) are read from the weights.
        model_kwargs: constructor arguments going with ``architecture``.
        max_bytes: refuse larger files (``None``: no limit).
        display_name: the name to use in messages (default: the file's name).

    Returns:
        ``(model, meta)``, the model in eval mode on the CPU; ``meta["model"]`` holds the
        architecture's canonical name and the arguments it was built with.

    Raises:
        CheckpointError: with a precise message for every bad input.

    Example:
        >>> import tempfile, os
        >>> from hessian_lens.registry import build_model
        >>> path = os.path.join(tempfile.mkdtemp(), "epoch_0000.pt")
        >>> save_checkpoint(path, build_model("mlp", sizes=[4, 3]),
        ...                 {"model": {"name": "mlp", "kwargs": {"sizes": [4, 3]}}})
        >>> model, meta = load_checkpoint(path)
        >>> type(model).__name__, meta["model"]["name"]
        ('MLP', 'mlp')
    """
    if is_exported_archive(path):  # torch.export .pt2: the file carries its architecture
        return load_exported(path, max_bytes, display_name)
    state, meta = read_checkpoint(path, max_bytes, display_name)
    name = display_name or Path(path).name
    return build_from_state(state, meta, architecture, model_kwargs, name)


def build_from_state(
    state: Mapping[str, Tensor],
    meta: Mapping[str, Any],
    architecture: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    display_name: str = "checkpoint",
) -> tuple[nn.Module, dict]:
    """The model of an already-read ``(state, meta)`` (from :func:`read_checkpoint`).

    The architecture is ``architecture`` (with ``model_kwargs``, the missing shape
    arguments inferred by :func:`hessian_lens.registry.infer_kwargs`), else the one the
    meta declares, else the one default architecture whose names and shapes fit. It is
    built on the ``meta`` device and checked against ``state`` (names, shapes, the memory
    it needs against the bytes the file stores, finite values) before any allocation.

    Raises:
        CheckpointError: naming ``display_name``, for bad names or arguments, a mismatch
            (the first differing keys / shapes), non-finite weights, entries that are not
            dense real CPU tensors.
    """
    check_keys(state, display_name)
    check_tensors(state, display_name)
    key, kwargs = _architecture(state, meta, architecture, model_kwargs, display_name)
    skeleton = _on_meta(key, kwargs, display_name)
    _check_fit(skeleton, state, display_name)
    _check_memory(skeleton, state, display_name)
    check_finite(state, display_name)
    model = _materialize(key, kwargs, state, display_name)
    return model.eval(), {**meta, "model": {"name": key, "kwargs": kwargs}}


# ---------------------------------------------------------------------------- architecture
def _architecture(
    state: Mapping[str, Tensor],
    meta: Mapping[str, Any],
    architecture: str | None,
    model_kwargs: Any,
    name: str,
) -> tuple[str, dict]:
    """The canonical architecture name and arguments: given, declared, or detected."""
    if architecture:
        key = _resolve(architecture, name)
        given = _checked_kwargs(key, model_kwargs or {}, name)
        return key, {**registry.infer_kwargs(key, state), **given}
    declared = meta.get("model") if isinstance(meta.get("model"), Mapping) else None
    if declared and declared.get("name"):
        key = _resolve(declared["name"], name)
        return key, _checked_kwargs(key, declared.get("kwargs") or {}, name)
    return _detect(state, name)


def _resolve(architecture: Any, name: str) -> str:
    if not isinstance(architecture, str) or len(architecture) > 200:
        raise CheckpointError(
            f"{name}: the architecture must be a name (a short string), "
            f"got a {type(architecture).__name__}."
        )
    try:
        return registry.resolve(architecture)[0]
    except ArchitectureError as err:
        raise CheckpointError(f"{name}: cannot build the architecture: {err}") from None


def _checked_kwargs(key: str, kwargs: Any, name: str) -> dict:
    try:
        registry.check_kwargs(key, kwargs)
    except ArchitectureError as err:
        raise CheckpointError(f"{name}: cannot build the architecture: {err}") from None
    return dict(kwargs)


def _detect(state: Mapping[str, Tensor], name: str) -> tuple[str, dict]:
    """The one default architecture (built-in or registered) that fits ``state``.

    An architecture fits when its parameter names and shapes are those of ``state``; each
    candidate is built on the ``meta`` device (nothing allocated).
    """
    candidates = sorted(MODELS) + registry.user_model_names()
    matches = [n for n in candidates if _fits_default(n, state)]
    if len(matches) == 1:
        return matches[0], {}
    if matches:
        raise CheckpointError(
            f"{name} is a bare state_dict that fits several architectures {matches}: "
            "name the one it is."
        )
    raise CheckpointError(
        f"{name} is a bare state_dict and its architecture is not one of the registry's "
        f"defaults: name it, one of {sorted(MODELS)} with its arguments, or "
        'architecture="torchvision:<builder>" (e.g. torchvision:resnet18; num_classes and '
        "other shapes are read from the weights), or your own model registered with "
        "@hl.register_model in a file passed as --models FILE.py; a Hugging Face model "
        "opens as its save_pretrained folder (config.json beside model.safetensors; a .zip "
        "of it on the Inspect page)."
    )


def _fits_default(key: str, state: Mapping[str, Tensor]) -> bool:
    try:
        expected = registry.build_on_meta(key).state_dict()
    except ArchitectureError:
        return False
    return expected.keys() == state.keys() and all(
        tuple(v.shape) == tuple(state[k].shape) for k, v in expected.items()
    )


def _on_meta(key: str, kwargs: dict, name: str) -> nn.Module:
    try:
        return registry.build_on_meta(key, **kwargs)
    except ArchitectureError as err:
        raise CheckpointError(f"{name}: cannot build the architecture: {err}") from None


def _materialize(key: str, kwargs: dict, state: Mapping[str, Tensor], name: str) -> nn.Module:
    """Build for real (the caller's random state untouched) and load ``state`` into it."""
    try:
        with torch.random.fork_rng(devices=[]):
            model = registry.build_model(key, **kwargs)
        model.load_state_dict(state, strict=True)
    except (ArchitectureError, RuntimeError) as err:
        raise CheckpointError(f"{name}: cannot load the weights: {str(err)[:300]}") from None
    return model


# ---------------------------------------------------------------------------- validation
def _check_fit(model: nn.Module, state: Mapping[str, Tensor], what: str) -> None:
    """Same keys and shapes; the message names the first differences."""
    expected = model.state_dict()
    missing = [short_key(k) for k in expected if k not in state]
    extra = [short_key(k) for k in state if k not in expected]
    if missing or extra:
        raise CheckpointError(
            f"{what} does not fit {type(model).__name__}: missing keys {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, unexpected keys {extra[:8]}"
            f"{' ...' if len(extra) > 8 else ''}. Is it another architecture or other "
            "arguments?"
        )
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if tuple(state[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise CheckpointError(
            f"{what}: shape mismatch for "
            + "; ".join(wrong[:6])
            + ". Check the architecture's arguments (sizes, width, classes)."
        )


def _check_memory(model: nn.Module, state: Mapping[str, Tensor], what: str) -> None:
    """Refuse a model that needs far more memory than the file stores.

    Tensors expanded from a few bytes (stride 0) or many names sharing one storage would
    otherwise make a tiny file allocate gigabytes.
    """
    need = registry.parameter_bytes(model)
    stored = stored_bytes(state)
    if need > 2 * stored + MEMORY_SLACK_BYTES:
        raise CheckpointError(
            f"{what}: {type(model).__name__} needs {need / 2**20:,.0f} MB of weights but the "
            f"file stores only {stored / 2**20:,.1f} MB (expanded or shared tensors); "
            "refusing to allocate it."
        )
