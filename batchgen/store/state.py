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
import dataclasses
import errno
import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

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

SCHEMA_VERSION = 1
DB_NAME = "state.db"
LOCK_NAME = "run.lock"

PENDING = "pending"
SUBMITTING = "submitting"
RUNNING = "running"
DOWNLOADING = "downloading"
DONE = "done"
REJECTED = "rejected"
FAILED = "failed"
EXPIRED = "expired"

ALL_STATES: tuple[str, ...] = (
    PENDING,
    SUBMITTING,
    RUNNING,
    DOWNLOADING,
    DONE,
    REJECTED,
    FAILED,
    EXPIRED,
)
TERMINAL_STATES = frozenset({DONE, REJECTED, FAILED, EXPIRED})
#: States of a job that has a task_id: the task exists remotely and is polled, never resubmitted.
ACTIVE_STATES = frozenset({RUNNING, DOWNLOADING})

#: Legal transitions: ``TRANSITIONS[from_state]`` is the set of states a job may move to.
#: A failed/rejected/expired job goes back to ``pending`` only through :meth:`StateStore.reset`
#: (``batchgen retry``); ``done`` is final.
TRANSITIONS: dict[str, frozenset[str]] = {
    PENDING: frozenset({SUBMITTING, FAILED}),
    SUBMITTING: frozenset({RUNNING, PENDING, REJECTED, FAILED}),
    RUNNING: frozenset({DOWNLOADING, PENDING, FAILED}),
    DOWNLOADING: frozenset({DONE, PENDING, EXPIRED, FAILED}),
    DONE: frozenset(),
    REJECTED: frozenset({PENDING}),
    FAILED: frozenset({PENDING}),
    EXPIRED: frozenset({PENDING}),
}
_FROM: dict[str, tuple[str, ...]] = {
    to: tuple(src for src, dests in TRANSITIONS.items() if to in dests) for to in ALL_STATES
}

