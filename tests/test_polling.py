"""The adaptive poll schedule (batchgen.run.polling)."""

from __future__ import annotations

import pytest

from batchgen.run.polling import _LADDER, PollSchedule


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


def test_a_task_past_the_whole_ladder_backs_off() -> None:
    schedule = _learnt([2.0] * 50)
    assert schedule.next_delay(4.0, len(_LADDER)) == pytest.approx(2.0)


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
