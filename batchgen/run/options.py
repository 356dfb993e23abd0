"""How a run behaves: the manifest's limits as the runner reads them (:class:`LimitsLike`) and
the options beyond them (:class:`RunOptions`; defaults suit the real API)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from batchgen.manifest.pricing import PriceBook
from batchgen.run.progress import Progress

__all__ = ["LimitsLike", "RunOptions"]


class LimitsLike(Protocol):
    """The run limits (``batchgen.manifest.loader.Limits`` fits)."""

    @property
    def concurrency(self) -> int: ...
    @property
    def rate(self) -> float: ...
    @property
    def retries(self) -> int: ...
    @property
    def timeout(self) -> float: ...
    @property
    def resubmit_unknown(self) -> bool: ...
    @property
    def submits_in_flight(self) -> int: ...
    @property
    def max_tasks(self) -> int | None: ...
    @property
    def max_cost(self) -> float | None: ...


@dataclass
class RunOptions:
    """How a run behaves beyond the manifest's limits (defaults suit the real API)."""

    max_runtime: float | None = None
    """Stop submitting after this many seconds and exit 75 if work is left."""
    stop: asyncio.Event | None = None
    """Set it (e.g. from a signal handler) to stop submitting and end the run (exit 130)."""
    submit_path: Callable[[str], str] | None = None
    """Model name → submit path; default: the model's schema (``batchgen.manifest.catalogue``)."""
    first_poll: float = 0.1
    """Seconds before the first poll of a model's first tasks, while nothing is learnt about
    its task durations (then backing off geometrically: :mod:`batchgen.run.polling`)."""
    min_poll_interval: float = 0.05
    """Shortest gap between two polls of a task (the gap is also at least 2% of the typical
    task duration, so this matters only for tasks of a few seconds)."""
    max_poll_interval: float = 30.0
    backoff_base: float = 1.0
    """First retry waits up to this many seconds (full jitter), doubling per attempt."""
    backoff_cap: float = 60.0
    throttle_pause: float = 1.0
    """Pause after a 429 that carries no Retry-After (doubles while 429s come in a row)."""
    throttle_storm: int = 3
    """This many 429s in a row (no accepted submit between) start a new pause even in the
    recovery span after the last one: the provider still refuses everything."""
    download_retries: int = 4
    """Retries of a download (same URL) after a network/server error, before resubmitting."""
    max_throttles: int = 50
    """A job that gets this many 429s on submit fails (the account is throttled for good)."""
    page_size: int = 256
    """Jobs read from the state file at a time."""
    progress: Progress | None = None
    progress_interval: float = 1.0
    metrics_interval: float | None = 60.0
    """Write ``metrics.prom`` (:mod:`batchgen.reports.metrics`) this often and at the end;
    None: never."""
    seed: int | None = None
    """Seed of the backoff jitter (tests)."""
    prices: PriceBook | None = None
    """Prices of the tasks (the manifest's ``prices:`` over the list prices) for the spend
    ledger and ``limits.max_cost``; default: the models' list prices."""
