"""Token data for language models: UTF-8 text as bytes, or token arrays, in fixed windows.

A text data set spec (:func:`hessian_lens.data.load_dataset` dispatches here):

===============================  ==================================================
``text:FILE``                    one UTF-8 file; its last 10% of bytes is the test
                                 (validation) split.
``text:DIR``, ``text:DIR/**/*.py``  every UTF-8 file under DIR (or matching the glob),
                                 in sorted order; a file is held out for testing when
                                 the sha256 of its relative path puts it in the last
                                 10% (deterministic, stable when files are added).
                                 Files that are not UTF-8 text (or hold NUL bytes)
                                 are skipped and counted.
``text:stdlib``                  the running Python's standard library: its top-level
                                 modules (``stdlib/*.py``); ``text:stdlib/GLOB`` (e.g.
                                 ``text:stdlib/json/*.py``) a glob inside it. Paths are
                                 recorded relative to it (portable between machines;
                                 the Python version is recorded too, since the files
                                 change with it). A folder named ``stdlib``:
                                 ``text:./stdlib``.
``npz:PATH`` / ``PATH.safetensors``  a 1-D integer array ``tokens`` (last 10% for
                                 testing) or ``train_tokens`` and ``test_tokens``.
===============================  ==================================================

Append ``@T`` to choose the context (``text:corpus.txt@64``; default 128). Text becomes
byte-level tokens (vocabulary 256). The stream is cut into non-overlapping windows of
``T + 1`` tokens: inputs are the first T, targets the next-token shift (the last T).
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from hessian_lens import textfiles
from hessian_lens.errors import DataError, DataNotFoundError
from hessian_lens.loader import Loader
from hessian_lens.settings import DATA_LIMIT_ENV, data_limit_bytes

DEFAULT_CONTEXT = 128
TEST_FRACTION = 0.1
BYTE_VOCAB = 256
TOKEN_KEYS = ("tokens", "train_tokens", "test_tokens")
STDLIB = "stdlib"  # text:stdlib, the running Python's standard library
STDLIB_DEFAULT = "*.py"  # text:stdlib alone: its top-level modules
INSTALLED = ("site-packages", "dist-packages")  # inside some standard libraries, not of them
#: Windows a subset is drawn from by a full random permutation (int32: 64 MB at most).
PERMUTE_MAX = 2**24
FINGERPRINT_ROWS = 2**16


@dataclass
class TextData:
    """Windows of ``T + 1`` tokens (a view of one stream): inputs and next-token targets.

    Attributes:
        windows: (N, T + 1) integer tokens.
        source: a short description (``text:stdlib:train``).
        vocab_size: 1 + the largest token id the data may hold (256 for bytes).
        corpus: what ``run.json`` records: path, files, bytes, split rule and sizes.
    """

    windows: Tensor
    source: str
    vocab_size: int
    corpus: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.windows.shape[0])

    @property
    def x(self) -> Tensor:
        """Inputs (N, T): the first T tokens of every window."""
        return self.windows[:, :-1]

    @property
    def y(self) -> Tensor:
        """Targets (N, T): the next token at every position."""
        return self.windows[:, 1:]

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one input, ``(T,)``."""
        return (int(self.windows.shape[1]) - 1,)

    @property
    def num_classes(self) -> int:
        """The vocabulary size (the classes of every position)."""
        return self.vocab_size

    def prepare(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """``(inputs, targets)`` of the windows ``idx``, as int64."""
        w = self.windows[idx].long()
        return w[:, :-1], w[:, 1:]

    def subset(self, size: int | None, seed: int = 0) -> TextData:
        """A deterministic random subset of ``size`` windows (all when None or larger).

        The first ``size`` of a random permutation of the windows, sorted; past
        :data:`PERMUTE_MAX` windows (a corpus that could not be permuted in memory), ``size``
        distinct windows drawn at random instead (:func:`draw_distinct`).
        """
        if size is None or size >= len(self):
            return self
        if size <= 0:
            raise ValueError(f"subset size must be positive, got {size}")
        gen = torch.Generator().manual_seed(seed)
        n = len(self)
        if n <= PERMUTE_MAX or 2 * size > n:
            idx = torch.randperm(n, generator=gen, dtype=torch.int32)[:size].long()
        else:
            idx = draw_distinct(n, size, gen)
        return self.take(idx.sort().values, f"{self.source}[{size}@{seed}]")

    def take(self, idx: Tensor, source: str) -> TextData:
        """The windows at ``idx``."""
        return TextData(self.windows[idx], source, self.vocab_size, self.corpus)

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0) -> Loader:
        """A re-iterable loader of ``(inputs, targets)`` batches."""
        return Loader(self, batch_size, shuffle, seed)

    def fingerprint(self) -> str:
        """Short sha256 of the windows (identifies a subset in result stores).

        Hashed :data:`FINGERPRINT_ROWS` windows at a time: the digest of the windows laid
        out one after the other, without laying them all out at once.
        """
        h = hashlib.sha256()
        for start in range(0, len(self), FINGERPRINT_ROWS):
            h.update(self.windows[start : start + FINGERPRINT_ROWS].contiguous().numpy().data)
        return h.hexdigest()[:16]

    def check_model(self, model: nn.Module) -> None:
        """One forward pass on two windows: (B, T, V) logits with V >= the vocabulary.

        Raises:
            DataError: the model does not take token windows of this context, or has
                fewer outputs than the data's vocabulary.
        """
        declared = getattr(model, "vocab_size", None)
        if isinstance(declared, int) and declared < self.vocab_size:
            raise DataError(self._vocab_problem(declared))
        x, _ = self.prepare(torch.arange(min(2, len(self))))
        param = next(model.parameters())
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = model(x.to(param.device))
        except (RuntimeError, ValueError, IndexError, TypeError) as err:
            raise DataError(
                f"the model does not take token windows of context {self.shape[0]} and "
                f"{self.vocab_size} token ids ({str(err).splitlines()[0][:160]}); build it "
                f"with context >= {self.shape[0]} and vocab_size >= {self.vocab_size}, or "
                "choose the data's context with @T"
            ) from None
        finally:
            model.train(was)
        if out.dim() != 3 or out.shape[:2] != x.shape:
            raise DataError(
                f"a language model must return (batch, T, vocab) logits; got "
                f"{tuple(out.shape)} for inputs {tuple(x.shape)}"
            )
        if out.shape[-1] < self.vocab_size:
            raise DataError(self._vocab_problem(out.shape[-1]))

    def _vocab_problem(self, outputs: int) -> str:
        return (
            f"the data has {self.vocab_size} token ids but the model {outputs} outputs; "
            f"build it with vocab_size={self.vocab_size}"
        )


