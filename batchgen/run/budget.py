"""The spend ceilings of a running run: :class:`SpendGuard`.

A submit turn is taken only after :meth:`SpendGuard.reserve` agreed: the submissions already
billable in the run directory (accepted and ambiguous, from the state file's ledger, every
session counted), plus those awaiting their answer, plus this one, stay within
``max_tasks``; their estimated cost within ``max_cost``.  A reservation is settled when the
submit's outcome is known: billed (accepted, or outcome unknown) or not (429, refused, 4xx).
So the provider never accepts more than ``max_tasks`` submissions of a run directory, however
many submits are in flight.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from batchgen.manifest.bill import usd
from batchgen.manifest.modelspec import expected_images, model_spec
from batchgen.manifest.pricing import PriceBook
from batchgen.store.spend import Charge

__all__ = ["SpendGuard", "cost_stop_reason", "task_stop_reason"]


def task_stop_reason(count: int, limit: int) -> str:
    """The stop reason when the task ceiling is reached."""
    return f"task budget reached ({count:,} of {limit:,})"


def cost_stop_reason(cost: float, limit: float) -> str:
    """The stop reason when the cost ceiling is reached."""
    return f"cost budget reached ({usd(cost)} of {usd(limit)} estimated)"


class SpendGuard:
    """Counts billable submissions against the ceilings (None: no ceiling)."""

    def __init__(
        self,
        prices: PriceBook | None = None,
        *,
        max_tasks: int | None = None,
        max_cost: float | None = None,
        billed: int = 0,
        spent: float = 0.0,
    ) -> None:
        self.prices = prices or PriceBook()
        self.max_tasks = max_tasks
        self.max_cost = max_cost
        self.billed = billed  # accepted + ambiguous submissions, every session
        self.spent = spent  # their estimated USD
        self._reserved: dict[str, Charge] = {}
        self._reserved_cost = 0.0
        self._images: dict[str, int] = {}

    def charge(self, model: str, body: Mapping[str, Any]) -> Charge:
        """What one submission of ``body`` may cost."""
        try:
            images = expected_images(model_spec(model), body)
        except Exception:  # a model no longer in the catalogue
            images = 1
        return Charge(model, self.prices.task_price(model, body), images)

    def reserve(self, job_id: str, model: str, body: Mapping[str, Any]) -> str | None:
        """Reserve one submission of the job; the stop reason when a ceiling forbids it."""
        count = self.billed + len(self._reserved)
        if self.max_tasks is not None and count + 1 > self.max_tasks:
            return task_stop_reason(count, self.max_tasks)
        charge = self.charge(model, body)
        if self.max_cost is not None:
            cost = self.spent + self._reserved_cost
            if cost + (charge.usd or 0.0) > self.max_cost + 1e-9:
                return cost_stop_reason(cost, self.max_cost)
        self._reserved[job_id] = charge
        self._reserved_cost += charge.usd or 0.0
        return None

    def settle(self, job_id: str, model: str, body: Mapping[str, Any], *, billed: bool) -> Charge:
        """The submit's outcome is known: count it when ``billed``; return its charge."""
        charge = self._reserved.pop(job_id, None)
        if charge is None:  # submitted without a reservation: priced now
            charge = self.charge(model, body)
        else:
            self._reserved_cost -= charge.usd or 0.0
        if billed:
            self.billed += 1
            self.spent += charge.usd or 0.0
        return charge

    def release(self, job_id: str) -> None:
        """Drop a reservation whose submit ended without an outcome (nothing billed)."""
        charge = self._reserved.pop(job_id, None)
        if charge is not None:
            self._reserved_cost -= charge.usd or 0.0
