"""Safe reading and writing of model files: weights-only, bounded, validated (no model built).

A run checkpoint is ``{"state_dict": {name: tensor}, "meta": {...}}`` written by
``torch.save`` (``.pt``) or a safetensors file whose header metadata carries the meta as
JSON. Reading never executes code from a file: every ``torch.save`` pickle is dry-run by
:mod:`hessian_lens.io.pickles` before ``torch.load(weights_only=True)``; safetensors are
read through their header.

Every read is bounded before it starts: regular files only, a size limit that also applies
to what a file would inflate to (zip members, safetensors tensors), metadata of at most
1 MB as JSON nested at most 32 deep, dense CPU tensors of real numbers only. Every message
names the user's file (``display_name``), never a cache name. Building a model from what
is read is :mod:`hessian_lens.checkpoint`'s work.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hessian_lens.errors import CheckpointError
from hessian_lens.io.files import (
    MAX_JSON_DEPTH,
    UnsafeFileError,
    atomic_write,
    json_text_depth,
    loads_bounded,
    regular_file,
)
from hessian_lens.io.pickles import PickleRefusedError, check_torch_file

FORMAT = "hessian-lens-checkpoint/1"
SAFETENSORS_META_KEY = "hessian_lens"
SUFFIXES = (".pt", ".pth", ".safetensors", ".pt2")
DEFAULT_MAX_BYTES = 500 * 2**20
MAX_META_BYTES = 2**20
MAX_META_DEPTH = MAX_JSON_DEPTH
MAX_KEY_CHARS = 1000
MAX_SAFETENSORS_HEADER = 100_000_000
#: The memory a model may need beyond twice the bytes its file stores (float16 -> float32).
MEMORY_SLACK_BYTES = 64 * 2**20
PLAIN_DTYPES = frozenset(
    {
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.uint8,
        torch.bool,
    }
)
SAFETENSORS_DTYPES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}


# ---------------------------------------------------------------------------- save
def save_checkpoint(
    path: str | os.PathLike, model: nn.Module | Mapping[str, Tensor], meta: Mapping[str, Any]
) -> None:
    """Atomically save ``{"state_dict", "meta"}`` (``.pt``/``.pth``) or safetensors.

    Args:
        path: target file; its suffix picks the format.
        model: a module or a state_dict.
        meta: JSON-serialisable metadata (``model: {name, kwargs}``, epoch, metrics, ...),
            within the limits the reader enforces (1 MB as JSON, 32 levels).

    Raises:
        CheckpointError: metadata the reader would refuse (over 1 MB as JSON, deeper than
            32 levels, or values JSON cannot hold); nothing is written.
    """
    state = model.state_dict() if isinstance(model, nn.Module) else dict(model)
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    meta = {"format": FORMAT, **meta}
    problem = meta_problem(meta)
    if problem:
        raise CheckpointError(f"cannot save {Path(path).name}: its metadata {problem}.")
    json.dumps(meta)  # fail early on non-JSON metadata
    if Path(path).suffix == ".safetensors":
        from safetensors.torch import save_file

        header = {SAFETENSORS_META_KEY: json.dumps(meta)}
        atomic_write(
            path,
            lambda tmp: save_file({k: v.clone() for k, v in state.items()}, tmp, metadata=header),
        )
    else:
        payload = {"state_dict": state, "meta": meta}
        atomic_write(path, lambda tmp: _torch_save(payload, tmp))


def _torch_save(payload: dict[str, Any], tmp: str) -> None:
    """``torch.save`` through a file object: the zip's records are named ``archive/...``.

    Given a path, torch names them after the file's stem, here the random temporary name,
    so the same weights and meta saved twice would differ in bytes (and sha256, the key of
    stored results); through a file object the bytes depend on the content alone.
    """
    with open(tmp, "wb") as f:
        torch.save(payload, f)


# ---------------------------------------------------------------------------- read
def read_checkpoint(
    path: str | os.PathLike,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    display_name: str | None = None,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The state_dict and meta of a file, without building a model.

    Pass both to :func:`build_from_state` to build the model without reading the file
    again (a page can show the meta and an architecture picker in between).

    Args:
        path: ``.pt`` / ``.pth`` / ``.safetensors`` file.
        max_bytes: refuse files larger than this, or that would inflate beyond it
            (``None``: no limit, for trusted files only).
        display_name: the name to use in messages (default: the file's name).

    Raises:
        CheckpointError: missing, not a regular file, too large (also once inflated), not
            a checkpoint, pickled code, metadata too large or deep, tensors that are not
            dense real CPU tensors, corrupt.
    """
    path = Path(path)
    name = display_name or path.name
    size = _regular_size(path, display_name or str(path))
    if max_bytes is not None and size > max_bytes:
        raise CheckpointError(
            f"{name} is {size / 2**20:,.1f} MB, over the {max_bytes / 2**20:,.0f} MB "
            "limit; raise the limit if you trust the file's size."
        )
    with path.open("rb") as f:
        head = f.read(16)
    if path.suffix == ".safetensors" or _looks_like_safetensors(head, size):
        state, meta = _read_safetensors(path, size, max_bytes, name)
    else:
        state, meta = _read_torch(path, head, max_bytes, name)
    check_tensors(state, name)
    _check_expansion(state, name)
    return state, meta


