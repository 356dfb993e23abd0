"""Which job the runner submits next: pending jobs read from the state file in pages, and
jobs waiting out a retry backoff.

The state file is read lazily, ``page_size`` jobs at a time, so memory stays small and the
first submission comes at once however many jobs the file holds.  A job due for a retry
comes before the next pending one; a job is never handed out twice while it waits.
"""

from __future__ import annotations

import heapq
import time

from batchgen.store.queries import JobQueries
from batchgen.store.records import JobRecord

__all__ = ["JobSource"]


class JobSource:
    """Pending jobs of one state file, in insertion order, with retries due first."""

    __slots__ = (
        "_after",
        "_buffer",
        "_exhausted",
        "_page_size",
        "_retry",
        "_scheduled",
        "_seq",
        "_store",
    )

    def __init__(self, store: JobQueries, page_size: int) -> None:
        self._store = store
        self._page_size = page_size
        self._retry: list[tuple[float, int, str]] = []  # (ready_at monotonic, seq, job_id)
        self._scheduled: set[str] = set()  # job_ids retried: in self._retry or taken from it
        self._seq = 0
        self._buffer: list[JobRecord] = []
        self._after = 0
        self._exhausted = False

    def schedule(self, job_id: str, delay: float) -> None:
        """Hand ``job_id`` (pending again) out after ``delay`` seconds."""
        self._seq += 1
        heapq.heappush(self._retry, (time.monotonic() + delay, self._seq, job_id))
        self._scheduled.add(job_id)

    def taken(self, job_id: str) -> None:
        """``job_id`` is being submitted: the pages may hand it out again once it is pending."""
        self._scheduled.discard(job_id)

    def put_back(self, job: JobRecord) -> None:
        """A job handed out but not submitted: it comes next."""
        self._buffer.append(job)

    def next(self) -> JobRecord | float | None:
        """A job ready to submit, or the seconds until a retry is ready, or ``None``."""
        now = time.monotonic()
        if self._retry and self._retry[0][0] <= now:
            _, _, job_id = heapq.heappop(self._retry)
            return self._store.get(job_id)  # stays in _scheduled until it is `submitting`
        if not self._buffer and not self._exhausted:
            page = self._store.pending_page(self._after, self._page_size)
            if page:
                self._after = page[-1][0]
                # A job in (or just taken from) the retry queue is pending too, e.g. a task
                # resumed from the last run that failed before the pages got to it: take it
                # once only.
                self._buffer = [
                    job for _, job in reversed(page) if job.job_id not in self._scheduled
                ]
            else:
                self._exhausted = True
        if self._buffer:
            return self._buffer.pop()
        if self._retry:
            return max(self._retry[0][0] - now, 0.0)
        return None
