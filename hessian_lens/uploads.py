"""The upload cache of the Inspect page: files by content hash, bounded in size.

The least recently used files go out first; refused files are deleted at once; a broken
results cache is moved aside.

Layout under the cache folder (:func:`hessian_lens.settings.cache_dir`)::

    uploads/<sha256[:16]><suffix>   uploaded checkpoints (mtime = last use)
    inspect.sqlite                  their analyses (a normal results store)
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from hessian_lens.checkpoint import CheckpointError
from hessian_lens.files import atomic_write
from hessian_lens.store import ResultStore, StoreError

UPLOADS = "uploads"
STORE = "inspect.sqlite"
SUFFIXES = (".pt", ".pth", ".safetensors", ".pt2")


def save_upload(cache: Path, name: str, data: bytes, limit: int) -> tuple[Path, str]:
    """Store uploaded bytes under the cache, named by their sha256; returns (path, sha).

    Raises:
        CheckpointError: over the size limit, or a suffix that is not a checkpoint's.
    """
    suffix = Path(name).suffix.lower()
    if suffix not in SUFFIXES:
        raise CheckpointError(
            f"{name}: not a checkpoint file name; upload a {', '.join(SUFFIXES)} file."
        )
    if len(data) > limit:
        raise CheckpointError(
            f"{name} is {len(data) / 2**20:,.1f} MB, over the {limit / 2**20:,.1f} MB limit; "
            "set HESSIAN_LENS_MAX_UPLOAD_MB to accept larger files."
        )
    sha = hashlib.sha256(data).hexdigest()
    path = cache / UPLOADS / f"{sha[:16]}{suffix}"
    if path.exists():
        os.utime(path)
    else:
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    return path, sha


def discard(path: Path) -> None:
    """Delete a refused upload (never a file outside the uploads folder)."""
    if path.parent.name == UPLOADS:
        path.unlink(missing_ok=True)


def evict(cache: Path, limit: int, keep: Path | None = None) -> list[Path]:
    """Delete the least recently used uploads until the folder is under ``limit`` bytes.

    Files another session deletes meanwhile are simply skipped.

    Returns:
        The files deleted.
    """
    files = sorted(_sizes(cache).items(), key=lambda item: item[1][0])
    total, gone = sum(size for _, size in (v for _, v in files)), []
    for path, (_, size) in files:
        if total <= limit:
            break
        if keep is not None and path == keep:
            continue
        path.unlink(missing_ok=True)
        total -= size
        gone.append(path)
    return gone


def _sizes(cache: Path) -> dict[Path, tuple[float, int]]:
    """``{upload: (mtime, bytes)}`` of the files that still exist."""
    out = {}
    try:
        entries = list((cache / UPLOADS).iterdir())
    except OSError:
        return out
    for p in entries:
        try:
            st = p.stat()
        except OSError:
            continue
        if p.is_file():
            out[p] = (st.st_mtime, st.st_size)
    return out


def usage(cache: Path) -> tuple[int, int]:
    """(number of uploads, bytes) in the cache."""
    sizes = _sizes(cache)
    return len(sizes), sum(size for _, size in sizes.values())


def inspect_store(cache: Path) -> tuple[ResultStore, str | None]:
    """The results store of uploads; a corrupt one is moved aside and recreated.

    Returns:
        ``(store, note)``: the note says where a broken store went (None otherwise).
    """
    path = cache / STORE
    try:
        return ResultStore(path), None
    except StoreError:
        aside = path.with_name(f"{STORE}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(path, aside)
        for extra in ("-wal", "-shm"):
            Path(f"{path}{extra}").unlink(missing_ok=True)
        return ResultStore(path), f"the results cache was unreadable and was moved to {aside}"
