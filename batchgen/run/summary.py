"""What a run did and how it ended: :class:`RunSummary`, as a dict and as a few lines."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["RunSummary"]


@dataclass
class RunSummary:
    """What a run did and how it ended."""

    exit_code: int = 0
    stop_reason: str | None = None
    done: int = 0
    failed: int = 0
    rejected: int = 0
    expired: int = 0
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    submitted: int = 0
    retries: int = 0
    ambiguous_resubmits: int = 0
    throttled: int = 0
    throttle_pauses: int = 0
    """Shared pauses of throttle windows started by storms of 429s that name no limit (one per
    window, however many 429s it had); a request-rate 429 holds everybody until its
    ``Retry-After`` without a window, a running-task 429 holds nobody."""
    concurrency_decreases: int = 0
    concurrency_lowest: int = 0
    concurrency_limit: int = 0
    """The concurrency limit (AIMD within the learnt cap) when the run ended."""
    concurrency_cap: int | None = None
    """The account's cap on running tasks as learnt from 429s (None: none seen)."""
    concurrency_cap_lowest: int | None = None
    """The lowest cap held during the run (a cap converged and held: equal to the cap)."""
    learnt_rate: float | None = None
    """Submissions per second the account allows, as learnt from 429s (None: none seen)."""
    throttled_by_kind: dict[str, int] = field(default_factory=dict)
    """429s on submit by the limit they reported: concurrency, rate, unknown."""
    polls: int = 0
    downloads: int = 0
    recovered_submitting: int = 0
    resumed_in_flight: int = 0
    regenerated: int = 0
    """Recorded tasks generated (and paid for) again: the provider no longer knew the task
    (404) or its result URL had expired."""
    duration: float = 0.0
    images_per_minute: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The summary as a JSON-ready dict."""
        return dict(self.__dict__)

    def format(self) -> str:
        """A few human lines."""
        lines = [
            f"done {self.done}, failed {self.failed}, rejected {self.rejected}, "
            f"expired {self.expired} in {self.duration:.1f}s "
            f"({self.images_per_minute:.1f} images/min)",
            f"submitted {self.submitted}, retries {self.retries}, ambiguous resubmits "
            f"{self.ambiguous_resubmits}, 429s {self.throttled}, polls {self.polls}",
        ]
        if self.resumed_in_flight:
            lines.append(
                f"resumed {self.resumed_in_flight} recorded tasks (followed, not submitted again)"
                + ("" if self.regenerated else "; none generated again")
            )
        if self.regenerated:
            lines.append(
                f"{self.regenerated} recorded tasks generated again (task unknown to the "
                "provider or result URL expired)"
            )
        for reason, n in sorted(self.failed_by_reason.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {n} x {reason}")
        left = sum(
            self.counts.get(s, 0) for s in ("pending", "submitting", "running", "downloading")
        )
        if left:
            lines.append(f"{left} jobs not finished yet: run again to resume")
        if self.stop_reason:
            lines.append(f"stopped: {self.stop_reason}")
        return "\n".join(lines)
