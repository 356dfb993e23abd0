"""The run loop: one asyncio loop, one client, a bounded pool of remote tasks.

:func:`run_jobs` takes a state file (:class:`batchgen.store.state.StateStore`) whose jobs are
already recorded and drives every job to an end: it submits pending jobs
(:mod:`batchgen.run.submitting`), polls each task (:mod:`batchgen.run.following`), downloads
each result as soon as the task succeeds (:mod:`batchgen.run.downloading`), and records every
step in the state file before acting on it.  Jobs come from :mod:`batchgen.run.job_source`.

How it ends (:class:`batchgen.run.summary.RunSummary`.exit_code, :class:`batchgen.errors.ExitCode`):
0 every job done; 1 some failed/rejected/expired; 3 stopped by auth/payment/configuration or a
disk error; 75 ``max_runtime`` reached with work left; 130 the ``stop`` event was set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from batchgen.api import ModellixClient
from batchgen.errors import ExitCode
from batchgen.run.options import LimitsLike, RunOptions
from batchgen.run.progress import Progress
from batchgen.run.submitting import Submits
from batchgen.run.summary import RunSummary
from batchgen.store.outputs import OutputDir
from batchgen.store.records import ALL_STATES
from batchgen.store.spend import ACCEPTED, AMBIGUOUS
from batchgen.store.state import StateStore

# RunOptions, RunSummary and LimitsLike are importable from here as before the split.
__all__ = ["LimitsLike", "RunOptions", "RunSummary", "Runner", "run_jobs"]

logger = logging.getLogger("batchgen.run")

_TERMINAL_BAD = ("failed", "rejected", "expired")


class Runner(Submits):
    """One run over one state file; see :func:`run_jobs`."""

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
        self._start_ledger(recovered)
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
                    model=job.model,
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
                nxt = self._jobs.next()
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
                    or not self._budget_allows(job)
                ):
                    self._jobs.put_back(job)  # not taken: back to the front of the queue
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
        s.concurrency_lowest = self._aimd.lowest
        s.concurrency_limit = self._account.limit(self._aimd.limit)
        s.concurrency_cap, s.learnt_rate = self._account.held, self._account.rate
        s.concurrency_cap_lowest = self._account.lowest
        left = sum(counts[k] for k in ("pending", "submitting", "running", "downloading"))
        if interrupted:
            s.exit_code, s.stop_reason = ExitCode.INTERRUPTED, "interrupted"
        elif self._stop_submitting is not None:
            s.exit_code, s.stop_reason = self._stop_code, self._stop_submitting
        elif deadline_hit and left:
            s.exit_code, s.stop_reason = ExitCode.TEMPFAIL, "max runtime reached"
        elif any(counts[k] for k in _TERMINAL_BAD):
            s.exit_code = ExitCode.JOBS_FAILED
        else:
            s.exit_code = ExitCode.OK
        if self.opts.metrics_interval is not None:
            await self._write_metrics(running=False, exit_code=s.exit_code)
        return s

    def _start_ledger(self, recovered: list[str]) -> None:
        """The guard starts from the state file's ledger; jobs a crash left in ``submitting``
        may have been billed: each counts as an ambiguous submission."""
        for job_id in recovered:
            job = self.store.get(job_id)
            charge = self._guard.charge(job.model, job.body)
            self.store.record_submission(job_id, AMBIGUOUS, charge)
        spend = self.store.spend()
        self._guard.billed = spend[ACCEPTED] + spend[AMBIGUOUS]
        self._guard.spent = spend["estimated_usd"]
        self.store.update_spend_info({"stopped": None})

    async def _write_metrics(self, **kw: Any) -> None:
        """Write ``metrics.prom`` in a thread; a failure is logged, never fatal."""
        from batchgen.reports.metrics import write_metrics  # noqa: PLC0415 - optional feature

        try:
            await asyncio.to_thread(write_metrics, self.store.path, **kw)
        except Exception as exc:  # metrics must never stop a run
            logger.warning("cannot write metrics.prom: %s", exc)

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
