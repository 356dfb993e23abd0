"""The bill of a run before it starts: jobs to submit, images, the worst case of billable
submissions and the estimated cost, by model.

:class:`BillBuilder` folds jobs one at a time (from a manifest, or from a state file, with the
state and attempts each job already has); :meth:`BillBuilder.bill` returns a JSON-ready dict.

Worst case: a job may be submitted ``1 + retries`` times in all (the runner's attempt limit);
every attempt may be billed, ambiguous resubmits included (a 429 or a refused connection is
refunded and never billed).  A job that already used ``a`` attempts can be billed at most
``max(0, 1 + retries - a)`` more times; a done or ended (failed, rejected, expired) job 0
times, since ``run`` does not submit it again (``retry`` resets its attempts).
The estimate assumes one accepted task per job still to submit; an unknown price makes the
estimate ``None``, never 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from batchgen.manifest.modelspec import ModelSpec, expected_images, model_spec
from batchgen.manifest.pricing import PriceBook

__all__ = ["ENDED_STATES", "BillBuilder", "format_bill", "usd", "worst_case_submissions"]

ENDED_STATES = frozenset({"failed", "rejected", "expired"})
_IN_FLIGHT = frozenset({"submitting", "running", "downloading"})


def worst_case_submissions(state: str | None, attempts: int, retries: int) -> int:
    """Billable submissions a job in ``state`` (None: not yet recorded) may still cause."""
    if state == "done" or state in ENDED_STATES:
        return 0
    return max(0, 1 + retries - attempts)


@dataclass
class _ModelTotals:
    jobs: int = 0
    new_jobs: int = 0
    expected_images: int = 0
    max_billable_submissions: int = 0
    priced_cost: float = 0.0
    worst_cost: float = 0.0
    unpriced_jobs: int = 0

    def as_dict(self) -> dict[str, Any]:
        known = self.unpriced_jobs == 0
        return {
            "jobs": self.jobs,
            "new_jobs": self.new_jobs,
            "expected_images": self.expected_images,
            "max_billable_submissions": self.max_billable_submissions,
            "estimated_cost_usd": round(self.priced_cost, 6) if known else None,
            "worst_case_cost_usd": round(self.worst_cost, 6) if known else None,
            "unpriced_jobs": self.unpriced_jobs,
        }


class BillBuilder:
    """Fold jobs into a bill; see the module docstring for the rules."""

    def __init__(self, prices: PriceBook, *, retries: int) -> None:
        self.prices = prices
        self.retries = retries
        self.done_jobs = 0
        self.in_flight_jobs = 0
        self.ended_jobs = 0
        self._models: dict[str, _ModelTotals] = {}
        self._specs: dict[str, ModelSpec | None] = {}

    def _images(self, model: str, body: Mapping[str, Any]) -> int:
        if model not in self._specs:
            try:
                self._specs[model] = model_spec(model)
            except Exception:  # a model no longer in the catalogue: one image a task
                self._specs[model] = None
        spec = self._specs[model]
        return 1 if spec is None else expected_images(spec, body)

    def add(
        self, model: str, body: Mapping[str, Any], state: str | None = None, attempts: int = 0
    ) -> None:
        """One job, with its state and attempts in the run directory (None: a new job)."""
        totals = self._models.setdefault(model, _ModelTotals())
        totals.jobs += 1
        if state == "done":
            self.done_jobs += 1
        elif state in ENDED_STATES:
            self.ended_jobs += 1
        elif state in _IN_FLIGHT:
            self.in_flight_jobs += 1
        worst = worst_case_submissions(state, attempts, self.retries)
        if worst == 0:
            return
        totals.max_billable_submissions += worst
        price = self.prices.task_price(model, body)
        if price is None:
            totals.unpriced_jobs += 1
        else:
            totals.worst_cost += price * worst
        if state in (None, "pending"):  # to be submitted: one task each, in the estimate
            totals.new_jobs += 1
            totals.expected_images += self._images(model, body)
            if price is not None:
                totals.priced_cost += price

    def bill(self) -> dict[str, Any]:
        """The bill as a JSON-ready dict (numbers; unknown costs are None)."""
        by_model = {model: t.as_dict() for model, t in self._models.items()}
        unpriced = [m for m, t in self._models.items() if t.unpriced_jobs]
        known = not unpriced
        return {
            "new_jobs": sum(t.new_jobs for t in self._models.values()),
            "done_jobs": self.done_jobs,
            "in_flight_jobs": self.in_flight_jobs,
            "ended_jobs": self.ended_jobs,
            "expected_images": sum(t.expected_images for t in self._models.values()),
            "max_billable_submissions": sum(
                t.max_billable_submissions for t in self._models.values()
            ),
            "retries": self.retries,
            "estimated_cost_usd": (
                round(sum(t.priced_cost for t in self._models.values()), 6) if known else None
            ),
            "worst_case_cost_usd": (
                round(sum(t.worst_cost for t in self._models.values()), 6) if known else None
            ),
            "unpriced_models": unpriced,
            "by_model": by_model,
        }


def usd(value: float | None) -> str:
    """A cost for people: ``$1,234.56``, ``$0.009``; None is "unknown"."""
    if value is None:
        return "unknown"
    if value and abs(value) < 0.1:
        return f"${value:,.4f}".rstrip("0")
    return f"${value:,.2f}"


def format_bill(bill: Mapping[str, Any]) -> list[str]:
    """The bill as text lines (for ``plan`` and the first line of ``run``)."""
    lines = [
        f"bill:     {bill['new_jobs']:,} new jobs ({bill['done_jobs']:,} already done"
        + (f", {bill['in_flight_jobs']:,} in flight" if bill["in_flight_jobs"] else "")
        + (f", {bill['ended_jobs']:,} ended" if bill["ended_jobs"] else "")
        + f"), {bill['expected_images']:,} images expected",
        f"          at most {bill['max_billable_submissions']:,} billable submissions "
        f"(1 + {bill['retries']} retries per job)",
        f"          estimated cost {_cost(bill)}",
    ]
    if bill["unpriced_models"]:
        lines[-1] = (
            "          estimated cost unknown: no price for "
            + ", ".join(bill["unpriced_models"])
            + " (set one under prices:)"
        )
    for model, info in bill["by_model"].items():
        if info["new_jobs"] or info["max_billable_submissions"]:
            lines.append(
                f"  {model:<32} {info['new_jobs']:>8,} new jobs {info['expected_images']:>8,} "
                f"images  est. {_cost(info)}"
            )
    return lines


def _cost(info: Mapping[str, Any]) -> str:
    est = info["estimated_cost_usd"]
    if est is None:
        return "unknown"
    return f"{usd(est)} (worst case {usd(info['worst_case_cost_usd'])})"
