"""Pacing of submissions: a token bucket with a shared pause, and an AIMD concurrency limit."""

from __future__ import annotations

import asyncio
import random
import time

__all__ = ["AimdLimit", "RateLimiter", "backoff_delay"]


def backoff_delay(
    attempt: int, *, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """Exponential backoff with full jitter: uniform in ``[0, min(cap, base * 2**(attempt-1))]``."""
    ceiling = min(cap, base * (2 ** max(attempt - 1, 0)))
    return (rng or random).uniform(0.0, ceiling)


class RateLimiter:
    """At most ``rate`` acquisitions per second (bucket of ``burst``), and a pause everybody
    honours (a 429's ``Retry-After``)."""

    def __init__(self, rate: float, *, burst: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(1.0, min(rate, 10.0)))
        self._tokens = self.burst
        self._stamp = time.monotonic()
        self.pause_until = 0.0

    def pause(self, seconds: float) -> None:
        """Hold every acquisition for ``seconds`` from now (extends, never shortens, a pause)."""
        self.pause_until = max(self.pause_until, time.monotonic() + max(seconds, 0.0))
        self._tokens = min(self._tokens, 1.0)  # no burst right after a pause

    def _refill(self, now: float) -> None:
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def delay(self) -> float:
        """Seconds until an acquisition could succeed (0 when one is available now)."""
        now = time.monotonic()
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

    async def acquire(self) -> None:
        """Wait for a token (and for any pause to end)."""
        while not self.try_acquire():
            await asyncio.sleep(self.delay())


class AimdLimit:
    """The concurrency limit: halved on a 429 (at most once per ``cooldown`` seconds), grown back
    by one per ``limit`` successful submissions up to ``maximum``."""

    def __init__(self, maximum: int, *, cooldown: float = 1.0, minimum: int = 1) -> None:
        self.maximum = max(1, int(maximum))
        self.minimum = max(1, min(minimum, self.maximum))
        self.value = float(self.maximum)
        self.cooldown = cooldown
        self._last_cut = -1e18
        self.decreases = 0

    @property
    def limit(self) -> int:
        """The current whole-number limit."""
        return max(self.minimum, int(self.value))

    def on_throttle(self) -> None:
        """A 429: multiplicative decrease (once per cooldown window)."""
        now = time.monotonic()
        if now - self._last_cut >= self.cooldown:
            self.value = max(float(self.minimum), self.value / 2.0)
            self._last_cut = now
            self.decreases += 1

    def on_success(self) -> None:
        """An accepted submission: additive increase towards the maximum."""
        if self.value < self.maximum:
            self.value = min(float(self.maximum), self.value + 1.0 / max(self.value, 1.0))
