"""The run loop: one asyncio loop, one client, a bounded pool of remote tasks.

:func:`run_jobs` takes a state file (:class:`batchgen.store.state.StateStore`) whose
jobs are already recorded and drives every job to an end: it submits pending
jobs (at most ``limits.concurrency`` remote tasks in flight, at most
``limits.rate`` submissions per second, at most ``limits.submits_in_flight``
submit requests awaiting their answer), polls each task on an adaptive
schedule, downloads each result as soon as the task succeeds, and records every
step in the state file before acting on it.  Jobs are read from the state file
lazily, in pages, so memory stays small and the first submission comes at once
however many jobs the file holds.

Outcomes by error class (see :mod:`batchgen.api.errors`):

* 429: the job goes back to the queue without using an attempt and is submitted again
  once the shared pause ends.  A 429 starts that pause (``Retry-After`` or a backoff) and
  halves the concurrency limit only when it opens a new throttle window
  (:class:`batchgen.run.pacing.RateLimiter`): 429s answering submits sent before the pause
  ended, or in the recovery span after it, neither restart the pause nor cut the limit
  again; each accepted submit grows the limit back by one (AIMD).
* 400: the job is ``rejected``; never retried.
* 401, 402, 404 on submit, bad configuration: no new submission at all; tasks
  already running are still polled and downloaded; exit code 3.
* 5xx, timeouts, dropped connections, a failed task, an expired result URL:
  retried with exponential backoff and full jitter, never sooner than the answer's
  ``Retry-After``, while attempts remain (``1 + limits.retries``).  A submit whose
  outcome is unknown is resubmitted and counted as ambiguous, or failed when
  ``limits.resubmit_unknown`` is false.

Submits in flight: a task the provider accepted is known to the state file only once
its submit's answer is recorded, so a SIGKILL can orphan (and the resume pay again
for) every submit then awaiting its answer.  ``limits.submits_in_flight`` (default 1)
bounds that to one per kill.  A submit takes one round trip and a task seconds, so
one submit at a time still keeps ``concurrency`` tasks running while
``rate`` x round trip < 1; raise it only for a slow submit round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from batchgen.api import (
    ApiError,
    ModellixClient,
    NotFound,
    RateLimited,
    Rejected,
    Resource,
    ResultExpired,
)
from batchgen.reports.reasons import failure_reason
from batchgen.run.durable import ImageCommitter
from batchgen.run.pacing import AimdLimit, DownloadLane, RateLimiter, backoff_delay
from batchgen.run.polling import PollSchedule
from batchgen.run.progress import Progress
from batchgen.store.outputs import ImageCheckError, ImageFile, OutputDir
from batchgen.store.state import ALL_STATES, JobRecord, ResultInfo, StateError, StateStore

__all__ = ["EXIT_CODES", "LimitsLike", "RunOptions", "RunSummary", "Runner", "run_jobs"]

logger = logging.getLogger("batchgen.run")

EXIT_CODES = {"ok": 0, "jobs_failed": 1, "stopped": 3, "tempfail": 75, "interrupted": 130}
_TERMINAL_BAD = ("failed", "rejected", "expired")


class LimitsLike(Protocol):
    """The run limits (``batchgen.manifest.loader.Limits`` fits)."""

    @property
    def concurrency(self) -> int: ...
    @property
    def rate(self) -> float: ...
    @property
    def retries(self) -> int: ...
    @property
    def timeout(self) -> float: ...
    @property
    def resubmit_unknown(self) -> bool: ...
    @property
    def submits_in_flight(self) -> int: ...


@dataclass
class RunOptions:
    """How a run behaves beyond the manifest's limits (defaults suit the real API)."""

    max_runtime: float | None = None
    """Stop submitting after this many seconds and exit 75 if work is left."""
    stop: asyncio.Event | None = None
    """Set it (e.g. from a signal handler) to stop submitting and end the run (exit 130)."""
    submit_path: Callable[[str], str] | None = None
    """Model name → submit path; default: the model's schema (``batchgen.manifest.catalogue``)."""
    first_poll: float = 2.0
    """Seconds before the first poll while nothing is learnt about task durations."""
    min_poll_interval: float = 0.05
    """Shortest gap between two polls of a task (the gap is also at least 2% of the typical
    task duration, so this matters only for tasks of a few seconds)."""
    max_poll_interval: float = 30.0
    backoff_base: float = 1.0
    """First retry waits up to this many seconds (full jitter), doubling per attempt."""
    backoff_cap: float = 60.0
    throttle_pause: float = 1.0
    """Pause after a 429 that carries no Retry-After (doubles while 429s come in a row)."""
    throttle_storm: int = 3
    """This many 429s in a row (no accepted submit between) start a new pause even in the
    recovery span after the last one: the provider still refuses everything."""
    download_retries: int = 4
    """Retries of a download (same URL) after a network/server error, before resubmitting."""
    max_throttles: int = 50
    """A job that gets this many 429s on submit fails (the account is throttled for good)."""
    page_size: int = 256
    """Jobs read from the state file at a time."""
    progress: Progress | None = None
    progress_interval: float = 1.0
    metrics_interval: float | None = 60.0
    """Write ``metrics.prom`` (:mod:`batchgen.reports.metrics`) this often and at the end;
    None: never."""
    seed: int | None = None
    """Seed of the backoff jitter (tests)."""


