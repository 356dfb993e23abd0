"""429s: one shared pause and one concurrency cut per throttle window, growth back per
accepted submit, and every job still ends done."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from batchgen.manifest.types import Limits
from batchgen.run.pacing import AimdLimit, RateLimiter
from batchgen.simulator.app import Simulator
from tests.runhelpers import check_run_dir, in_process_client, make_jobs, run_in_dir, sim_config


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_429s_of_submits_sent_before_the_pause_neither_extend_nor_restart_it() -> None:
    clock = Clock()
    rate = RateLimiter(1000.0, clock=clock)
    sent = [clock.now + i * 0.001 for i in range(10)]  # ten submits on their way
    clock.now = sent[-1] + 0.01
    started = [rate.throttled(1.0, sent_at=t) for t in sent]
    assert started == [True] + [False] * 9
    assert rate.pauses == 1
    clock.now += 0.5
    assert rate.throttled(1.0, sent_at=sent[0]) is False  # a late answer of an old submit
    assert rate.delay() == pytest.approx(0.5)  # the pause was not extended
    assert not rate.try_acquire()


def test_random_429s_in_the_recovery_span_start_no_new_pause_but_a_storm_does() -> None:
    clock = Clock()
    rate = RateLimiter(1000.0, clock=clock)
    assert rate.throttled(1.0, sent_at=clock.now)
    clock.now += 1.0  # the pause ends
    assert rate.try_acquire()
    clock.now += 0.2
    assert rate.throttled(1.0, sent_at=clock.now - 0.1) is False  # recovery span
    assert rate.delay() == 0.0
    assert rate.throttled(1.0, sent_at=clock.now - 0.05, storm=True) is True
    assert rate.delay() == pytest.approx(1.0)
    clock.now += 3.0  # past the second window: any 429 starts a new one
    assert rate.throttled(2.0, sent_at=clock.now - 0.01) is True
    assert rate.pauses == 3


def test_concurrency_is_cut_once_per_window_and_grows_back_in_bounded_successes() -> None:
    clock = Clock()
    rate = RateLimiter(1000.0, clock=clock)
    aimd = AimdLimit(200)
    for i in range(20):  # a burst of 429s from one window
        if rate.throttled(1.0, sent_at=clock.now - 0.5 + i * 0.01):
            aimd.on_throttle()
    assert (aimd.decreases, aimd.limit) == (1, 100)
    for _ in range(100):
        aimd.on_success()
    assert aimd.limit == 200


LIMITS = Limits(concurrency=8, rate=1000.0, retries=4, timeout=60.0)


@pytest.mark.anyio
async def test_random_429s_make_only_their_job_wait_and_end_all_done(tmp_path: Path) -> None:
    sim = Simulator(sim_config(seed=3, error_429_rate=0.1, fault_routes=frozenset({"submit"})))
    async with in_process_client(sim) as client:
        summary = await run_in_dir(tmp_path, client, make_jobs(80), LIMITS)
    assert summary.exit_code == 0, summary.format()
    assert summary.done == 80
    assert check_run_dir(tmp_path)["done"] == 80
    assert summary.throttled > 0
    assert summary.throttled_by_kind == {"unknown": summary.throttled}
    # A 429 that names no limit is no reason to slow everybody down: unless several come in
    # a row (a storm), no shared pause and no concurrency cut.
    assert summary.throttle_pauses == summary.concurrency_decreases <= summary.throttled // 3
    assert summary.concurrency_cap is None
    assert summary.concurrency_limit == LIMITS.concurrency
    assert sim.stats()["status_codes"]["429"] == summary.throttled


@pytest.mark.anyio
async def test_a_storm_of_unsaid_429s_starts_a_shared_pause_and_one_cut(tmp_path: Path) -> None:
    sim = Simulator(sim_config(seed=3, error_429_rate=0.6, fault_routes=frozenset({"submit"})))
    limits = dataclasses.replace(LIMITS, retries=8)
    async with in_process_client(sim) as client:
        summary = await run_in_dir(tmp_path, client, make_jobs(20), limits)
    assert summary.exit_code == 0, summary.format()
    assert summary.done == 20
    assert summary.throttle_pauses >= 1
    assert summary.concurrency_decreases == summary.throttle_pauses


@pytest.mark.anyio
async def test_a_burst_of_running_task_429s_learns_the_cap_without_pause(tmp_path: Path) -> None:
    # Eight submits leave at once; the simulator accepts four tasks and answers the other
    # four 429 (its concurrent-task limit): the cap is learnt, never below 4, nobody pauses.
    sim = Simulator(sim_config(max_concurrent_tasks=4, time_scale=0.01))
    limits = dataclasses.replace(LIMITS, submits_in_flight=8, retries=8)
    async with in_process_client(sim) as client:
        summary = await run_in_dir(tmp_path, client, make_jobs(8), limits)
    assert summary.exit_code == 0, summary.format()
    assert summary.done == 8
    assert summary.throttled >= 4
    assert summary.throttled_by_kind == {"concurrency": summary.throttled}
    assert summary.concurrency_cap is not None
    assert 4 <= summary.concurrency_cap < 8
    assert summary.throttle_pauses == summary.concurrency_decreases == 0
