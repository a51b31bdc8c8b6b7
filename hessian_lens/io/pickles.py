"""A dry run of a checkpoint's pickle before ``torch.load`` sees it.

``torch.load(weights_only=True)`` runs no code from a file, but what it *builds* is bounded
only by the pickle: its allow-list includes ``builtins.bytearray`` (an 854-byte file asks for
3 GiB) and legacy constructors such as ``torch.FloatTensor`` that allocate what their
arguments say, and a 40 MB pickle of ``EMPTY_DICT`` opcodes builds 40 million dicts (3 GB).

:func:`check_torch_file` reads the pickle (``data.pkl`` of a ``torch.save`` zip, or the
pickles at the head of a legacy file) with Python's own pure-Python unpickler, in which:

* every global must be on an allow-list narrower than torch's: ``OrderedDict``, the tensor
  rebuild functions of ``torch._utils``, ``torch.device`` and ``torch.Size`` may be called;
  storage types, dtypes, layouts and the like may only be named (calling one is refused);
  everything else (``bytearray``, ``set``, ``_codecs.encode``, ``torch.FloatTensor``, ...) is
  refused with its name;
* nothing allowed is actually called: each returns an inert stub, so the dry run allocates
  only the containers the opcodes themselves build;
* opcodes are counted, and the run stops at :data:`MAX_PICKLE_OPS` (each opcode builds at
  most one object, so the dry run's memory is bounded), and ``data.pkl`` itself must stay
  under :data:`MAX_PICKLE_BYTES`;
* a quantized tensor, the one rebuild that allocates what its ``size`` argument says, must
  fit the file's size limit.

Only a pickle that passes goes to ``torch.load``; a state_dict of 10,000 tensors is about
300,000 opcodes (a fraction of a second here).
"""

from __future__ import annotations

import io
import math
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

MAX_PICKLE_OPS = 1_000_000
MAX_PICKLE_BYTES = 64 * 2**20
LEGACY_PICKLES = 5  # magic number, protocol, system info, the object, the storage keys

_CALLS = frozenset(
    {"collections.OrderedDict", "torch.device", "torch.Size", "torch._tensor._rebuild_from_type_v2"}
    | {"torch.serialization._get_layout"}
    | {
        f"torch._utils._rebuild_{kind}"
        for kind in (
            "tensor",
            "tensor_v2",
            "tensor_v3",
            "parameter",
            "parameter_with_state",
            "sparse_tensor",
            "nested_tensor",
            "meta_tensor_no_storage",
            "device_tensor_from_cpu_tensor",
        )
    }
)
_SIZED = {"torch._utils._rebuild_qtensor": 2}  # allocates numel(args[i]) elements
_VALUE_MODULES = ("torch", "torch.nn.parameter")


class PickleRefusedError(ValueError):
    """A pickle the dry run refuses; the message says what it holds."""


class _Stub:
    """What every allowed global, call and persistent id becomes in the dry run."""

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> _Stub:
        return _STUB

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        """Accept an item (``APPEND`` on a stub)."""

    def extend(self, items: Any) -> None:
        """Accept items (``APPENDS`` on a stub)."""

    def add(self, item: Any) -> None:
        """Accept an item (``ADDITEMS`` on a stub)."""


_STUB = _Stub()


