"""Submitting jobs (:class:`Submits`): at most ``limits.concurrency`` remote tasks in flight
(AIMD-adjusted, within the account's cap learnt from 429s), at most ``limits.rate``
submissions per second and at most ``limits.submits_in_flight`` submit requests awaiting
their answer.  ``submitting`` is
committed before the request is sent and the task_id the moment the answer is read, before
the task is polled.

Outcomes of a submit:

* 429: the job goes back to the queue without using an attempt.  By the limit the answer
  names (:mod:`batchgen.api.throttle`): too many running tasks sets the account's cap
  (:class:`batchgen.run.pacing.AccountLimits`), held for the run and recorded in the run
  settings so a resumed run starts there; too many requests holds every submit until its
  ``Retry-After`` and paces submits at the rate learnt; a 429 that names no limit makes its
  job wait its ``Retry-After``, and only several in a row start a shared pause and halve the
  concurrency limit once per throttle window (:class:`batchgen.run.pacing.RateLimiter`),
  grown back by one per accepted submit (AIMD).
* 400: the job is ``rejected``; never retried.
* 404 on submit: no task was created; the model's next documented path shape is tried
  (:mod:`batchgen.run.submit_paths`); when none is left, as 401 below.
* 401, 402, bad configuration: no new submission at all; tasks already
  running are still polled and downloaded; exit code 3.
* A refused connection, a name that does not resolve or a certificate that fails
  verification (:class:`batchgen.api.Unreachable`) before any submit of the run reached the
  server: the same stop, at once, naming ``host:port`` and the cause.
* Only a request written to a server counts in ``submitted``; a submit that never left
  (refused, TLS failure) puts the job back to ``pending``, never ambiguous.
* 5xx, timeouts, dropped connections: retried with backoff while attempts remain.  A submit
  whose outcome is unknown is resubmitted and counted as ambiguous, or failed when
  ``limits.resubmit_unknown`` is false.

Submits in flight: a task the provider accepted is known to the state file only once its
submit's answer is recorded, so a SIGKILL can orphan (and the resume pay again for) every
submit then awaiting its answer; ``limits.submits_in_flight`` (default 1) bounds that to one
per kill.
"""

from __future__ import annotations

import logging
import time

from batchgen.api import ApiError, NotFound, RateLimited, Rejected, Unreachable
from batchgen.errors import ExitCode
from batchgen.manifest.inputs import materialize_body
from batchgen.run.following import Follows
from batchgen.run.pacing import LEARNT_LIMITS_KEY
from batchgen.store.records import JobRecord
from batchgen.store.spend import AMBIGUOUS

__all__ = ["Submits"]

logger = logging.getLogger("batchgen.run")


