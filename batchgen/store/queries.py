"""Reading the state file: settings, jobs, counts, events and sessions (no writes here)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from batchgen.store.errors import StateError
from batchgen.store.records import (
    ALL_STATES,
    SELECT_IMAGES,
    Event,
    ImageRecord,
    JobRecord,
    job_selects,
    row_to_record,
)
from batchgen.store.schema import Transaction, has_vars_column

__all__ = ["JobQueries", "has_images_table", "image_counts", "legacy_image"]


def has_images_table(conn: sqlite3.Connection) -> bool:
    """Whether the file has the ``images`` table (a read-only view of a version-1 file, not
    migrated yet, has not: its done jobs' rows hold their one image)."""
    found = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'images'"
    ).fetchone()
    return found is not None


def image_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Recorded images: ``done`` (of done jobs) and ``partial`` (durable images of jobs not
    done: a multi-image job interrupted between downloads, or one that failed after some of
    its images)."""
    if not has_images_table(conn):
        n = conn.execute(
            "SELECT COUNT(*) FROM jobs WHERE state = 'done' AND result_path IS NOT NULL"
        ).fetchone()[0]
        return {"done": int(n), "partial": 0}
    out = {"done": 0, "partial": 0}
    for done, n in conn.execute(
        "SELECT j.state = 'done', COUNT(*) FROM images i JOIN jobs j USING (job_id)"
        " GROUP BY j.state = 'done'"
    ):
        out["done" if done else "partial"] += int(n)
    return out


def legacy_image(job: JobRecord) -> ImageRecord | None:
    """The one image a done job's own row records (version-1 files), else ``None``."""
    if job.state != "done" or not job.result_path or not job.sha256:
        return None
    return ImageRecord(
        job_id=job.job_id,
        index=0,
        task_id=job.task_id,
        url=None,
        path=job.result_path,
        sha256=job.sha256,
        bytes=job.bytes or 0,
        width=job.width,
        height=job.height,
        format=job.format or "",
        state="done",
        recorded_at=job.finished_at or job.updated_at,
    )


class JobQueries:
    """The read side of :class:`batchgen.store.state.StateStore`: every method only reads."""

    def __init__(self, conn: sqlite3.Connection, path: Path, *, readonly: bool) -> None:
        self._conn = conn
        self.path = path
        self.readonly = readonly
        self._selects: tuple[str, str] | None = None

    def _job_sql(self) -> tuple[str, str]:
        """The job row's SELECT without and with rowid, for this file's columns (looked up on
        first use: a writer's file is migrated by then; a read-only view of an old file reads
        its jobs without variables)."""
        if self._selects is None:
            self._selects = job_selects(has_vars_column(self._conn))
        return self._selects

    def _tx(self) -> Transaction:
        if self.readonly:
            raise StateError("state file opened read-only")
        return Transaction(self._conn, self.path)

    def settings(self) -> dict[str, Any]:
        """The run's settings as stored (manifest path, model(s), limits, base URL, ...)."""
        row = self._conn.execute("SELECT value FROM meta WHERE key='settings'").fetchone()
        value: dict[str, Any] = json.loads(row[0]) if row else {}
        return value

    def get(self, job_id: str) -> JobRecord:
        """The job ``job_id``; ``KeyError`` if it is not in the file."""
        row = self._conn.execute(f"{self._job_sql()[0]} WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise KeyError(job_id)
        return row_to_record(row)

    def iter_jobs(
        self, states: Iterable[str] | None = None, *, batch: int = 1000
    ) -> Iterator[JobRecord]:
        """Every job (optionally only those in ``states``), in insertion order, read in pages."""
        wanted = tuple(states) if states is not None else None
        select_rowid = self._job_sql()[1]
        last = 0
        while True:
            if wanted is None:
                sql = f"{select_rowid} WHERE rowid > ? ORDER BY rowid LIMIT ?"
                args: tuple[Any, ...] = (last, batch)
            else:
                marks = ",".join("?" * len(wanted))
                sql = (
                    f"{select_rowid} WHERE state IN ({marks}) AND rowid > ? ORDER BY rowid LIMIT ?"
                )
                args = (*wanted, last, batch)
            rows = self._conn.execute(sql, args).fetchall()
            if not rows:
                return
            for row in rows:
                yield row_to_record(row[:-1])
            last = rows[-1][-1]
            if len(rows) < batch:
                return

    def pending_page(self, after: int, limit: int) -> list[tuple[int, JobRecord]]:
        """Up to ``limit`` active pending jobs with rowid > ``after``: ``(rowid, job)`` pairs."""
        rows = self._conn.execute(
            f"{self._job_sql()[1]} WHERE state = 'pending' AND rowid > ? ORDER BY rowid LIMIT ?",
            (after, limit),
        ).fetchall()
        return [(row[-1], row_to_record(row[:-1])) for row in rows if row[19]]

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
        """Every recorded image file (``images/<id>.<ext>``, ``images/<id>-<i>.<ext>``): the
        images of done jobs and those already durable of jobs still downloading."""
        paths = {
            r[0]
            for r in self._conn.execute(
                "SELECT result_path FROM jobs WHERE state = 'done' AND result_path IS NOT NULL"
            )
        }
        if self._has_images():
            paths.update(r[0] for r in self._conn.execute("SELECT path FROM images"))
        return paths

    def _has_images(self) -> bool:
        return has_images_table(self._conn)

    def job_images(self, job_id: str) -> list[ImageRecord]:
        """The recorded images of ``job_id``, by index (a version-1 file: its one image)."""
        if self._has_images():
            rows = self._conn.execute(
                f"{SELECT_IMAGES} WHERE job_id = ? ORDER BY idx", (job_id,)
            ).fetchall()
            return [ImageRecord(*row) for row in rows]
        job = self.get(job_id)
        return [image for image in [legacy_image(job)] if image is not None]

    def images_by_job(self) -> dict[str, list[ImageRecord]]:
        """Every recorded image, grouped by job, each job's by index (a version-1 file: each
        done job's one image).  One query, for readers that show every job's images."""
        out: dict[str, list[ImageRecord]] = {}
        if self._has_images():
            for row in self._conn.execute(f"{SELECT_IMAGES} ORDER BY job_id, idx"):
                out.setdefault(row[0], []).append(ImageRecord(*row))
            return out
        for job in self.iter_jobs(["done"]):
            image = legacy_image(job)
            if image is not None:
                out[job.job_id] = [image]
        return out

    def image_counts(self) -> dict[str, int]:
        """Recorded images (see :func:`image_counts`)."""
        return image_counts(self._conn)

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
