"""The files of a text corpus: found with bounds, refused when special, read without copies.

A corpus spec names a file, a folder or a glob (``text:DIR/**/*.py``). Three rules keep a
spec (typed, or read from a ``run.json``) from costing more than the corpus itself:

* **Bounded search.** :func:`expand` walks the folders a glob needs one entry at a time and
  stops with one line past :data:`MAX_ENTRIES` entries looked at, :data:`MAX_SECONDS`, or
  :data:`MAX_DEPTH` levels below the glob's fixed part; it never follows a link to a
  folder and never enters the kernel's ``/proc``, ``/sys`` or ``/dev``. ``text:/**`` is
  refused in seconds instead of walking the whole file system.
* **Ordinary files only.** :func:`special` names what is wrong with a FIFO, a device, a
  folder, or a file of ``/proc`` / ``/sys`` / ``/dev`` (reached directly or through a
  link): ``/proc/self/environ`` reads as text but is not a corpus.
* **No copies.** :func:`map_bytes` memory-maps a file (copy on write: the file never
  changes); the windows of :mod:`hessian_lens.text` are views of it, so a 1 GB corpus costs
  the pages a subset touches. :func:`utf8_problem` checks the text in 16 MB chunks.

Torch-free. The matching follows :func:`glob.glob` with ``recursive=True`` (``*``, ``?``,
``[...]`` inside a name, ``**`` for any number of folders, names starting with ``.`` only
when the pattern's part does), so a spec finds the same files as before.
"""

from __future__ import annotations

import codecs
import fnmatch
import mmap
import os
import stat
import time
from pathlib import Path

import numpy as np

#: Folder entries one corpus glob (or folder) may look at before it is refused (the whole
#: standard library and site-packages of a Python install: about 120,000).
MAX_ENTRIES = 200_000
#: Seconds one search may take (a slow network file system).
MAX_SECONDS = 30.0
#: Folder levels below the fixed part of a glob (or the folder) a search may go.
MAX_DEPTH = 32
#: The kernel's pseudo file systems: never a corpus, never searched.
PSEUDO_ROOTS = ("/proc", "/sys", "/dev")
CHUNK = 16 * 2**20
_MAGIC = frozenset("*?[")


class CorpusFileError(ValueError):
    """A corpus spec that cannot be searched or read; the message says what to change."""


# ---------------------------------------------------------------------------- search
def has_magic(part: str) -> bool:
    """Whether a path part holds a glob wildcard (``*``, ``?`` or ``[``)."""
    return not _MAGIC.isdisjoint(part)


def expand(pattern: str) -> tuple[Path, list[Path]]:
    """``(root, files)``: the regular files a glob matches, sorted; root = its fixed part.

    Raises:
        CorpusFileError: the search would look at more than :data:`MAX_ENTRIES` entries or
            go deeper than :data:`MAX_DEPTH` folders, or starts in ``/proc``, ``/sys`` or
            ``/dev``.
    """
    parts = Path(pattern).parts
    fixed = next((i for i, p in enumerate(parts) if has_magic(p)), len(parts))
    root = Path(*parts[:fixed]) if fixed else Path(".")
    _refuse_pseudo(root, pattern)
    found = _Walk(pattern).match(root, parts[fixed:])
    return root, sorted(p for p in found if _plain_file(p))


def folder_files(folder: Path, skip=lambda rel: False) -> list[Path]:
    """Every regular file under ``folder`` but hidden ones, sorted, bounded as a glob.

    Links are not followed; ``skip(relative path)`` leaves more files out (caches).
    """
    _refuse_pseudo(folder, str(folder))
    found = _Walk(str(folder)).match(folder, ("**",))
    return sorted(p for p in found if _plain_file(p) and not skip(p.relative_to(folder)))


class _Walk:
    """One bounded search: counts the entries it lists and the depth it reaches."""

    def __init__(self, what: str) -> None:
        self.what, self.entries, self.seen = what, 0, set()
        self.deadline = time.monotonic() + MAX_SECONDS

    def match(self, root: Path, parts: tuple[str, ...]) -> set[Path]:
        """Paths under ``root`` matching ``parts`` (``glob`` semantics)."""
        out: set[str] = set()
        stack = [(str(root), 0, 0)]
        while stack:
            folder, i, depth = stack.pop()
            if (folder, i) in self.seen:
                continue
            self.seen.add((folder, i))
            if i == len(parts):
                out.add(folder)
                continue
            stack += self._step(folder, parts, i, depth, out)
        return {Path(p) for p in out}

    def _step(self, folder: str, parts, i: int, depth: int, out: set) -> list:
        part, last = parts[i], i == len(parts) - 1
        if part == "**":
            nxt = [(folder, i + 1, depth)]
            for child, is_dir in self._list(folder, part):
                if is_dir:
                    nxt.append((child, i, self._deeper(depth)))
                elif last:
                    out.add(child)
            return nxt
        if not has_magic(part):
            child = os.path.join(folder, part)
            if last:
                out.add(child)
                return []
            return [(child, i + 1, depth)] if os.path.isdir(child) else []
        nxt = []
        for child, is_dir in self._list(folder, part):
            if fnmatch.fnmatchcase(os.path.basename(child), part):
                if last:
                    out.add(child)
                elif is_dir:
                    nxt.append((child, i + 1, self._deeper(depth)))
        return nxt

    def _list(self, folder: str, part: str) -> list[tuple[str, bool]]:
        """The visible entries of a folder (``(path, is a real folder)``), counted.

        Links are never followed, so ``/proc``, ``/sys`` and ``/dev`` are only reached by
        their own names.
        """
        try:
            with os.scandir(folder) as it:
                entries = []
                for entry in it:
                    self.entries += 1
                    if self.entries > MAX_ENTRIES or not self.entries % 1000:
                        self._check_bounds()
                    if entry.name.startswith(".") and part[:1] != ".":
                        continue
                    real_dir = entry.is_dir(follow_symlinks=False)
                    entries.append((entry.path, real_dir and entry.path not in PSEUDO_ROOTS))
                return entries
        except OSError:
            return []

    def _check_bounds(self) -> None:
        if self.entries > MAX_ENTRIES:
            raise CorpusFileError(
                f"text:{self.what}: the search looked at more than {MAX_ENTRIES:,} files and "
                "folders; name a smaller folder or a narrower glob"
            )
        if time.monotonic() > self.deadline:
            raise CorpusFileError(
                f"text:{self.what}: the search took more than {MAX_SECONDS:.0f} s "
                f"({self.entries:,} files and folders); name a smaller folder or a narrower glob"
            )

    def _deeper(self, depth: int) -> int:
        if depth + 1 > MAX_DEPTH:
            raise CorpusFileError(
                f"text:{self.what}: the search went more than {MAX_DEPTH} folders deep; "
                "name a smaller folder or a narrower glob"
            )
        return depth + 1


