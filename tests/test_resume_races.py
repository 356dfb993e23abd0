"""Resume races found by the chaos and secrets tests, pinned as plain regression tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchgen.manifest.types import Limits
from batchgen.simulator.app import Simulator
from batchgen.store.state import StateStore
from tests.runhelpers import (
    MODEL,
    check_run_dir,
    fast_options,
    in_process_client,
    make_jobs,
    run_in_dir,
    sim_config,
)

pytestmark = pytest.mark.anyio


async def test_resumed_tasks_that_go_back_to_pending_are_submitted_once(tmp_path: Path) -> None:
    # A killed run left the last jobs `running`, but the server no longer knows their tasks
    # (404): they go back to the retry queue before the pager reaches them.  The pager then
    # reads them as pending as well; each must still be submitted exactly once.
    jobs = make_jobs(10)
    with StateStore.open(tmp_path, settings={"model": MODEL}) as store:
        store.sync_jobs(jobs)
        for i, job in enumerate(jobs[5:]):
            store.mark_submitting(job.job_id)
            store.mark_running(job.job_id, f"task-gone-{i}", None)
    sim = Simulator(sim_config(time_scale=0.01))  # 0.1 s tasks: the pager is slow to reach them
    limits = Limits(concurrency=10, rate=1000.0, retries=3, timeout=60.0)
    async with in_process_client(sim) as client:
        summary = await run_in_dir(
            tmp_path,
            client,
            None,
            limits,
            fast_options(page_size=2, backoff_base=1.0, backoff_cap=1.0),
        )
    assert summary.exit_code == 0, summary.format()
    assert summary.resumed_in_flight == 5
    assert check_run_dir(tmp_path)["done"] == 10
    subs = sim.stats()["submissions"]
    assert subs["total"] == subs["distinct_bodies"] == 10
