"""SQLite results store, keyed by (checkpoint sha256, analysis settings).

One row per analysed checkpoint and settings: the scalar summary as JSON and the arrays
(H_bar, g_bar, inverse, ...) as an npz blob (no pickle). Rows are written in their own
transaction with ``INSERT OR IGNORE``: a crash loses at most the row in progress, and two
processes writing the same run leave one consistent row per key (WAL mode, busy timeout).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA_VERSION = "1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    checkpoint_sha TEXT NOT NULL,
    settings_key   TEXT NOT NULL,
    settings       TEXT NOT NULL,
    checkpoint     TEXT NOT NULL,
    epoch          INTEGER,
    created        REAL NOT NULL,
    seconds        REAL NOT NULL,
    summary        TEXT NOT NULL,
    arrays         BLOB NOT NULL,
    PRIMARY KEY (checkpoint_sha, settings_key)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def settings_key(settings: dict[str, Any]) -> str:
    """Stable key of a settings dict (sha256 of its sorted JSON, 16 hex digits)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Record:
    """One analysed checkpoint under one set of settings."""

    checkpoint_sha: str
    settings: dict[str, Any]
    checkpoint: str
    epoch: int | None
    summary: dict[str, Any]
    arrays: dict[str, np.ndarray]
    seconds: float = 0.0
    created: float = field(default_factory=time.time)


class ResultStore:
    """A results database file (created on first use).

    Example:
        >>> import tempfile, os, numpy as np
        >>> store = ResultStore(os.path.join(tempfile.mkdtemp(), "analysis.sqlite"))
        >>> rec = Record("ab12", {"samples": 10}, "epoch_0001.pt", 1, {"loss": 2.3},
        ...              {"H": np.eye(2)})
        >>> store.put(rec), store.put(rec), store.has("ab12", {"samples": 10})
        (True, False, True)
        >>> store.get("ab12", {"samples": 10}).arrays["H"].shape
        (2, 2)
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(_SCHEMA)
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))

    def _connect(self) -> _Closing:
        db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        db.execute("PRAGMA busy_timeout = 60000")
        with contextlib.suppress(sqlite3.OperationalError):  # read-only: default journal
            db.execute("PRAGMA journal_mode = WAL")
        return _Closing(db)

    def has(self, checkpoint_sha: str, settings: dict[str, Any]) -> bool:
        """Whether this checkpoint is already analysed with these settings."""
        with self._connect() as db:
            row = db.execute(
                "SELECT 1 FROM results WHERE checkpoint_sha=? AND settings_key=?",
                (checkpoint_sha, settings_key(settings)),
            ).fetchone()
        return row is not None

    def put(self, record: Record) -> bool:
        """Insert a record atomically; False when the key was already there (kept as is)."""
        blob = _pack(record.arrays)
        with self._connect() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.checkpoint_sha,
                    settings_key(record.settings),
                    json.dumps(record.settings, sort_keys=True),
                    record.checkpoint,
                    record.epoch,
                    record.created,
                    record.seconds,
                    json.dumps(record.summary),
                    blob,
                ),
            )
            return cur.rowcount == 1

    def get(self, checkpoint_sha: str, settings: dict[str, Any]) -> Record | None:
        """The record of a checkpoint under settings, or None."""
        with self._connect() as db:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM results WHERE checkpoint_sha=? AND settings_key=?",
                (checkpoint_sha, settings_key(settings)),
            ).fetchone()
        return _record(row) if row else None

    def records(self, settings: dict[str, Any] | None = None, arrays: bool = True) -> list[Record]:
        """All records (of one settings dict when given), ordered by epoch then name."""
        query = f"SELECT {_COLUMNS} FROM results"
        args: tuple = ()
        if settings is not None:
            query, args = query + " WHERE settings_key=?", (settings_key(settings),)
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY epoch, checkpoint", args).fetchall()
        return [_record(r, arrays) for r in rows]

    def settings(self) -> list[dict[str, Any]]:
        """The distinct settings present, most rows first."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT settings, COUNT(*) AS n FROM results GROUP BY settings_key "
                "ORDER BY n DESC, MIN(created)"
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def __len__(self) -> int:
        with self._connect() as db:
            return int(db.execute("SELECT COUNT(*) FROM results").fetchone()[0])


_COLUMNS = "checkpoint_sha, settings, checkpoint, epoch, summary, arrays, seconds, created"


class _Closing:
    """``with`` closes the connection (sqlite3's own context manager only commits)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        return self.db

    def __exit__(self, *exc) -> None:
        self.db.close()


def _pack(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def _unpack(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _record(row, arrays: bool = True) -> Record:
    sha, settings, name, epoch, summary, blob, seconds, created = row
    return Record(
        sha,
        json.loads(settings),
        name,
        epoch,
        json.loads(summary),
        _unpack(blob) if arrays else {},
        seconds,
        created,
    )