# ---------------------------------------------------------------------------- specs
def split_context(spec: str) -> tuple[str, int | None]:
    """``"text:a.txt@64"`` -> ``("text:a.txt", 64)``; no suffix -> ``(spec, None)``."""
    head, at, tail = spec.rpartition("@")
    if at and tail.isdigit():
        if not (tail.isascii() and len(tail) <= 9) or int(tail) < 1:
            raise DataError(
                f"{spec}: the context after @ must be a whole number from 1 to 999999999 "
                "written with the digits 0-9"
            )
        return head, int(tail)
    return spec, None


def load_text(spec: str, train: bool = True, context: int | None = None) -> TextData:
    """One split of ``text:PATH`` (a file, a folder or a glob) as byte-token windows.

    Raises:
        DataNotFoundError: nothing at PATH.
        DataError: no UTF-8 text, or too little for one window per split.
    """
    path = spec.split(":", 1)[1] if spec.lower().startswith("text:") else spec
    context = context or DEFAULT_CONTEXT
    where, recorded = resolve_corpus(path)
    skip = INSTALLED if recorded else ()
    train_bytes, test_bytes, corpus = _read_corpus(where, skip)
    split = "train" if train else "test"
    stream = torch.from_numpy(train_bytes if train else test_bytes)  # a view: no copy
    corpus = {**corpus, **recorded, "context": context, "vocab_size": BYTE_VOCAB}
    name = STDLIB if recorded else Path(path.split("*", 1)[0].rstrip("/")).name or path
    return _windows(stream, context, f"text:{name}:{split}", BYTE_VOCAB, corpus)


def stdlib_root() -> Path:
    """The running Python's standard library folder (``sysconfig``'s ``stdlib`` path)."""
    return Path(sysconfig.get_paths()["stdlib"])


