"""The run folder, owned in one place (torch-free: the dashboard's run browser uses it).

A run folder holds::

    run.json             the manifest: model, data, loss, optimizer, seed, versions, history
    epoch_0000.pt        one checkpoint per epoch (0 = the initialisation); a fraction of an
    epoch_0000.250.pt    epoch when saved inside one; .pth / .safetensors / .pt2 also count
    analysis.sqlite      the results store (:mod:`hessian_lens.store`)
    optimizer_log.json   PartitionNewton: per-step losses and per-group rates
    resume.pt            training state for resuming (not a checkpoint)

Train, analyze, the Recorder and the dashboard all go through these names and readers, so
a folder is judged the same way everywhere. Readers never raise on a broken file: they
return what could be read and a list of warnings naming what could not.
"""

from __future__ import annotations

import math
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hessian_lens.io.files import UnsafeFileError, is_regular_file, read_json, write_json

RUN_FILE = "run.json"
STORE_FILE = "analysis.sqlite"
OPTIMIZER_LOG = "optimizer_log.json"
RESUME_FILE = "resume.pt"
RUN_FORMAT = "hessian-lens-run/1"
#: The data a Recorder records when it was given batches and no reloadable data spec.
RECORDER_DATA = "analysis data given to the Recorder"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors", ".pt2")
MANIFEST_MAX_BYTES = 16 * 2**20
LOG_MAX_BYTES = 64 * 2**20
LOG_MAX_ENTRIES = 2000
_EPOCH_RE = re.compile(r"epoch_(\d+)(?:\.(\d+))?$")
_TRAILING_RE = re.compile(r"(?:^|[_\-]|epoch|ep)(\d+)$", re.IGNORECASE)  # not "resnet18"
PROC = Path("/proc")


# ---------------------------------------------------------------------------- names
def checkpoint_name(epoch: float, suffix: str = ".pt") -> str:
    """File name of the checkpoint at ``epoch`` (a fraction inside an epoch: 3 decimals).

    Example:
        >>> checkpoint_name(3), checkpoint_name(0.25), checkpoint_name(2, ".safetensors")
        ('epoch_0003.pt', 'epoch_0000.250.pt', 'epoch_0002.safetensors')
    """
    if not math.isfinite(epoch) or epoch < 0:
        raise ValueError(f"epoch must be a finite number >= 0, got {epoch!r}")
    whole = int(epoch)
    if float(epoch) == whole:
        return f"epoch_{whole:04d}{suffix}"
    frac = round((float(epoch) - whole) * 1000)
    return f"epoch_{whole:04d}.{frac:03d}{suffix}"


def epoch_of(path: str | Path) -> float | None:
    """The epoch a checkpoint's name gives (``epoch_0000.250.pt`` -> 0.25), or None.

    Example:
        >>> epoch_of("epoch_0021.pt"), epoch_of("epoch_0000.250.pt"), epoch_of("model.pt")
        (21, 0.25, None)
    """
    name = Path(path).name
    for suffix in CHECKPOINT_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    m = _EPOCH_RE.search(name)
    if m:
        whole, frac = int(m.group(1)), m.group(2)
        return whole + int(frac) / 10 ** len(frac) if frac else whole
    m = _TRAILING_RE.search(name)
    return int(m.group(1)) if m else None


def checkpoint_order(path: Path) -> tuple[float, str]:
    """Sort key: epoch (unnamed last), then name."""
    epoch = epoch_of(path)
    return (epoch if epoch is not None else math.inf, path.name)


def list_checkpoints(folder: str | Path) -> list[Path]:
    """The checkpoint files of a folder (regular files of every suffix), by epoch.

    A symbolic link counts only when it points inside the folder: a run folder is never a
    way to read files elsewhere.
    """
    folder = Path(folder)
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    files = [
        p
        for p in entries
        if p.suffix in CHECKPOINT_SUFFIXES
        and p.name != RESUME_FILE
        and is_regular_file(p)
        and _stays_inside(p, folder)
    ]
    return sorted(files, key=checkpoint_order)


