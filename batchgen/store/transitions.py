"""Writing the state file: jobs added and synced from a manifest, every job transition
(row and event in one committed transaction), resets for retry, settings and sessions."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, cast

from batchgen.store.errors import IllegalTransition
from batchgen.store.queries import JobQueries
from batchgen.store.records import (
    DONE,
    DOWNLOADING,
    EXPIRED,
    FAILED,
    FROM_STATES,
    INSERT_IMAGE,
    INSERT_JOB,
    PENDING,
    REJECTED,
    RUNNING,
    SELECT_FOR_MOVE,
    SUBMITTING,
    JobLike,
    JobRecord,
    ResultInfo,
    SyncResult,
    encode_variables,
    image_params,
    row_to_record,
)
from batchgen.store.schema import VARS_UNKNOWN

__all__ = ["JobTransitions"]


class JobTransitions(JobQueries):
    """The write side of :class:`batchgen.store.state.StateStore`: each method commits before it
    returns (see :class:`batchgen.store.schema.Transaction`)."""

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
                encode_variables(getattr(j, "variables", None)),
            )
            for j in jobs
        )
        with self._tx() as c:
            before = c.total_changes
            c.executemany(INSERT_JOB, rows)
            return c.total_changes - before

    def sync_jobs(self, jobs: Iterable[JobLike]) -> SyncResult:
        """Make the file match a manifest's jobs without touching any job's progress.

        New jobs are added; jobs in the file but not in ``jobs`` are marked
        inactive (left as they are: never deleted, not submitted by this run; a
        task they already started is still finished); inactive jobs that are back
        in the manifest become active again.  One transaction.

        A job's ``variables`` (when it has them: :class:`batchgen.manifest.types.Job` does)
        are recorded with it; the jobs of a file from before the state file kept variables
        get theirs from the first sync after its migration.
        """
        now = time.time()
        known: dict[str, int] = dict(self._conn.execute("SELECT job_id, active FROM jobs"))
        seen: set[str] = set()
        dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
        backfill = self._vars_unknown()
        fills: list[tuple[str, str]] = []
        last: list[Any] = [None, None]  # the last variables seen and their text (shared)

        def variables_text(j: JobLike) -> str | None:
            variables = getattr(j, "variables", None)
            if variables is not last[0]:
                last[0], last[1] = variables, encode_variables(variables)
            text: str | None = last[1]
            return text

        def new_rows() -> Iterator[tuple[Any, ...]]:
            for j in jobs:
                job_id = j.job_id
                seen.add(job_id)
                if job_id in known:
                    if backfill and (text := variables_text(j)) is not None:
                        fills.append((text, job_id))
                    continue
                known[job_id] = 1
                yield (job_id, j.model, dumps(j.body), j.repeat_index, j.group, now, now,
                       variables_text(j))  # fmt: skip

        with self._tx() as c:
            before = c.total_changes
            c.executemany(INSERT_JOB, new_rows())
            added = c.total_changes - before
            if backfill:
                c.executemany("UPDATE jobs SET vars = ? WHERE job_id = ? AND vars IS NULL", fills)
                c.execute("DELETE FROM meta WHERE key = ?", (VARS_UNKNOWN,))
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

    def _vars_unknown(self) -> bool:
        found = self._conn.execute("SELECT 1 FROM meta WHERE key = ?", (VARS_UNKNOWN,))
        return found.fetchone() is not None

    # ------------------------------------------------------------- transitions
    def _move(
        self,
        job_id: str,
        to_state: str,
        detail: str | None,
        sets: Mapping[str, Any] | None = None,
        attempts_delta: int = 0,
        *,
        also: Callable[[sqlite3.Connection], object] | None = None,
    ) -> int:
        """Move one job and append its event in one transaction (``also`` writes more in that
        transaction); returns its attempts."""
        return self._move_job(
            job_id, to_state, detail, sets, attempts_delta, full=False, also=also
        )[0]

    def _move_job(
        self,
        job_id: str,
        to_state: str,
        detail: str | None,
        sets: Mapping[str, Any] | None,
        attempts_delta: int,
        *,
        full: bool,
        also: Callable[[sqlite3.Connection], object] | None = None,
    ) -> tuple[int, JobRecord | None]:
        """:meth:`_move`; with ``full`` also the job's row as it is after the move; ``also``
        writes more rows in the same transaction."""
        allowed = FROM_STATES[to_state]
        now = time.time()
        with self._tx() as c:
            row = c.execute(SELECT_FOR_MOVE[full], (job_id,)).fetchone()
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
            if also is not None:
                also(c)
        if not full:
            return int(attempts), None
        return int(attempts), dataclasses.replace(row_to_record(row), **fields)

    def mark_submitting(self, job_id: str) -> int:
        """pending → submitting (committed before the request is sent); counts an attempt."""
        return self._move(
            job_id,
            SUBMITTING,
            None,
            {"task_id": None, "poll_url": None, "submitted_at": time.time()},
            attempts_delta=1,
        )

    def mark_running(
        self,
        job_id: str,
        task_id: str,
        poll_url: str | None,
        *,
        also: Callable[[sqlite3.Connection], object] | None = None,
    ) -> int:
        """submitting → running: records the task_id, committed before the task is used."""
        return self._move(
            job_id,
            RUNNING,
            f"task_id={task_id}",
            {"task_id": task_id, "poll_url": poll_url, "last_error": None},
            also=also,
        )

    def mark_downloading(self, job_id: str, detail: str | None = None) -> int:
        """running → downloading: the task succeeded."""
        return self._move(job_id, DOWNLOADING, detail)

    def record_image(self, job_id: str, index: int, url: str | None, result: ResultInfo) -> None:
        """Record one durable image of a job that is still downloading (its task returned
        several): a resumed run downloads only the images not recorded yet."""
        with self._tx() as c:
            c.execute(INSERT_IMAGE, image_params(job_id, index, url, result, time.time()))

    def mark_done(
        self,
        job_id: str,
        result: ResultInfo,
        *,
        image: tuple[int, str | None, ResultInfo] | None = None,
    ) -> JobRecord:
        """downloading → done; returns the job as recorded.  ``result`` (the job's first image)
        goes into the job's row; ``image`` — ``(index, url, facts)``, by default ``(0, None,
        result)`` — is recorded in the ``images`` table in the same transaction: the last image
        of the job, the others already recorded by :meth:`record_image`."""
        index, url, last = image if image is not None else (0, None, result)
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
            also=lambda c: c.execute(
                INSERT_IMAGE, image_params(job_id, index, url, last, time.time())
            ),
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