def meta_problem(meta: Any) -> str | None:
    """What makes ``meta`` unacceptable as metadata, or ``None``.

    Walks the structure iteratively and stops at the first limit: more than
    :data:`MAX_META_BYTES` once written as JSON (a value shared many times counts each
    time, as JSON would write it), nested deeper than :data:`MAX_META_DEPTH`, or holding a
    value JSON cannot hold. Nothing is ever ``repr``-ed or dumped.

    Example:
        >>> bomb = "x"
        >>> for _ in range(12):
        ...     bomb = [bomb] * 10
        >>> meta_problem({"junk": bomb})
        'is larger than 1 MB as JSON'
    """
    budget, stack = MAX_META_BYTES, [(meta, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (Mapping, list, tuple)):
            if depth > MAX_META_DEPTH:
                return f"is nested deeper than {MAX_META_DEPTH} levels"
            budget -= 2 + 2 * len(item)
            if budget >= 0:
                budget, problem = _push_children(item, depth, budget, stack)
                if problem:
                    return problem
        else:
            size = _scalar_json_size(item)
            if size is None:
                return f"holds a {type(item).__name__}, which is not JSON data"
            budget -= size
        if budget < 0:
            return f"is larger than {MAX_META_BYTES // 2**20} MB as JSON"
    return None


# ---------------------------------------------------------------------------- file reading
def _regular_size(path: Path, name: str) -> int:
    """The size of a regular file; never opens a FIFO or a device."""
    try:
        return regular_file(path).stat().st_size
    except UnsafeFileError:
        if not path.exists():
            raise CheckpointError(f"{name}: no such file.") from None
        raise CheckpointError(
            f"{name} is not a regular file (a FIFO, a device or a folder); "
            "Hessian Lens reads checkpoint files only."
        ) from None


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 0 < n < size and head[8:9] == b"{"


def _read_torch(
    path: Path, head: bytes, max_bytes: int | None, name: str
) -> tuple[dict[str, Tensor], dict]:
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise CheckpointError(
            f"{name} is not a checkpoint: neither a PyTorch file "
            "(torch.save) nor safetensors. Upload a .pt/.pth/.safetensors "
            "file holding a state_dict."
        )
    if head.startswith(b"PK\x03\x04"):
        _check_zip_sizes(path, max_bytes, name)
    check_pickle(path, max_bytes, name)
    return _unpack(_torch_load(path, name), name)


def check_pickle(source: Any, max_bytes: int | None, name: str) -> None:
    """Dry-run a ``torch.save`` file's pickle before ``torch.load`` (:mod:`pickles`).

    Raises:
        CheckpointError: a global beyond tensors (named), a pickle building too many
            objects, a tensor larger than ``max_bytes``, or a malformed pickle.
    """
    try:
        check_torch_file(source, max_bytes)
    except PickleRefusedError as err:
        raise _beyond_tensors(name, str(err)) from None
    except Exception as err:  # hostile bytes raise anything: one clean message for all
        raise _corrupt(name, err) from None


def _check_zip_sizes(path: Path, max_bytes: int | None, name: str) -> None:
    """Refuse a zip whose members declare more bytes, once inflated, than ``max_bytes``.

    The sizes come from the central directory, which the reader of ``torch.load`` trusts
    too (it allocates a member's declared size, then inflates into it), so nothing is
    inflated before this check.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as err:
        raise _corrupt(name, err) from None
    if max_bytes is not None and declared > max_bytes:
        raise CheckpointError(
            f"{name} would inflate to {declared / 2**20:,.1f} MB (the sizes its zip members "
            f"declare), over the {max_bytes / 2**20:,.0f} MB limit; refusing it before "
            "inflating anything. Raise the limit if you trust the file."
        )


def _torch_load(path: Path, name: str) -> Any:
    try:
        with warnings.catch_warnings():  # torch's notes on odd tensors: refused below anyway
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = str(err).split("\n")
        why = next(
            (line.strip() for line in detail if "Unsupported" in line or "global" in line.lower()),
            detail[0],
        )[:200]
        raise _beyond_tensors(name, why) from None
    except Exception as err:  # hostile bytes raise anything: one clean message for all
        raise _corrupt(name, err) from None


def _beyond_tensors(name: str, why: str) -> CheckpointError:
    """The one message for a pickle that holds more than tensors and plain values."""
    return CheckpointError(
        f"{name} holds pickled Python objects beyond tensors ({why}). Hessian Lens "
        "never runs code from a file and reads only tensors, dicts and plain values; "
        "re-save it with torch.save(model.state_dict(), path) or as safetensors."
    )


def _corrupt(name: str, err: BaseException) -> CheckpointError:
    first = (str(err).splitlines() or [type(err).__name__])[0][:160]
    return CheckpointError(
        f"{name} is corrupt or truncated and cannot be read ({first}). Re-save or re-download it."
    )


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
    check_keys(state, name)
    _check_meta(meta, name)
    return dict(state), dict(meta) if isinstance(meta, Mapping) else {}


def check_keys(state: Mapping, name: str) -> None:
    """Raise :class:`CheckpointError` for keys that are not short strings."""
    for key in state:
        if not isinstance(key, str):
            raise CheckpointError(
                f"{name}: state_dict keys must be strings, found a {type(key).__name__}."
            )
        if len(key) > MAX_KEY_CHARS:
            raise CheckpointError(
                f"{name}: a state_dict key is {len(key):,} characters long "
                f"(limit {MAX_KEY_CHARS:,})."
            )
    not_tensors = [short_key(k) for k, v in state.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise CheckpointError(f"{name}: state_dict entries {not_tensors[:6]} are not tensors.")


def _check_meta(meta: Any, name: str) -> None:
    problem = meta_problem(meta)
    if problem:
        raise _meta_error(name, problem)


def _meta_error(name: str, problem: str) -> CheckpointError:
    return CheckpointError(
        f"{name}: its metadata {problem}; refusing it. Re-save the checkpoint with "
        f"metadata under {MAX_META_BYTES // 2**20} MB and {MAX_META_DEPTH} levels."
    )


def _push_children(item: Any, depth: int, budget: int, stack: list) -> tuple[int, str | None]:
    """Push a container's values on ``stack``; charge its keys to ``budget``."""
    if not isinstance(item, Mapping):
        stack.extend((child, depth + 1) for child in item)
        return budget, None
    for key, value in item.items():
        size = _scalar_json_size(key)
        if size is None:
            return budget, f"has a key of type {type(key).__name__}, not a string"
        budget -= size
        if budget < 0:
            break
        stack.append((value, depth + 1))
    return budget, None


def _scalar_json_size(value: Any) -> int | None:
    """Bytes of a JSON scalar (a lower bound for strings with escapes); None: not JSON."""
    if value is None or isinstance(value, bool):
        return 5
    if isinstance(value, str):
        return len(value) + 2
    if isinstance(value, int):
        return value.bit_length() * 3 // 10 + 1  # digits, without str() on a huge int
    if isinstance(value, float):
        return len(repr(value))
    return None


def check_tensors(state: Mapping[str, Tensor], name: str) -> None:
    """Raise :class:`CheckpointError` for entries that are not dense real CPU tensors."""
    for key, tensor in state.items():
        problem = _tensor_problem(tensor)
        if problem:
            raise CheckpointError(
                f"{name}: {short_key(key)} is {problem}. Hessian Lens reads dense CPU tensors of "
                "real numbers (float16/32/64, bfloat16, integers, bool); convert it "
                "(.to_dense(), .dequantize(), .float()) and re-save."
            )


def _tensor_problem(t: Tensor) -> str | None:
    if t.is_nested:
        return "a nested tensor"
    if t.device.type == "meta":
        return "a tensor without values (saved from the meta device)"
    if t.device.type != "cpu":
        return f"a tensor on the {t.device.type} device"
    if t.layout != torch.strided:
        return f"a {str(t.layout).removeprefix('torch.')} tensor"
    if t.is_quantized:
        return "a quantized tensor"
    if t.dtype not in PLAIN_DTYPES:
        return f"a {str(t.dtype).removeprefix('torch.')} tensor"
    return None


def short_key(key: str, limit: int = 80) -> str:
    """A key cut to ``limit`` characters for messages."""
    return key if len(key) <= limit else key[: limit - 3] + "..."


# ---------------------------------------------------------------------------- safetensors
def _read_safetensors(
    path: Path, size: int, max_bytes: int | None, name: str
) -> tuple[dict[str, Tensor], dict]:
    header, data_bytes = safetensors_header(path, size, name)
    check_safetensors_sizes(header, data_bytes, max_bytes, name)
    meta = _safetensors_meta(header.get("__metadata__"), name)
    state = _safetensors_tensors(path, name)
    check_keys(state, name)
    return state, meta


def safetensors_header(path: Path, size: int, name: str) -> tuple[dict, int]:
    """The parsed JSON header (bounded in size and depth) and the data section's size."""
    with path.open("rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if not 2 <= n <= min(size - 8, MAX_SAFETENSORS_HEADER):
            raise _bad_safetensors(name, f"header length {n:,} for a {size:,}-byte file")
        text = f.read(n)
    try:
        header = loads_bounded(text, f"{name}'s safetensors header")
    except UnsafeFileError as err:
        raise CheckpointError(f"{err} Re-export the file.") from None
    if not isinstance(header, dict):
        raise _bad_safetensors(name, "the header is not a JSON object")
    return header, size - 8 - n


def check_safetensors_sizes(
    header: dict, data_bytes: int, max_bytes: int | None, name: str
) -> None:
    """Check a safetensors header against the file before any tensor data is read.

    Every tensor's dtype, shape and offsets must agree and lie in the file; the total, as
    declared by the header, must stay under ``max_bytes``.
    """
    total = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        dtype = entry.get("dtype") if isinstance(entry, dict) else None
        if isinstance(dtype, str) and dtype not in SAFETENSORS_DTYPES:
            raise CheckpointError(
                f"{name}: tensor {short_key(key)} has dtype {dtype[:20]}; Hessian Lens reads "
                f"real tensors ({', '.join(SAFETENSORS_DTYPES)}). Convert it and re-save."
            )
        nbytes = _safetensors_entry_bytes(entry, data_bytes)
        if nbytes is None:
            raise _bad_safetensors(name, f"tensor {short_key(key)} has a bad header entry")
        total += nbytes
    if max_bytes is not None and total > max_bytes:
        raise CheckpointError(
            f"{name} declares {total / 2**20:,.1f} MB of tensors, over the "
            f"{max_bytes / 2**20:,.0f} MB limit; refusing it before reading them."
        )


def _safetensors_entry_bytes(entry: Any, data_bytes: int) -> int | None:
    """The bytes of one header entry, or None when its fields disagree or overflow."""
    if not isinstance(entry, dict):
        return None
    dtype = entry.get("dtype")
    itemsize = SAFETENSORS_DTYPES.get(dtype) if isinstance(dtype, str) else None
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if itemsize is None or not isinstance(shape, list) or not isinstance(offsets, list):
        return None
    if not all(_natural(d) for d in shape) or len(offsets) != 2:
        return None
    begin, end = offsets
    if not (_natural(begin) and _natural(end) and begin <= end <= data_bytes):
        return None
    nbytes = math.prod(shape) * itemsize
    return nbytes if nbytes == end - begin else None


def _natural(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _safetensors_meta(metadata: Any, name: str) -> dict:
    if not isinstance(metadata, dict) or not isinstance(metadata.get(SAFETENSORS_META_KEY), str):
        return {}
    text = metadata[SAFETENSORS_META_KEY]
    if len(text) > MAX_META_BYTES:
        raise _meta_error(name, f"is larger than {MAX_META_BYTES // 2**20} MB as JSON")
    if json_text_depth(text) > MAX_META_DEPTH:
        raise _meta_error(name, f"is nested deeper than {MAX_META_DEPTH} levels")
    try:
        meta = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return {}
    if not isinstance(meta, dict):
        return {}
    _check_meta(meta, name)
    return meta


def _safetensors_tensors(path: Path, name: str) -> dict[str, Tensor]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as err:
        raise _bad_safetensors(name, str(err)) from None


def _bad_safetensors(name: str, why: str) -> CheckpointError:
    return CheckpointError(
        f"{name} is a corrupt or truncated safetensors file ({why[:160]}). Re-export it."
    )


def _check_expansion(state: Mapping[str, Tensor], what: str) -> None:
    """Refuse tensors that would need far more memory than the file stores.

    A tensor expanded from one stored value (stride 0) costs nothing to read, but every
    check of its values (NaN, inf) and every copy allocates all of it. Checked at read
    time, before any value is looked at, by the CLI and the page alike.
    """
    logical = sum(t.numel() * t.element_size() for t in state.values())
    stored = stored_bytes(state)
    if logical > 2 * stored + MEMORY_SLACK_BYTES:
        raise CheckpointError(
            f"{what}: its tensors hold {logical / 2**20:,.0f} MB of values but the file "
            f"stores only {stored / 2**20:,.1f} MB (tensors expanded from a few values, or "
            "many names sharing one storage); refusing to read them."
        )


def stored_bytes(state: Mapping[str, Tensor]) -> int:
    """Bytes the tensors' storages hold, each shared storage counted once."""
    storages = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in state.values()
    }
    return sum(storages.values())


def check_finite(state: Mapping[str, Tensor], what: str) -> None:
    """Raise :class:`CheckpointError` naming the tensors that hold NaN or infinite values."""
    bad = [
        f"{short_key(k)} ({int(torch.isnan(v).sum())} NaN, {int(torch.isinf(v).sum())} inf)"
        for k, v in state.items()
        if v.is_floating_point() and not torch.isfinite(v).all()
    ]
    if bad:
        raise CheckpointError(
            f"{what} has non-finite weights: {', '.join(bad[:6])}. The run "
            "diverged before this checkpoint; pick an earlier epoch."
        )
