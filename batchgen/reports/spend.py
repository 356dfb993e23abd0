"""The spend of a run directory, from its state file's ledger (:mod:`batchgen.store.spend`):
what ``status``, ``metrics.prom`` and ``export`` show.

:func:`spend_summary` is JSON-ready: ``accepted`` (submissions the provider accepted),
``ambiguous`` (submits whose outcome is unknown: possibly billed), ``images`` (expected from
the accepted tasks), ``estimated_usd`` (known prices summed; ``unpriced`` submissions have
none), ``by_model``, and from the last session ``balance_start``, ``balance_end`` and
``stopped`` (why the run stopped submitting, or refused to start) when recorded.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

from batchgen.manifest.bill import usd
from batchgen.store.spend import read_spend_info, spend_totals

__all__ = ["format_spend", "spend_summary"]


def spend_summary(conn: sqlite3.Connection) -> dict[str, Any]:
    """The spend of the state file behind ``conn`` (read only)."""
    out = spend_totals(conn)
    info = read_spend_info(conn)
    for key in ("balance_start", "balance_end", "stopped"):
        out[key] = info.get(key)
    return out


def format_spend(spend: Mapping[str, Any]) -> list[str]:
    """Text lines for ``batchgen status``."""
    estimate = usd(spend["estimated_usd"])
    if spend["unpriced"]:
        estimate += f" + {spend['unpriced']:,} submissions of unknown price"
    lines = [
        f"spend: {spend['accepted']:,} tasks accepted, {spend['ambiguous']:,} ambiguous submits "
        f"(possibly billed), {spend['images']:,} images; estimated spend {estimate}"
    ]
    if len(spend["by_model"]) > 1:
        for model, info in spend["by_model"].items():
            lines.append(
                f"  {model:<32} {info['accepted']:>8,} accepted {info['ambiguous']:>6,} "
                f"ambiguous  {usd(info['estimated_usd'])}"
                + (" + unknown" if info["unpriced"] else "")
            )
    start, end = spend.get("balance_start"), spend.get("balance_end")
    if start is not None:
        lines.append(
            f"  balance {usd(start)} at start"
            + (f", {usd(end)} at end" if end is not None else "")
            + " (as the provider reported it)"
        )
    if spend.get("stopped"):
        lines.append(f"stopped: {spend['stopped']}")
    return lines
