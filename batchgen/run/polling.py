"""When to poll a task: learn how long tasks take and aim the polls at the expected finish.

Contract of :class:`PollSchedule`:

* every delay it returns is positive and within ``[min_interval, max_interval]``;
* it never waits a fixed time before anything is learnt: a cold schedule polls its first
  tasks (*probes*, :meth:`PollSchedule.enlist`) early (``first_wait``) and backs off by
  ``probe_factor``, so a probe is seen ended at most ``probe_factor`` x its duration after its
  submit, however short or long it is; other tasks started while cold back off by
  ``cold_factor`` and are meant to be re-planned once the schedule is warm
  (:meth:`PollSchedules.wait_warm`);
* what a poll sees is recorded as an interval: a task seen running at ``lower`` and ended at
  ``upper`` ended in ``(lower, upper]``; a task whose first poll already saw it ended is
  *censored*, ``(0, upper]``, and is imputed from the learnt durations below ``upper`` (or
  ``upper / 2`` when none is), never above ``upper``; so first polls that keep finding tasks
  ended pull the first poll down geometrically;
* quantiles are monotone in ``q``.

:class:`PollSchedules` keeps one schedule per model (durations differ by model).
"""

from __future__ import annotations

import asyncio
import bisect
from collections import deque

__all__ = ["PollSchedule", "PollSchedules"]

# Quantiles of the learnt duration distribution at which a task is polled, in order.  A task
# holds its slot until a poll sees it ended, so the rungs trade polls for that wait (the
# figures behind this choice are in docs/performance.md).
_LADDER = (0.45, 0.65, 0.8, 0.9, 0.96, 0.99)
# Tasks shorter than _SHORT shortest gaps (typical duration; 5 s with the default 0.05 s) are
# polled on a denser ladder: a poll costs the same, a slot-second is worth more (figures in
# docs/performance.md).  Relative to min_interval so time-scaled runs keep it.
_LADDER_SHORT = (0.3, 0.45, 0.58, 0.7, 0.8, 0.88, 0.94, 0.98)
_SHORT = 100
# Shortest gap between two polls, as a fraction of the typical duration: a task seen running
# past every rung of a narrow distribution is due any moment.
_GAP = 0.02
# This many first polls in a row that find their task ended: forget all but those tasks.
# (With the first rung at the 45th percentile, a steady lognormal does this once in ~600.)
_FORGET_AFTER = 8


