"""Safe file I/O shared by every writer and reader (torch-free).

Writes are atomic (a temporary file beside the target, then a rename): readers see the old
file or the new one, never half of one. Reads are bounded before they start: regular files
only (a FIFO or ``/dev/zero`` behind a checkpoint name would hang or never end), a size
limit, and JSON nested no deeper than :data:`MAX_JSON_DEPTH`.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Callable
from itertools import accumulate
from pathlib import Path
from typing import Any

MAX_JSON_DEPTH = 32
DEFAULT_JSON_BYTES = 64 * 2**20
#: JSON objects and arrays one document may hold: ``[{},{},...]`` costs ~60 bytes of memory
#: per 3 bytes of text, so a size limit alone does not bound what parsing builds.
MAX_JSON_CONTAINERS = 1_000_000


class UnsafeFileError(ValueError):
    """A path that is not a regular file, too large, or JSON too deep; the message says which."""


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    The parent folder must exist or be creatable; a file in the way of a parent is an
    :class:`UnsafeFileError`, not a half-created tree.
    """
    path = Path(path)
    _make_parent(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # after the write: a writer may recreate the file 0600
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _make_parent(path: Path) -> None:
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            raise UnsafeFileError(f"cannot write {path}: {parent} is a file, not a folder.")
    path.parent.mkdir(parents=True, exist_ok=True)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (NaN and infinities refused)."""
    text = json.dumps(obj, indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def regular_file(path: str | os.PathLike) -> Path:
    """``path`` if it is a regular file (symlinks followed), else :class:`UnsafeFileError`."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as err:
        raise UnsafeFileError(f"{path}: cannot read it ({err.strerror or err}).") from None
    if not stat.S_ISREG(mode):
        raise UnsafeFileError(f"{path} is not a regular file (a FIFO, device or folder).")
    return path


def is_regular_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a regular file (never blocks on a FIFO or device)."""
    try:
        return stat.S_ISREG(Path(path).stat().st_mode)
    except OSError:
        return False


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a regular file's bytes (the key of results in a store)."""
    h = hashlib.sha256()
    with regular_file(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_json(path: str | os.PathLike, max_bytes: int = DEFAULT_JSON_BYTES) -> Any:
    """Parse a JSON file of at most ``max_bytes``, nested at most :data:`MAX_JSON_DEPTH` deep.

    Raises:
        UnsafeFileError: not a regular file, too large, too deep, or not JSON.
    """
    path = regular_file(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise UnsafeFileError(
            f"{path.name} is {size / 2**20:,.1f} MB, over the {max_bytes / 2**20:,.0f} MB "
            "limit for this file."
        )
    return loads_bounded(path.read_bytes(), path.name)


def loads_bounded(
    text: str | bytes,
    what: str = "JSON",
    max_depth: int = MAX_JSON_DEPTH,
    max_containers: int = MAX_JSON_CONTAINERS,
) -> Any:
    """``json.loads`` that refuses nesting deeper than ``max_depth`` or too many containers.

    Both are checked on the raw text first, so a 200,000-deep document never reaches the
    recursive parser and millions of ``{}`` are never built.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    steps = _structure(text)
    containers = steps.count(2)  # first: at C speed, before the depth scan
    if containers > max_containers:
        raise UnsafeFileError(
            f"{what} holds {containers:,} JSON objects and arrays (limit {max_containers:,}); "
            "refusing to build them."
        )
    depth = max(0, max(accumulate(b - 1 for b in steps), default=0))
    if depth > max_depth:
        raise UnsafeFileError(
            f"{what} is nested {depth} levels deep (limit {max_depth}); refusing it."
        )
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError, ValueError) as err:
        raise UnsafeFileError(f"{what} is not valid JSON ({str(err)[:120]}).") from None


def json_text_depth(text: str | bytes) -> int:
    r"""Deepest bracket nesting of a JSON text (brackets inside strings ignored).

    Linear and at C speed (a 50 MB log in a fraction of a second; a character loop in
    Python took seconds per render): escapes are dropped (``\\`` first, then ``\"``),
    then every byte but brackets and quotes; what lies between quotes is inside a string.

    Example:
        >>> json_text_depth('{"a": "[[[", "b": [[1], {"c": "\\]"}]}')
        3
    """
    steps = _structure(text)
    return max(0, max(accumulate(b - 1 for b in steps), default=0))


def _structure(text: str | bytes) -> bytes:
    """The brackets of a JSON text outside strings, opening ones as 2, closing ones as 0."""
    raw = text.encode("utf-8", "replace") if isinstance(text, str) else bytes(text)
    raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_STRUCTURE)
    return b"".join(raw.split(b'"')[::2]).translate(_STEP)  # [ { -> 2, ] } -> 0


_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"')
_STEP = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")


def object_depth(obj: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """Nesting depth of lists / tuples / dicts, counted iteratively and stopped past ``limit``."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, (list, tuple, dict)):
            continue
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children)
    return deepest
