"""The lines of a run's card, in words: what the home page and the report show.

Torch-free. Each function reads one part of a run's ``run.json`` (through
:class:`~hessian_lens.runfolder.Manifest`) and says what is known, never a raw dict or a
machine's path; what a run does not record is said as such ("recorded by hl.Recorder"),
not as "?". The values are plain text: the dashboard escapes them for markdown, the report
for HTML.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from hessian_lens import runfolder

OPTIMIZER_EXTRAS = ("momentum", "weight_decay", "betas")  # shown beside lr when set


def number(value: Any) -> str | None:
    """A number as card text (``0.002``, ``66,610``); None for anything else.

    Example:
        >>> number(0.002), number(66610), number(True), number("x")
        ('0.002', '66,610', None, None)
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def model_text(model: dict[str, Any]) -> str:
    """The architecture: its name and its arguments as ``name value`` pairs.

    Example:
        >>> model_text({"name": "gpt", "kwargs": {"layers": 2, "heads": 4}})
        'gpt · layers 2, heads 4'
        >>> model_text({"name": "lenet5", "kwargs": {}})
        'lenet5'
    """
    kwargs = model.get("kwargs") if isinstance(model.get("kwargs"), dict) else {}
    args = ", ".join(f"{k} {_value(v)}" for k, v in kwargs.items())
    return f"{model.get('name') or '?'}" + (f" · {args}" if args else "")


def _value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return number(value) or json.dumps(value, separators=(", ", ": "))


def data_text(data: dict[str, Any]) -> str:
    """The data: its spec, its training samples and, for a text corpus, files and bytes.

    Samples are images, or windows of text for a language model.

    Example:
        >>> data_text({"name": "cifar10", "train_size": 45000})
        'cifar10 · 45,000 training images'
        >>> data_text({"name": "text:stdlib@64", "train_size": 66610, "corpus": {
        ...     "path": "stdlib/*.py", "files": 168, "bytes": 4698388, "context": 64,
        ...     "python": "3.11.7"}})
        'text:stdlib@64 · 66,610 training windows of 64 tokens · 168 files, 4.7 MB (stdlib/*.py, Python 3.11.7)'
    """  # noqa: E501
    name = data.get("name")
    if name == runfolder.RECORDER_DATA:
        return "batches given to hl.Recorder (no data set named: analyze takes --data)"
    corpus = data.get("corpus") if isinstance(data.get("corpus"), dict) else None
    out = name if isinstance(name, str) and name else "?"
    size = data.get("train_size")
    if isinstance(size, int) and not isinstance(size, bool) and size >= 0:
        if corpus is None:
            out += f" · {size:,} training images"
        else:
            context = number(corpus.get("context"))
            out += f" · {size:,} training windows" + (f" of {context} tokens" if context else "")
    if corpus is not None:
        out += _corpus_text(corpus)
    return out


def _corpus_text(corpus: dict[str, Any]) -> str:
    files, size = number(corpus.get("files")), corpus.get("bytes")
    parts = [f"{files} files" if files else "", f"{size / 1e6:.1f} MB" if number(size) else ""]
    where = [str(corpus["path"])] if isinstance(corpus.get("path"), str) else []
    if isinstance(corpus.get("python"), str):
        where.append(f"Python {corpus['python']}")
    text = ", ".join(p for p in parts if p)
    return (f" · {text}" if text else "") + (f" ({', '.join(where)})" if where else "")


def training_text(manifest: runfolder.Manifest) -> str:
    """How the run was trained: optimizer, learning rate, batch; what a Recorder run knows.

    Example:
        >>> m = runfolder.Manifest({"optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
        ...                         "batch_size": 64})
        >>> training_text(m)
        'sgd (lr 0.01, momentum 0.9) · batch 64'
        >>> training_text(runfolder.Manifest({"recorder": True}))
        "recorded by hl.Recorder from the user's own training loop"
    """
    opt = manifest.optimizer
    parts = []
    if isinstance(opt.get("name"), str) and opt["name"]:
        settings = [f"{k} {_setting(opt.get(k))}" for k in ("lr", *OPTIMIZER_EXTRAS)]
        settings = [s for s in settings if not s.endswith(" ")]
        parts.append(opt["name"] + (f" ({', '.join(settings)})" if settings else ""))
    batch = number(manifest.raw.get("batch_size"))
    if batch:
        parts.append(f"batch {batch}")
    if manifest.raw.get("recorder") is True:
        parts.append("recorded by hl.Recorder from the user's own training loop")
    return " · ".join(parts) or "?"


def _setting(value: Any) -> str:
    """An optimizer setting worth showing (a non-zero number, a pair of betas), else ""."""
    if isinstance(value, list) and len(value) == 2 and all(number(v) for v in value):
        return "/".join(number(v) or "" for v in value)
    return (number(value) or "") if value else ""


def checkpoints_text(kept: int, analysed: int) -> str:
    """The checkpoints in the folder, and how many epochs were analysed when they differ.

    A shipped run keeps a few checkpoints and the analyses of all of them.

    Example:
        >>> checkpoints_text(3, 13)
        '3 checkpoints kept (13 analysed, the others deleted after their analysis)'
        >>> checkpoints_text(1, 6), checkpoints_text(22, 22)
        ('1 checkpoint kept (6 analysed, the others deleted after their analysis)', '22 checkpoints')
    """  # noqa: E501
    files = f"{kept} checkpoint{'' if kept == 1 else 's'}"
    if analysed > kept:
        return f"{files} kept ({analysed} analysed, the others deleted after their analysis)"
    return files


def epochs_span(epochs: Sequence[float | None]) -> str:
    """``epochs 0–8`` of analysed records (empty when none has an epoch).

    Example:
        >>> epochs_span([0.0, 0.05, 8.0]), epochs_span([None])
        ('epochs 0–8', '')
    """
    known = [e for e in epochs if e is not None]
    if not known:
        return ""
    low, high = min(known), max(known)
    return f"epochs {_epoch(low)}–{_epoch(high)}"


def _epoch(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