def resolve_corpus(path: str) -> tuple[str, dict[str, Any]]:
    """Where a ``text:`` corpus is read, and what ``run.json`` records of it instead.

    ``stdlib`` and ``stdlib/GLOB`` are read in :func:`stdlib_root` (never in the
    ``site-packages`` some installs keep there) and recorded relative to it, with the
    Python version; any other path is read and recorded as given.

    Example:
        >>> where, recorded = resolve_corpus("stdlib")
        >>> where == str(stdlib_root() / "*.py"), recorded["path"]
        (True, 'stdlib/*.py')
        >>> resolve_corpus("corpus.txt")
        ('corpus.txt', {})
    """
    if path != STDLIB and not path.startswith(f"{STDLIB}/"):
        return str(Path(path).expanduser()), {}
    inside = path[len(STDLIB) :].strip("/") or STDLIB_DEFAULT
    if Path(inside).is_absolute() or ".." in Path(inside).parts:
        raise DataError(f"text:{path}: give a glob inside the standard library (stdlib/*.py)")
    return str(stdlib_root() / inside), {
        "path": f"{STDLIB}/{inside}",
        "root": "the standard library of the Python that reads it",
        "python": platform.python_version(),
    }


def draw_distinct(n: int, size: int, gen: torch.Generator) -> Tensor:
    """``size`` distinct integers of ``[0, n)``, uniformly at random (``size <= n / 2``).

    Drawn in rounds with replacement, duplicates dropped (first draw kept): memory and time
    grow with ``size``, not ``n``.

    Example:
        >>> d = draw_distinct(10**12, 5, torch.Generator().manual_seed(0))
        >>> len(set(d.tolist())), bool(d.max() < 10**12)
        (5, True)
    """
    got = torch.empty(0, dtype=torch.int64)
    while len(got) < size:
        more = torch.randint(n, (2 * (size - len(got)) + 8,), generator=gen)
        both = torch.cat([got, more])
        uniq, inverse = torch.unique(both, return_inverse=True)
        first = torch.full((len(uniq),), len(both), dtype=torch.int64)
        first.scatter_reduce_(0, inverse, torch.arange(len(both)), "amin")
        got = both[first.sort().values][:size]
    return got


def load_tokens(arrays: dict[str, np.ndarray], what: str, train: bool, context: int | None):
    """One split of token arrays ``tokens`` or ``train_tokens`` / ``test_tokens``."""
    context = context or DEFAULT_CONTEXT
    if "train_tokens" in arrays and "test_tokens" in arrays:
        train_t, test_t = arrays["train_tokens"], arrays["test_tokens"]
        rule = "train_tokens / test_tokens"
    elif "tokens" in arrays:
        tokens = arrays["tokens"]
        cut = len(tokens) - int(len(tokens) * TEST_FRACTION)
        train_t, test_t = tokens[:cut], tokens[cut:]
        rule = f"last {TEST_FRACTION:.0%} of tokens for testing"
    else:
        raise DataError(f"{what}: token data needs 'tokens' or 'train_tokens' + 'test_tokens'")
    for name, t in (("train", train_t), ("test", test_t)):
        if t.ndim != 1 or not np.issubdtype(t.dtype, np.integer) or (t.size and t.min() < 0):
            raise DataError(f"{what}: {name} tokens must be a 1-D array of ids >= 0")
    vocab = int(max(train_t.max(initial=0), test_t.max(initial=0))) + 1
    corpus = {
        "path": what,
        "tokens": {"train": int(train_t.size), "test": int(test_t.size)},
        "split": rule,
        "context": context,
        "vocab_size": vocab,
    }
    stream = torch.from_numpy(np.ascontiguousarray(train_t if train else test_t).astype(np.int64))
    split = "train" if train else "test"
    return _windows(stream, context, f"{Path(what).name}:{split}", vocab, corpus)


def _windows(stream: Tensor, context: int, source: str, vocab: int, corpus: dict) -> TextData:
    if stream.numel() < context + 1:
        raise DataError(
            f"{source}: {stream.numel()} tokens, fewer than one window of {context + 1}; "
            "use more text or a shorter context (@T)"
        )
    return TextData(stream.unfold(0, context + 1, context), source, vocab, corpus)


