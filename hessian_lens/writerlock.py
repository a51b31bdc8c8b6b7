"""One writer per run folder: an exclusive lock that names the process holding it.

Two :class:`~hessian_lens.Recorder` objects writing one folder at once mix their runs:
``run.json`` keeps one run's name with the other's history, checkpoints are overwritten
and stored results point to checkpoints that no longer exist. A writer takes
:func:`WriterLock.take` first: ``flock(LOCK_EX | LOCK_NB)`` on ``.writer.lock`` in the run
folder, which holds the writer's process id. A second writer is refused at once with one
line naming that process; the kernel drops the lock when the first one closes the run or
ends, however it ends (a crash leaves no stale lock).

The lock file stays in the folder (removing it could let two writers lock two different
files). Readers (the dashboard, ``analyze``) never take it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no locking (the folder is the user's to share)
    fcntl = None

LOCK_FILE = ".writer.lock"


class FolderBusyError(RuntimeError):
    """Another process is writing this run folder; the message names it."""


class WriterLock:
    """The exclusive writer lock of one run folder, held until :meth:`release`."""

    def __init__(self, fd: int | None, path: Path) -> None:
        self.fd, self.path = fd, path

    @classmethod
    def take(cls, folder: str | os.PathLike, what: str = "a Recorder") -> WriterLock:
        """Lock ``folder`` (created if missing) for this process, or refuse.

        Raises:
            FolderBusyError: another process holds the lock.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / LOCK_FILE
        if fcntl is None:
            return cls(None, path)
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise FolderBusyError(
                f"{folder} is being written by {holder}; two writers would mix their runs. "
                "Give this run another folder, or close the other writer first."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {what}\n".encode())
        return cls(fd, path)

    def release(self) -> None:
        """Let another writer in (idempotent)."""
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __del__(self) -> None:
        with contextlib.suppress(OSError, TypeError):  # at exit the kernel drops it anyway
            self.release()


def _holder(fd: int) -> str:
    """Who holds the lock, as its file says: ``"process 1234 (a Recorder)"``."""
    text = os.pread(fd, 200, 0).decode(errors="replace").split()
    if text and text[0].isascii() and text[0].isdigit():
        return f"process {text[0]}" + (f" ({' '.join(text[1:])})" if len(text) > 1 else "")
    return "another process"
