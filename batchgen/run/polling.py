"""When to poll a task: learn how long tasks take and aim the polls at the expected finish."""

from __future__ import annotations

import bisect
from collections import deque

__all__ = ["PollSchedule"]

# Quantiles of the learnt duration distribution at which a task is polled, in order.  A task
# holds its slot until a poll sees it ended, so the rungs trade polls for that wait (the
# figures behind this choice are in docs/performance.md).
_LADDER = (0.45, 0.65, 0.8, 0.9, 0.96, 0.99)
# Shortest gap between two polls, as a fraction of the typical duration: a task seen running
# past every rung of a narrow distribution is due any moment.
_GAP = 0.02


class PollSchedule:
    """An adaptive poll schedule shared by every task of a run.

    Until ``warmup`` tasks have finished it polls at ``first_wait`` then backs off
    by ``factor``.  Afterwards the n-th poll of a task lands on the n-th quantile
    of :data:`_LADDER` of recent task durations (so most tasks need one to three
    polls), then backs off by ``factor``; consecutive polls are at least
    ``min_interval`` (and 2% of the typical duration) apart, at most ``max_interval``.
    """

    def __init__(
        self,
        *,
        first_wait: float = 2.0,
        min_interval: float = 0.05,
        max_interval: float = 30.0,
        factor: float = 1.5,
        warmup: int = 5,
        window: int = 256,
    ) -> None:
        self.first_wait = first_wait
        self.min_interval = min_interval
        self.max_interval = max_interval
        self.factor = factor
        self.warmup = warmup
        self._recent: deque[float] = deque(maxlen=window)
        self._sorted: list[float] = []

    def observe(self, upper: float, lower: float | None) -> None:
        """A task ended between ``lower`` (last poll that saw it running, seconds after submit;
        ``None`` when the first poll already saw it ended) and ``upper`` (that poll)."""
        if upper <= 0:
            return
        low = lower if lower is not None else upper * 0.8
        value = (low + upper) / 2.0
        if len(self._recent) == self._recent.maxlen:
            old = self._recent[0]
            del self._sorted[bisect.bisect_left(self._sorted, old)]
        self._recent.append(value)
        bisect.insort(self._sorted, value)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile of recent durations, or ``None`` before warm-up."""
        if len(self._sorted) < self.warmup:
            return None
        return self._sorted[min(len(self._sorted) - 1, int(q * len(self._sorted)))]

    def next_delay(self, elapsed: float, polls: int) -> float:
        """Seconds to wait before the next poll of a task ``elapsed`` seconds after its submit,
        that was polled ``polls`` times already."""
        median = self.quantile(0.5)
        if median is None:
            target = self.first_wait if polls == 0 else elapsed * self.factor
            gap = self.min_interval
        else:
            gap = max(self.min_interval, _GAP * median)
            target = 0.0
            # The first ladder rung still ahead of this task.
            for q in _LADDER[polls:]:
                value = self.quantile(q) or median
                if value > elapsed + gap / 2:
                    target = value
                    break
            if target == 0.0:
                # Past every rung while rungs are left: the durations are narrow (e.g. all
                # alike), so the task is due any moment; one gap later, not 50% later (a 2 s
                # task seen running at 1.9 s was polled again at 2.85 s).
                target = elapsed + gap if polls < len(_LADDER) else elapsed * self.factor
        delay = max(target - elapsed, gap)
        return min(delay, self.max_interval)
