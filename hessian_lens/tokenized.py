"""Text through a model's own tokenizer: ``--data text:PATH --tokenizer FOLDER``.

The corpus and its split are those of :mod:`hessian_lens.text` (a file's last 10%, or whole
files chosen by the hash of their relative path); each split's text is encoded by the
``tokenizers`` library, offline, from a ``tokenizer.json`` (a file, a folder holding one,
or a ``.zip`` of a ``save_pretrained`` folder), in chunks of whole lines. The windows are
those of the byte path (``T + 1`` tokens, next-token targets). ``corpus`` records the
tokenizer's path and sha256 and the token counts of both splits, so ``run.json`` says
exactly which tokens a run saw.
"""

from __future__ import annotations

import functools
import hashlib
import stat
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hessian_lens.errors import DataError, DataNotFoundError
from hessian_lens.text import DEFAULT_CONTEXT, TextData, _read_corpus, _windows

TOKENIZER_FILE = "tokenizer.json"
MAX_TOKENIZER_BYTES = 64 * 2**20
CHUNK_CHARS = 1 << 16


def tokenizer_text(path: str | Path) -> tuple[str, str, str]:
    """``(tokenizer.json text, its sha256, where it came from)`` of a file, folder or zip.

    Raises:
        DataNotFoundError: nothing there.
        DataError: not a regular file, too large, or a zip without one.
    """
    where = Path(path).expanduser()
    if where.suffix.lower() == ".zip" and where.is_file():
        from hessian_lens import hf_folders

        try:
            text = hf_folders.zip_tokenizer(where)
        except hf_folders.FolderError as err:
            raise DataError(str(err)) from None
        if text is None:
            raise DataError(f"--tokenizer {path}: the archive holds no {TOKENIZER_FILE}")
        data = text.encode("utf-8")
    else:
        file = where / TOKENIZER_FILE if where.is_dir() else where
        if not file.exists():
            raise DataNotFoundError(f"--tokenizer {path}: no {TOKENIZER_FILE} there")
        st = file.lstat()
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_TOKENIZER_BYTES:
            raise DataError(
                f"--tokenizer {path}: {file.name} is not a regular file under "
                f"{MAX_TOKENIZER_BYTES // 2**20} MB"
            )
        data = file.read_bytes()
        text = data.decode("utf-8", errors="replace")
    return text, hashlib.sha256(data).hexdigest(), str(where.resolve())


@functools.lru_cache(maxsize=4)
def _tokenizer(text: str):
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_str(text)
    except Exception as err:  # the library's own parse errors, of any type
        first = (str(err).splitlines() or [type(err).__name__])[0][:160]
        raise DataError(f"not a tokenizers tokenizer.json ({first})") from None


def encode(tokenizer, data: bytes) -> np.ndarray:
    """The token ids of UTF-8 text, encoded in chunks of whole lines (deterministic)."""
    text = data.decode("utf-8")
    chunks, start = [], 0
    while start < len(text):
        stop = text.find("\n", start + CHUNK_CHARS)
        stop = len(text) if stop < 0 else stop + 1
        chunks.append(text[start:stop])
        start = stop
    encoded = tokenizer.encode_batch(chunks, add_special_tokens=False)
    return np.fromiter((i for e in encoded for i in e.ids), dtype=np.int64)


@functools.lru_cache(maxsize=4)
def _token_streams(path: str, text: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    train_bytes, test_bytes, corpus = _read_corpus(path)
    tok = _tokenizer(text)
    return encode(tok, _bytes(train_bytes)), encode(tok, _bytes(test_bytes)), corpus


def _bytes(data) -> bytes:
    """A split's bytes (the corpus reader gives numpy views of a mapped file or buffer)."""
    return data if isinstance(data, bytes) else np.asarray(data).tobytes()


def load_tokenized(
    spec: str, tokenizer: str | Path, train: bool = True, context: int | None = None
) -> TextData:
    """One split of ``text:PATH`` as windows of the tokenizer's token ids.

    Raises:
        DataNotFoundError: no corpus or no tokenizer there.
        DataError: too little text for one window, or a broken tokenizer.
    """
    path = spec.split(":", 1)[1] if spec.lower().startswith("text:") else spec
    context = context or DEFAULT_CONTEXT
    text, sha, where = tokenizer_text(tokenizer)
    vocab = _tokenizer(text).get_vocab_size(with_added_tokens=True)
    train_ids, test_ids, corpus = _token_streams(str(Path(path).expanduser()), text)
    corpus = {
        **corpus,
        "context": context,
        "vocab_size": vocab,
        "tokenizer": {"path": where, "sha256": sha, "vocab_size": vocab},
        "tokens_train": int(train_ids.size),
        "tokens_test": int(test_ids.size),
    }
    split = "train" if train else "test"
    stream = torch.from_numpy(train_ids if train else test_ids)
    name = Path(path.split("*", 1)[0].rstrip("/")).name or path
    return _windows(stream, context, f"text:{name}:{split}:tokens", vocab, corpus)


def check_recorded(tokenizer: str | Path, recorded: Any) -> None:
    """Refuse a tokenizer whose sha256 is not the one a run recorded (other tokens).

    Raises:
        DataError: the two differ (the message names both).
    """
    want = recorded.get("sha256") if isinstance(recorded, dict) else None
    if not want:
        return
    _, sha, where = tokenizer_text(tokenizer)
    if sha != want:
        raise DataError(
            f"the tokenizer at {where} (sha256 {sha[:12]}) is not the one the run was trained "
            f"with (sha256 {want[:12]}); pass that one with --tokenizer"
        )


def train_bpe(spec: str, vocab_size: int, out: str | Path) -> Path:
    """Train a byte-level BPE tokenizer on the training split of ``text:PATH``; write it.

    GPT-2's scheme (bytes as the initial alphabet, so every text encodes; no special
    tokens), trained by the ``tokenizers`` library on the training split only, so the test
    split stays unseen. Writes ``out`` (a ``tokenizer.json``) atomically.

    Returns:
        The file written.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from hessian_lens.io.files import atomic_write

    path = spec.split(":", 1)[1] if spec.lower().startswith("text:") else spec
    train_bytes, _, _ = _read_corpus(str(Path(text_path(path)).expanduser()))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = _bytes(train_bytes).decode("utf-8")
    tok.train_from_iterator(
        (text[i : i + CHUNK_CHARS] for i in range(0, len(text), CHUNK_CHARS)), trainer=trainer
    )
    atomic_write(out, lambda tmp: tok.save(str(tmp)))
    return Path(out)


def text_path(path: str) -> str:
    """``PATH`` of ``PATH@T`` (the context suffix dropped)."""
    head, at, tail = path.rpartition("@")
    return head if at and tail.isdigit() else path
