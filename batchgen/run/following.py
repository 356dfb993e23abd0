"""Following a remote task (:class:`Follows`): polling it on its model's adaptive schedule
(:class:`batchgen.run.polling.PollSchedules`) while it holds its slot, until it succeeds
(then it is downloaded), fails (another attempt or ``failed``) or outlives
``limits.timeout`` (``failed``).  A task the provider no longer knows (404) is generated again
while attempts remain.  A 401/402 while polling stops new submissions; the task keeps its
task_id and the next run polls it.

A job a previous run left in ``downloading`` is polled again for its result URL, with no slot.
"""

from __future__ import annotations

import asyncio
import time

from batchgen.api import ApiError, NotFound
from batchgen.errors import ExitCode
from batchgen.run.downloading import Downloads
from batchgen.store.records import JobRecord

__all__ = ["Follows"]


class Follows(Downloads):
    """The polling stage of a run."""

    async def _follow(
        self,
        job_id: str,
        task_id: str,
        poll_url: str | None,
        submitted_at: float,
        attempts: int,
        *,
        model: str,
    ) -> None:
        """Poll a running task (holding its slot) until it ends, then download its result."""
        slot = True
        schedule = self._schedules[model]
        probe = schedule.enlist()
        try:
            deadline = submitted_at + self.limits.timeout
            polls = 0  # polls on the warm schedule (a task started cold starts it at 0)
            last_running: float | None = None
            errors = 0
            while True:
                elapsed = time.time() - submitted_at
                delay = schedule.next_delay(elapsed, polls, probe=probe)
                delay = min(delay, max(deadline - time.time(), 0.0) + 0.01)
                wake_at = time.monotonic() + delay
                if schedule.warm:
                    await asyncio.sleep(delay)
                elif await self._schedules.wait_warm(model, delay):
                    continue  # learnt while this task slept: aim its next poll again
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
                        self._stop(str(exc), ExitCode.STOPPED)
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
                if schedule.warm:
                    polls += 1
                if status is not None and status.state == "success":
                    self._schedules.observe(model, elapsed, last_running)
                    slot = False
                    self._release_slot()
                    self.store.mark_downloading(job_id, f"task {task_id} succeeded")
                    self._moved("running", "downloading")
                    await self._download(job_id, status.resources, attempts)
                    return
                if status is not None and status.state == "failed":
                    self._schedules.observe(model, elapsed, last_running)
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
                    self._give_up(job_id, "running", reason)
                    return
        finally:
            if slot:
                self._release_slot()

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
                    self._stop(str(exc), ExitCode.STOPPED)
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
                self._give_up(job_id, "downloading", reason)
                return
            delay = self._backoff(tries, self.opts.max_poll_interval, retry_after)
            await asyncio.sleep(min(delay, max(deadline - time.time(), 0.0) + 0.01))