def _plain_file(path: Path) -> bool:
    """A regular file that is not a link (links are never followed inside a corpus)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


# ---------------------------------------------------------------------------- special files
def _pseudo(path: str | os.PathLike) -> bool:
    """Whether a path (links resolved) lies in ``/proc``, ``/sys`` or ``/dev``."""
    real = os.path.realpath(path)
    return any(real == r or real.startswith(r + os.sep) for r in PSEUDO_ROOTS)


def _refuse_pseudo(path: Path, what: str) -> None:
    if _pseudo(path):
        raise CorpusFileError(
            f"text:{what} is in the kernel's {', '.join(PSEUDO_ROOTS)}, not a corpus; give a "
            "text file or a folder of them"
        )


def special(path: str | os.PathLike) -> str | None:
    """What makes a path unfit as a corpus file (links followed), or None for a plain file.

    Example:
        >>> special("/dev/null"), special("/proc/self/environ")
        ('a device, FIFO or socket', 'a file of the kernel (/proc)')
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        return f"unreadable ({err.strerror or err})"
    real = os.path.realpath(path)
    root = next((r for r in PSEUDO_ROOTS if real == r or real.startswith(r + os.sep)), None)
    if stat.S_ISDIR(mode):
        return "a folder"
    if not stat.S_ISREG(mode):
        return "a device, FIFO or socket"
    if root is not None:
        return f"a file of the kernel ({root})"
    return None


# ---------------------------------------------------------------------------- reading
def map_bytes(path: str | os.PathLike) -> np.ndarray:
    """The bytes of a regular file as a uint8 array mapped from it (copy on write).

    Opened without following a last link (the caller checked what a link points to) and
    without blocking, then checked again on the open file: nothing swapped in between is
    read. Only pages that are used are read from disk.

    Raises:
        CorpusFileError: not a regular file, or the system refuses to map it.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(os.path.realpath(path), flags | getattr(os, "O_NOFOLLOW", 0))
    except OSError as err:
        raise CorpusFileError(f"{path}: cannot open it ({err.strerror or err})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CorpusFileError(f"{path} is not a regular file")
        if info.st_size == 0:
            return np.zeros(0, dtype=np.uint8)
        try:
            mapped = mmap.mmap(fd, info.st_size, access=mmap.ACCESS_COPY)
        except (OSError, ValueError) as err:
            raise CorpusFileError(f"{path}: cannot map it ({err})") from None
    finally:
        os.close(fd)
    return np.frombuffer(mapped, dtype=np.uint8)


def utf8_problem(data: np.ndarray, refuse_nul: bool = False) -> str | None:
    """Why ``data`` is not UTF-8 text (``"byte 12: invalid start byte"``), or None.

    Decoded in :data:`CHUNK` pieces: the check never holds more than one piece as text.
    ``refuse_nul``: a NUL byte also makes it "not text" (binary files in a folder).

    Example:
        >>> ok, bad = np.frombuffer("é".encode(), np.uint8), np.array([97, 255], np.uint8)
        >>> utf8_problem(ok), utf8_problem(bad)
        (None, 'byte 1: invalid start byte')
    """
    pieces = (memoryview(data[i : i + CHUNK]) for i in range(0, len(data), CHUNK))
    return _decode_problem(pieces, refuse_nul)


def file_utf8_problem(path: str | os.PathLike) -> str | None:
    """:func:`utf8_problem` of a file, read in pieces (its pages are not kept in memory)."""

    def pieces():
        with open(path, "rb", buffering=0) as f:
            while piece := f.read(CHUNK):
                yield piece

    return _decode_problem(pieces(), False)


def _decode_problem(pieces, refuse_nul: bool) -> str | None:
    decoder = codecs.getincrementaldecoder("utf-8")()
    done = 0
    for piece in pieces:
        pending = len(decoder.getstate()[0])
        try:
            text = decoder.decode(piece)
        except UnicodeDecodeError as err:
            return f"byte {done - pending + err.start}: {err.reason}"
        if refuse_nul and "\0" in text:
            return "a NUL byte (binary data)"
        done += len(piece)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as err:
        return f"byte {done - len(decoder.getstate()[0]) + err.start}: {err.reason}"
    return None