def _stays_inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` (a link followed) lies in ``folder``."""
    if not path.is_symlink():
        return True
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):  # a loop of links
        return False


def is_run(folder: str | Path) -> bool:
    """A folder with a ``run.json`` or at least one checkpoint file."""
    folder = Path(folder)
    return folder.is_dir() and ((folder / RUN_FILE).is_file() or bool(list_checkpoints(folder)))


# ---------------------------------------------------------------------------- manifest
@dataclass
class Manifest:
    """A run's ``run.json`` read defensively: typed accessors and what was wrong."""

    raw: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def name(self) -> str | None:
        """The run's ``name``, ``None`` when missing, empty or not a string."""
        value = self.raw.get("name")
        return value if isinstance(value, str) and value else None

    @property
    def model(self) -> dict[str, Any]:
        """``{"name": str, "kwargs": dict}`` (``name`` "?" when unknown)."""
        return _model_entry(self.raw.get("model"))

    @property
    def data(self) -> dict[str, Any]:
        """The ``data`` entry (data set settings), ``{}`` when missing or not a dict."""
        value = self.raw.get("data")
        return value if isinstance(value, dict) else {}

    @property
    def loss(self) -> str | None:
        """The loss the run was trained with (``"mse"``, ...), None when not recorded."""
        value = self.raw.get("loss")
        return value if isinstance(value, str) else None

    @property
    def optimizer(self) -> dict[str, Any]:
        """The ``optimizer`` entry (its settings), ``{}`` when missing or not a dict."""
        value = self.raw.get("optimizer")
        return value if isinstance(value, dict) else {}

    @property
    def history(self) -> list[dict[str, Any]]:
        """Entries with a numeric ``epoch``; metrics that are not numbers dropped."""
        return clean_history(self.raw.get("history"))


def read_manifest(folder: str | Path) -> Manifest:
    """``run.json`` of a folder; never raises (an absent file is an empty manifest)."""
    path = Path(folder) / RUN_FILE
    if not path.exists():
        return Manifest()
    try:
        raw = read_json(path, MANIFEST_MAX_BYTES)
    except (UnsafeFileError, OSError) as err:
        return Manifest({}, [f"run.json unreadable: {err}"])
    if not isinstance(raw, dict):
        return Manifest({}, [f"run.json holds a {type(raw).__name__}, not an object"])
    out = Manifest(raw)
    for key, kind in (("name", str), ("model", (dict, str)), ("history", list)):
        if key in raw and not isinstance(raw[key], kind):
            out.warnings.append(f"run.json: '{key}' is a {type(raw[key]).__name__}; ignored")
    history = raw.get("history")
    if isinstance(history, list) and len(clean_history(history)) < len(history):
        out.warnings.append(
            f"run.json: {len(history) - len(clean_history(history))} history entries "
            "without a numeric epoch were skipped"
        )
    return out


def write_manifest(folder: str | Path, manifest: dict[str, Any]) -> None:
    """Atomically write ``run.json``."""
    write_json(Path(folder) / RUN_FILE, manifest)


# ---------------------------------------------------------------------------- the writer
def writer_entry() -> dict[str, Any]:
    """Who is writing a run (``run.json``'s ``"writer"``): host, process id, boot, start.

    A reader on the same host can then tell that the process is gone (:func:`writer_gone`).
    """
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "boot": _boot_id(), "start": _started(pid)}


def writer_gone(manifest: dict[str, Any]) -> bool:
    """Whether the process that marked a run ``"recording"`` is known to have ended.

    Known on the writer's own host: its process id no longer runs, or runs another
    process (another start time), or the machine restarted since (another boot id).
    ``False`` where it cannot be known (another host, no ``"writer"`` entry).
    """
    writer = manifest.get("writer")
    if not isinstance(writer, dict) or writer.get("host") != socket.gethostname():
        return False
    pid = writer.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    if writer.get("boot") and _boot_id() and writer["boot"] != _boot_id():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OSError):
        pass  # exists, owned by someone else
    start = writer.get("start")
    return start is not None and _started(pid) not in (None, start)


def _boot_id() -> str:
    try:
        return (PROC / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _started(pid: int) -> int | None:
    """The start time of a process in clock ticks since boot (Linux), else ``None``."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def clean_history(history: Any) -> list[dict[str, Any]]:
    """History entries with a finite numeric epoch, keeping only number / string values."""
    if not isinstance(history, list):
        return []
    out = []
    for entry in history:
        if not isinstance(entry, dict) or not _number(entry.get("epoch")):
            continue
        out.append(
            {
                k: v
                for k, v in entry.items()
                if isinstance(k, str) and (_number(v) or isinstance(v, str))
            }
        )
    return sorted(out, key=lambda e: e["epoch"])


def _number(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and abs(value) < 1e15
    )


def _model_entry(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        return {"name": value, "kwargs": {}}
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        kwargs = value.get("kwargs")
        return {"name": value["name"], "kwargs": kwargs if isinstance(kwargs, dict) else {}}
    return {"name": "?", "kwargs": {}}


# ---------------------------------------------------------------------------- optimizer log
def read_optimizer_log(
    folder: str | Path, max_bytes: int = LOG_MAX_BYTES, max_entries: int = LOG_MAX_ENTRIES
) -> tuple[dict[str, Any] | None, list[str]]:
    """``optimizer_log.json`` as ``{"labels", "entries"}`` with warnings; ``(None, [])`` if absent.

    The entries are thinned to ``max_entries`` per kind (steps and recomputations).

    The thinned result of the last few files is kept in memory, keyed by the file's
    identity, size and modification time: parsing a 40 MB log takes seconds, and a page
    asks for it again on every interaction. Treat what is returned as read-only.
    """
    path = Path(folder) / OPTIMIZER_LOG
    try:
        st = path.stat()
    except OSError:
        return None, []
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, max_bytes, max_entries)
    if key in _LOG_CACHE:
        _LOG_CACHE[key] = _LOG_CACHE.pop(key)  # most recently used last
        return _LOG_CACHE[key]
    result = _read_optimizer_log(path, max_bytes, max_entries)
    _LOG_CACHE[key] = result
    while len(_LOG_CACHE) > _LOG_CACHE_SIZE:
        _LOG_CACHE.pop(next(iter(_LOG_CACHE)))
    return result


_LOG_CACHE: dict[tuple, tuple[dict[str, Any] | None, list[str]]] = {}
_LOG_CACHE_SIZE = 4


def _read_optimizer_log(
    path: Path, max_bytes: int, max_entries: int
) -> tuple[dict[str, Any] | None, list[str]]:
    try:
        log = read_json(path, max_bytes)
    except (UnsafeFileError, OSError) as err:
        return None, [f"optimizer_log.json unreadable: {err}"]
    if not isinstance(log, dict) or not isinstance(log.get("entries"), list):
        return None, ["optimizer_log.json has no list of 'entries'; ignored"]
    labels = log.get("labels")
    labels = [str(x) for x in labels] if isinstance(labels, list) else []
    entries = [e for e in log["entries"] if isinstance(e, dict) and _number(e.get("step"))]
    warnings = []
    if len(entries) < len(log["entries"]):
        warnings.append(
            f"optimizer_log.json: {len(log['entries']) - len(entries)} malformed entries skipped"
        )
    steps = thin([e for e in entries if _number(e.get("loss"))], max_entries)
    recomputations = thin([e for e in entries if "eta" in e or "error" in e], max_entries)
    merged = sorted(steps + recomputations, key=lambda e: e["step"])
    return {"labels": labels, "entries": merged, "total_entries": len(entries)}, warnings


def thin(items: list, limit: int) -> list:
    """At most ``limit`` items, evenly spaced, always keeping the last one.

    Example:
        >>> thin(list(range(10)), 4)
        [0, 3, 6, 9]
    """
    if len(items) <= limit or limit < 2:
        return items[:limit] if limit < 2 else items
    stride = (len(items) - 1) / (limit - 1)
    return [items[round(i * stride)] for i in range(limit)]
