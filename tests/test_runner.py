"""The real runner against the simulator, in process and over a loopback port."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import httpx
import pytest

from batchgen.api import ModellixClient
from batchgen.manifest.types import Limits
from batchgen.simulator.app import Simulator, serve_in_thread
from batchgen.store.state import StateStore
from tests.runhelpers import (
    MODEL,
    SIM_KEY,
    check_run_dir,
    fast_options,
    in_process_client,
    make_jobs,
    run_in_dir,
    sim_config,
)

pytestmark = pytest.mark.anyio

LIMITS = Limits(concurrency=8, rate=1000.0, retries=4, timeout=60.0)


def accepted_duplicates(sim: Simulator) -> int:
    subs = sim.stats()["submissions"]
    return int(subs["accepted"] - subs["accepted_distinct_bodies"])


async def test_every_job_ends_done_with_a_valid_image(tmp_path: Path) -> None:
    sim = Simulator(sim_config())
    async with in_process_client(sim) as client:
        summary = await run_in_dir(tmp_path, client, make_jobs(30), LIMITS)
    assert summary.exit_code == 0
    assert (summary.done, summary.failed, summary.retries) == (30, 0, 0)
    assert check_run_dir(tmp_path)["done"] == 30
    stats = sim.stats()
    assert stats["submissions"]["total"] == 30
    assert stats["tasks"]["peak_concurrent"] <= LIMITS.concurrency
    assert stats["polls"]["per_task"]["mean"] <= 3


async def test_ten_percent_of_every_fault_still_ends_all_done(tmp_path: Path) -> None:
    sim = Simulator(sim_config(seed=11).with_faults(0.1))
    limits = dataclasses.replace(LIMITS, retries=15)
    async with in_process_client(sim) as client:
        summary = await run_in_dir(tmp_path, client, make_jobs(60), limits)
    assert summary.exit_code == 0, summary.format()
    assert summary.done == 60
    assert summary.retries > 0
    assert summary.throttled > 0
    assert check_run_dir(tmp_path)["done"] == 60
    codes = sim.stats()["status_codes"]
    assert {"429", "500", "503"} <= set(codes)


async def test_faults_over_a_real_loopback_socket(tmp_path: Path) -> None:
    sim = Simulator(sim_config(seed=5).with_faults(0.1))
    limits = dataclasses.replace(LIMITS, retries=15)
    with serve_in_thread(sim) as url:
        async with ModellixClient(url, SIM_KEY, operation_timeout=10.0) as client:
            summary = await run_in_dir(tmp_path, client, make_jobs(25), limits)
    assert summary.exit_code == 0, summary.format()
    assert check_run_dir(tmp_path)["done"] == 25


async def test_resume_polls_recorded_tasks_and_never_resubmits_them(tmp_path: Path) -> None:
    sim = Simulator(sim_config(time_scale=0.02))  # 0.2 s tasks
    jobs = make_jobs(20)
    async with in_process_client(sim) as client:
        first = await run_in_dir(tmp_path, client, jobs, LIMITS, fast_options(max_runtime=0.1))
        assert first.exit_code == 75
        with StateStore.open_readonly(tmp_path) as store:
            running = [j for j in store.iter_jobs(["running"]) if j.task_id]
        assert running, first.counts
        second = await run_in_dir(tmp_path, client, jobs, LIMITS)
    assert second.exit_code == 0
    assert second.resumed_in_flight == len(running)
    assert check_run_dir(tmp_path)["done"] == 20
    assert accepted_duplicates(sim) == 0
    assert sim.stats()["submissions"]["total"] == 20


class RevokeKeyAfter(httpx.AsyncBaseTransport):
    """Forwards to the simulator; after ``n`` submits the key is wrong (as if revoked)."""

    def __init__(self, sim: Simulator, n: int) -> None:
        self.inner = httpx.ASGITransport(app=sim)
        self.n = n
        self.submits = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            self.submits += 1
        if self.submits > self.n:
            request.headers["Authorization"] = "Bearer revoked"
        return await self.inner.handle_async_request(request)


async def test_401_mid_run_stops_submitting_and_keeps_what_ran(tmp_path: Path) -> None:
    sim = Simulator(sim_config(time_scale=0.01))
    transport = RevokeKeyAfter(sim, 5)
    client = ModellixClient("http://127.0.0.1", SIM_KEY, transport=transport)
    async with client:
        summary = await run_in_dir(tmp_path, client, make_jobs(20), LIMITS)
    assert summary.exit_code == 3
    assert summary.stop_reason is not None
    # Only submits already on the wire when the first 401 came back were sent after it.
    assert transport.submits <= 5 + LIMITS.concurrency
    # The 5 accepted tasks were polled... until polling answered 401 too: nothing is lost.
    counts = summary.counts
    assert counts["done"] + counts["running"] + counts["downloading"] == 5
    assert counts["pending"] == 15  # never submitted, ready for the next run
    check_run_dir(tmp_path)


async def test_402_mid_run_stops_submitting_and_finishes_running_tasks(tmp_path: Path) -> None:
    sim = Simulator(sim_config(balance=6))
    async with in_process_client(sim) as client:
        summary = await run_in_dir(tmp_path, client, make_jobs(20), LIMITS)
    assert summary.exit_code == 3
    assert summary.stop_reason is not None
    assert summary.done == 6
    assert summary.counts["pending"] == 14
    assert 1 <= sim.stats()["status_codes"].get("402", 0) <= LIMITS.concurrency
    assert check_run_dir(tmp_path)["done"] == 6


async def test_a_400_rejects_the_job_and_others_finish(tmp_path: Path) -> None:
    jobs = make_jobs(5)
    bad = dataclasses.replace(
        jobs[0], job_id="badsize00000000", body={"prompt": "x", "size": "7x7"}
    )
    sim = Simulator(sim_config())
    async with in_process_client(sim) as client:
        summary = await run_in_dir(tmp_path, client, [bad, *jobs[1:]], LIMITS)
    assert summary.exit_code == 1
    assert (summary.done, summary.rejected) == (4, 1)
    with StateStore.open_readonly(tmp_path) as store:
        rejected = store.get("badsize00000000")
    assert rejected.state == "rejected"
    assert rejected.attempts == 1
    assert rejected.last_error


async def test_deadline_stops_submitting_and_exits_75_with_work_left(tmp_path: Path) -> None:
    sim = Simulator(sim_config(time_scale=0.05))
    limits = dataclasses.replace(LIMITS, concurrency=2)
    async with in_process_client(sim) as client:
        summary = await run_in_dir(
            tmp_path, client, make_jobs(30), limits, fast_options(max_runtime=0.2)
        )
    assert summary.exit_code == 75
    assert summary.counts["pending"] > 0
    check_run_dir(tmp_path)


async def test_a_task_past_its_timeout_fails_with_the_reason(tmp_path: Path) -> None:
    sim = Simulator(sim_config(time_scale=1.0))  # 10 s tasks
    limits = dataclasses.replace(LIMITS, timeout=0.3)
    async with in_process_client(sim) as client:
        summary = await run_in_dir(tmp_path, client, make_jobs(2), limits)
    assert summary.exit_code == 1
    assert summary.failed == 2
    assert any("timed out" in reason for reason in summary.failed_by_reason)


async def test_unknown_submit_outcome_fails_when_resubmit_unknown_is_false(tmp_path: Path) -> None:
    sim = Simulator(sim_config(seed=3, error_500_rate=0.3))
    limits = dataclasses.replace(LIMITS, resubmit_unknown=False)
    async with in_process_client(sim) as client:
        summary = await run_in_dir(tmp_path, client, make_jobs(30), limits)
    assert summary.exit_code == 1
    assert summary.ambiguous_resubmits == 0
    unknown = [k for k in summary.failed_by_reason if k.startswith("submit outcome unknown")]
    assert sum(summary.failed_by_reason[k] for k in unknown) == summary.failed > 0
    assert summary.done + summary.failed == 30


async def test_jobs_left_out_of_the_manifest_are_not_submitted(tmp_path: Path) -> None:
    sim = Simulator(sim_config())
    jobs = make_jobs(6)
    async with in_process_client(sim) as client:
        store = StateStore.open(tmp_path, settings={"model": MODEL})
        store.sync_jobs(jobs)
        store.close()
        summary = await run_in_dir(tmp_path, client, jobs[:4], LIMITS)
    assert summary.done == 4
    assert summary.counts["pending"] == 2
    assert sim.stats()["submissions"]["total"] == 4
