"""The simulator's injected faults and limits: the random fault of a request
(:class:`FaultDraw`: 500, 503, 429, dropped connection, and whether a faulted submit was
carried out anyway), the request-rate token bucket (:class:`TokenBucket`) and the answers that
ask the client to come back later (:func:`retry_answer`, with ``Retry-After``).  Everything is
deterministic under the configuration's seed."""

from __future__ import annotations

import math
import random
import time

from batchgen.simulator.protocol import Answer, error_body
from batchgen.simulator.settings import SimulatorConfig

__all__ = ["FaultDraw", "TokenBucket", "retry_answer"]


class FaultDraw:
    """Which random fault (if any) hits a request, from the configured rates."""

    def __init__(self, config: SimulatorConfig) -> None:
        self._config = config
        self._rng = random.Random(f"{config.seed}:faults")

    def draw(self, route: str) -> tuple[str, bool] | None:
        """Two draws per request on a faulty route: which fault (if any), and whether a
        faulted submit was carried out anyway."""
        config = self._config
        if route not in config.fault_routes:
            return None
        which = self._rng.random()
        lost = self._rng.random() < config.lost_answer_fraction
        for kind, rate in (
            ("dropped_connection", config.drop_rate),
            ("error_500", config.error_500_rate),
            ("error_503", config.error_503_rate),
            ("error_429", config.error_429_rate),
        ):
            if which < rate:
                return kind, lost
            which -= rate
        return None


class TokenBucket:
    """The request-rate limit: ``burst`` tokens, refilled at ``rate`` per second."""

    def __init__(self, burst: int, now: float) -> None:
        self._burst = float(burst)
        self._tokens = float(burst)
        self._at = now

    def take(self, now: float, rate: float) -> float | None:
        """``None`` if a token was taken, else seconds until one is ready."""
        self._tokens = min(self._burst, self._tokens + (now - self._at) * rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return None
        return (1.0 - self._tokens) / rate


def retry_answer(
    status: int,
    detail: str,
    seconds: float,
    *,
    integer: bool,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> Answer:
    """A 429/503 answer with ``Retry-After`` (decimal under one second unless ``integer``),
    on 429 ``X-RateLimit-Reset``, and the ``extra`` headers."""
    seconds = max(0.0, seconds)
    value = str(math.ceil(seconds)) if integer or seconds >= 1 else f"{max(seconds, 0.001):.3f}"
    headers = [(b"retry-after", value.encode())]
    if status == 429:
        reset = str(math.ceil(time.time() + seconds)).encode()
        headers.append((b"x-ratelimit-reset", reset))
    headers.extend(extra or ())
    return Answer(status, error_body(status, detail), headers)
