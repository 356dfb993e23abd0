"""The account's limits, learnt from 429s and held: a cap on running tasks converges and holds
(no pause, no halving), a request rate is paced, and a resumed run starts from what was learnt."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from batchgen.api.throttle import rate_per_second, throttle_kind
from batchgen.manifest.types import Limits
from batchgen.run.pacing import LEARNT_LIMITS_KEY, AccountLimits, RateLimiter
from batchgen.simulator.app import Simulator
from batchgen.store.state import StateStore
from tests.runhelpers import check_run_dir, in_process_client, make_jobs, run_in_dir, sim_config

LIMITS = Limits(concurrency=16, rate=1000.0, retries=4, timeout=60.0)


def test_the_three_kinds_of_429_are_told_apart_by_their_message() -> None:
    assert (
        throttle_kind("Too Many Requests: too many running tasks: the concurrent task limit of 3")
        == "concurrency"
    )
    assert (
        throttle_kind("Too Many Requests: too many requests: request rate limit of 100 per minute")
        == "rate"
    )
    assert throttle_kind("Too Many Requests: the server is busy, try again later") == "unknown"
    assert throttle_kind("Too Many Requests: slow down", {"x-ratelimit-remaining": "0"}) == "rate"
    assert rate_per_second({"x-ratelimit-limit": "120"}) == pytest.approx(2.0)
    assert rate_per_second({"x-ratelimit-limit": "lots"}) is None


def test_the_cap_falls_to_the_running_count_at_once_and_probes_up_slowly() -> None:
    account = AccountLimits(16, probe_after=5)
    assert account.limit(16) == 16
    assert account.on_cap_hit(3)
    assert account.limit(16) == 3
    assert not account.on_cap_hit(5)  # a 429 never raises the cap
    for _ in range(5):
        account.on_accepted(3)
    assert account.cap == 4  # the fifth at the cap: probe one above
    assert account.as_setting()["concurrency_cap"] == 3  # a probe is not recorded
    assert not account.on_cap_hit(3)  # refused: back to the cap held
    assert account.cap == 3
    assert list(account.history) == [3, 4, 3]
    assert account.lowest == 3
    for _ in range(5):
        account.on_accepted(3)
    account.on_accepted(4)  # a probe accepted: the working cap stays up, not the one held
    assert account.cap == 4
    assert account.as_setting()["concurrency_cap"] == 3


def test_what_was_learnt_survives_as_a_setting() -> None:
    account = AccountLimits(16)
    account.on_cap_hit(3)
    assert account.on_rate_hit(100 / 60) == pytest.approx(100 / 60)
    again = AccountLimits(16, learnt=account.as_setting())
    assert (again.cap, again.rate) == (3, pytest.approx(100 / 60))
    assert AccountLimits(2, learnt=account.as_setting()).cap == 2  # never above the manifest
    assert AccountLimits(16, learnt={"concurrency_cap": "x", "rate_per_s": -1}).cap is None


def test_a_learnt_rate_is_paced_in_bursts_of_one() -> None:
    now = [0.0]
    rate = RateLimiter(1000.0, clock=lambda: now[0])
    rate.set_rate(2.0)
    assert rate.try_acquire()
    assert not rate.try_acquire()
    assert rate.delay() == pytest.approx(0.5)


@pytest.mark.anyio
async def test_the_pool_converges_to_the_accounts_cap_and_holds_it(tmp_path: Path) -> None:
    sim = Simulator(sim_config(max_concurrent_tasks=3))
    async with in_process_client(sim) as client:
        summary = await run_in_dir(tmp_path, client, make_jobs(60), LIMITS)
    assert summary.exit_code == 0, summary.format()
    assert summary.done == 60
    assert check_run_dir(tmp_path)["done"] == 60
    # The first 429 (the fourth task, one submit at a time) teaches the cap; never lower after
    # it, never a pause nor a halving; the only other 429s are the probes one above the cap
    # after every 10 submits accepted at it.
    probes = (60 - 3) // 10
    assert summary.throttled_by_kind == {"concurrency": summary.throttled}
    assert 1 <= summary.throttled <= 1 + probes
    assert summary.concurrency_cap == summary.concurrency_cap_lowest == 3
    assert summary.throttle_pauses == summary.concurrency_decreases == 0
    # The working limit: the cap, or one above it when the run ended after an accepted probe
    # (on a busy machine a probe may go while one of our tasks has ended unseen).
    assert summary.concurrency_limit in (3, 4)
    assert sim.stats()["tasks"]["peak_concurrent"] == 3
    # Held: every other submit was accepted, each into a slot of ours that had just freed.
    assert summary.submitted == 60 + summary.throttled
    with StateStore.open(tmp_path) as store:
        assert store.settings()[LEARNT_LIMITS_KEY]["concurrency_cap"] == 3


@pytest.mark.anyio
async def test_a_resumed_run_starts_at_the_learnt_cap(tmp_path: Path) -> None:
    sim = Simulator(sim_config(max_concurrent_tasks=3))
    async with in_process_client(sim) as client:
        first = await run_in_dir(tmp_path, client, make_jobs(10), LIMITS)
    assert first.concurrency_cap == 3
    sim = Simulator(sim_config(max_concurrent_tasks=3))  # the same account, a new run
    more = make_jobs(10) + make_jobs(20, tag="owl")
    async with in_process_client(sim) as client:
        second = await run_in_dir(tmp_path, client, more, LIMITS)
    assert second.exit_code == 0, second.format()
    assert second.done == 30
    # Started at 3: no 429 but the probes one above it after every 10 accepted at it.
    assert second.throttled <= 30 // 10
    assert second.throttled_by_kind.get("concurrency", 0) == second.throttled
    assert second.concurrency_cap == 3
    assert sim.stats()["tasks"]["peak_concurrent"] == 3


@pytest.mark.anyio
async def test_a_request_rate_is_learnt_from_the_answers_and_paced(tmp_path: Path) -> None:
    # 600 submits per minute (10/s, time-scaled tasks): once learnt from the first 429's
    # X-RateLimit-Limit, submits are paced at it and few more 429s come.
    sim = Simulator(sim_config(rate_limit=10.0, rate_burst=2))
    limits = dataclasses.replace(LIMITS, concurrency=4)
    async with in_process_client(sim) as client:
        summary = await run_in_dir(tmp_path, client, make_jobs(12), limits)
    assert summary.exit_code == 0, summary.format()
    assert summary.done == 12
    assert set(summary.throttled_by_kind) == {"rate"}
    assert summary.learnt_rate == pytest.approx(10.0)
    assert summary.throttled <= 6
    assert summary.throttle_pauses == summary.concurrency_decreases == 0