# ---------------------------------------------------------------------------- reading
@functools.lru_cache(maxsize=2)
def _read_corpus(
    path: str, skip: tuple[str, ...] = ()
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(train bytes, test bytes, description)`` of a file, folder or glob.

    A single file is memory-mapped (:func:`hessian_lens.textfiles.map_bytes`): both splits
    are views of it. The files of a folder or glob are read once into one buffer per split;
    files under a folder named in ``skip`` (relative to the corpus's root) are left out.
    """
    if "*" not in path and os.path.exists(path) and not os.path.isdir(path):
        data = _one_file(path)
        cut = len(data) - int(len(data) * TEST_FRACTION)
        corpus = {
            "path": str(Path(path).resolve()),
            "files": 1,
            "bytes": len(data),
            "split": f"last {TEST_FRACTION:.0%} of the bytes for testing",
            "bytes_train": cut,
            "bytes_test": len(data) - cut,
        }
        return data[:cut], data[cut:], corpus
    root, files = _files(path)
    files = [f for f in files if not set(f.relative_to(root).parts[:-1]) & set(skip)]
    sizes = _check_size(files, path)
    test_of = [held_out(f.relative_to(root).as_posix()) for f in files]
    train, test, skipped = _Split(sizes, test_of, False), _Split(sizes, test_of, True), 0
    for f, size, is_test in zip(files, sizes, test_of, strict=True):
        try:
            data = textfiles.map_bytes(f)[:size]
        except textfiles.CorpusFileError as err:
            raise DataError(f"text:{path}: {err}") from None
        if textfiles.utf8_problem(data, refuse_nul=True):
            skipped += 1
            continue
        (test if is_test else train).add(data)
    if not train.files or not test.files:
        raise DataError(
            f"text:{path}: need UTF-8 files in both splits, found {train.files} training "
            f"and {test.files} test files ({skipped} skipped)"
        )
    corpus = {
        "path": path,
        "files": train.files + test.files,
        "files_train": train.files,
        "files_test": test.files,
        "files_skipped_not_utf8": skipped,
        "split": f"a file is a test file when sha256(relative path) falls in the last "
        f"{TEST_FRACTION:.0%}",
        "bytes_train": train.used,
        "bytes_test": test.used,
    }
    corpus["bytes"] = corpus["bytes_train"] + corpus["bytes_test"]
    return train.bytes(), test.bytes(), corpus


class _Split:
    """One split's bytes: the files' contents one after the other in a buffer sized once."""

    def __init__(self, sizes: list[int], test_of: list[bool], test: bool) -> None:
        total = sum(s for s, t in zip(sizes, test_of, strict=True) if t == test)
        self.buffer, self.used, self.files = np.empty(total, dtype=np.uint8), 0, 0

    def add(self, data: np.ndarray) -> None:
        self.buffer[self.used : self.used + len(data)] = data
        self.used, self.files = self.used + len(data), self.files + 1

    def bytes(self) -> np.ndarray:
        return self.buffer[: self.used]


def _one_file(path: str) -> np.ndarray:
    """A one-file corpus, mapped; special files (``/proc/self/environ``, FIFOs) refused."""
    problem = textfiles.special(path)
    if problem is not None:
        raise DataError(f"text:{path} is {problem}, not a text file; give a text file or folder")
    _check_size([Path(path)], path)
    problem = textfiles.file_utf8_problem(path)
    if problem is not None:
        raise DataError(f"text:{path} is not UTF-8 text ({problem})")
    try:
        return textfiles.map_bytes(path)
    except textfiles.CorpusFileError as err:
        raise DataError(f"text:{err}") from None


def held_out(relative: str) -> bool:
    """Whether a file (by its relative path) belongs to the test split.

    Example:
        >>> held_out("json/decoder.py") in (True, False)
        True
    """
    digest = hashlib.sha256(relative.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 >= 1 - TEST_FRACTION


def _check_size(files: list[Path], path: str) -> list[int]:
    """Refuse a corpus larger than the data limit before reading it (one byte a token).

    Returns:
        The size of each file.

    Raises:
        DataError: over ``$HESSIAN_LENS_MAX_DATA_MB``.
    """
    sizes = [_size(f) for f in files]
    total, limit = sum(sizes), data_limit_bytes()
    if total > limit:
        raise DataError(
            f"text:{path} holds {total / 2**20:,.0f} MB of text, over the "
            f"{limit / 2**20:,.0f} MB data limit; use a smaller corpus or set "
            f"{DATA_LIMIT_ENV} higher"
        )
    return sizes


def _size(path: Path) -> int:
    """A file's size; 0 when it is gone (reading it then says so)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _files(path: str) -> tuple[Path, list[Path]]:
    """The files of a glob or folder: searched with bounds, links and special files left out."""
    try:
        if "*" in path:
            root, files = textfiles.expand(path)
        else:
            root = Path(path)
            if not root.is_dir():
                raise DataNotFoundError(f"text:{path}: no such file or folder")
            files = textfiles.folder_files(root, skip=_hidden)
    except textfiles.CorpusFileError as err:
        raise DataError(str(err)) from None
    if not files:
        raise DataNotFoundError(f"text:{path}: no files there")
    return root, files


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") or part == "__pycache__" for part in relative.parts)
