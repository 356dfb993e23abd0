"""Pacing: a token bucket with a shared pause and an AIMD limit for submissions, the
account's limits learnt from 429s (a running-task cap and a request rate), a lane for
downloads."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import deque
from collections.abc import Callable

__all__ = [
    "LEARNT_LIMITS_KEY",
    "AccountLimits",
    "AimdLimit",
    "DownloadLane",
    "RateLimiter",
    "backoff_delay",
]


def backoff_delay(
    attempt: int, *, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """Exponential backoff with full jitter: uniform in ``[0, min(cap, base * 2**(attempt-1))]``."""
    ceiling = min(cap, base * (2 ** max(attempt - 1, 0)))
    return (rng or random).uniform(0.0, ceiling)


class RateLimiter:
    """At most ``rate`` acquisitions per second (bucket of ``burst``), and one shared pause
    everybody honours after a 429 (its ``Retry-After``).

    A throttle *window* is a pause and a recovery span of the same length after it.  429s
    answering submits sent before the pause ended (already on their way, or admitted before
    it began) belong to that window and neither extend nor restart the pause; 429s answering
    submits sent in the recovery span do not either, unless several come in a row (the
    provider still refuses everything: ``storm``).  So random 429s cost one pause per window,
    not one per answer, while a provider that keeps answering 429 gets a pause after each
    recovery span.  Nothing is ever acquired before a pause ends."""

    def __init__(
        self,
        rate: float,
        *,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(1.0, min(rate, 10.0)))
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock()
        self.pause_until = -math.inf
        self.window_until = -math.inf  # end of the last pause's recovery span
        self.pauses = 0  # pauses started

    def set_rate(self, rate: float, *, burst: float = 1.0) -> None:
        """Acquire at most ``rate`` per second from now on, in bursts of at most ``burst``."""
        if rate <= 0:
            raise ValueError("rate must be positive")
        self._refill(self._clock())
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = min(self._tokens, self.burst)

    def pause(self, seconds: float) -> None:
        """Hold every acquisition for ``seconds`` from now (extends, never shortens, a pause)."""
        now = self._clock()
        seconds = max(seconds, 0.0)
        self.pause_until = max(self.pause_until, now + seconds)
        self.window_until = max(self.window_until, self.pause_until + seconds)
        self._tokens = min(self._tokens, 1.0)  # no burst right after a pause

    def throttled(self, seconds: float, *, sent_at: float, storm: bool = False) -> bool:
        """A 429 answering a submit sent at ``sent_at`` (this limiter's clock): start a shared
        pause of ``seconds`` and return True, unless the 429 belongs to the current throttle
        window (see the class) and ``storm`` is false; a submit sent before the current or
        last pause ended never starts one."""
        if sent_at < self.pause_until:
            return False
        if sent_at < self.window_until and not storm:
            return False
        self.pause(seconds)
        self.pauses += 1
        return True

    def _refill(self, now: float) -> None:
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def delay(self) -> float:
        """Seconds until an acquisition could succeed (0 when one is available now)."""
        now = self._clock()
        if now < self.pause_until:
            return self.pause_until - now
        self._refill(now)
        return 0.0 if self._tokens >= 1.0 else (1.0 - self._tokens) / self.rate

    def try_acquire(self) -> bool:
        """Take a token if one is available now."""
        if self.delay() > 0.0:
            return False
        self._tokens -= 1.0
        return True


class AimdLimit:
    """The concurrency limit: multiplied by ``factor`` on a throttle window (the caller calls
    :meth:`on_throttle` once per window), grown back by one per successful submission, so
    ``maximum - limit`` successes bring it back to ``maximum``."""

    def __init__(self, maximum: int, *, factor: float = 0.5, minimum: int = 1) -> None:
        self.maximum = max(1, int(maximum))
        self.minimum = max(1, min(minimum, self.maximum))
        self.factor = factor
        self.value = float(self.maximum)
        self.decreases = 0
        self.lowest = self.maximum  # the lowest limit reached

    @property
    def limit(self) -> int:
        """The current whole-number limit."""
        return max(self.minimum, int(self.value))

    def on_throttle(self) -> None:
        """A new throttle window: multiplicative decrease."""
        self.value = max(float(self.minimum), self.value * self.factor)
        self.decreases += 1
        self.lowest = min(self.lowest, self.limit)

    def on_success(self) -> None:
        """An accepted submission: additive increase (one slot) towards the maximum."""
        if self.value < self.maximum:
            self.value = min(float(self.maximum), self.value + 1.0)


#: The run settings' key (:meth:`batchgen.store.state.StateStore.settings`) of what 429s
#: taught about the account, so that a resumed run starts there.
LEARNT_LIMITS_KEY = "learnt_limits"


class AccountLimits:
    """The account's limits as 429s reveal them: a cap on running tasks and a request rate.

    * A "too many running tasks" 429 answered while ``running`` of our tasks were accepted and
      not seen ended means the cap is at most ``running`` (the provider counts no task of ours
      we have not submitted, and none we saw ended): :meth:`on_cap_hit` lowers the cap to it
      at once, so the cap converges in as many 429s as it takes, usually one, and is then held:
      a task goes as soon as one of ours ends, without a pause.
    * After ``probe_after`` accepted submits at the cap without such a 429, the cap is raised
      by one (the account may allow more now); the next 429 brings it back.
    * A "too many requests" 429 sets the rate from ``X-RateLimit-Limit`` when the answer has
      it (else only its ``Retry-After`` paces).

    :meth:`as_setting` / the ``learnt`` argument carry it across runs (run settings).
    """

    def __init__(
        self,
        maximum: int,
        *,
        learnt: object = None,
        probe_after: int = 10,
    ) -> None:
        self.maximum = max(1, int(maximum))
        self.probe_after = probe_after
        self.cap: int | None = None
        self.rate: float | None = None
        if isinstance(learnt, dict):
            cap, rate = learnt.get("concurrency_cap"), learnt.get("rate_per_s")
            if isinstance(cap, int) and not isinstance(cap, bool) and cap >= 1:
                self.cap = min(cap, self.maximum)
            if isinstance(rate, (int, float)) and not isinstance(rate, bool) and rate > 0:
                self.rate = float(rate)
        self.history: deque[int] = deque([] if self.cap is None else [self.cap], maxlen=64)
        """The last caps set in this run, in order."""
        self.lowest: int | None = self.cap
        """The lowest cap set in this run."""
        self.held: int | None = self.cap
        """The cap the last running-task 429 (or the last run) set: probes above it aside."""
        self._at_cap = 0

    def limit(self, other: int) -> int:
        """The concurrency allowed now: ``other`` (e.g. the AIMD limit) within the cap."""
        return other if self.cap is None else min(other, self.cap)

    def on_cap_hit(self, running: int) -> bool:
        """A "too many running tasks" 429 while ``running`` tasks of ours were accepted and not
        seen ended; True when the held cap changed (to record it)."""
        self._at_cap = 0
        new = max(1, min(running, self.maximum))
        if self.cap is not None and new >= self.cap:
            return False  # nothing lower learnt
        changed = new != self.held
        self.cap = self.held = new
        self.history.append(new)
        self.lowest = new if self.lowest is None else min(self.lowest, new)
        return changed

    def on_accepted(self, running: int) -> None:
        """A submit was accepted; ``running`` tasks of ours now (this one included).  An
        accepted probe raises the working cap but not the one held (recorded): our count
        includes tasks that ended unseen, so it proves nothing about the account's cap."""
        if self.cap is None or running < self.cap or self.cap >= self.maximum:
            return
        self._at_cap += 1
        if self._at_cap >= self.probe_after:
            self._at_cap = 0
            self.cap += 1
            self.history.append(self.cap)

    def on_rate_hit(self, header_rate: float | None) -> float | None:
        """A "too many requests" 429 (``header_rate``: from ``X-RateLimit-Limit``); returns the
        rate to pace at from now on, or None when the answer did not say (its ``Retry-After``
        alone then paces: a rate guessed from what was accepted meanwhile would also count
        the time spent waiting for slots)."""
        if header_rate is None or header_rate <= 0:
            return None
        self.rate = header_rate
        return self.rate

    def as_setting(self) -> dict[str, float | int | None]:
        """What was learnt, for the run settings."""
        return {"concurrency_cap": self.held, "rate_per_s": self.rate}


class DownloadLane:
    """How many downloads may run at once: as many as keep up, but never a crowd that delays
    the polls and submits.

    Downloads hold no slot, but on one event loop their CPU work (reading the body, the temp
    file, the state commit) competes with the polls and submits that do: a whole wave of results
    downloaded at once delays the next submits, which then leave together as the next wave
    (figures in docs/performance.md). The limit is AIMD on the event loop's lateness (how late
    the runner's poll timers fire, :meth:`note_lateness`): each finished download adds one place
    while the loop is on time, and the limit halves (down to ``minimum``) while it runs late. A
    slow network (downloads waiting on bytes, the loop idle) so gets as many parallel downloads
    as it needs, up to ``maximum``; a busy loop only a few. Waiting downloads go first come,
    first served.
    """

    def __init__(
        self,
        *,
        minimum: int = 4,
        maximum: int = 1000,
        late: float = 0.005,
    ) -> None:
        if minimum < 1 or maximum < minimum:
            raise ValueError("need 1 <= minimum <= maximum")
        self.minimum = minimum
        self.maximum = maximum
        self.late = late
        self._limit = minimum
        self._lateness = 0.0  # EWMA of timer lateness, seconds
        self._active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.peak = 0

    @property
    def active(self) -> int:
        """Downloads admitted and not yet released."""
        return self._active

    @property
    def limit(self) -> int:
        """Downloads allowed at once now."""
        return self._limit

    def note_lateness(self, seconds: float) -> None:
        """A timer of the loop fired ``seconds`` after its time."""
        self._lateness += 0.2 * (max(seconds, 0.0) - self._lateness)

    async def acquire(self) -> None:
        """Wait for a place in the lane (first come, first served)."""
        if not self._waiters and self._active < self._limit:
            self._take()
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # admitted just as it was cancelled: give the place back
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Leave the lane (a download ended, whatever its outcome)."""
        self._active -= 1
        if self._lateness > self.late:
            self._limit = max(self.minimum, self._limit // 2)
        else:
            self._limit = min(self.maximum, self._limit + 1)
        while self._waiters and self._active < self._limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._take()
                waiter.set_result(None)

    def _take(self) -> None:
        self._active += 1
        self.peak = max(self.peak, self._active)
