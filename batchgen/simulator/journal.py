"""The simulator's task journal: accepted tasks kept in a SQLite file across restarts.

Opt-in persistence for :class:`batchgen.simulator.app.Simulator`. With a journal,
every accepted task is written (and committed) before its submit is answered,
and a simulator opened on the same file later knows every task it issued
before: it answers their status and serves their result files, with progress
derived from the stored submit time (wall clock) and real duration. So a
``batchgen run --simulate`` killed at any instant and resumed finds its tasks
where it left them, as it would at the real provider.

Contract:

* :meth:`TaskJournal.record` returns only once the task is committed (WAL,
  ``synchronous=NORMAL``: it survives the process being killed; not a power cut).
* :meth:`TaskJournal.load` returns every recorded task, oldest first.
* The file is created with mode 0600. Without a journal the simulator keeps
  tasks in memory only (the fast default; see ``benchmarks/bench_simulator.py``).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Any

__all__ = ["JOURNAL_NAME", "JournalError", "StoredTask", "TaskJournal"]

#: The journal's file name inside a run directory (``batchgen run --simulate``).
JOURNAL_NAME = "simulator.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id          TEXT PRIMARY KEY,
    model            TEXT NOT NULL,
    submitted_wall   REAL NOT NULL,
    processing_after REAL NOT NULL,
    ends_after       REAL NOT NULL,
    duration_ms      INTEGER NOT NULL,
    fails            INTEGER NOT NULL,
    expired_early    INTEGER NOT NULL,
    width            INTEGER NOT NULL,
    height           INTEGER NOT NULL,
    alpha            INTEGER NOT NULL,
    images           INTEGER NOT NULL,
    body_key         BLOB NOT NULL,
    price            REAL
);
"""


class JournalError(Exception):
    """The journal file cannot be opened or written (the message names the file)."""


@dataclass(frozen=True)
class StoredTask:
    """One accepted task as the journal keeps it. Times are real seconds:
    ``submitted_wall`` is Unix time; the task answers ``processing`` from
    ``processing_after`` seconds after it and ends ``ends_after`` seconds after it."""

    task_id: str
    model: str
    submitted_wall: float
    processing_after: float
    ends_after: float
    duration_ms: int
    fails: bool
    expired_early: bool
    width: int
    height: int
    alpha: bool
    images: int
    body_key: bytes
    price: float | None


_COLUMNS = [f.name for f in fields(StoredTask)]
_INSERT = (
    f"INSERT OR REPLACE INTO tasks ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _COLUMNS)})"
)
_KINDS: list[Callable[[Any], Any]] = [
    {"bool": bool, "bytes": bytes}.get(str(f.type), lambda v: v) for f in fields(StoredTask)
]
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM tasks ORDER BY submitted_wall, rowid"


class TaskJournal:
    """A SQLite file of accepted simulator tasks; one writer (the simulator's lock)."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn

    @classmethod
    def open(cls, path: Path | str) -> TaskJournal:
        """Open (or create, mode 0600) the journal at ``path``."""
        path = Path(path)
        try:
            if not path.exists():
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
            # check_same_thread=False: a served simulator answers from uvicorn's thread;
            # every use is serialised by the simulator's lock.
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(f"cannot open the simulator's task journal {path}: {exc}") from exc
        return cls(path, conn)

    def load(self) -> list[StoredTask]:
        """Every recorded task, oldest first."""
        rows = self._conn.execute(_SELECT).fetchall()
        # Columns in field order; SQLite gives 0/1 for booleans and may give a memoryview.
        return [StoredTask(*(kind(v) for kind, v in zip(_KINDS, row, strict=True))) for row in rows]

    def record(self, task: StoredTask) -> None:
        """Commit ``task`` (raises :class:`JournalError` when the file cannot be written)."""
        try:
            self._conn.execute(_INSERT, astuple(task))
        except sqlite3.Error as exc:
            raise JournalError(
                f"cannot write the simulator's task journal {self.path}: {exc}"
            ) from exc

    def close(self) -> None:
        """Close the file (idempotent)."""
        self._conn.close()
