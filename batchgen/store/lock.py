"""The run lock: one ``batchgen run`` (or ``retry``) per run directory at a time."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

from batchgen.store.errors import RunLocked
from batchgen.store.schema import make_run_dir

__all__ = ["LOCK_NAME", "RunLock", "acquire_run_lock", "lock_holder"]

LOCK_NAME = "run.lock"


class RunLock:
    """An exclusive ``flock`` on ``run.lock`` in the run directory, with the holder's pid inside.

    The kernel drops the lock when the holding process dies (even by SIGKILL),
    so a lock left by a dead process is simply taken over.
    """

    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self.path = path

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        data = os.pread(fd, 64, 0)
        return int(data.decode("ascii").strip() or "x")
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def acquire_run_lock(run_dir: Path) -> RunLock:
    """Take the run directory's lock or raise :class:`RunLocked` naming the holder's pid."""
    run_dir = Path(run_dir)
    make_run_dir(run_dir)
    path = run_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        pid = _read_pid(fd)
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise RunLocked(run_dir, pid) from None
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return RunLock(fd, path)


def lock_holder(run: Path) -> int | None:
    """The pid of the live process holding the run's lock, or ``None`` when it is free."""
    run = Path(run)
    run_dir = run.parent if run.suffix == ".db" else run
    path = run_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _read_pid(fd) or -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