_JOB_COLUMNS = (
    "job_id",
    "model",
    "body",
    "repeat_index",
    "grp",
    "state",
    "attempts",
    "task_id",
    "poll_url",
    "submitted_at",
    "finished_at",
    "updated_at",
    "last_error",
    "result_path",
    "sha256",
    "width",
    "height",
    "bytes",
    "format",
    "active",
    "created_at",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    job_id       TEXT PRIMARY KEY,
    model        TEXT NOT NULL,
    body         TEXT NOT NULL,
    repeat_index INTEGER NOT NULL,
    grp          TEXT NOT NULL,
    state        TEXT NOT NULL DEFAULT 'pending',
    attempts     INTEGER NOT NULL DEFAULT 0,
    task_id      TEXT,
    poll_url     TEXT,
    submitted_at REAL,
    finished_at  REAL,
    updated_at   REAL NOT NULL,
    last_error   TEXT,
    result_path  TEXT,
    sha256       TEXT,
    width        INTEGER,
    height       INTEGER,
    bytes        INTEGER,
    format       TEXT,
    active       INTEGER NOT NULL DEFAULT 1,
    created_at   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS events (
    id         INTEGER PRIMARY KEY,
    job_id     TEXT NOT NULL,
    at         REAL NOT NULL,
    from_state TEXT,
    to_state   TEXT NOT NULL,
    detail     TEXT
);
CREATE INDEX IF NOT EXISTS events_job ON events(job_id);
CREATE TABLE IF NOT EXISTS sessions (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    pid        INTEGER NOT NULL,
    started_at REAL NOT NULL,
    ended_at   REAL,
    exit_code  INTEGER,
    summary    TEXT
);
"""


class StateError(Exception):
    """The state file cannot be used (missing, corrupt, unreadable); the message says why."""


class StateWriteError(StateError):
    """A transaction could not be committed (disk full, I/O error...); nothing was written."""


class StateVersionError(StateError):
    """The state file was written by a newer batchgen with a schema this one cannot read."""


class IllegalTransition(StateError):
    """A job was asked to move to a state that is not reachable from its current one."""


class RunLocked(StateError):
    """Another process holds the run directory's lock."""

    def __init__(self, run_dir: Path, pid: int | None) -> None:
        who = f"process {pid}" if pid is not None else "another process"
        super().__init__(
            f"run directory {run_dir} is locked by {who} (a run is in progress); "
            "wait for it to finish or stop it first"
        )
        self.run_dir = run_dir
        self.pid = pid


class JobLike(Protocol):
    """What :meth:`StateStore.add_jobs` needs from a job (``batchgen.manifest.types.Job`` fits)."""

    @property
    def job_id(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def body(self) -> Mapping[str, Any]: ...
    @property
    def repeat_index(self) -> int: ...
    @property
    def group(self) -> str: ...


@dataclass(frozen=True)
class JobRecord:
    """One row of the ``jobs`` table."""

    job_id: str
    model: str
    body: dict[str, Any]
    repeat_index: int
    group: str
    state: str
    attempts: int
    task_id: str | None
    poll_url: str | None
    submitted_at: float | None
    finished_at: float | None
    updated_at: float
    last_error: str | None
    result_path: str | None
    sha256: str | None
    width: int | None
    height: int | None
    bytes: int | None
    format: str | None
    active: bool
    created_at: float


@dataclass(frozen=True)
class Event:
    """One row of the append-only ``events`` table."""

    id: int
    job_id: str
    at: float
    from_state: str | None
    to_state: str
    detail: str | None


@dataclass(frozen=True)
class ResultInfo:
    """What a finished download recorded (relative ``result_path`` like ``images/<id>.png``)."""

    result_path: str
    sha256: str
    bytes: int
    format: str
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class SyncResult:
    """What :meth:`StateStore.sync_jobs` changed."""

    added: int  #: jobs new to the file
    reactivated: int  #: inactive jobs back in the manifest
    orphaned: int  #: jobs that left the manifest now
    inactive: int  #: every job not in the manifest (left as it is)
    total: int  #: every job in the file


def state_path(run: Path) -> Path:
    """The state file of ``run`` (a run directory or the state file itself)."""
    run = Path(run)
    return run if run.suffix == ".db" or run.is_file() else run / DB_NAME


def make_run_dir(run_dir: Path) -> Path:
    """Create ``run_dir`` (and ``images/``) with owner-only permissions if it does not exist."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        run_dir.mkdir(mode=0o700, parents=True)
        os.chmod(run_dir, 0o700)  # mkdir's mode is filtered by the umask
    elif not run_dir.is_dir():
        raise StateError(f"{run_dir} exists and is not a directory")
    images = run_dir / "images"
    if not images.exists():
        images.mkdir(mode=0o700)
    return run_dir


def _row_to_record(row: Sequence[Any]) -> JobRecord:
    return JobRecord(
        job_id=row[0],
        model=row[1],
        body=json.loads(row[2]),
        repeat_index=row[3],
        group=row[4],
        state=row[5],
        attempts=row[6],
        task_id=row[7],
        poll_url=row[8],
        submitted_at=row[9],
        finished_at=row[10],
        updated_at=row[11],
        last_error=row[12],
        result_path=row[13],
        sha256=row[14],
        width=row[15],
        height=row[16],
        bytes=row[17],
        format=row[18],
        active=bool(row[19]),
        created_at=row[20],
    )


_SELECT = f"SELECT {', '.join(_JOB_COLUMNS)} FROM jobs"
# What a transition reads first: (state, attempts), or with full=True the whole row.
_SELECT_FOR_MOVE = {
    False: "SELECT state, attempts FROM jobs WHERE job_id = ?",
    True: f"{_SELECT} WHERE job_id = ?",
}
_SELECT_ROWID = f"SELECT {', '.join(_JOB_COLUMNS)}, rowid FROM jobs"
_INSERT_JOB = (
    "INSERT OR IGNORE INTO jobs(job_id, model, body, repeat_index, grp, updated_at, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def connect_readonly(path: Path) -> sqlite3.Connection:
    """A read-only (``mode=ro`` URI) connection to the state file ``path``, which a run may be
    writing at the same time.

    Raises :class:`StateError` when there is no such file; :class:`sqlite3.DatabaseError`
    passes through for the caller to word.
    """
    if not path.exists():
        raise StateError(f"no state file at {path}")
    conn = sqlite3.connect(
        f"{path.resolve().as_uri()}?mode=ro",
        uri=True,
        isolation_level=None,
        check_same_thread=False,
    )
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


class _Transaction:
    """``with store._tx() as c:`` runs the block in ``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled
    back when it raises.  A database error other than an integrity error (disk full, file-size
    limit, I/O error, a file damaged under us) becomes :class:`StateWriteError`: the transaction
    did not happen, and the caller stops the run cleanly.  A class rather than a generator-based
    context manager: it is entered for every transition of every job."""

    __slots__ = ("_conn", "_path")

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self._path = path

    def __enter__(self) -> sqlite3.Connection:
        self._execute("BEGIN IMMEDIATE")
        return self._conn

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if exc is None:
            self._execute("COMMIT")
            return
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.IntegrityError):
            raise self._failed(exc) from exc

    def _execute(self, sql: str) -> None:
        try:
            self._conn.execute(sql)
        except sqlite3.IntegrityError:
            raise
        except sqlite3.DatabaseError as exc:
            raise self._failed(exc) from exc

    def _failed(self, exc: sqlite3.DatabaseError) -> StateWriteError:
        with contextlib.suppress(sqlite3.Error):
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        return StateWriteError(f"cannot write the state file {self._path}: {exc}")


class StateStore:
    """The state file of one run directory.

    Open it with :meth:`open` (read-write, creating it if needed) or
    :meth:`open_readonly`.  Every transition method writes the job row and its
    event in one committed transaction before returning.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path, *, readonly: bool) -> None:
        self._conn = conn
        self.path = path
        self.readonly = readonly

    # ------------------------------------------------------------------ opening
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
                raise StateError(f"no state file at {path}")
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
            store._init_schema(settings)
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
            store._check_version()
        except sqlite3.DatabaseError as exc:
            raise StateError(f"state file {path} is unreadable or corrupt: {exc}") from exc
        return store

    def _init_schema(self, settings: Mapping[str, Any] | None) -> None:
        c = self._conn
        c.execute("BEGIN IMMEDIATE")
        try:
            has_meta = c.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
            ).fetchone()
            if has_meta:
                self._check_version()
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    c.execute(statement)
            now = time.time()
            c.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            c.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('created_at', ?)", (str(now),)
            )
            row = c.execute("SELECT value FROM meta WHERE key='settings'").fetchone()
            stored = json.loads(row[0]) if row else {}
            if settings is not None or not row:
                merged = {**stored, **(dict(settings) if settings else {})}
                merged.setdefault("created_at", now)
                c.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES ('settings', ?)",
                    (json.dumps(merged, sort_keys=True),),
                )
            c.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                c.execute("ROLLBACK")
            raise

    def _check_version(self) -> None:
        try:
            row = self._conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.OperationalError as exc:
            raise StateError(f"{self.path} is not a batchgen state file: {exc}") from exc
        if row is None:
            raise StateError(f"{self.path} is not a batchgen state file (no schema version)")
        version = int(row[0])
        if version > SCHEMA_VERSION:
            raise StateVersionError(
                f"state file {self.path} has schema version {version}, newer than this "
                f"batchgen understands ({SCHEMA_VERSION}); upgrade batchgen to use it"
            )

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
        commit that crosses 1,000 WAL pages, on the caller's thread (the run's event loop),
        and held such a commit for up to 250 ms.  Here the writer's automatic checkpoint is
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

    def _tx(self) -> _Transaction:
        if self.readonly:
            raise StateError("state file opened read-only")
        return _Transaction(self._conn, self.path)

    # ---------------------------------------------------------------- settings
    def settings(self) -> dict[str, Any]:
        """The run's settings as stored (manifest path, model(s), limits, base URL, ...)."""
        row = self._conn.execute("SELECT value FROM meta WHERE key='settings'").fetchone()
        value: dict[str, Any] = json.loads(row[0]) if row else {}
        return value

    def update_settings(self, changes: Mapping[str, Any]) -> None:
        """Merge ``changes`` into the stored settings."""
        with self._tx() as c:
            merged = {**self.settings(), **changes}
            c.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('settings', ?)",
                (json.dumps(merged, sort_keys=True),),
            )

    # -------------------------------------------------------------------- jobs
    def add_jobs(self, jobs: Iterable[JobLike]) -> int:
        """Insert jobs not yet in the file (one transaction); returns how many were added."""
        now = time.time()
        rows = (
            (
                j.job_id,
                j.model,
                json.dumps(j.body, sort_keys=True, separators=(",", ":"), ensure_ascii=False),
                j.repeat_index,
                j.group,
                now,
                now,
            )
            for j in jobs
        )
        with self._tx() as c:
            before = c.total_changes
            c.executemany(_INSERT_JOB, rows)
            return c.total_changes - before

    def sync_jobs(self, jobs: Iterable[JobLike]) -> SyncResult:
        """Make the file match a manifest's jobs without touching any job's progress.

        New jobs are added; jobs in the file but not in ``jobs`` are marked
        inactive (left as they are: never deleted, not submitted by this run; a
        task they already started is still finished); inactive jobs that are back
        in the manifest become active again.  One transaction.
        """
        now = time.time()
        known: dict[str, int] = dict(self._conn.execute("SELECT job_id, active FROM jobs"))
        seen: set[str] = set()
        dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode

        def new_rows() -> Iterator[tuple[Any, ...]]:
            for j in jobs:
                job_id = j.job_id
                seen.add(job_id)
                if job_id in known:
                    continue
                known[job_id] = 1
                yield (job_id, j.model, dumps(j.body), j.repeat_index, j.group, now, now)

        with self._tx() as c:
            before = c.total_changes
            c.executemany(_INSERT_JOB, new_rows())
            added = c.total_changes - before
            back = [(i,) for i, active in known.items() if not active and i in seen]
            gone = [(i,) for i, active in known.items() if active and i not in seen]
            c.executemany("UPDATE jobs SET active = 1 WHERE job_id = ?", back)
            c.executemany("UPDATE jobs SET active = 0 WHERE job_id = ?", gone)
        inactive = sum(1 for i in known if i not in seen)
        return SyncResult(
            added=added,
            reactivated=len(back),
            orphaned=len(gone),
            inactive=inactive,
            total=len(known),
        )

    def get(self, job_id: str) -> JobRecord:
        """The job ``job_id``; ``KeyError`` if it is not in the file."""
        row = self._conn.execute(f"{_SELECT} WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise KeyError(job_id)
        return _row_to_record(row)

    def iter_jobs(
        self, states: Iterable[str] | None = None, *, batch: int = 1000
    ) -> Iterator[JobRecord]:
        """Every job (optionally only those in ``states``), in insertion order, read in pages."""
        wanted = tuple(states) if states is not None else None
        last = 0
        while True:
            if wanted is None:
                sql = f"{_SELECT_ROWID} WHERE rowid > ? ORDER BY rowid LIMIT ?"
                args: tuple[Any, ...] = (last, batch)
            else:
                marks = ",".join("?" * len(wanted))
                sql = (
                    f"{_SELECT_ROWID} WHERE state IN ({marks}) AND rowid > ? ORDER BY rowid LIMIT ?"
                )
                args = (*wanted, last, batch)
            rows = self._conn.execute(sql, args).fetchall()
            if not rows:
                return
            for row in rows:
                yield _row_to_record(row[:-1])
            last = rows[-1][-1]
            if len(rows) < batch:
                return

    def pending_page(self, after: int, limit: int) -> list[tuple[int, JobRecord]]:
        """Up to ``limit`` active pending jobs with rowid > ``after``: ``(rowid, job)`` pairs."""
        rows = self._conn.execute(
            f"{_SELECT_ROWID} WHERE state = 'pending' AND rowid > ? ORDER BY rowid LIMIT ?",
            (after, limit),
        ).fetchall()
        return [(row[-1], _row_to_record(row[:-1])) for row in rows if row[19]]

    def counts(self) -> dict[str, int]:
        """Number of jobs per state (every state present, zeros included)."""
        out = dict.fromkeys(ALL_STATES, 0)
        for state, n in self._conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
            out[state] = n
        return out

    def count_inactive(self) -> dict[str, int]:
        """Number of inactive (not in the current manifest) jobs per state."""
        out: dict[str, int] = {}
        for state, n in self._conn.execute(
            "SELECT state, COUNT(*) FROM jobs WHERE active = 0 GROUP BY state"
        ):
            out[state] = n
        return out

    def done_result_paths(self) -> set[str]:
        """The result files (``images/<id>.<ext>``) of every done job."""
        return {
            r[0]
            for r in self._conn.execute(
                "SELECT result_path FROM jobs WHERE state = 'done' AND result_path IS NOT NULL"
            )
        }

    def job_ids(self) -> set[str]:
        """Every job ID in the file."""
        return {r[0] for r in self._conn.execute("SELECT job_id FROM jobs")}

    def events(self, job_id: str | None = None) -> list[Event]:
        """Events in order (all of them, or one job's)."""
        sql = "SELECT id, job_id, at, from_state, to_state, detail FROM events"
        args: tuple[Any, ...] = ()
        if job_id is not None:
            sql += " WHERE job_id = ?"
            args = (job_id,)
        return [Event(*row) for row in self._conn.execute(sql + " ORDER BY id", args)]

    # ------------------------------------------------------------- transitions
    def _move(
        self,
        job_id: str,
        to_state: str,
        detail: str | None,
        sets: Mapping[str, Any] | None = None,
        attempts_delta: int = 0,
    ) -> int:
        """Move one job and append its event in one transaction; returns its attempts."""
        return self._move_job(job_id, to_state, detail, sets, attempts_delta, full=False)[0]

    def _move_job(
        self,
        job_id: str,
        to_state: str,
        detail: str | None,
        sets: Mapping[str, Any] | None,
        attempts_delta: int,
        *,
        full: bool,
    ) -> tuple[int, JobRecord | None]:
        """:meth:`_move`; with ``full`` also the job's row as it is after the move."""
        allowed = _FROM[to_state]
        now = time.time()
        with self._tx() as c:
            row = c.execute(_SELECT_FOR_MOVE[full], (job_id,)).fetchone()
            if row is None:
                raise KeyError(job_id)
            from_state, attempts = (row[5], row[6]) if full else row
            if from_state not in allowed:
                raise IllegalTransition(f"job {job_id}: {from_state} -> {to_state} is not allowed")
            attempts = max(attempts + attempts_delta, 0)
            fields = {"state": to_state, "updated_at": now, "attempts": attempts, **(sets or {})}
            assign = ", ".join(f"{k} = ?" for k in fields)
            c.execute(f"UPDATE jobs SET {assign} WHERE job_id = ?", (*fields.values(), job_id))
            c.execute(
                "INSERT INTO events(job_id, at, from_state, to_state, detail)"
                " VALUES (?, ?, ?, ?, ?)",
                (job_id, now, from_state, to_state, detail),
            )
        if not full:
            return int(attempts), None
        return int(attempts), dataclasses.replace(_row_to_record(row), **fields)

    def mark_submitting(self, job_id: str) -> int:
        """pending → submitting (committed before the request is sent); counts an attempt."""
        return self._move(
            job_id,
            SUBMITTING,
            None,
            {"task_id": None, "poll_url": None, "submitted_at": time.time()},
            attempts_delta=1,
        )

    def mark_running(self, job_id: str, task_id: str, poll_url: str | None) -> int:
        """submitting → running: records the task_id, committed before the task is used."""
        return self._move(
            job_id,
            RUNNING,
            f"task_id={task_id}",
            {"task_id": task_id, "poll_url": poll_url, "last_error": None},
        )

    def mark_downloading(self, job_id: str, detail: str | None = None) -> int:
        """running → downloading: the task succeeded."""
        return self._move(job_id, DOWNLOADING, detail)

    def mark_done(self, job_id: str, result: ResultInfo) -> JobRecord:
        """downloading → done with the checked file's facts; returns the job as recorded."""
        _, job = self._move_job(
            job_id,
            DONE,
            result.result_path,
            {
                "finished_at": time.time(),
                "result_path": result.result_path,
                "sha256": result.sha256,
                "bytes": result.bytes,
                "format": result.format,
                "width": result.width,
                "height": result.height,
                "last_error": None,
            },
            0,
            full=True,
        )
        return cast(JobRecord, job)  # full=True: never None

    def mark_pending(self, job_id: str, reason: str, *, refund_attempt: bool = False) -> int:
        """Back to pending for another attempt (clears the task); ``refund_attempt`` when the
        submit certainly created nothing (429, refused connection) so it does not count."""
        return self._move(
            job_id,
            PENDING,
            reason,
            {"task_id": None, "poll_url": None, "last_error": reason},
            attempts_delta=-1 if refund_attempt else 0,
        )

    def mark_failed(self, job_id: str, reason: str) -> int:
        """→ failed (retries exhausted, timeout, stop): terminal."""
        return self._move(
            job_id, FAILED, reason, {"last_error": reason, "finished_at": time.time()}
        )

    def mark_rejected(self, job_id: str, reason: str) -> int:
        """submitting → rejected (400 from the provider): terminal, never retried."""
        return self._move(
            job_id, REJECTED, reason, {"last_error": reason, "finished_at": time.time()}
        )

    def mark_expired(self, job_id: str, reason: str) -> int:
        """downloading → expired (result URL gone, no attempts left): terminal."""
        return self._move(
            job_id, EXPIRED, reason, {"last_error": reason, "finished_at": time.time()}
        )

    def reset(self, job_ids: Iterable[str], *, reason: str = "reset for retry") -> int:
        """Terminal failed/rejected/expired jobs → pending with attempts 0 (``batchgen retry``);
        also makes them active.  Returns how many moved."""
        n = 0
        now = time.time()
        with self._tx() as c:
            for job_id in job_ids:
                row = c.execute("SELECT state FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
                if row is None or row[0] not in (FAILED, REJECTED, EXPIRED):
                    continue
                c.execute(
                    "UPDATE jobs SET state='pending', attempts=0, task_id=NULL, poll_url=NULL,"
                    " finished_at=NULL, active=1, updated_at=? WHERE job_id = ?",
                    (now, job_id),
                )
                c.execute(
                    "INSERT INTO events(job_id, at, from_state, to_state, detail)"
                    " VALUES (?, ?, ?, 'pending', ?)",
                    (job_id, now, row[0], reason),
                )
                n += 1
        return n

    def update_body(self, job_id: str, body: Mapping[str, Any]) -> None:
        """Replace a job's body (``retry --set``); the job ID stays the same."""
        with self._tx() as c:
            c.execute(
                "UPDATE jobs SET body = ?, updated_at = ? WHERE job_id = ?",
                (json.dumps(body, sort_keys=True, ensure_ascii=False), time.time(), job_id),
            )

    def recover_submitting(self, *, resubmit: bool) -> list[str]:
        """Jobs a crash left in ``submitting`` (the task may exist remotely): back to pending
        (``resubmit``) or failed.  Returns their IDs."""
        ids = [
            r[0] for r in self._conn.execute("SELECT job_id FROM jobs WHERE state = 'submitting'")
        ]
        reason = "interrupted during submit: the task may exist remotely"
        for job_id in ids:
            if resubmit:
                self._move(
                    job_id,
                    PENDING,
                    reason + "; submitting again",
                    {"task_id": None, "poll_url": None, "last_error": reason},
                )
            else:
                self._move(
                    job_id,
                    FAILED,
                    reason + " (resubmit_unknown is false)",
                    {"last_error": reason, "finished_at": time.time()},
                )
        return ids

    # ---------------------------------------------------------------- sessions
    def begin_session(self) -> int:
        """Record the start of a ``run`` session; returns its id."""
        with self._tx() as c:
            cur = c.execute(
                "INSERT INTO sessions(pid, started_at) VALUES (?, ?)", (os.getpid(), time.time())
            )
            return int(cur.lastrowid or 0)

    def end_session(self, session_id: int, exit_code: int, summary: Mapping[str, Any]) -> None:
        """Record the end of a session with its exit code and summary."""
        with self._tx() as c:
            c.execute(
                "UPDATE sessions SET ended_at = ?, exit_code = ?, summary = ? WHERE id = ?",
                (time.time(), exit_code, json.dumps(summary, sort_keys=True), session_id),
            )

    def sessions(self) -> list[dict[str, Any]]:
        """Every session: id, pid, started_at, ended_at, exit_code, summary (dict or None)."""
        out = []
        for sid, pid, started, ended, code, summary in self._conn.execute(
            "SELECT id, pid, started_at, ended_at, exit_code, summary FROM sessions ORDER BY id"
        ):
            out.append(
                {
                    "id": sid,
                    "pid": pid,
                    "started_at": started,
                    "ended_at": ended,
                    "exit_code": code,
                    "summary": json.loads(summary) if summary else None,
                }
            )
        return out


# -------------------------------------------------------------------- locking
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
