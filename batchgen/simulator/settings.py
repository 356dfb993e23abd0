"""Settings of the simulator (see :mod:`batchgen.simulator.app`): every knob, in one dataclass.

Times come in two kinds, and each field says which:

* *simulated* seconds (task latency, result-URL lifetime): divided by
  ``time_scale`` on the real clock, so ``time_scale=0.01`` makes a 10 s task end
  after 0.1 s while the API still reports ``duration: 10000``;
* *real* seconds (request-rate limit, ``Retry-After`` hints, download speed):
  what a client actually waits or measures.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Literal

LatencyKind = Literal["fixed", "uniform", "lognormal"]
SubmitPathsServed = Literal["all", "async", "no-async"]
SUBMIT_PATHS_SERVED: tuple[SubmitPathsServed, ...] = ("all", "async", "no-async")
FaultRoute = Literal["submit", "poll", "download"]
FAULT_ROUTES: tuple[FaultRoute, ...] = ("submit", "poll", "download")
EXPIRED_STATUSES = (403, 404, 410)
_STANDARD_NORMAL = NormalDist()


@dataclass(frozen=True)
class Latency:
    """A task-latency distribution, in simulated seconds.

    Build one with :meth:`fixed`, :meth:`uniform`, :meth:`lognormal` or
    :meth:`parse` (``"10"``, ``"fixed:10"``, ``"uniform:5..20"``,
    ``"lognormal:12,0.5"`` = median 12 s, sigma 0.5).
    """

    kind: LatencyKind = "fixed"
    seconds: float = 10.0
    """The fixed latency (kind ``fixed``)."""
    low: float = 0.0
    """Lower bound (kind ``uniform``)."""
    high: float = 0.0
    """Upper bound (kind ``uniform``)."""
    median: float = 0.0
    """Median (kind ``lognormal``)."""
    sigma: float = 0.0
    """Standard deviation of the underlying normal (kind ``lognormal``)."""

    def __post_init__(self) -> None:
        if self.kind == "fixed":
            _check(self.seconds >= 0, f"latency must be >= 0, not {self.seconds}")
        elif self.kind == "uniform":
            _check(
                0 <= self.low <= self.high,
                f"uniform latency needs 0 <= low <= high, not {self.low}..{self.high}",
            )
        elif self.kind == "lognormal":
            _check(self.median > 0, f"lognormal median must be > 0, not {self.median}")
            _check(self.sigma >= 0, f"lognormal sigma must be >= 0, not {self.sigma}")
        else:
            raise ValueError(f"unknown latency kind {self.kind!r}")

    @classmethod
    def fixed(cls, seconds: float) -> Latency:
        """Every task takes ``seconds``."""
        return cls(kind="fixed", seconds=float(seconds))

    @classmethod
    def uniform(cls, low: float, high: float) -> Latency:
        """Tasks take a uniformly drawn time between ``low`` and ``high``."""
        return cls(kind="uniform", low=float(low), high=float(high))

    @classmethod
    def lognormal(cls, median: float, sigma: float) -> Latency:
        """Tasks take ``median * exp(N(0, sigma))``: a long right tail, as real queues have."""
        return cls(kind="lognormal", median=float(median), sigma=float(sigma))

    @classmethod
    def parse(cls, text: str) -> Latency:
        """Parse ``"10"``, ``"fixed:10"``, ``"uniform:5..20"`` or ``"lognormal:12,0.5"``."""
        kind, sep, rest = text.strip().partition(":")
        try:
            if not sep:
                return cls.fixed(float(kind))
            if kind == "fixed":
                return cls.fixed(float(rest))
            if kind == "uniform":
                low, high = _two_numbers(rest, "..")
                return cls.uniform(low, high)
            if kind == "lognormal":
                median, sigma = _two_numbers(rest, ",")
                return cls.lognormal(median, sigma)
        except ValueError as exc:
            raise ValueError(f"invalid latency {text!r}: {exc}") from None
        raise ValueError(
            f"invalid latency {text!r}: expected SECONDS, fixed:S, uniform:LO..HI "
            "or lognormal:MEDIAN,SIGMA"
        )

    def sample(self, rng: random.Random) -> float:
        """Draw one latency (simulated seconds). Always consumes exactly one draw of ``rng``."""
        if self.kind == "uniform":
            return self.low + (self.high - self.low) * rng.random()
        if self.kind == "lognormal":
            u = min(max(rng.random(), 1e-12), 1.0 - 1e-12)
            return self.median * math.exp(_STANDARD_NORMAL.inv_cdf(u) * self.sigma)
        rng.random()
        return self.seconds

    def __str__(self) -> str:
        if self.kind == "uniform":
            return f"uniform:{self.low:g}..{self.high:g}"
        if self.kind == "lognormal":
            return f"lognormal:{self.median:g},{self.sigma:g}"
        return f"fixed:{self.seconds:g}"


def _two_numbers(text: str, separator: str) -> tuple[float, float]:
    first, sep, second = text.partition(separator)
    if not sep:
        raise ValueError(f"expected two numbers separated by {separator!r}")
    return float(first), float(second)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class StatusNames:
    """The ``data.status`` strings the simulator emits (the API documents variants)."""

    pending: str = "pending"
    processing: str = "processing"
    success: str = "success"
    """Documented variants a client must accept: ``completed``, ``succeeded``."""
    failed: str = "failed"
    """Documented variants a client must accept: ``error``, ``canceled``, ``cancelled``."""


#: ``--realistic``: the provider's documented limits (docs/api.md): 100 requests a minute per
#: key (every API request counted), a few concurrent tasks per account (3), result URLs that
#: live 24 hours. Only existing knobs; a knob set explicitly wins over the preset.
REALISTIC_LIMITS: dict[str, object] = {
    "max_concurrent_tasks": 3,
    "rate_limit": 100 / 60,
    "rate_limit_scope": "all",
    "result_ttl": 24 * 3600.0,
}


@dataclass(frozen=True)
class SimulatorConfig:
    """Every knob of the simulator. All random decisions derive from ``seed``.

    Fault decisions are drawn, in request order, from one random stream (two
    draws per request on a route in ``fault_routes``); each accepted task draws
    its latency and fate from a second stream, in acceptance order. So the same
    seed and the same sequence of requests give the same answers.
    """

    seed: int = 0
    api_key: str | None = "sim-key"
    """The bearer key every API request must carry; ``None`` accepts any request."""

    # --- task life cycle (simulated time) ---
    latency: Latency = field(default_factory=Latency)
    """Time from submit to the task's end, in simulated seconds."""
    latency_by_model: tuple[tuple[str, Latency], ...] = ()
    """``(model, latency)`` pairs: tasks of these models (``provider/model``) take their own
    latency instead of ``latency``."""
    pending_fraction: float = 0.1
    """The first part of a task's latency answers ``pending``, the rest ``processing``."""
    time_scale: float = 1.0
    """Real seconds per simulated second: 0.01 makes a 10 s task take 0.1 s."""
    fail_rate: float = 0.0
    """Fraction of accepted tasks that end ``failed``."""
    status_names: StatusNames = field(default_factory=StatusNames)
    failed_error_field: bool = False
    """Add the retired ``data.error`` message to failed tasks (clients must not need it)."""

    # --- account limits ---
    balance: int | None = None
    """Submissions answer 402 once this many tasks were accepted (``None``: unlimited)."""
    account_balance: float = 1000.0
    """What ``GET /api/v1/team/balance`` reports (USD) before any task; each accepted task
    whose model has a known list price lowers it by that price (it never refuses a task)."""
    max_concurrent_tasks: int | None = None
    """Submissions answer 429 while this many tasks are submitted and not ended."""
    rate_limit: float | None = None
    """Token bucket: requests per real second (``None``: unlimited); excess answers 429."""
    rate_burst: int | None = None
    """Bucket size (default: ``max(1, ceil(rate_limit))``)."""
    rate_limit_scope: Literal["submit", "all"] = "submit"
    """Which requests the token bucket counts: submissions only, or every API request."""

    # --- random faults, drawn per request (real time) ---
    error_500_rate: float = 0.0
    error_503_rate: float = 0.0
    error_429_rate: float = 0.0
    """Random 429 answers (besides the limits above), with ``Retry-After``."""
    drop_rate: float = 0.0
    """Requests whose connection is closed without an answer."""
    fault_routes: frozenset[FaultRoute] = frozenset(FAULT_ROUTES)
    """Which routes the random faults above apply to."""
    lost_answer_fraction: float = 0.5
    """Of the submissions hit by a 500 or a dropped connection, the fraction where the task
    had been created anyway (the client cannot know: the outcome is ambiguous)."""
    retry_after: float = 1.0
    """``Retry-After`` (real seconds) on 503 and random 429 answers."""
    integer_retry_after: bool = False
    """Round every ``Retry-After`` up to whole seconds (strict HTTP); by default a
    value under one second is sent as a decimal, for fast time-scaled runs."""

    # --- API shape ---
    submit_paths: SubmitPathsServed = "all"
    """Which submit-path shapes answer: ``all``, ``async`` (only paths ending in ``/async``)
    or ``no-async`` (only paths without it, like the provider's newest CLI); the others
    answer 404 like an unknown route."""

    # --- result files ---
    result_ttl: float | None = None
    """Result URLs stop working this many simulated seconds after the task ended."""
    expired_rate: float = 0.0
    """Fraction of successful tasks whose result URL is already dead when first fetched."""
    expired_status: int = 410
    """Status answered for an expired result URL: 403, 404 or 410."""
    download_bytes_per_second: float | None = None
    """Slow downloads: stream result files at this many bytes per real second."""
    download_chunk_size: int = 65536
    download_latency: float = 0.0
    """Real seconds each result file waits before its first byte is sent (slow result
    downloads: lets a test kill a run between two downloads of one job)."""

    def __post_init__(self) -> None:
        for name in (
            "pending_fraction",
            "fail_rate",
            "error_500_rate",
            "error_503_rate",
            "error_429_rate",
            "drop_rate",
            "lost_answer_fraction",
            "expired_rate",
        ):
            value = getattr(self, name)
            _check(0.0 <= value <= 1.0, f"{name} must be between 0 and 1, not {value}")
        total = self.error_500_rate + self.error_503_rate + self.error_429_rate + self.drop_rate
        _check(total <= 1.0 + 1e-9, f"the random fault rates add up to {total:g} > 1")
        _check(self.time_scale > 0, f"time_scale must be > 0, not {self.time_scale}")
        _check(self.balance is None or self.balance >= 0, "balance must be >= 0")
        _check(
            self.max_concurrent_tasks is None or self.max_concurrent_tasks >= 1,
            "max_concurrent_tasks must be >= 1",
        )
        _check(self.rate_limit is None or self.rate_limit > 0, "rate_limit must be > 0")
        _check(self.rate_burst is None or self.rate_burst >= 1, "rate_burst must be >= 1")
        _check(self.retry_after >= 0, "retry_after must be >= 0")
        _check(self.result_ttl is None or self.result_ttl >= 0, "result_ttl must be >= 0")
        _check(
            self.expired_status in EXPIRED_STATUSES,
            f"expired_status must be one of {EXPIRED_STATUSES}, not {self.expired_status}",
        )
        _check(
            self.download_bytes_per_second is None or self.download_bytes_per_second > 0,
            "download_bytes_per_second must be > 0",
        )
        _check(self.download_chunk_size >= 1, "download_chunk_size must be >= 1")
        _check(self.download_latency >= 0, "download_latency must be >= 0")
        unknown = set(self.fault_routes) - set(FAULT_ROUTES)
        _check(not unknown, f"unknown fault routes: {sorted(unknown)}")
        _check(
            self.submit_paths in SUBMIT_PATHS_SERVED,
            f"submit_paths must be one of {SUBMIT_PATHS_SERVED}, not {self.submit_paths!r}",
        )
        _check(self.api_key != "", "api_key must be non-empty, or None to accept any request")

    def serves_submit_path(self, path: str) -> bool:
        """Whether a submit to ``path`` (a known model's path) is answered (``submit_paths``)."""
        if self.submit_paths == "all":
            return True
        return path.endswith("/async") == (self.submit_paths == "async")

    def latency_for(self, model: str) -> Latency:
        """The latency distribution of ``model``'s tasks."""
        for name, latency in self.latency_by_model:
            if name == model:
                return latency
        return self.latency

    @property
    def burst(self) -> int:
        """The token bucket's size."""
        if self.rate_burst is not None:
            return self.rate_burst
        return max(1, math.ceil(self.rate_limit or 1.0))

    def with_faults(self, rate: float) -> SimulatorConfig:
        """A copy with every random fault kind switched on at ``rate`` (e.g. 0.1).

        That is 500, 503, random 429, dropped connections, failed tasks and
        expired result URLs.
        """
        return dataclasses.replace(
            self,
            error_500_rate=rate,
            error_503_rate=rate,
            error_429_rate=rate,
            drop_rate=rate,
            fail_rate=rate,
            expired_rate=rate,
        )


def parse_model_latency(text: str) -> tuple[str, Latency]:
    """Parse ``MODEL=SPEC`` (e.g. ``openai/gpt-image-1.5=fixed:8``) for ``latency_by_model``."""
    model, sep, spec = text.partition("=")
    if not sep or not model.strip():
        raise ValueError(f"invalid model latency {text!r}: expected MODEL=LATENCY")
    return model.strip(), Latency.parse(spec)
