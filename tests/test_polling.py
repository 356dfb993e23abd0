"""The adaptive poll schedule (batchgen.run.polling)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchgen.run.polling import _LADDER_SHORT, PollSchedule, PollSchedules


def _learnt(durations: list[float]) -> PollSchedule:
    schedule = PollSchedule(min_interval=0.5, max_interval=1000.0)
    for d in durations:
        schedule.observe(d, d - 0.1)
    return schedule


def test_tasks_of_one_duration_are_polled_again_one_gap_after_a_running_answer() -> None:
    schedule = _learnt([2.0] * 50)
    assert schedule.next_delay(0.0, 0) == pytest.approx(1.95)
    # Seen running at 1.95 s: every rung is behind, the task is due any moment.
    assert schedule.next_delay(1.95, 1) == pytest.approx(0.5)
    assert schedule.next_delay(2.45, 2) == pytest.approx(0.5)


def test_rungs_closer_than_one_gap_are_polled_once_at_the_last_of_them() -> None:
    # 1 s tasks learnt with 30 ms of jitter, polls at least 50 ms apart: a poll at the 30th
    # percentile and another a gap later would cost two polls and see the end later than one
    # poll at the top of the spread.
    schedule = PollSchedule(min_interval=0.05, max_interval=30.0)
    for i in range(100):
        d = 0.985 + 0.0003 * i
        schedule.observe(d, d - 0.01)
    top = schedule.quantile(_LADDER_SHORT[-1])
    assert top is not None
    assert schedule.next_delay(0.0, 0) == pytest.approx(top)
    # Spread wider than a gap: the first rung is still polled on its own.
    wide = PollSchedule(min_interval=0.05, max_interval=30.0)
    for i in range(100):
        d = 0.5 + 0.01 * i
        wide.observe(d, d - 0.01)
    assert wide.next_delay(0.0, 0) == pytest.approx(wide.quantile(_LADDER_SHORT[0]))


def test_a_task_past_the_whole_ladder_backs_off() -> None:
    schedule = _learnt([2.0] * 50)
    assert schedule.next_delay(4.0, len(_LADDER_SHORT)) == pytest.approx(2.0)


def test_spread_durations_follow_the_ladder_of_quantiles() -> None:
    schedule = _learnt([float(d) for d in range(1, 101)])
    first = schedule.next_delay(0.0, 0)
    second_at = first + schedule.next_delay(first, 1)
    assert 40 < first < 51  # the 45th percentile
    assert 60 < second_at < 71  # the 65th


def test_narrow_durations_are_polled_again_after_two_percent_of_them() -> None:
    schedule = PollSchedule(min_interval=0.01, max_interval=1000.0)
    for _ in range(50):
        schedule.observe(10.0, 9.9)
    # Seen running at 9.95 s (the durations learnt), past every rung: due any moment, polled
    # again 2% of 9.95 s later.
    assert schedule.next_delay(9.95, 1) == pytest.approx(0.02 * 9.95)


# ------------------------------------------------------------------ learning fast, from zero


def _run_tasks(schedule: PollSchedule, durations: list[float]) -> list[tuple[int, float]]:
    """Poll tasks of the given durations one after the other as the runner does; return
    (polls, seconds from the task's end to the poll that saw it ended) per task."""
    seen = []
    for duration in durations:
        probe = schedule.enlist()
        elapsed, polls, warm_polls, last = 0.0, 0, 0, None
        while True:
            elapsed += schedule.next_delay(elapsed, warm_polls, probe=probe)
            polls += 1
            if schedule.warm:
                warm_polls += 1
            if elapsed >= duration:
                schedule.observe(elapsed, last)
                break
            last = elapsed
        seen.append((polls, elapsed - duration))
    return seen


@pytest.mark.parametrize("duration", [0.02, 0.5, 1.0, 10.0, 60.0])
def test_the_first_tasks_teach_the_schedule_whatever_the_duration(duration: float) -> None:
    schedule = PollSchedule(min_interval=0.01, max_interval=1000.0)
    seen = _run_tasks(schedule, [duration] * 20)
    assert schedule.warm
    # A probe is seen ended at most 15% (or one shortest gap) after its end ...
    assert seen[0][1] <= max(0.15 * duration, 0.1) + 1e-9
    # ... and a few tasks later every task is seen ended within a few % of its duration.
    for _polls, lag in seen[8:]:
        assert lag <= max(0.05 * duration, 0.01) + 1e-9


def test_long_tasks_need_at_most_three_polls_once_learnt() -> None:
    schedule = PollSchedule(min_interval=0.05, max_interval=30.0)
    seen = _run_tasks(schedule, [20.0] * 40)
    assert all(polls <= 3 for polls, _ in seen[8:])


def test_first_polls_that_keep_finding_tasks_ended_shrink_the_first_wait() -> None:
    schedule = PollSchedule(min_interval=0.01, max_interval=1000.0)
    _run_tasks(schedule, [10.0] * 20)  # learnt: 10 s tasks
    first = schedule.next_delay(0.0, 0)
    for _ in range(300):  # now tasks take 0.5 s; the first poll sees every one ended
        schedule.observe(schedule.next_delay(0.0, 0), None)
    assert schedule.next_delay(0.0, 0) < first / 10


def test_a_censored_observation_never_counts_above_its_bound() -> None:
    schedule = PollSchedule(warmup=1)
    schedule.observe(4.0, None)
    assert schedule.quantile(1.0) == pytest.approx(2.0)
    schedule.observe(10.0, 9.0)
    schedule.observe(3.0, None)  # below 3.0 only the 2.0 learnt: imputed as that
    assert schedule.quantile(0.0) == pytest.approx(2.0)


def test_each_model_has_its_own_schedule() -> None:
    schedules = PollSchedules(first_wait=0.1, min_interval=0.01, max_interval=100.0)
    for _ in range(10):
        schedules.observe("fast", 1.0, 0.98)
        schedules.observe("slow", 8.0, 7.9)
    assert schedules["fast"].quantile(0.5) == pytest.approx(0.99)
    assert schedules["slow"].quantile(0.5) == pytest.approx(7.95)
    assert not schedules["new"].warm


durations = st.floats(min_value=1e-3, max_value=1e4, allow_nan=False)
observations = st.lists(
    st.tuples(durations, st.one_of(st.none(), st.floats(min_value=0.0, max_value=1.0))),
    max_size=60,
)


def _fill(schedule: PollSchedule, obs: list[tuple[float, float | None]]) -> None:
    for upper, frac in obs:
        schedule.observe(upper, None if frac is None else upper * frac)


@settings(max_examples=200, deadline=None)
@given(
    obs=observations,
    elapsed=st.floats(min_value=0.0, max_value=1e5, allow_nan=False),
    polls=st.integers(min_value=0, max_value=20),
    probe=st.booleans(),
    min_interval=st.floats(min_value=1e-3, max_value=1.0),
    span=st.floats(min_value=1.0, max_value=1000.0),
)
def test_delays_are_positive_and_bounded(
    *,
    obs: list[tuple[float, float | None]],
    elapsed: float,
    polls: int,
    probe: bool,
    min_interval: float,
    span: float,
) -> None:
    schedule = PollSchedule(min_interval=min_interval, max_interval=min_interval * span)
    _fill(schedule, obs)
    delay = schedule.next_delay(elapsed, polls, probe=probe)
    assert min_interval <= delay <= min_interval * span


@settings(max_examples=200, deadline=None)
@given(obs=observations, qs=st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=2))
def test_quantiles_are_monotone(obs: list[tuple[float, float | None]], qs: list[float]) -> None:
    schedule = PollSchedule(warmup=1)
    _fill(schedule, obs)
    if not schedule.warm:
        return
    values = [schedule.quantile(q) for q in sorted(qs)]
    assert all(a is not None and b is not None and a <= b for a, b in itertools.pairwise(values))


@settings(max_examples=200, deadline=None)
@given(obs=observations, bound=durations)
def test_censored_data_never_raise_the_estimate_above_their_bound(
    obs: list[tuple[float, float | None]], bound: float
) -> None:
    schedule = PollSchedule(warmup=1, window=1000)
    _fill(schedule, obs)
    before = schedule.quantile(1.0)
    for _ in range(5):
        schedule.observe(bound, None)
    top = schedule.quantile(1.0)
    assert top is not None
    assert top <= max(bound, before if before is not None else 0.0)
    # only censored observations: every learnt duration is at most the bound
    only = PollSchedule(warmup=1)
    for _ in range(5):
        only.observe(bound, None)
    assert (only.quantile(1.0) or 0.0) <= bound