@dataclass
class RunSummary:
    """What a run did and how it ended."""

    exit_code: int = 0
    stop_reason: str | None = None
    done: int = 0
    failed: int = 0
    rejected: int = 0
    expired: int = 0
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    submitted: int = 0
    retries: int = 0
    ambiguous_resubmits: int = 0
    throttled: int = 0
    throttle_pauses: int = 0
    """Shared pauses started by 429s (one per throttle window, however many 429s it had)."""
    concurrency_decreases: int = 0
    concurrency_lowest: int = 0
    concurrency_limit: int = 0
    """The concurrency limit (AIMD) when the run ended."""
    polls: int = 0
    downloads: int = 0
    recovered_submitting: int = 0
    resumed_in_flight: int = 0
    regenerated: int = 0
    """Recorded tasks generated (and paid for) again: the provider no longer knew the task
    (404) or its result URL had expired."""
    duration: float = 0.0
    images_per_minute: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The summary as a JSON-ready dict."""
        return dict(self.__dict__)

    def format(self) -> str:
        """A few human lines."""
        lines = [
            f"done {self.done}, failed {self.failed}, rejected {self.rejected}, "
            f"expired {self.expired} in {self.duration:.1f}s "
            f"({self.images_per_minute:.1f} images/min)",
            f"submitted {self.submitted}, retries {self.retries}, ambiguous resubmits "
            f"{self.ambiguous_resubmits}, 429s {self.throttled}, polls {self.polls}",
        ]
        if self.regenerated:
            lines.append(
                f"{self.regenerated} recorded tasks generated again (task unknown to the "
                "provider or result URL expired)"
            )
        for reason, n in sorted(self.failed_by_reason.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {n} x {reason}")
        left = sum(
            self.counts.get(s, 0) for s in ("pending", "submitting", "running", "downloading")
        )
        if left:
            lines.append(f"{left} jobs not finished yet: run again to resume")
        if self.stop_reason:
            lines.append(f"stopped: {self.stop_reason}")
        return "\n".join(lines)


def _default_submit_path(model: str) -> str:
    from batchgen.manifest.catalogue import load_model  # noqa: PLC0415 - keep the runner importable alone

    return load_model(model).submit_path


class Runner:
    """One run over one state file; see :func:`run_jobs`."""

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
        self._downloads = DownloadLane(maximum=max(4, limits.concurrency))
        self._schedule = PollSchedule(
            first_wait=self.opts.first_poll,
            min_interval=self.opts.min_poll_interval,
            max_interval=self.opts.max_poll_interval,
        )
        self._paths: dict[str, str] = {}
        self._counts: Counter[str] = Counter()
        self._in_flight = 0  # remote tasks submitted (or being submitted) and not ended
        # Submit requests sent and not yet answered (and recorded): a SIGKILL can orphan at most
        # this many accepted tasks whose ids never reached the state file.
        self._submits = 0
        self._max_submits = max(1, limits.submits_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._retry: list[tuple[float, int, str]] = []  # (ready_at monotonic, seq, job_id)
        self._scheduled: set[str] = set()  # job_ids retried: in self._retry or taken from it
        self._seq = 0
        self._buffer: list[JobRecord] = []
        self._after = 0
        self._exhausted = False
        self._throttles: Counter[str] = Counter()
        self._changed = asyncio.Event()
        self._stop_submitting: str | None = None
        self._run_deadline: float | None = None  # monotonic end of max_runtime
        self._stop_code = 0
        self._throttle_streak = 0

    # ---------------------------------------------------------------- helpers
    def _wake(self) -> None:
        self._changed.set()

    def _moved(self, from_state: str, to_state: str) -> None:
        self._counts[from_state] -= 1
        self._counts[to_state] += 1

    def _submit_path(self, model: str) -> str:
        path = self._paths.get(model)
        if path is None:
            path = (self.opts.submit_path or _default_submit_path)(model)
            self._paths[model] = path
        return path

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

    def _schedule_retry(self, job_id: str, delay: float) -> None:
        self._seq += 1
        heapq.heappush(self._retry, (time.monotonic() + delay, self._seq, job_id))
        self._scheduled.add(job_id)
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
            logger.warning("job %s failed: %s (after %d attempts)", job_id, reason, attempts)
            return False
        self.store.mark_pending(job_id, reason)
        self._moved(from_state, "pending")
        self.summary.retries += 1
        delay = self._backoff(attempts, self.opts.backoff_cap, retry_after)
        logger.debug("job %s: %s; retry in %.2fs", job_id, reason, delay)
        self._schedule_retry(job_id, delay)
        return True

    # ------------------------------------------------------------- job source
    def _next_job(self) -> JobRecord | float | None:
        """A job ready to submit, or the seconds until a retry is ready, or ``None``."""
        now = time.monotonic()
        if self._retry and self._retry[0][0] <= now:
            _, _, job_id = heapq.heappop(self._retry)
            return self.store.get(job_id)  # stays in _scheduled until it is `submitting`
        if not self._buffer and not self._exhausted:
            page = self.store.pending_page(self._after, self.opts.page_size)
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

    # --------------------------------------------------------------- job life
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
                    self._stop(str(exc), EXIT_CODES["stopped"])
                else:
                    logger.error("internal error in a job task: %r", exc, exc_info=exc)
                    self._stop(f"internal error: {exc!r}", EXIT_CODES["stopped"])
            self._wake()

        task.add_done_callback(_done)

    def _release_slot(self) -> None:
        self._in_flight -= 1
        self._wake()

    def _pool_full(self) -> bool:
        """No new submit now: ``concurrency`` tasks in flight, or ``submits_in_flight`` submit
        requests still awaiting their answer."""
        return self._in_flight >= self._aimd.limit or self._submits >= self._max_submits

    def _ready_job(self) -> JobRecord | None:
        """The next job, with its slot and submit turn taken, when one may be submitted right
        now without waiting for anything (used to hand the submit turn on directly)."""
        stop = self.opts.stop
        if (
            self._stop_submitting is not None
            or (stop is not None and stop.is_set())
            or (self._run_deadline is not None and time.monotonic() >= self._run_deadline)
            or self._pool_full()
            or self._rate.delay() > 0
        ):
            return None
        nxt = self._next_job()
        if not isinstance(nxt, JobRecord):
            return None
        self._take_submit_turn()
        return nxt

    def _take_submit_turn(self) -> None:
        """A submit is about to go: a rate token, a slot and a submit in flight."""
        self._rate.try_acquire()
        self._in_flight += 1
        self._submits += 1

    async def _submit_job(self, job: JobRecord) -> None:
        """Submit ``job`` (its slot and submit turn already taken), hand its task to
        :meth:`_follow`, then submit the next job at once when one may go now: the submit
        turn passes on without waking the run loop (two loop passes less per submit, which is
        what bounds the submission rate with one submit in flight)."""
        nxt: JobRecord | None = job
        while nxt is not None:
            if not await self._submit_one(nxt):
                return
            nxt = self._ready_job()

    async def _submit_one(self, job: JobRecord) -> bool:
        """Submit one job; True when its task was accepted and handed to :meth:`_follow`."""
        job_id = job.job_id
        slot = True
        answering = True  # this submit counts in self._submits until its answer is handled
        try:
            attempts = self.store.mark_submitting(job_id)
            self._scheduled.discard(job_id)
            self._moved("pending", "submitting")
            self.summary.submitted += 1
            sent_at = time.monotonic()
            try:
                submitted = await self.client.submit(self._submit_path(job.model), job.body)
            except RateLimited as exc:
                self._on_throttled(job_id, exc, sent_at)
                return False
            except ApiError as exc:
                self._on_submit_error(job_id, attempts, exc)
                return False
            self._throttle_streak = 0
            self._aimd.on_success()
            # The task_id is committed before anything else happens with the task.
            self.store.mark_running(job_id, submitted.task_id, submitted.poll_url)
            self._moved("submitting", "running")
            answering = False  # the task_id is committed: the next submit may go
            self._submits -= 1
            slot = False  # _follow owns the slot now
            self._spawn(
                self._follow(job_id, submitted.task_id, submitted.poll_url, time.time(), attempts)
            )
            return True
        finally:
            if answering:
                self._submits -= 1
                self._wake()
            if slot:
                self._release_slot()

    def _on_throttled(self, job_id: str, exc: RateLimited, sent_at: float) -> None:
        """A 429 on submit: one shared pause per throttle window; the job waits its turn again."""
        self.summary.throttled += 1
        self._throttles[job_id] += 1
        self._throttle_streak += 1
        pause = exc.retry_after
        if pause is None:
            pause = min(
                self.opts.backoff_cap,
                self.opts.throttle_pause * 2 ** min(self._throttle_streak - 1, 6),
            )
        storm = self._throttle_streak >= self.opts.throttle_storm
        if self._rate.throttled(pause, sent_at=sent_at, storm=storm):
            self._aimd.on_throttle()  # one multiplicative decrease per window
        if self._throttles[job_id] >= self.opts.max_throttles:
            self._fail(job_id, "submitting", f"rate limited {self._throttles[job_id]} times")
        else:
            self.store.mark_pending(job_id, f"rate limited: {exc}", refund_attempt=True)
            self._moved("submitting", "pending")
            self._schedule_retry(job_id, 0.0)

    def _on_submit_error(self, job_id: str, attempts: int, exc: ApiError) -> None:
        if exc.stops_run:
            self.store.mark_pending(job_id, f"not submitted: {exc}", refund_attempt=True)
            self._moved("submitting", "pending")
            self._stop(str(exc), EXIT_CODES["stopped"])
            return
        if isinstance(exc, Rejected) and not exc.ambiguous:
            self.store.mark_rejected(job_id, str(exc))
            self._moved("submitting", "rejected")
            logger.warning("job %s rejected: %s", job_id, exc)
            return
        if exc.ambiguous:
            if not self.limits.resubmit_unknown:
                reason = f"submit outcome unknown (resubmit_unknown is false): {exc}"
                self._fail(job_id, "submitting", reason)
                return
            self.summary.ambiguous_resubmits += 1
            self._retry_or_fail(
                job_id, "submitting", attempts, f"submit outcome unknown: {exc}", exc.retry_after
            )
            return
        if exc.retryable:
            self._retry_or_fail(
                job_id, "submitting", attempts, f"submit failed: {exc}", exc.retry_after
            )
            return
        self._fail(job_id, "submitting", f"submit failed: {exc}")

    async def _follow(
        self,
        job_id: str,
        task_id: str,
        poll_url: str | None,
        submitted_at: float,
        attempts: int,
    ) -> None:
        """Poll a running task (holding its slot) until it ends, then download its result."""
        slot = True
        try:
            deadline = submitted_at + self.limits.timeout
            polls = 0
            last_running: float | None = None
            errors = 0
            while True:
                elapsed = time.time() - submitted_at
                delay = self._schedule.next_delay(elapsed, polls)
                delay = min(delay, max(deadline - time.time(), 0.0) + 0.01)
                wake_at = time.monotonic() + delay
                await asyncio.sleep(delay)
                self._downloads.note_lateness(time.monotonic() - wake_at)
                elapsed = time.time() - submitted_at
                try:
                    status = await self.client.poll(task_id, poll_url)
                    errors = 0
                except ApiError as exc:
                    if isinstance(exc, NotFound):
                        slot = False
                        self._release_slot()
                        if self._retry_or_fail(
                            job_id, "running", attempts, f"task {task_id} not found: {exc}"
                        ):
                            self.summary.regenerated += 1
                        return
                    if exc.stops_run:
                        self._stop(str(exc), EXIT_CODES["stopped"])
                        return  # stays running with its task_id: the next run polls it
                    errors += 1
                    if time.time() > deadline:
                        status = None
                    else:
                        await asyncio.sleep(
                            self._backoff(errors, self.opts.max_poll_interval, exc.retry_after)
                        )
                        continue
                finally:
                    self.summary.polls += 1
                polls += 1
                if status is not None and status.state == "success":
                    self._schedule.observe(elapsed, last_running)
                    slot = False
                    self._release_slot()
                    self.store.mark_downloading(job_id, f"task {task_id} succeeded")
                    self._moved("running", "downloading")
                    await self._download(job_id, status.resources, attempts)
                    return
                if status is not None and status.state == "failed":
                    self._schedule.observe(elapsed, last_running)
                    slot = False
                    self._release_slot()
                    self._retry_or_fail(
                        job_id, "running", attempts, f"task failed: {status.error or 'no reason'}"
                    )
                    return
                last_running = elapsed
                if time.time() > deadline:
                    slot = False
                    self._release_slot()
                    raw = status.raw_status if status is not None else "unreachable"
                    reason = (
                        f"timed out: task {task_id} still {raw!r} after "
                        f"{self.limits.timeout:g}s (limits.timeout)"
                    )
                    self._fail(job_id, "running", reason)
                    logger.warning("job %s: %s", job_id, reason)
                    return
        finally:
            if slot:
                self._release_slot()

    def _pick(self, resources: list[Resource]) -> Resource | None:
        for res in resources:
            if res.role in (None, "primary") and res.type in (None, "image"):
                return res
        return resources[0] if resources else None

    async def _download(self, job_id: str, resources: list[Resource], attempts: int) -> None:
        """Download, check and record the result, in turn in the download lane (see
        :class:`batchgen.run.pacing.DownloadLane`: polls and submits first)."""
        await self._downloads.acquire()
        try:
            await self._download_in_lane(job_id, resources, attempts)
        finally:
            self._downloads.release()

    async def _download_in_lane(
        self, job_id: str, resources: list[Resource], attempts: int
    ) -> None:
        resource = self._pick(resources)
        if resource is None:
            self._retry_or_fail(job_id, "downloading", attempts, "task succeeded without a result")
            return
        tries = 0
        while True:
            tries += 1
            try:
                image, result = await self._fetch(job_id, resource)
                await self._committer.commit(image, result)
            except ResultExpired as exc:
                if attempts >= 1 + self.limits.retries:
                    self.store.mark_expired(job_id, f"result URL expired: {exc}")
                    self._moved("downloading", "expired")
                    return
                if self._retry_or_fail(
                    job_id, "downloading", attempts, f"result URL expired: {exc}"
                ):
                    self.summary.regenerated += 1
                return
            except (ApiError, ImageCheckError) as exc:
                if tries <= self.opts.download_retries and (
                    isinstance(exc, ImageCheckError) or exc.retryable
                ):
                    retry_after = exc.retry_after if isinstance(exc, ApiError) else None
                    await asyncio.sleep(self._backoff(tries, self.opts.backoff_cap, retry_after))
                    continue
                self._retry_or_fail(
                    job_id,
                    "downloading",
                    attempts,
                    f"download failed: {exc}",
                    exc.retry_after if isinstance(exc, ApiError) else None,
                )
                return
            except OSError as exc:
                # Disk full, unwritable directory...: stop; the job stays `downloading` and the
                # next run polls the task again and downloads it.
                self._stop(f"cannot write the result of job {job_id}: {exc}", EXIT_CODES["stopped"])
                return
            self.summary.downloads += 1
            done = self.store.mark_done(job_id, result)
            self._moved("downloading", "done")
            try:
                self.output.append_metadata(done)
            except OSError as exc:  # the next run rebuilds metadata.jsonl from the state file
                self._stop(f"cannot append to metadata.jsonl: {exc}", EXIT_CODES["stopped"])
            return

    async def _fetch(self, job_id: str, resource: Resource) -> tuple[ImageFile, ResultInfo]:
        """Download into a new temp file and check it; the file is removed on any error."""
        image = self.output.new_image(job_id)
        try:
            got = await self.client.download(resource.url, image)
            return image, image.check(expected_bytes=got.bytes, sha256=got.sha256)
        except BaseException:
            image.discard()
            raise

    # ------------------------------------------------------------------- run
    async def run(self) -> RunSummary:
        """Drive every active job to an end (or until a stop); return the summary."""
        # WAL checkpoints (fsyncs) in a worker thread, never inside a commit on the loop.
        with self.store.background_checkpoints():
            return await self._run()

    async def _run(self) -> RunSummary:
        started = time.monotonic()
        deadline = started + self.opts.max_runtime if self.opts.max_runtime else None
        self._run_deadline = deadline
        stop_event = self.opts.stop
        recovered = self.store.recover_submitting(resubmit=self.limits.resubmit_unknown)
        self.summary.recovered_submitting = len(recovered)
        if recovered:
            logger.warning(
                "%d job(s) were being submitted when the last run ended; their tasks may exist "
                "remotely: %s",
                len(recovered),
                "submitting them again" if self.limits.resubmit_unknown else "marked failed",
                extra={"data": {"event": "recovered_submitting", "jobs": recovered[:20]}},
            )
        self._counts.update(self.store.counts())
        progress = self.opts.progress
        # Tasks that already exist remotely: poll them, never resubmit.
        for job in self.store.iter_jobs(["running", "downloading"]):
            self.summary.resumed_in_flight += 1
            if job.task_id is None:  # cannot happen through this module; be safe anyway
                self.store.mark_pending(job.job_id, "no task_id recorded")
                self._moved(job.state, "pending")
                continue
            if job.state == "downloading":
                # One more poll gives the result URL again (downloads hold no slot).
                self._spawn(self._resume_download(job))
                continue
            self._in_flight += 1
            self._spawn(
                self._follow(
                    job.job_id,
                    job.task_id,
                    job.poll_url,
                    job.submitted_at or time.time(),
                    job.attempts,
                )
            )
        ticker = asyncio.get_running_loop().create_task(self._tick(progress))
        # One watcher for the stop request, instead of two waiter tasks per wait of the loop.
        stop_watch = (
            asyncio.get_running_loop().create_task(self._wake_on(stop_event))
            if stop_event is not None
            else None
        )
        interrupted = False
        deadline_hit = False
        try:
            while True:
                self._changed.clear()
                if stop_event is not None and stop_event.is_set():
                    interrupted = True
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    deadline_hit = True
                    break
                if self._stop_submitting is not None:
                    if not self._tasks:
                        break
                    await self._wait_for_stop_or_change(stop_event, deadline, None)
                    continue
                if self._pool_full():
                    await self._wait_for_stop_or_change(stop_event, deadline, None)
                    continue
                nxt = self._next_job()
                if nxt is None:
                    if not self._tasks:
                        break
                    await self._wait_for_stop_or_change(stop_event, deadline, None)
                    continue
                if isinstance(nxt, float):
                    await self._wait_for_stop_or_change(stop_event, deadline, nxt)
                    continue
                job = nxt
                delay = self._rate.delay()
                while delay > 0 and not (stop_event is not None and stop_event.is_set()):
                    if deadline is not None and time.monotonic() + delay > deadline:
                        break
                    await self._wait_for_stop_or_change(stop_event, deadline, delay)
                    self._changed.clear()
                    if self._submissions_stopped():
                        break
                    delay = self._rate.delay()
                if (
                    delay > 0
                    or self._submissions_stopped()
                    or (stop_event is not None and stop_event.is_set())
                    or self._pool_full()
                ):
                    self._buffer.append(job)  # not taken: back to the front of the queue
                    continue
                self._take_submit_turn()
                self._spawn(self._submit_job(job))
        finally:
            if interrupted or deadline_hit or self._tasks:
                for task in list(self._tasks):
                    task.cancel()
                if self._tasks:
                    await asyncio.gather(*self._tasks, return_exceptions=True)
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            if stop_watch is not None:
                stop_watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await stop_watch
            self._committer.close()
            self.output.close()
        counts = self.store.counts()
        if progress is not None:
            progress.update(counts, force=True)
            progress.close()
        s = self.summary
        s.counts = counts
        s.done, s.failed = counts["done"], counts["failed"]
        s.rejected, s.expired = counts["rejected"], counts["expired"]
        s.duration = time.monotonic() - started
        s.images_per_minute = s.downloads / s.duration * 60 if s.duration > 0 else 0.0
        s.throttle_pauses, s.concurrency_decreases = self._rate.pauses, self._aimd.decreases
        s.concurrency_lowest, s.concurrency_limit = self._aimd.lowest, self._aimd.limit
        left = sum(counts[k] for k in ("pending", "submitting", "running", "downloading"))
        if interrupted:
            s.exit_code, s.stop_reason = EXIT_CODES["interrupted"], "interrupted"
        elif self._stop_submitting is not None:
            s.exit_code, s.stop_reason = self._stop_code, self._stop_submitting
        elif deadline_hit and left:
            s.exit_code, s.stop_reason = EXIT_CODES["tempfail"], "max runtime reached"
        elif any(counts[k] for k in _TERMINAL_BAD):
            s.exit_code = EXIT_CODES["jobs_failed"]
        else:
            s.exit_code = EXIT_CODES["ok"]
        if self.opts.metrics_interval is not None:
            await self._write_metrics(running=False, exit_code=s.exit_code)
        return s

    async def _write_metrics(self, **kw: Any) -> None:
        """Write ``metrics.prom`` in a thread; a failure is logged, never fatal."""
        from batchgen.reports.metrics import write_metrics  # noqa: PLC0415 - optional feature

        try:
            await asyncio.to_thread(write_metrics, self.store.path, **kw)
        except Exception as exc:  # metrics must never stop a run
            logger.warning("cannot write metrics.prom: %s", exc)

    async def _resume_download(self, job: JobRecord) -> None:
        """A job a previous run left in ``downloading``: its task succeeded, so poll it again for
        the result URL, retrying errors and non-final answers with backoff as a running task is
        polled (no slot: the task has ended).  The job is generated again only when the provider
        no longer knows the task (404), reports it failed, or its URL expired (:meth:`_download`);
        a task that cannot be polled again within ``limits.timeout`` fails, never pays twice."""
        assert job.task_id is not None
        job_id, task_id = job.job_id, job.task_id
        deadline = time.time() + self.limits.timeout
        tries = 0
        while True:
            tries += 1
            status = None
            retry_after: float | None = None
            try:
                status = await self.client.poll(task_id, job.poll_url)
            except NotFound as exc:
                if self._retry_or_fail(
                    job_id, "downloading", job.attempts, f"task {task_id} not found: {exc}"
                ):
                    self.summary.regenerated += 1
                return
            except ApiError as exc:
                if exc.stops_run:
                    self._stop(str(exc), EXIT_CODES["stopped"])
                    return  # stays downloading with its task_id: the next run polls it
                problem = f"re-poll failed: {exc}"
                retry_after = exc.retry_after
            finally:
                self.summary.polls += 1
            if status is not None:
                if status.state == "success":
                    await self._download(job_id, status.resources, job.attempts)
                    return
                if status.state == "failed":
                    reason = f"task failed: {status.error or 'no reason'}"
                    self._retry_or_fail(job_id, "downloading", job.attempts, reason)
                    return
                problem = f"task {task_id} is {status.raw_status!r} again"
            if time.time() > deadline:
                reason = (
                    f"timed out: the result of task {task_id} could not be fetched again within "
                    f"{self.limits.timeout:g}s (limits.timeout): {problem}"
                )
                self._fail(job_id, "downloading", reason)
                logger.warning("job %s: %s", job_id, reason)
                return
            delay = self._backoff(tries, self.opts.max_poll_interval, retry_after)
            await asyncio.sleep(min(delay, max(deadline - time.time(), 0.0) + 0.01))

    async def _wait_for_stop_or_change(
        self, stop: asyncio.Event | None, deadline: float | None, timeout: float | None
    ) -> None:
        limit = timeout
        if deadline is not None:
            left = max(deadline - time.monotonic(), 0.0)
            limit = left if limit is None else min(limit, left)
        if stop is not None and stop.is_set():
            return
        await self._wait_change(limit)  # a set stop wakes it (see _wake_on)

    async def _tick(self, progress: Progress | None) -> None:
        metrics_due = time.monotonic()
        while True:
            await asyncio.sleep(self.opts.progress_interval)
            if progress is not None:
                progress.update({k: self._counts[k] for k in ALL_STATES})
            await asyncio.to_thread(self.output.sync)
            interval = self.opts.metrics_interval
            if interval is not None and time.monotonic() >= metrics_due:
                metrics_due = time.monotonic() + interval
                await self._write_metrics()


async def run_jobs(
    store: StateStore,
    client: ModellixClient,
    limits: LimitsLike,
    *,
    options: RunOptions | None = None,
    output: OutputDir | None = None,
) -> RunSummary:
    """Run every active job of ``store`` to an end with ``client``; see :class:`Runner`.

    The caller holds the run lock, has recorded the jobs (``store.sync_jobs``) and
    prepared the output directory (:meth:`OutputDir.prepare`).
    """
    return await Runner(store, client, limits, options=options, output=output).run()
