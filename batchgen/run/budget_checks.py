"""Before the first submission of a run: its bill from the state file, and the checks that
refuse to start (:class:`BudgetRefused`, exit 3) when it would exceed what its owner meant.

* ``limits.max_tasks``: billable submissions already in the run directory's ledger plus one
  per new job must stay within it.
* ``limits.max_cost``: estimated USD already spent plus the estimate of the new jobs must stay
  within it; an unknown price with ``max_cost`` set refuses (the ceiling could not hold).
* No ceiling at all: more than :data:`DEFAULT_CONFIRM_TASKS` new jobs need a yes (``--yes``,
  or an answer on a terminal); simulated runs spend nothing and are exempt.
* The account balance, where the provider reports one, must cover the estimate; a balance
  endpoint that fails (404 on older providers, network) is logged and ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from batchgen.api import ApiError, ModellixClient
from batchgen.errors import BatchgenError, ExitCode
from batchgen.manifest.bill import BillBuilder, usd
from batchgen.manifest.pricing import PriceBook
from batchgen.manifest.types import Limits
from batchgen.store.spend import ACCEPTED, AMBIGUOUS
from batchgen.store.state import StateStore

__all__ = [
    "DEFAULT_CONFIRM_TASKS",
    "BudgetRefused",
    "check_balance",
    "check_ceilings",
    "check_default",
    "store_bill",
]

logger = logging.getLogger("batchgen.run")

#: Without limits.max_tasks or limits.max_cost, a run of more new jobs than this asks first.
DEFAULT_CONFIRM_TASKS = 1000

_TODO_STATES = ("pending", "submitting", "running", "downloading")


class BudgetRefused(BatchgenError):
    """The run would exceed a spend ceiling, the default limit or the balance: exit 3."""

    exit_code = ExitCode.STOPPED


def store_bill(store: StateStore, prices: PriceBook, retries: int) -> dict[str, Any]:
    """The bill (:class:`batchgen.manifest.bill.BillBuilder`) of the jobs still to do in
    ``store`` (active pending jobs and jobs in flight), with the done count."""
    builder = BillBuilder(prices, retries=retries)
    for job in store.iter_jobs(_TODO_STATES):
        if job.state == "pending" and not job.active:
            continue  # not in the manifest any more: not submitted
        builder.add(job.model, job.body, job.state, job.attempts)
    bill = builder.bill()
    counts = store.counts()
    bill["done_jobs"] = counts["done"]
    bill["ended_jobs"] = sum(counts[s] for s in ("failed", "rejected", "expired"))
    return bill


def _refuse(store: StateStore, message: str) -> BudgetRefused:
    store.update_spend_info({"stopped": message})
    return BudgetRefused(message)


def check_ceilings(
    store: StateStore, bill: Mapping[str, Any], spend: Mapping[str, Any], limits: Limits
) -> None:
    """Refuse when the plan already exceeds ``limits.max_tasks`` or ``limits.max_cost``."""
    new = bill["new_jobs"]
    if limits.max_tasks is not None:
        billed = spend[ACCEPTED] + spend[AMBIGUOUS]
        if billed + new > limits.max_tasks:
            raise _refuse(
                store,
                f"refusing to start: {new:,} new tasks + {billed:,} already billable in the run "
                f"directory = {billed + new:,}, over limits.max_tasks {limits.max_tasks:,} "
                "(raise limits.max_tasks in the manifest or pass --max-tasks N)",
            )
    if limits.max_cost is not None and new:
        estimate = bill["estimated_cost_usd"]
        if estimate is None:
            raise _refuse(
                store,
                "refusing to start: limits.max_cost is set but no price is known for "
                + ", ".join(bill["unpriced_models"])
                + " (give one under prices: in the manifest)",
            )
        spent = float(spend["estimated_usd"])
        if spent + estimate > limits.max_cost + 1e-9:
            raise _refuse(
                store,
                f"refusing to start: estimated cost {usd(estimate)} of {new:,} new tasks + "
                f"{usd(spent)} already spent = {usd(spent + estimate)}, over limits.max_cost "
                f"{usd(limits.max_cost)} (raise limits.max_cost in the manifest or pass "
                "--max-cost USD)",
            )


def check_default(
    store: StateStore,
    bill: Mapping[str, Any],
    limits: Limits,
    *,
    yes: bool,
    simulate: bool,
    confirm: Callable[[str], bool] | None,
) -> None:
    """Without any ceiling, more than :data:`DEFAULT_CONFIRM_TASKS` new jobs need a yes."""
    new = bill["new_jobs"]
    if (
        yes
        or simulate
        or limits.max_tasks is not None
        or limits.max_cost is not None
        or new <= DEFAULT_CONFIRM_TASKS
    ):
        return
    estimate = bill["estimated_cost_usd"]
    cost = f"estimated {usd(estimate)}" if estimate is not None else "cost unknown"
    question = (
        f"this run would submit {new:,} new tasks ({cost}; at most "
        f"{bill['max_billable_submissions']:,} billable submissions) and no ceiling is set"
    )
    if confirm is not None and confirm(question):
        return
    raise _refuse(
        store,
        f"refusing to start: {question} (more than {DEFAULT_CONFIRM_TASKS:,} new tasks need "
        "one): set limits.max_tasks and/or limits.max_cost in the manifest, pass --max-tasks "
        "N / --max-cost USD, or pass --yes",
    )


async def check_balance(
    store: StateStore, client: ModellixClient, bill: Mapping[str, Any], *, key: str
) -> float | None:
    """Read the account balance, record it in the ledger's ``key`` (``balance_start`` or
    ``balance_end``) and, at the start, refuse when it does not cover the estimate.
    None when the provider reports no balance (logged, ignored)."""
    try:
        balance = await client.balance()
    except ApiError as exc:
        logger.info("account balance not available (%s); not checked", exc)
        return None
    store.update_spend_info({key: balance})
    estimate = bill.get("estimated_cost_usd")
    if key == "balance_start" and estimate is not None and estimate > balance + 1e-9:
        raise _refuse(
            store,
            f"refusing to start: estimated cost {usd(estimate)} of {bill['new_jobs']:,} new "
            f"tasks is more than the account balance {usd(balance)} (top up the account or "
            "run fewer jobs)",
        )
    return balance
