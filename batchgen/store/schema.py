"""The state file on disk: its SQL schema and version check, where it lives in a run
directory, how it is connected to, and the write transaction every change runs in."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from batchgen.store.errors import NoStateFile, StateError, StateVersionError, StateWriteError

__all__ = [
    "DB_NAME",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "VARS_UNKNOWN",
    "Transaction",
    "check_version",
    "connect_readonly",
    "has_vars_column",
    "init_schema",
    "make_run_dir",
    "state_path",
]

#: The layout version this batchgen writes.  An older file is migrated on open for writing
#: (:data:`MIGRATIONS`); a newer one is refused.
SCHEMA_VERSION = 4
DB_NAME = "state.db"

#: Version 3: one row per submission the provider may bill (accepted, or outcome unknown),
#: with the estimated price in force when it was sent (:mod:`batchgen.store.spend`).
SPEND_SQL = """
CREATE TABLE IF NOT EXISTS submissions (
    id      INTEGER PRIMARY KEY,
    job_id  TEXT NOT NULL,
    model   TEXT NOT NULL,
    at      REAL NOT NULL,
    outcome TEXT NOT NULL,
    task_id TEXT,
    usd     REAL,
    images  INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS submissions_job ON submissions(job_id);
"""


SCHEMA_SQL = """
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
    created_at   REAL NOT NULL,
    vars         TEXT
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
CREATE TABLE IF NOT EXISTS images (
    job_id      TEXT NOT NULL,
    idx         INTEGER NOT NULL,
    task_id     TEXT,
    url         TEXT,
    path        TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    bytes       INTEGER NOT NULL,
    width       INTEGER,
    height      INTEGER,
    format      TEXT NOT NULL,
    state       TEXT NOT NULL DEFAULT 'done',
    recorded_at REAL NOT NULL,
    PRIMARY KEY (job_id, idx)
);
CREATE TABLE IF NOT EXISTS sessions (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    pid        INTEGER NOT NULL,
    started_at REAL NOT NULL,
    ended_at   REAL,
    exit_code  INTEGER,
    summary    TEXT
);
"""


def _migrate_images(c: sqlite3.Connection) -> None:
    """Version 2: one ``images`` row per durable image.  A version-1 file recorded one image
    per done job in the job row itself: copy it as that job's image 0."""
    c.execute(
        "INSERT OR IGNORE INTO images(job_id, idx, task_id, url, path, sha256, bytes, width,"
        " height, format, state, recorded_at)"
        " SELECT job_id, 0, task_id, NULL, result_path, sha256, bytes, width, height, format,"
        " 'done', COALESCE(finished_at, updated_at) FROM jobs"
        " WHERE state = 'done' AND result_path IS NOT NULL AND sha256 IS NOT NULL"
    )


#: A meta key present while some jobs' variables are unknown (a file from before version 4):
#: the next sync with the manifest fills them in, then removes it.
VARS_UNKNOWN = "vars_unknown"


def has_vars_column(c: sqlite3.Connection) -> bool:
    """Whether the ``jobs`` table has the ``vars`` column (version 4 and later)."""
    return any(row[1] == "vars" for row in c.execute("PRAGMA table_info(jobs)"))


def _migrate_vars(c: sqlite3.Connection) -> None:
    """Version 4: each job's template variables (JSON, ``NULL`` when it has none), unknown
    (``NULL``) for the jobs already in the file until a sync with the manifest fills them."""
    if not has_vars_column(c):
        c.execute("ALTER TABLE jobs ADD COLUMN vars TEXT")
    if c.execute("SELECT 1 FROM jobs LIMIT 1").fetchone() is not None:
        c.execute(f"INSERT OR REPLACE INTO meta(key, value) VALUES ('{VARS_UNKNOWN}', '1')")


#: ``MIGRATIONS[v]`` brings a file of version ``v - 1`` to ``v``, after the tables of
#: :data:`SCHEMA_SQL` exist; each one is self-contained and idempotent, and they run in
#: version order inside the transaction that opens the file.
#: Version 3 added the ``submissions`` table only (:data:`SPEND_SQL`, created with the others).
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    2: _migrate_images,
    4: _migrate_vars,
}


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


def connect_readonly(path: Path) -> sqlite3.Connection:
    """A read-only (``mode=ro`` URI) connection to the state file ``path``, which a run may be
    writing at the same time.

    Raises :class:`NoStateFile` when there is no such file; :class:`sqlite3.DatabaseError`
    passes through for the caller to word.
    """
    if not path.exists():
        raise NoStateFile(f"no state file at {path}")
    conn = sqlite3.connect(
        f"{path.resolve().as_uri()}?mode=ro",
        uri=True,
        isolation_level=None,
        check_same_thread=False,
    )
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


class Transaction:
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


def init_schema(conn: sqlite3.Connection, path: Path, settings: Mapping[str, Any] | None) -> None:
    """Create the tables (or check the stored schema version) and store ``settings``, merged
    over the stored ones, in one transaction."""
    c = conn
    c.execute("BEGIN IMMEDIATE")
    try:
        has_meta = c.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
        ).fetchone()
        stored_version = check_version(conn, path) if has_meta else SCHEMA_VERSION
        _execute_script(c, SCHEMA_SQL)
        _execute_script(c, SPEND_SQL)
        for version in sorted(MIGRATIONS):
            if stored_version < version <= SCHEMA_VERSION:
                MIGRATIONS[version](c)
        now = time.time()
        c.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
            (str(max(stored_version, SCHEMA_VERSION)),),
        )
        c.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('created_at', ?)", (str(now),))
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


def _execute_script(c: sqlite3.Connection, script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            c.execute(statement)


def check_version(conn: sqlite3.Connection, path: Path) -> int:
    """Raise :class:`StateError` unless ``conn`` is a state file this batchgen can read;
    return its schema version (older ones are migrated when opened for writing)."""
    try:
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    except sqlite3.DatabaseError as exc:
        raise StateError(f"{path} is not a batchgen state file: {exc}") from exc
    if row is None:
        raise StateError(f"{path} is not a batchgen state file (no schema version)")
    version = int(row[0])
    if version > SCHEMA_VERSION:
        raise StateVersionError(
            f"state file {path} has schema version {version}, newer than this "
            f"batchgen understands ({SCHEMA_VERSION}); upgrade batchgen to use it"
        )
    return version
