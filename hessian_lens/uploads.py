"""The upload cache of the Inspect page: files by content hash, bounded in size.

The least recently used files go out first; refused files are deleted at once; a broken
results cache is moved aside.

Layout under the cache folder (:func:`hessian_lens.settings.cache_dir`)::

    uploads/<sha256[:16]><suffix>   uploaded checkpoints (mtime = last use); a ``.zip`` of a
                                    Hugging Face folder is inflated under uploads/ only
                                    while it is read (:func:`hessian_lens.hf_folders.read_zip`)
    uploads.index                   the names this cache wrote into uploads/, one a line
    inspect.sqlite                  their analyses (a normal results store)

Eviction deletes only files that the index lists, that are named as the cache names them
and that are regular files (never a link), in an ``uploads`` folder that is itself not a
link: another program's files are never deleted, even if the folder is pointed elsewhere.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import time
from pathlib import Path

from hessian_lens.checkpoint import CheckpointError
from hessian_lens.io.files import atomic_write
from hessian_lens.store import ResultStore, StoreError

UPLOADS = "uploads"
STORE = "inspect.sqlite"
SUFFIXES = (".pt", ".pth", ".safetensors", ".pt2", ".zip")
INDEX = "uploads.index"
_OURS = re.compile(r"[0-9a-f]{16}\.(pt|pth|safetensors|pt2|zip)")


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
    folder = _own_folder(cache)
    if folder is None:
        raise CheckpointError(
            f"the upload folder {cache / UPLOADS} is a symbolic link; the upload cache writes "
            "and deletes only in a folder of its own. Remove the link, or set "
            "HESSIAN_LENS_CACHE to another folder."
        )
    sha = hashlib.sha256(data).hexdigest()
    path = folder / f"{sha[:16]}{suffix}"
    if path.exists():
        os.utime(path, follow_symlinks=False)
    else:
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    if path.name not in _index(cache):  # one short line: an atomic append, never via a link
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
        fd = os.open(cache / INDEX, flags, 0o666)
        try:
            os.write(fd, (path.name + "\n").encode())
        finally:
            os.close(fd)
    return path, sha


def discard(path: Path) -> None:
    """Delete a refused upload (only a file of the cache's own, never a link)."""
    if path.parent.name == UPLOADS and _own_folder(path.parent.parent) and _ours(path):
        path.unlink(missing_ok=True)


def _own_folder(cache: Path) -> Path | None:
    """``cache/uploads`` unless it is a symbolic link (then None)."""
    folder = cache / UPLOADS
    return None if folder.is_symlink() else folder


def _index(cache: Path) -> set[str]:
    """The names the cache wrote into its uploads folder."""
    try:
        text = (cache / INDEX).read_text(errors="replace")
    except OSError:
        return set()
    return {line for line in text.splitlines() if _OURS.fullmatch(line)}


def _ours(path: Path) -> bool:
    """A regular file (not a link) named as the cache names its files."""
    try:
        return _OURS.fullmatch(path.name) is not None and stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


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
    if gone:  # a name appended meanwhile may be lost: that file is then kept, never deleted
        left = sorted(_index(cache) - {p.name for p in gone})
        atomic_write(cache / INDEX, lambda tmp: Path(tmp).write_text("\n".join(left) + "\n"))
    return gone


def _sizes(cache: Path) -> dict[Path, tuple[float, int]]:
    """``{upload: (mtime, bytes)}`` of the cache's own files that still exist (the index's)."""
    folder = _own_folder(cache)
    if folder is None:
        return {}
    out = {}
    for name in _index(cache):
        path = folder / name
        try:
            st = path.lstat()
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            out[path] = (st.st_mtime, st.st_size)
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
