"""Safe checkpoints: atomic writes, weights-only reads, validation with precise errors.

A run checkpoint is ``{"state_dict": {name: tensor}, "meta": {...}}`` written by
``torch.save`` (``.pt``) or a safetensors file whose header metadata carries the meta as
JSON. Reading never executes code from a file: ``torch.load(weights_only=True)`` or
safetensors only. A bare state_dict is accepted when its architecture is named (or
recognised among the registry's default models).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hessian_lens.models import MODELS
from hessian_lens.registry import build_model

FORMAT = "hessian-lens-checkpoint/1"
SAFETENSORS_META_KEY = "hessian_lens"
SUFFIXES = (".pt", ".pth", ".safetensors", ".pt2")
DEFAULT_MAX_BYTES = 500 * 2**20


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint; the message says what is wrong and what to do."""


# ---------------------------------------------------------------------------- atomic writes
def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    Readers see the old file or the new one, never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (the key of results in a store)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------- save
def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module | Mapping[str, Tensor],
    meta: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Atomically save ``{"state_dict", "meta"}`` (``.pt``/``.pth``) or safetensors.

    Args:
        path: target file; its suffix picks the format.
        model: a module or a state_dict.
        meta: JSON-serialisable metadata (``model: {name, kwargs}``, epoch, metrics, ...).
        extra: more weights-only-loadable entries (``.pt`` only), e.g. optimizer state.
    """
    state = model.state_dict() if isinstance(model, nn.Module) else dict(model)
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    meta = {"format": FORMAT, **meta}
    json.dumps(meta)  # fail early on non-JSON metadata
    if Path(path).suffix == ".safetensors":
        from safetensors.torch import save_file

        header = {SAFETENSORS_META_KEY: json.dumps(meta)}
        atomic_write(
            path,
            lambda tmp: save_file({k: v.clone() for k, v in state.items()}, tmp, metadata=header),
        )
    else:
        payload = {"state_dict": state, "meta": meta, **(extra or {})}
        atomic_write(path, lambda tmp: torch.save(payload, tmp))


# ---------------------------------------------------------------------------- read & validate
def read_checkpoint(
    path: str | os.PathLike, max_bytes: int | None = DEFAULT_MAX_BYTES
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The state_dict and meta of a file, without building a model.

    Raises:
        CheckpointError: missing, too large, not a checkpoint, pickled code, corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file.")
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise CheckpointError(
            f"{path.name} is {size / 2**20:,.1f} MB, over the "
            f"{max_bytes / 2**20:,.0f} MB limit; raise the limit if you "
            "trust the file's size."
        )
    with path.open("rb") as f:
        head = f.read(16)
    if path.suffix == ".safetensors" or _looks_like_safetensors(head, size):
        return _read_safetensors(path)
    return _read_torch(path, head)


def load_checkpoint(
    path: str | os.PathLike,
    architecture: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> tuple[nn.Module, dict]:
    """Rebuild the model of a checkpoint and load its validated weights.

    Args:
        path: ``.pt`` / ``.pth`` / ``.safetensors``: a run checkpoint or a bare state_dict.
        architecture: registry name for a bare state_dict (overrides the file's meta).
        model_kwargs: constructor arguments going with ``architecture``.
        max_bytes: refuse larger files (``None``: no limit).

    Returns:
        ``(model, meta)``, the model in eval mode on the CPU.

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
    from hessian_lens.export import is_exported_archive, load_exported  # (import cycle)

    if is_exported_archive(path):  # torch.export .pt2: the file carries its architecture
        return load_exported(path, max_bytes)
    state, meta = read_checkpoint(path, max_bytes)
    name, kwargs = _architecture(state, meta, architecture, model_kwargs, Path(path).name)
    try:
        model = build_model(name, **kwargs)
    except ValueError as err:
        raise CheckpointError(f"{Path(path).name}: cannot build the architecture: {err}") from None
    validate_state_dict(model, state, Path(path).name)
    model.load_state_dict(state, strict=True)
    meta = {**meta, "model": {"name": name, "kwargs": dict(kwargs)}}
    return model.eval(), meta


def validate_state_dict(
    model: nn.Module, state: Mapping[str, Tensor], what: str = "checkpoint"
) -> None:
    """Raise :class:`CheckpointError` on missing / extra keys, wrong shapes, non-finite values."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
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
    bad = [
        f"{k} ({int(torch.isnan(v).sum())} NaN, {int(torch.isinf(v).sum())} inf)"
        for k, v in state.items()
        if v.is_floating_point() and not torch.isfinite(v).all()
    ]
    if bad:
        raise CheckpointError(
            f"{what} has non-finite weights: {', '.join(bad[:6])}. The run "
            "diverged before this checkpoint; pick an earlier epoch."
        )


# ---------------------------------------------------------------------------- internals
def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 0 < n < size and head[8:9] == b"{"


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"{path.name} is a corrupt or truncated safetensors file ({err}). Re-export it."
        ) from None
    try:
        meta = json.loads(header.get(SAFETENSORS_META_KEY, "{}"))
    except json.JSONDecodeError:
        meta = {}
    return state, meta if isinstance(meta, dict) else {}


def _read_torch(path: Path, head: bytes) -> tuple[dict[str, Tensor], dict]:
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise CheckpointError(
            f"{path.name} is not a checkpoint: neither a PyTorch file "
            "(torch.save) nor safetensors. Upload a .pt/.pth/.safetensors "
            "file holding a state_dict."
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = str(err).split("\n")
        why = next(
            (line.strip() for line in detail if "Unsupported" in line or "global" in line.lower()),
            detail[0],
        )[:200]
        raise CheckpointError(
            f"{path.name} holds pickled Python objects beyond tensors ({why}). Hessian Lens "
            "never runs code from a file; re-save it with torch.save(model.state_dict(), "
            "path) or as safetensors."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path.name} is corrupt or truncated and cannot be read "
            f"({str(err).splitlines()[0][:160]}). Re-save or re-download "
            "it."
        ) from None
    return _unpack(obj, path.name)


def _unpack(obj: Any, name: str) -> tuple[dict[str, Tensor], dict]:
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        state, meta = obj["state_dict"], obj.get("meta") or {}
    elif isinstance(obj, Mapping) and isinstance(obj.get("model_state_dict"), Mapping):
        state, meta = obj["model_state_dict"], {}
    elif isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        state, meta = obj, {}
    else:
        kind = type(obj).__name__ if not isinstance(obj, Mapping) else "dict without tensors"
        raise CheckpointError(
            f"{name} is not a checkpoint: expected a state_dict "
            f"(name -> tensor) or {{'state_dict', 'meta'}}, found a {kind}."
        )
    not_tensors = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise CheckpointError(f"{name}: state_dict entries {not_tensors[:6]} are not tensors.")
    return dict(state), dict(meta) if isinstance(meta, Mapping) else {}


def _architecture(state, meta, architecture, model_kwargs, name) -> tuple[str, dict]:
    if architecture:
        return architecture, dict(model_kwargs or {})
    declared = meta.get("model") if isinstance(meta.get("model"), Mapping) else None
    if declared and declared.get("name"):
        return str(declared["name"]), dict(declared.get("kwargs") or {})
    matches = [n for n, ctor in MODELS.items() if _fits(ctor(), state)]
    if len(matches) == 1:
        return matches[0], {}
    raise CheckpointError(
        f"{name} is a bare state_dict and its architecture is not one of "
        f"the registry's defaults: name it (one of {sorted(MODELS)}) with "
        "its arguments."
    )


def _fits(model: nn.Module, state: Mapping[str, Tensor]) -> bool:
    expected = model.state_dict()
    return set(expected) == set(state) and all(
        tuple(expected[k].shape) == tuple(state[k].shape) for k in expected
    )