class Submits(Follows):
    """The submit stage of a run."""

    def _pool_full(self) -> bool:
        """No new submit now: ``concurrency`` tasks in flight, or ``submits_in_flight`` submit
        requests still awaiting their answer."""
        return (
            self._in_flight >= self._account.limit(self._aimd.limit)
            or self._submits >= self._max_submits
        )

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
        nxt = self._jobs.next()
        if not isinstance(nxt, JobRecord):
            return None
        if not self._budget_allows(nxt):
            self._jobs.put_back(nxt)
            return None
        self._take_submit_turn()
        return nxt

    def _budget_allows(self, job: JobRecord) -> bool:
        """Reserve the job's submission within ``limits.max_tasks``/``max_cost``
        (:class:`batchgen.run.budget.SpendGuard`); else stop submitting (exit 3), recording
        why in the state file."""
        reason = self._guard.reserve(job.job_id, job.model, job.body)
        if reason is None:
            return True
        if self._stop_submitting is None:
            self.store.update_spend_info({"stopped": reason})
            self._stop(reason, ExitCode.STOPPED)
        return False

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
            self._jobs.taken(job_id)
            self._moved("pending", "submitting")
            sent_at = time.monotonic()
            path = self._submit_path(job.model)
            try:
                submitted = await self.client.submit(path, materialize_body(job.body))
            except ApiError as exc:
                if exc.sent:  # only a request written to a server counts as a submission
                    self.summary.submitted += 1
                    self._reached_server = True
                if isinstance(exc, RateLimited):
                    self._guard.settle(job_id, job.model, job.body, billed=False)
                    self._on_throttled(job_id, exc, sent_at)
                    return False
                charge = self._guard.settle(job_id, job.model, job.body, billed=exc.ambiguous)
                if exc.ambiguous:  # it may have created a billed task
                    self.store.record_submission(job_id, AMBIGUOUS, charge)
                if not self._other_submit_path(job_id, job.model, path, exc):
                    self._on_submit_error(job_id, attempts, exc)
                return False
            self.summary.submitted += 1
            self._reached_server = True
            self._throttle_streak = 0
            self._aimd.on_success()
            # Accepted and running now: every slot taken but the other submits awaiting answers.
            self._account.on_accepted(self._in_flight - self._submits + 1)
            # The task_id (and the billed submission) is committed before anything else
            # happens with the task.
            charge = self._guard.settle(job_id, job.model, job.body, billed=True)
            self.store.mark_running_charged(job_id, submitted.task_id, submitted.poll_url, charge)
            self._moved("submitting", "running")
            answering = False  # the task_id is committed: the next submit may go
            self._submits -= 1
            slot = False  # _follow owns the slot now
            self._spawn(
                self._follow(
                    job_id,
                    submitted.task_id,
                    submitted.poll_url,
                    time.time(),
                    attempts,
                    model=job.model,
                )
            )
            return True
        finally:
            self._guard.release(job_id)  # no outcome recorded (an unexpected error)
            if answering:
                self._submits -= 1
                self._wake()
            if slot:
                self._release_slot()

    def _on_throttled(self, job_id: str, exc: RateLimited, sent_at: float) -> None:
        """A 429 on submit; the job waits its turn again, without using an attempt.

        * too many running tasks: the cap is learnt (:class:`AccountLimits`) and held; the job
          goes as soon as a slot frees, no pause;
        * too many requests: everybody waits for its ``Retry-After`` (nothing could pass
          before) and submits are paced at the rate learnt;
        * unsaid: this job waits for its ``Retry-After``; several 429s in a row (a storm)
          start one shared pause and one concurrency halving per throttle window (AIMD)."""
        self.summary.throttled += 1
        by_kind = self.summary.throttled_by_kind
        by_kind[exc.kind] = by_kind.get(exc.kind, 0) + 1
        self._throttles[job_id] += 1
        self._throttle_streak += 1
        pause = exc.retry_after
        if pause is None:
            pause = min(
                self.opts.backoff_cap,
                self.opts.throttle_pause * 2 ** min(self._throttle_streak - 1, 6),
            )
        retry_in = 0.0
        if exc.kind == "concurrency":
            # Our tasks the provider may count: every slot taken but this submit's (other
            # submits awaiting their answer may have been accepted: never below the cap).
            cap = self._account.cap
            if self._account.on_cap_hit(self._in_flight - 1):
                self._save_learnt()
            if self._account.cap == cap:
                retry_in = pause  # tasks not ours count too (orphans, another client): wait
            # else the cap fell (learnt, or a probe refused): the pool is full, so the job
            # goes as soon as one of ours ends
        elif exc.kind == "rate":
            self._rate.pause(pause)
            rate = self._account.on_rate_hit(exc.rate)
            if rate is not None and rate < self.limits.rate:
                self._rate.set_rate(rate)
                self._save_learnt()
        elif self._throttle_streak >= self.opts.throttle_storm:
            if self._rate.throttled(pause, sent_at=sent_at, storm=True):
                self._aimd.on_throttle()  # one multiplicative decrease per window
        else:
            retry_in = pause
        if self._throttles[job_id] >= self.opts.max_throttles:
            self._fail(job_id, "submitting", f"rate limited {self._throttles[job_id]} times")
        else:
            self.store.mark_pending(job_id, f"rate limited: {exc}", refund_attempt=True)
            self._moved("submitting", "pending")
            self._schedule_retry(job_id, retry_in)

    def _save_learnt(self) -> None:
        """Record what was learnt of the account's limits in the run settings."""
        self.store.update_settings({LEARNT_LIMITS_KEY: self._account.as_setting()})

    def _other_submit_path(self, job_id: str, model: str, path: str, exc: ApiError) -> bool:
        """A 404 on submit created no task: when the model has another documented path shape
        (:class:`batchgen.run.submit_paths.SubmitPaths`), the job goes back to the queue at once
        without using an attempt (True)."""
        if not (isinstance(exc, NotFound) and exc.http_status == 404):
            return False
        if not self._paths.not_found(model, path):
            return False
        self.store.mark_pending(job_id, f"submit path not found: {exc}", refund_attempt=True)
        self._moved("submitting", "pending")
        self._schedule_retry(job_id, 0.0)
        return True

    def _on_submit_error(self, job_id: str, attempts: int, exc: ApiError) -> None:
        if isinstance(exc, Unreachable) and not self._reached_server:
            # Nothing of this run ever reached the server, and the reason is configuration
            # (refused, DNS, certificate): every other job would fail the same way.
            self.store.mark_pending(job_id, f"not submitted: {exc}", refund_attempt=True)
            self._moved("submitting", "pending")
            self._stop(
                f"cannot reach {exc.address}: {exc.cause}; no submission reached the server"
                " (check --base-url, MODELLIX_BASE_URL and the TLS set-up)",
                ExitCode.STOPPED,
            )
            return
        if exc.stops_run:
            self.store.mark_pending(job_id, f"not submitted: {exc}", refund_attempt=True)
            self._moved("submitting", "pending")
            self._stop(str(exc), ExitCode.STOPPED)
            return
        if isinstance(exc, Rejected) and not exc.ambiguous:
            self.store.mark_rejected(job_id, str(exc))
            self._moved("submitting", "rejected")
            self._warn(job_id, "rejected", attempts, str(exc))
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