class PollSchedule:
    """An adaptive poll schedule shared by the tasks of one model.

    Until ``warmup`` tasks have ended it polls at ``first_wait`` then at ``probe_factor`` (for
    probes) or ``cold_factor`` (other tasks) x the time elapsed since the submit.
    Afterwards the n-th poll of a task lands on the n-th quantile of :data:`_LADDER` of
    the last ``window`` durations (so most tasks need one to three polls), then backs off by
    ``factor``; consecutive polls are at least ``min_interval`` (and 2% of the typical
    duration) apart, at most ``max_interval``.
    """

    def __init__(
        self,
        *,
        first_wait: float = 0.1,
        min_interval: float = 0.05,
        max_interval: float = 30.0,
        factor: float = 1.5,
        probe_factor: float = 1.15,
        cold_factor: float = 3.0,
        warmup: int = 3,
        window: int = 256,
    ) -> None:
        if min_interval <= 0 or max_interval < min_interval:
            raise ValueError("need 0 < min_interval <= max_interval")
        self.first_wait = first_wait
        self.min_interval = min_interval
        self.max_interval = max_interval
        self.factor = factor
        self.probe_factor = probe_factor
        self.cold_factor = cold_factor
        self.warmup = max(1, warmup)
        self._probes = 0
        self._recent: deque[float] = deque(maxlen=max(window, self.warmup))
        self._sorted: list[float] = []
        self.observed = 0
        self.censored = 0
        self.forgets = 0
        self._streak = 0

    def observe(self, upper: float, lower: float | None) -> None:
        """A task ended between ``lower`` (last poll that saw it running, seconds after submit;
        ``None`` when the first poll already saw it ended: censored) and ``upper`` (that
        poll)."""
        if not upper > 0:
            return
        if lower is None or not 0 <= lower < upper:
            value = self._impute_below(upper)
            self.censored += 1
            self._streak += 1
        else:
            value = (lower + upper) / 2.0
            self._streak = 0
        self.observed += 1
        if len(self._recent) == self._recent.maxlen:
            old = self._recent[0]
            del self._sorted[bisect.bisect_left(self._sorted, old)]
        self._recent.append(value)
        bisect.insort(self._sorted, value)
        if self._streak >= _FORGET_AFTER and len(self._recent) > _FORGET_AFTER:
            # First polls keep finding tasks ended: the durations changed; learn again from
            # the last few tasks only.
            keep = list(self._recent)[-_FORGET_AFTER:]
            self._recent.clear()
            self._recent.extend(keep)
            self._sorted = sorted(keep)
            self.forgets += 1
        if self._streak >= _FORGET_AFTER:
            self._streak = 0

    def _impute_below(self, upper: float) -> float:
        """A duration known only to be <= ``upper``: the median of the learnt durations below
        ``upper`` (the conditional median), or half of ``upper`` when none is below it."""
        below = bisect.bisect_left(self._sorted, upper)
        if below == 0:
            return upper / 2.0
        return self._sorted[(below - 1) // 2]

    def enlist(self) -> bool:
        """A task starts being polled: True when it is a probe (one of the first
        ``2 x warmup`` tasks started while the schedule is cold), polled densely."""
        if self.warm or self._probes >= 2 * self.warmup:
            return False
        self._probes += 1
        return True

    @property
    def warm(self) -> bool:
        """Enough tasks ended to aim the polls at quantiles."""
        return len(self._sorted) >= self.warmup

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile of recent durations, or ``None`` before warm-up."""
        if not self.warm:
            return None
        q = min(max(q, 0.0), 1.0)
        return self._sorted[min(len(self._sorted) - 1, int(q * len(self._sorted)))]

    def next_delay(self, elapsed: float, polls: int, *, probe: bool = True) -> float:
        """Seconds to wait before the next poll of a task ``elapsed`` seconds after its submit,
        that was polled ``polls`` times already (since the schedule was warm, for a task
        started cold); ``probe``: see :meth:`enlist`."""
        elapsed = max(elapsed, 0.0)
        polls = max(polls, 0)
        median = self.quantile(0.5)
        if median is None:
            gap = self.min_interval
            factor = self.probe_factor if probe else self.cold_factor
            target = max(self.first_wait, elapsed * factor)
        else:
            gap = max(self.min_interval, _GAP * median)
            target = end = 0.0
            ladder = _LADDER_SHORT if median < _SHORT * self.min_interval else _LADDER
            # The first ladder rung still ahead of this task.
            # Rungs within one gap after it cannot get a poll of their own (polls are a gap
            # apart at least): poll once, at the last of them.
            for q in ladder[polls:]:
                value = self.quantile(q) or median
                if target == 0.0:
                    if value > elapsed + gap / 2:
                        target = value
                elif value <= target + gap:
                    end = value
                else:
                    break
            if target != 0.0:
                target = max(target, end)
            if target == 0.0:
                # Past every rung while rungs are left: the durations are narrow (e.g. all
                # alike), so the task is due any moment: one gap later, not 50% later (a 2 s
                # task seen running at 1.9 s was polled again at 2.85 s); the overshoot past
                # the top rung doubles per poll, so a schedule learnt too short catches up in
                # a few polls.
                top = self.quantile(ladder[-1]) or median
                target = (
                    elapsed + max(gap, elapsed - top)
                    if polls < len(ladder)
                    else elapsed * self.factor
                )
        delay = max(target - elapsed, gap)
        return min(delay, self.max_interval)


class PollSchedules:
    """One :class:`PollSchedule` per model, created on first use with the same settings."""

    def __init__(
        self,
        *,
        first_wait: float = 0.1,
        min_interval: float = 0.05,
        max_interval: float = 30.0,
    ) -> None:
        self._first_wait = first_wait
        self._min_interval = min_interval
        self._max_interval = max_interval
        self.by_model: dict[str, PollSchedule] = {}
        self._warmed: dict[str, asyncio.Event] = {}

    def __getitem__(self, model: str) -> PollSchedule:
        schedule = self.by_model.get(model)
        if schedule is None:
            schedule = self.by_model[model] = PollSchedule(
                first_wait=self._first_wait,
                min_interval=self._min_interval,
                max_interval=self._max_interval,
            )
        return schedule

    def observe(self, model: str, upper: float, lower: float | None) -> None:
        """Record an ended task of ``model`` (see :meth:`PollSchedule.observe`); wakes the
        waiters of :meth:`wait_warm` once the model's schedule is warm."""
        schedule = self[model]
        schedule.observe(upper, lower)
        if schedule.warm:
            event = self._warmed.pop(model, None)
            if event is not None:
                event.set()

    async def wait_warm(self, model: str, timeout: float) -> bool:
        """Sleep ``timeout`` seconds, or less when the schedule of ``model`` becomes warm
        meanwhile (True then: re-plan the next poll)."""
        if self[model].warm:
            await asyncio.sleep(timeout)
            return False
        event = self._warmed.get(model)
        if event is None:
            event = self._warmed[model] = asyncio.Event()
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except (TimeoutError, asyncio.TimeoutError):
            return False
        return True
