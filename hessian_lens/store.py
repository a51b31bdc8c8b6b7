"""SQLite results store, keyed by (checkpoint sha256, analysis settings).

One row per analysed checkpoint and settings: the scalar summary as JSON and the arrays
(H_bar, g_bar, inverse, ...) as an npz blob (no pickle). Rows are written in their own
transaction with ``INSERT OR IGNORE``: a crash loses at most the row in progress, and two
processes writing the same run leave one consistent row per key (busy timeout). The
journal is SQLite's rollback journal, not WAL: a reader of a WAL file creates ``-wal`` and
``-shm`` files beside it, and viewing a run must not write into its folder.

Two ways to open a file:

* :class:`ResultStore` (writer): creates the file and its tables (a store written in WAL
  mode by an earlier version is switched back when no one else has it open). It refuses a
  file that exists but is not a Hessian Lens store, and changes nothing in it.
* :meth:`ResultStore.reader` (viewer, the dashboard): ``mode=ro``, and ``immutable=1``
  where the folder cannot be written (a read-only mount); never creates a table, never
  touches the journal mode.

Work is shared without duplicates through **claims**: a process about to analyse a
checkpoint takes a lease (owner, expiry) in a transaction; others skip it while the lease
is alive; a lease left by a crashed process expires and is taken again (:meth:`claim`,
:meth:`renew`, :meth:`release`).

Reading is bounded: every array blob is checked member by member (declared sizes against
what S groups can need) before anything is inflated, and summaries are parsed with a
depth limit.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import socket
import sqlite3
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hessian_lens.io.files import UnsafeFileError, loads_bounded

#: 2: a record may hold measures (block traces, Frobenius map, spectra); version 1 stores
#: open unchanged (nothing in the file format changed, only what a record may hold).
SCHEMA_VERSION = "2"
BUSY_MS = 60_000
#: Every connection's work is bounded (SQLite's progress handler): a store edited to make
#: SQLite loop (a trigger reading a never-ending recursive view) fails instead of hanging.
QUERY_SECONDS = 120.0
_PROGRESS_STEPS = 10_000
_OUR_TABLES = ("results", "meta", "claims")
MAX_ARRAY_ITEMS = 64  # arrays per record
MAX_SUMMARY_BYTES = 16 * 2**20
#: The most groups a record may list: the discrete partition's limit (one group per scalar).
MAX_GROUPS = 5000
#: The longest group label (and layer name) a record may hold: parameter names are tens of
#: characters; a label is drawn S times on a page (axes, hover), never S² times.
MAX_LABEL_CHARS = 256
#: S x S arrays a record holds at most (H, Hinv, their normalised forms, 3 block inverses,
#: the Frobenius map and its standard errors).
MAX_MATRICES = 12
#: Spectrum nodes one group may store (SLQ starts x Lanczos steps).
MAX_SPECTRUM_NODES = 4096
_RESULT_COLUMNS = (
    "checkpoint_sha",
    "settings_key",
    "settings",
    "checkpoint",
    "epoch",
    "created",
    "seconds",
    "summary",
    "arrays",
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    checkpoint_sha TEXT NOT NULL,
    settings_key   TEXT NOT NULL,
    settings       TEXT NOT NULL,
    checkpoint     TEXT NOT NULL,
    epoch          REAL,
    created        REAL NOT NULL,
    seconds        REAL NOT NULL,
    summary        TEXT NOT NULL,
    arrays         BLOB NOT NULL,
    PRIMARY KEY (checkpoint_sha, settings_key)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS claims (
    checkpoint_sha TEXT NOT NULL,
    settings_key   TEXT NOT NULL,
    owner          TEXT NOT NULL,
    expires        REAL NOT NULL,
    PRIMARY KEY (checkpoint_sha, settings_key)
);
"""


class StoreError(ValueError):
    """A store file that cannot be used: foreign, corrupt, or a record too large."""


