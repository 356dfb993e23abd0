"""The run's state file: ``state.db`` (SQLite, WAL) in the run directory.

It alone is enough to resume or retry a run: it holds the run's settings (never
the API key), every job's expanded body, state, attempts, task_id, timestamps,
last error and result file, an append-only ``events`` table (one row per
transition) and one row per ``batchgen run`` session.

Durability.  The database runs in WAL mode with ``synchronous=NORMAL`` by
default.  Every transition is its own committed transaction, written before the
runner does anything else with the job; in particular a task_id is committed the
moment the submit answer is read, before the task is polled.  A commit in WAL
mode hands the page to the operating system (``write()`` to the ``-wal`` file),
so it survives SIGKILL or any crash of the process; only a power loss or kernel
crash can drop the last few commits.  ``synchronous="FULL"`` (``StateStore``
option) fsyncs the WAL on every commit and also survives power loss, at the
price of one fsync per transition.

Concurrency.  One writer (the run holding :class:`RunLock`), any number of
readers (:meth:`StateStore.open_readonly`, e.g. ``batchgen status``) that work
while the run writes.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from batchgen.store.errors import (
    IllegalTransition,
    NoStateFile,
    RunLocked,
    StateError,
    StateVersionError,
    StateWriteError,
)
from batchgen.store.lock import LOCK_NAME, RunLock, acquire_run_lock, lock_holder
from batchgen.store.records import (
    ACTIVE_STATES,
    ALL_STATES,
    DONE,
    TERMINAL_STATES,
    TRANSITIONS,
    Event,
    JobLike,
    JobRecord,
    ResultInfo,
    SyncResult,
)
from batchgen.store.schema import (
    DB_NAME,
    SCHEMA_VERSION,
    check_version,
    connect_readonly,
    init_schema,
    make_run_dir,
    state_path,
)
from batchgen.store.spend import SpendLedger

# The store's names, importable from here as before the split into errors, records, schema,
# lock, queries and transitions.
__all__ = [
    "ACTIVE_STATES",
    "ALL_STATES",
    "DB_NAME",
    "DONE",
    "LOCK_NAME",
    "SCHEMA_VERSION",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "Event",
    "IllegalTransition",
    "JobLike",
    "JobRecord",
    "NoStateFile",
    "ResultInfo",
    "RunLock",
    "RunLocked",
    "StateError",
    "StateStore",
    "StateVersionError",
    "StateWriteError",
    "SyncResult",
    "acquire_run_lock",
    "connect_readonly",
    "lock_holder",
    "make_run_dir",
    "state_path",
]


class StateStore(SpendLedger):
    """The state file of one run directory.

    Open it with :meth:`open` (read-write, creating it if needed) or
    :meth:`open_readonly`.  Every transition method writes the job row and its
    event in one committed transaction before returning.  Reads are
    :class:`batchgen.store.queries.JobQueries`, writes
    :class:`batchgen.store.transitions.JobTransitions`, spend
    :class:`batchgen.store.spend.SpendLedger`.
    """

    @classmethod
    def open(
        cls,
        run_dir: Path,
        *,
        settings: Mapping[str, Any] | None = None,
        create: bool = True,
        synchronous: str = "NORMAL",
    ) -> StateStore:
        """Open (and with ``create`` make) ``run_dir/state.db`` for writing.

        ``settings`` are stored as the run's settings when the file is created
        (and merged over the stored ones otherwise).  Raises :class:`StateError`
        for a missing (``create=False``) or corrupt file, :class:`StateVersionError`
        for a newer schema.
        """
        if synchronous.upper() not in {"NORMAL", "FULL"}:
            raise ValueError("synchronous must be NORMAL or FULL")
        run_dir = Path(run_dir)
        path = run_dir / DB_NAME
        if not path.exists():
            if not create:
                raise NoStateFile(f"no state file at {path}")
            make_run_dir(run_dir)
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            except FileExistsError:
                pass
            else:
                os.close(fd)
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("PRAGMA cache_size = -65536")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StateError(f"cannot put {path} in WAL mode (got {mode})")
            conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            store = cls(conn, path, readonly=False)
            init_schema(conn, path, settings)
        except sqlite3.DatabaseError as exc:
            raise StateError(f"state file {path} is unreadable or corrupt: {exc}") from exc
        return store

    @classmethod
    def open_readonly(cls, run: Path) -> StateStore:
        """Open a state file (or run directory) for reading, while a run may be writing it."""
        path = state_path(run)
        try:
            conn = connect_readonly(path)
            store = cls(conn, path, readonly=True)
            check_version(conn, path)
        except sqlite3.DatabaseError as exc:
            raise StateError(f"state file {path} is unreadable or corrupt: {exc}") from exc
        return store

    def close(self) -> None:
        """Close the connection (a checkpoint folds the WAL back into the file)."""
        self._conn.close()

    @contextlib.contextmanager
    def background_checkpoints(
        self, interval: float = 0.5, backstop_pages: int = 20_000
    ) -> Iterator[None]:
        """While inside, WAL checkpoints run in a worker thread, not inside this connection's
        commits.

        A checkpoint fsyncs (WAL, then database file); SQLite's automatic one runs inside the
        commit that crosses 1,000 WAL pages, on the caller's thread (the run's event loop).
        Here the writer's automatic checkpoint is
        raised to ``backstop_pages`` (a bound on WAL growth should the worker fall behind)
        and a thread with its own connection runs ``PRAGMA wal_checkpoint(PASSIVE)`` every
        ``interval`` seconds: it never blocks the writer, and once it has copied every frame
        the next commit starts the WAL from its beginning again.  Durability is unchanged:
        each commit is still in the WAL (``write()``) before the call returns.
        """
        if self.readonly:
            yield
            return
        stop = threading.Event()
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 5000")

        def work() -> None:
            while not stop.wait(interval):
                # A failed checkpoint (I/O error, busy) is retried next time; the writer's
                # backstop still bounds the WAL.
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

        self._conn.execute(f"PRAGMA wal_autocheckpoint = {int(backstop_pages)}")
        thread = threading.Thread(target=work, name="batchgen-wal-checkpoint", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            conn.close()
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("PRAGMA wal_autocheckpoint = 1000")

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