class _Named(_Stub):
    """A global that may be named (a dtype, a storage type) but not called."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, *args: Any, **kwargs: Any) -> _Stub:
        raise PickleRefusedError(f"it calls {self.key}")


class _Sized(_Stub):
    """A rebuild that allocates the elements its ``size`` argument asks for."""

    __slots__ = ("index", "key", "limit")

    def __init__(self, key: str, index: int, limit: int | None) -> None:
        self.key, self.index, self.limit = key, index, limit

    def __call__(self, *args: Any, **kwargs: Any) -> _Stub:
        size = args[self.index] if len(args) > self.index else ()
        ok = isinstance(size, tuple) and all(type(n) is int and n >= 0 for n in size)
        if not ok or (self.limit is not None and math.prod(size) > self.limit):
            raise PickleRefusedError(f"{self.key} asks for a tensor of size {str(size)[:60]}")
        return _STUB


class _Counting(dict):
    """The opcode table of one dry run: counts every opcode, stops past the limit."""

    def __init__(self, table: dict, limit: int) -> None:
        super().__init__(table)
        self.count, self.limit = 0, limit

    def __getitem__(self, key: int) -> Callable:
        self.count += 1
        if self.count > self.limit:
            raise PickleRefusedError(
                f"its pickle builds more than {self.limit:,} objects (a state_dict of "
                "10,000 tensors needs about 300,000)"
            )
        return super().__getitem__(key)


def _inert_newobj(self: pickle._Unpickler) -> None:
    self.stack.pop()
    self.stack[-1] = _STUB


def _inert_newobj_ex(self: pickle._Unpickler) -> None:
    del self.stack[-2:]
    self.stack[-1] = _STUB


_TABLE = {
    **pickle._Unpickler.dispatch,
    pickle.NEWOBJ[0]: _inert_newobj,
    pickle.NEWOBJ_EX[0]: _inert_newobj_ex,
}


class _DryRun(pickle._Unpickler):
    """Python's pure-Python unpickler with stubs for globals and a counted opcode table."""

    def __init__(self, file: BinaryIO, counter: _Counting, limit: int | None) -> None:
        super().__init__(file)
        self.dispatch = counter
        self.limit = limit

    def find_class(self, module: str, name: str) -> Any:
        key = f"{module}.{name}"
        if key in _CALLS:
            return _STUB
        if key in _SIZED:
            return _Sized(key, _SIZED[key], self.limit)
        if module in _VALUE_MODULES and _plain_value(module, name):
            return _Named(key)
        raise PickleRefusedError(f"global {key[:120]} is not allowed")

    def persistent_load(self, pid: Any) -> _Stub:
        return _STUB


def _plain_value(module: str, name: str) -> bool:
    """Whether ``module.name`` is a dtype, layout, storage type or tensor class of torch."""
    import torch

    owner = torch if module == "torch" else torch.nn.parameter
    value = getattr(owner, name, None) if name.isidentifier() else None
    kinds = (torch.dtype, torch.layout, torch.memory_format, torch.qscheme)
    if isinstance(value, kinds):
        return True
    return isinstance(value, type) and (
        issubclass(value, (torch.Tensor, torch.storage.TypedStorage, torch.UntypedStorage))
        or name.endswith("Storage")
    )


def dry_run(data: bytes, limit: int | None, pickles: int = 1) -> None:
    """Unpickle ``data`` (``pickles`` pickles in a row) with stubs; nothing is built.

    Raises:
        PickleRefusedError: a global off the allow-list, a call of a named value, too many
            opcodes, or a quantized tensor larger than ``limit`` elements.
        Exception: whatever a malformed pickle raises (the caller reports it as corrupt).
    """
    counter = _Counting(_TABLE, MAX_PICKLE_OPS)
    stream = io.BytesIO(data)
    for _ in range(pickles):
        if stream.tell() >= len(data):
            break
        _DryRun(stream, counter, limit).load()


def check_torch_file(source: str | Path | BinaryIO, max_bytes: int | None) -> None:
    """Dry-run the pickle of a ``torch.save`` file (zip or legacy) before ``torch.load``.

    Raises:
        PickleRefusedError: see :func:`dry_run`, or a ``data.pkl`` over :data:`MAX_PICKLE_BYTES`.
        Exception: a malformed pickle or zip.
    """
    if isinstance(source, (str, Path)):
        with open(source, "rb") as f:
            return check_torch_file(f, max_bytes)
    start = source.read(4)
    source.seek(0)
    if start != b"PK\x03\x04":  # legacy format: pickles first, then raw storages
        dry_run(source.read(MAX_PICKLE_BYTES), max_bytes, LEGACY_PICKLES)
        return None
    with zipfile.ZipFile(source) as archive:
        for info in archive.infolist():
            if info.filename.endswith("/data.pkl") and info.filename.count("/") == 1:
                dry_run(_member(archive, info), max_bytes)
    return None


def _member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    if info.file_size > MAX_PICKLE_BYTES:
        raise PickleRefusedError(
            f"its pickle is {info.file_size / 2**20:,.0f} MB (limit "
            f"{MAX_PICKLE_BYTES // 2**20} MB; a state_dict of 10,000 tensors takes about 2 MB)"
        )
    with archive.open(info) as f:
        data = f.read(MAX_PICKLE_BYTES + 1)
    if len(data) > MAX_PICKLE_BYTES:
        raise PickleRefusedError(f"its pickle inflates past {MAX_PICKLE_BYTES // 2**20} MB")
    return data