def settings_key(settings: dict[str, Any]) -> str:
    """Stable key of a settings dict (sha256 of its sorted JSON, 16 hex digits)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Record:
    """One analysed checkpoint under one set of settings."""

    checkpoint_sha: str
    settings: dict[str, Any]
    checkpoint: str
    epoch: float | None
    summary: dict[str, Any]
    arrays: dict[str, np.ndarray]
    seconds: float = 0.0
    created: float = field(default_factory=time.time)


class ResultStore:
    """A results database file (created on first use by a writer).

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

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if readonly:
            self._uri = _readonly_uri(self.path)
            self._check_ours()
            return
        if self.path.is_symlink():
            raise StoreError(
                f"{self.path} is a symbolic link (to {os.readlink(self.path)}); Hessian Lens "
                "writes only a real analysis.sqlite inside the run folder. Remove the link."
            )
        if not self.path.exists():
            self._create()
        self._recover()
        self._check_ours(writable=True)
        self._leave_wal()
        with self._connect() as db:  # one transaction: others see no table or all of them
            db.executescript(
                f"BEGIN IMMEDIATE;{_SCHEMA}"
                f"INSERT OR IGNORE INTO meta VALUES ('schema', '{SCHEMA_VERSION}');COMMIT;"
            )

    def _create(self) -> None:
        """Create the file with its tables under a temporary name, then link it into place.

        Another process opening the same path never finds a file without its tables (which
        it would rightly refuse as foreign). Where hard links are not supported, a rename.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=".new", dir=self.path.parent
        )
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        try:
            os.chmod(tmp, 0o666 & ~umask)
            db = sqlite3.connect(tmp, isolation_level=None)
            try:
                db.executescript(_SCHEMA)
                db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            finally:
                db.close()
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                pass  # another process created it first: checked as any existing file
            except OSError:
                if not self.path.exists():
                    os.replace(tmp, self.path)
        except sqlite3.Error as err:
            raise StoreError(f"{self.path}: cannot create the store ({err}).") from None
        finally:
            for extra in ("", "-wal", "-shm", "-journal"):
                Path(f"{tmp}{extra}").unlink(missing_ok=True)

    def _recover(self) -> None:
        """Roll back a hot journal (a writer killed mid-transaction): SQLite does it on read.

        Only a read-write connection may; a viewer is told to run ``analyze``.
        """
        if not _hot_journal(self.path):
            return
        db = sqlite3.connect(self.path, timeout=BUSY_MS / 1000, isolation_level=None)
        try:  # best effort: a file that stays unreadable is reported by _check_ours
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error:
            pass
        finally:
            db.close()

    def discard_if_empty(self) -> bool:
        """Delete the file if it holds no result and no claim (a run that failed at once).

        The file is removed while the write lock is held; returns whether it was.
        """
        try:
            with self._connect() as db:
                db.execute("BEGIN IMMEDIATE")
                rows = db.execute(
                    "SELECT (SELECT count(*) FROM results) + (SELECT count(*) FROM claims)"
                ).fetchone()[0]
                if rows == 0:
                    self.path.unlink()
                db.execute("COMMIT")
        except (StoreError, OSError):
            return False
        return rows == 0

    def _leave_wal(self) -> None:
        """Switch a WAL store (earlier versions) to the rollback journal, if no one has it open.

        Without waiting: another process holding the file keeps it in WAL for now.
        """
        db = sqlite3.connect(self.path, timeout=0.0, isolation_level=None)
        try:  # best effort: a busy or broken file is reported by the next connection
            if db.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                db.execute("PRAGMA journal_mode = DELETE")
        except sqlite3.Error:
            pass
        finally:
            db.close()

    @classmethod
    def reader(cls, path: str | Path) -> ResultStore:
        """Open for viewing only: nothing is ever written, created or converted.

        Raises:
            StoreError: missing, foreign ("not a Hessian Lens store") or corrupt file.
        """
        return cls(path, readonly=True)

    # ------------------------------------------------------------------ connections
    def _connect(self) -> _Closing:
        try:
            if self.readonly:
                db = sqlite3.connect(self._uri, uri=True, timeout=60.0, isolation_level=None)
            else:
                db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
                db.execute(f"PRAGMA busy_timeout = {BUSY_MS}")
        except sqlite3.Error as err:
            raise StoreError(f"{self.path}: cannot open the store ({err}).") from None
        _time_bound(db)
        return _Closing(db, self.path)

    def _check_ours(self, writable: bool = False) -> None:
        """Refuse files that are not a Hessian Lens store, without changing them.

        A writer also accepts an SQLite file without any table (a store another process
        is creating at this moment, or an empty file).
        """
        if not self.path.is_file():
            raise StoreError(f"{self.path}: no such store file.")
        uri = self._uri if self.readonly else _readonly_uri(self.path)
        try:
            db = sqlite3.connect(uri, uri=True, timeout=10.0)
            _time_bound(db)
            try:
                objects = db.execute("SELECT type, name, tbl_name FROM sqlite_master").fetchall()
                tables = {
                    name: {c[1] for c in db.execute(f"PRAGMA table_info({name})")}
                    for kind, name, _ in objects
                    if kind == "table" and name in _OUR_TABLES
                }
                schema = (
                    db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
                    if "meta" in tables
                    else None
                )
            finally:
                db.close()
        except sqlite3.Error:
            if _hot_journal(self.path):
                raise StoreError(_interrupted(self.path)) from None
            objects, tables, schema = [("?", "?", "?")], {}, None
        if writable and not objects:
            return
        if not set(_RESULT_COLUMNS) <= tables.get("results", set()) or schema is None:
            raise StoreError(
                f"{self.path} is not a Hessian Lens store (an SQLite file of another program, "
                "or not SQLite at all); it was left as it is. Move it away, or analyse into "
                "another folder."
            )
        _check_schema_objects(self.path, objects)

    # ------------------------------------------------------------------ queries
    def has(self, checkpoint_sha: str, settings: dict[str, Any]) -> bool:
        """Whether this checkpoint is already analysed with these settings."""
        with self._connect() as db:
            row = db.execute(
                "SELECT 1 FROM results WHERE checkpoint_sha=? AND settings_key=?",
                (checkpoint_sha, settings_key(settings)),
            ).fetchone()
        return row is not None

    def put(self, record: Record, owner: str | None = None) -> bool:
        """Insert a record atomically (and drop ``owner``'s claim on it).

        Returns False when the key was already there (the stored record is kept as is).
        """
        self._writable()
        blob = _pack(record.arrays)
        key = settings_key(record.settings)
        row = (
            record.checkpoint_sha,
            key,
            json.dumps(record.settings, sort_keys=True),
            record.checkpoint,
            _epoch(record.epoch),
            record.created,
            record.seconds,
            json.dumps(record.summary, allow_nan=True),
            blob,
        )
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            cur = db.execute(
                "INSERT OR IGNORE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row
            )
            if owner is not None:
                db.execute(
                    "DELETE FROM claims WHERE checkpoint_sha=? AND settings_key=? AND owner=?",
                    (record.checkpoint_sha, key, owner),
                )
            db.execute("COMMIT")
            return cur.rowcount == 1

    def get(self, checkpoint_sha: str, settings: dict[str, Any]) -> Record | None:
        """The record of a checkpoint under settings, or None."""
        with self._connect() as db:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM results WHERE checkpoint_sha=? AND settings_key=?",
                (checkpoint_sha, settings_key(settings)),
            ).fetchone()
            return _with_arrays(db, row) if row else None

    def records(self, settings: dict[str, Any] | None = None, arrays: bool = True) -> list[Record]:
        """All records (of one settings dict when given), ordered by epoch then name."""
        query = f"SELECT {_COLUMNS if arrays else _LIGHT_COLUMNS} FROM results"
        args: tuple = ()
        if settings is not None:
            query, args = query + " WHERE settings_key=?", (settings_key(settings),)
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY epoch, checkpoint", args).fetchall()
            return [_with_arrays(db, r) if arrays else _record((*r, None)) for r in rows]

    def settings(self) -> list[dict[str, Any]]:
        """The distinct settings present, most rows first.

        Only settings that :meth:`records` can find again are listed: a row whose settings
        text does not hash to its key (edited by hand or by another program) is left out,
        so a picker never offers a choice that shows nothing.
        """
        with self._connect() as db:
            rows = db.execute(
                "SELECT settings, settings_key, COUNT(*) AS n FROM results GROUP BY settings_key "
                "ORDER BY n DESC, MIN(created)"
            ).fetchall()
        out = []
        for text, key, _ in rows:
            value = _summary(text, "settings")
            if isinstance(value, dict) and settings_key(value) == key:
                out.append(value)
        return out

    def __len__(self) -> int:
        with self._connect() as db:
            return int(db.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    # ------------------------------------------------------------------ claims
    def claim(self, checkpoint_sha: str, settings: dict[str, Any], owner: str, ttl: float) -> str:
        """Try to take the lease on a checkpoint: ``"taken"``, ``"done"`` or ``"busy"``.

        ``"done"``: already stored; ``"busy"``: another owner's lease is alive. Expired
        leases are taken over, and so are those of a process of this host that is gone (a
        killed analysis rerun at once resumes instead of waiting for its lease).
        """
        self._writable()
        key, now = settings_key(settings), time.time()
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                done = db.execute(
                    "SELECT 1 FROM results WHERE checkpoint_sha=? AND settings_key=?",
                    (checkpoint_sha, key),
                ).fetchone()
                lease = db.execute(
                    "SELECT owner, expires FROM claims WHERE checkpoint_sha=? AND settings_key=?",
                    (checkpoint_sha, key),
                ).fetchone()
                if done:
                    return "done"
                if lease and lease[0] != owner and lease[1] > now and not owner_gone(lease[0]):
                    return "busy"
                db.execute(
                    "INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?)",
                    (checkpoint_sha, key, owner, now + ttl),
                )
                return "taken"
            finally:
                db.execute("COMMIT")

    def renew(self, checkpoint_sha: str, settings: dict[str, Any], owner: str, ttl: float) -> None:
        """Extend ``owner``'s lease (a heartbeat while computing)."""
        self._write(
            "UPDATE claims SET expires=? WHERE checkpoint_sha=? AND settings_key=? AND owner=?",
            (time.time() + ttl, checkpoint_sha, settings_key(settings), owner),
        )

    def release(self, checkpoint_sha: str, settings: dict[str, Any], owner: str) -> None:
        """Drop ``owner``'s lease (after a failure, so others may try)."""
        self._write(
            "DELETE FROM claims WHERE checkpoint_sha=? AND settings_key=? AND owner=?",
            (checkpoint_sha, settings_key(settings), owner),
        )

    def _write(self, sql: str, params: tuple) -> None:
        """One statement in a ``BEGIN IMMEDIATE`` transaction.

        With the rollback journal, an autocommit write first takes a read lock and then
        asks for the write lock; if another writer is committing, SQLite reports the
        deadlock at once ("database is locked") instead of waiting. Taking the write lock
        first makes every writer wait its turn (busy timeout).
        """
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(sql, params)
            db.execute("COMMIT")

    def claims(self) -> list[tuple[str, str, str, float]]:
        """All leases: ``(checkpoint_sha, settings_key, owner, expires)``."""
        with self._connect() as db:
            return [tuple(r) for r in db.execute("SELECT * FROM claims").fetchall()]

    def _writable(self) -> None:
        if self.readonly:
            raise StoreError(f"{self.path} was opened read-only (for viewing).")


def owner_gone(owner: str) -> bool:
    """Whether a lease's owner (``host:pid:tag``) was a process of this host that has ended."""
    host, _, rest = str(owner).partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit() or int(pid) <= 0:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


_LIGHT_COLUMNS = "checkpoint_sha, settings, checkpoint, epoch, summary, seconds, created"
_COLUMNS = f"{_LIGHT_COLUMNS}, rowid, arrays IS NULL"  # arrays: read in place (_with_arrays)


class _Closing:
    """A connection whose ``with`` block closes it and turns SQLite failures into StoreError.

    sqlite3's own context manager only commits; SQLite failures (a corrupt or foreign file)
    become :class:`StoreError`.
    """

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self.db, self.path = db, path

    def __enter__(self) -> sqlite3.Connection:
        return self.db

    def __exit__(self, kind, err, tb) -> bool:
        self.db.close()
        if isinstance(err, sqlite3.OperationalError) and str(err) == "interrupted":
            raise StoreError(
                f"{self.path}: a query took longer than {QUERY_SECONDS:g} s and was stopped "
                "(a store edited to make SQLite loop?); move the file away."
            ) from None
        if isinstance(err, sqlite3.DatabaseError) and not isinstance(err, sqlite3.IntegrityError):
            if _hot_journal(self.path):
                raise StoreError(_interrupted(self.path)) from None
            raise StoreError(f"{self.path}: the store cannot be read ({err}).") from None
        return False


def _time_bound(db: sqlite3.Connection) -> None:
    """Stop any statement of this connection running past :data:`QUERY_SECONDS`."""
    deadline = time.monotonic() + QUERY_SECONDS
    db.set_progress_handler(lambda: time.monotonic() > deadline, _PROGRESS_STEPS)


def _check_schema_objects(path: Path, objects: list[tuple[str, str, str]]) -> None:
    """Refuse triggers, views, indexes and tables a Hessian Lens store never has.

    A trigger runs SQL chosen by whoever wrote the file on every write (an endless
    recursive view hangs ``analyze``); nothing in our schema needs one.
    """
    odd = [
        f"{kind} {name[:40]!r}"
        for kind, name, table in objects
        if not (kind == "table" and name in _OUR_TABLES)
        and not (kind == "index" and name.startswith("sqlite_autoindex_") and table in _OUR_TABLES)
    ]
    if odd:
        raise StoreError(
            f"{path} holds schema objects a Hessian Lens store never has ({', '.join(odd[:4])}); "
            "it was left as it is and nothing in it was run. Move it away, or analyse into "
            "another folder."
        )


def _hot_journal(path: Path) -> bool:
    """Whether a non-empty rollback journal lies beside ``path`` (an interrupted write)."""
    try:
        return Path(f"{path}-journal").stat().st_size > 0
    except OSError:
        return False


def _interrupted(path: Path) -> str:
    return (
        f"{path} holds an interrupted write; run analyze to recover "
        f"(`python -m hessian_lens analyze {path.parent}`): a writer was killed in the middle "
        f"of a transaction and left {path.name}-journal, which only a writer may roll back."
    )


def _readonly_uri(path: Path) -> str:
    """The SQLite URI opening ``path`` read-only: ``mode=ro``, plus ``immutable=1`` if needed.

    ``immutable=1`` is added when the folder cannot be written: no -shm file can be made
    there, so SQLite could not even read a WAL database otherwise.
    """
    uri = f"{path.resolve().as_uri()}?mode=ro"
    return uri + "&immutable=1" if not os.access(path.parent, os.W_OK) else uri


def label_problem(labels: list) -> str | None:
    """What makes group labels unfit to draw (text over :data:`MAX_LABEL_CHARS`), or None.

    Example:
        >>> label_problem(["conv1.weight", "fc.bias"]) is None
        True
        >>> label_problem(["fc.bias", "x" * 300])
        "a label of 300 characters ('xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx…'), more than 256"
    """
    for label in labels:
        if not isinstance(label, str):
            return f"a label that is not text ({type(label).__name__})"
        if len(label) > MAX_LABEL_CHARS:
            return (
                f"a label of {len(label):,} characters ({label[:40] + '…'!r}), more than "
                f"{MAX_LABEL_CHARS}"
            )
    return None


def _epoch(value: Any) -> float | None:
    """An epoch SQLite can store (a finite number below 1e15), else None."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return value if ok and math.isfinite(value) and abs(value) < 1e15 else None


def _pack(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def unpack_arrays(blob, S: int) -> dict[str, np.ndarray]:
    """The arrays of a blob, each member's declared size checked before inflating.

    One array may hold ``S * S`` float64 entries (a matrix over the groups), or
    ``(S + 1) * MAX_SPECTRUM_NODES`` (the spectra of every group and of the model).

    Args:
        blob: an npz archive: bytes, or a seekable file (an SQLite blob opened in place).
        S: the record's number of groups.

    Raises:
        StoreError: not an npz, too many members, or a member larger than allowed.
    """
    limit = 8 * max(S * S, (S + 1) * MAX_SPECTRUM_NODES) + 4096
    if isinstance(blob, bytes | bytearray | memoryview):
        blob = io.BytesIO(blob)
    try:
        with zipfile.ZipFile(blob) as z:
            infos = z.infolist()
            if len(infos) > MAX_ARRAY_ITEMS:
                raise StoreError(f"a stored record holds {len(infos)} arrays; refusing it")
            big = [i.filename for i in infos if i.file_size > limit]
            if sum(i.file_size for i in infos) > MAX_MATRICES * limit:
                big = big or [f"{len(infos)} arrays together"]
            if big:
                raise StoreError(
                    f"a stored record declares arrays larger than S = {S} "
                    f"groups can need ({', '.join(big[:3])}); refusing to inflate it"
                )
        blob.seek(0)
        with np.load(blob, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, sqlite3.Error) as err:
        if isinstance(err, StoreError):
            raise
        raise StoreError(f"a stored record's arrays cannot be read ({err})") from None


def _summary(text: Any, what: str) -> Any:
    if not isinstance(text, str) or len(text) > MAX_SUMMARY_BYTES:
        raise StoreError(f"a stored record's {what} is missing or too large")
    try:
        return loads_bounded(text, f"a stored record's {what}")
    except UnsafeFileError as err:
        raise StoreError(str(err)) from None


def _with_arrays(db: sqlite3.Connection, row) -> Record:
    """The record of a row of :data:`_COLUMNS`, its arrays read from the blob in place.

    SQLite's incremental blob reading: no copy of the whole blob (400 MB at S = 5,000) is
    made in SQLite or in Python; each array is read straight into its own memory.
    """
    *head, rowid, null = row
    if null:
        return _record((*head, None))
    with db.blobopen("results", "arrays", rowid, readonly=True) as blob:
        return _record((*head, _BlobFile(blob)))


class _BlobFile(io.RawIOBase):
    """An SQLite blob as the seekable binary file :mod:`zipfile` and ``np.load`` read."""

    def __init__(self, blob: sqlite3.Blob) -> None:
        super().__init__()
        self.blob = blob

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.blob.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.blob.tell(), os.SEEK_END: len(self.blob)}
        target = base[whence] + offset
        if target < 0:
            raise OSError(f"negative seek position {target}")
        self.blob.seek(min(target, len(self.blob)))  # a file may seek past its end; a blob not
        return target

    def tell(self) -> int:
        return self.blob.tell()


def _record(row) -> Record:
    sha, settings, name, epoch, summary, seconds, created, blob = row
    summary = _summary(summary, "summary")
    if not isinstance(summary, dict):
        raise StoreError("a stored record's summary is not an object")
    labels = summary.get("labels") if isinstance(summary.get("labels"), list) else []
    S = max(len(labels), 1)
    if S > MAX_GROUPS:
        raise StoreError(
            f"a stored record lists {S:,} groups, more than the {MAX_GROUPS:,} an analysis "
            "can have; refusing to read its arrays (the store was edited or is not ours)"
        )
    for key in ("labels", "layers", "kinds"):
        names = summary.get(key)
        problem = label_problem(names) if isinstance(names, list) else None
        if problem:
            raise StoreError(
                f"a stored record's {key} hold {problem}; refusing it (the store was edited "
                "or is not ours)"
            )
    return Record(
        str(sha),
        _summary(settings, "settings"),
        str(name),
        epoch,
        summary,
        unpack_arrays(blob, S) if blob is not None else {},
        float(seconds or 0.0),
        float(created or 0.0),
    )
