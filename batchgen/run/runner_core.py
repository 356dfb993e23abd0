"""The shared part of a run (:class:`RunnerCore`): its state (store, client, limits,
pacing, counts, tasks) and the bookkeeping every stage uses: counting moves between states,
failing or retrying a job with backoff, stopping new submissions, spawning job tasks and
waiting for a change.

Outcomes common to every stage: a retryable error (5xx, timeout, dropped connection, a failed
task, an expired result URL) is retried with exponential backoff and full jitter, never sooner
than the answer's ``Retry-After``, while attempts remain (``1 + limits.retries``); then the
job is ``failed``.  A state-file or disk error in any job task stops new submissions (exit 3);
the job keeps its last committed state and the next run resumes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sys
from collections import Counter
from typing import Any

from batchgen.api import ModellixClient
from batchgen.errors import ExitCode
from batchgen.reports.reasons import failure_reason, short_reason
from batchgen.run.budget import SpendGuard
from batchgen.run.durable import ImageCommitter
from batchgen.run.job_source import JobSource
from batchgen.run.options import LimitsLike, RunOptions
from batchgen.run.pacing import (
    LEARNT_LIMITS_KEY,
    AccountLimits,
    AimdLimit,
    DownloadLane,
    RateLimiter,
    backoff_delay,
)
from batchgen.run.polling import PollSchedules
from batchgen.run.submit_paths import SubmitPaths
from batchgen.run.summary import RunSummary
from batchgen.store.errors import StateError
from batchgen.store.outputs import OutputDir
from batchgen.store.state import StateStore

__all__ = ["RunnerCore"]

logger = logging.getLogger("batchgen.run")


class RunnerCore:
    """The state every part of a run shares, and the bookkeeping they all use."""

    def __init__(
        self,
        store: StateStore,
        client: ModellixClient,
        limits: LimitsLike,
        *,
        options: RunOptions | None = None,
        output: OutputDir | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.limits = limits
        self.opts = options or RunOptions()
        self.output = output or OutputDir(store.path.parent)
        self._committer = ImageCommitter(self.output)
        self.summary = RunSummary()
        self._rng = random.Random(self.opts.seed)
        self._rate = RateLimiter(limits.rate)
        self._aimd = AimdLimit(limits.concurrency)
        # What earlier runs of this state file learnt of the account's limits: start there.
        self._account = AccountLimits(
            limits.concurrency, learnt=store.settings().get(LEARNT_LIMITS_KEY)
        )
        if self._account.rate is not None and self._account.rate < limits.rate:
            self._rate.set_rate(self._account.rate)
        self._downloads = DownloadLane(maximum=max(4, limits.concurrency))
        self._schedules = PollSchedules(
            first_wait=self.opts.first_poll,
            min_interval=self.opts.min_poll_interval,
            max_interval=self.opts.max_poll_interval,
        )
        self._paths = SubmitPaths(store, self.opts.submit_path)
        # Whether a submit of this run was ever written to the server: until then, a server
        # that cannot be reached for a configuration reason stops the run at once.
        self._reached_server = False
        self._counts: Counter[str] = Counter()
        self._in_flight = 0  # remote tasks submitted (or being submitted) and not ended
        # Submit requests sent and not yet answered (and recorded): a SIGKILL can orphan at most
        # this many accepted tasks whose ids never reached the state file.
        self._submits = 0
        self._max_submits = max(1, limits.submits_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._jobs = JobSource(store, self.opts.page_size)
        self._throttles: Counter[str] = Counter()
        self._changed = asyncio.Event()
        self._stop_submitting: str | None = None
        self._run_deadline: float | None = None  # monotonic end of max_runtime
        self._stop_code = 0
        self._throttle_streak = 0
        self._guard = SpendGuard(
            self.opts.prices, max_tasks=limits.max_tasks, max_cost=limits.max_cost
        )

    # ---------------------------------------------------------------- helpers
    def _wake(self) -> None:
        self._changed.set()

    def _moved(self, from_state: str, to_state: str) -> None:
        self._counts[from_state] -= 1
        self._counts[to_state] += 1

    def _submit_path(self, model: str) -> str:
        return self._paths.path(model)

    def _stop(self, reason: str, code: int) -> None:
        if self._stop_submitting is None:
            self._stop_submitting = reason
            self._stop_code = code
            logger.error("stopping new submissions: %s", reason, extra={"data": {"event": "stop"}})
        self._wake()

    def _submissions_stopped(self) -> bool:
        return self._stop_submitting is not None

    def _fail(self, job_id: str, from_state: str, reason: str) -> None:
        """Mark the job ``failed`` and count it under its reason's group: the same grouping as
        ``batchgen status`` (:func:`batchgen.reports.reasons.failure_reason`; no task ids, no
        URLs)."""
        self.store.mark_failed(job_id, reason)
        self._moved(from_state, "failed")
        key = failure_reason("failed", reason)
        self.summary.failed_by_reason[key] = self.summary.failed_by_reason.get(key, 0) + 1

    def _give_up(self, job_id: str, from_state: str, reason: str) -> None:
        """:meth:`_fail` with a warning in the log (a deadline passed)."""
        self._fail(job_id, from_state, reason)
        logger.warning("job %s failed: %s", job_id, short_reason(reason))

    def _warn(self, job_id: str, outcome: str, attempts: int, reason: str) -> None:
        """One short log line for a job that ended ``outcome``: its id, the attempt, the
        provider's message (:func:`short_reason`); the state file keeps the full error."""
        logger.warning(
            "job %s %s (attempt %d/%d): %s",
            job_id,
            outcome,
            attempts,
            1 + self.limits.retries,
            short_reason(reason),
            extra={"data": {"event": f"job_{outcome}", "job_id": job_id, "attempts": attempts}},
        )

    def _schedule_retry(self, job_id: str, delay: float) -> None:
        self._jobs.schedule(job_id, delay)
        self._wake()

    def _backoff(self, attempt: int, cap: float, retry_after: float | None = None) -> float:
        """The wait before try ``attempt + 1``: exponential backoff with full jitter, and never
        less than the server's ``Retry-After`` (a 503 or 429 that carries one)."""
        delay = backoff_delay(attempt, base=self.opts.backoff_base, cap=cap, rng=self._rng)
        return max(delay, retry_after or 0.0)

    def _retry_or_fail(
        self,
        job_id: str,
        from_state: str,
        attempts: int,
        reason: str,
        retry_after: float | None = None,
    ) -> bool:
        """Another attempt after a backoff (at least ``retry_after``) while attempts remain
        (True), else ``failed``."""
        if attempts >= 1 + self.limits.retries:
            self._fail(job_id, from_state, f"{reason} (after {attempts} attempts)")
            self._warn(job_id, "failed", attempts, reason)
            return False
        self.store.mark_pending(job_id, reason)
        self._moved(from_state, "pending")
        self.summary.retries += 1
        delay = self._backoff(attempts, self.opts.backoff_cap, retry_after)
        logger.debug("job %s: %s; retry in %.2fs", job_id, reason, delay)
        self._schedule_retry(job_id, delay)
        return True

    async def _wait_change(self, timeout: float | None) -> None:
        """Until :meth:`_wake` or ``timeout`` seconds.  No task per wait on Python 3.11+
        (``asyncio.wait_for`` wraps the wait in one): the loop resumes this coroutine straight
        from the event, one loop pass after the wake instead of three, which shortens every
        submit's turn while ``submits_in_flight`` submits may be pending."""
        if self._changed.is_set():
            return
        if sys.version_info >= (3, 11):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._changed.wait()
        else:  # pragma: no cover - Python 3.10
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)

    async def _wake_on(self, event: asyncio.Event) -> None:
        """Wake the run loop when ``event`` (the stop request) is set."""
        await event.wait()
        self._wake()

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)

        def _done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                exc = t.exception()
                if isinstance(exc, (StateError, OSError)):
                    # Disk full, I/O error...: a clear line, no traceback; the job keeps its
                    # last committed state and the next run resumes it.
                    self._stop(str(exc), ExitCode.STOPPED)
                else:
                    logger.error("internal error in a job task: %r", exc, exc_info=exc)
                    self._stop(f"internal error: {exc!r}", ExitCode.STOPPED)
            self._wake()

        task.add_done_callback(_done)

    def _release_slot(self) -> None:
        self._in_flight -= 1
        self._wake()
