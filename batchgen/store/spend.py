"""Spend accounting in the state file: one ``submissions`` row per submission the provider may
bill (``accepted``: a task id came back; ``ambiguous``: the outcome is unknown), with the
estimated price in force when it was sent, and a small ``spend`` record in ``meta`` (the
balance read at the start and at the end of the last session, why the last run stopped
submitting).

Guarantees: a row is committed before the runner acts on the submission's outcome; rows are
never deleted (``retry`` keeps them), so the totals are cumulative over every session of the
run directory.  A state file of schema version 1 has no such table: it reads as no spend.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from batchgen.store.transitions import JobTransitions

__all__ = ["ACCEPTED", "AMBIGUOUS", "Charge", "SpendLedger", "spend_totals"]

ACCEPTED = "accepted"
AMBIGUOUS = "ambiguous"


@dataclass(frozen=True)
class Charge:
    """What one submission may cost: its model, estimated USD (None: unknown), images."""

    model: str
    usd: float | None
    images: int = 1


def _insert(
    c: sqlite3.Connection, job_id: str, outcome: str, charge: Charge, task: str | None
) -> None:
    c.execute(
        "INSERT INTO submissions(job_id, model, at, outcome, task_id, usd, images)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (job_id, charge.model, time.time(), outcome, task, charge.usd, charge.images),
    )


def spend_totals(conn: sqlite3.Connection) -> dict[str, Any]:
    """Totals over the ``submissions`` table: ``accepted``, ``ambiguous``, ``images``,
    ``estimated_usd`` (sum of the known prices), ``unpriced`` (submissions without a price)
    and the same by model."""
    by_model: dict[str, dict[str, Any]] = {}
    try:
        rows = conn.execute(
            "SELECT model, outcome, COUNT(*), SUM(images), SUM(COALESCE(usd, 0)),"
            " SUM(usd IS NULL) FROM submissions GROUP BY model, outcome"
        ).fetchall()
    except sqlite3.OperationalError:  # schema version 1: no submissions recorded
        rows = []
    for model, outcome, n, images, usd, unpriced in rows:
        entry = by_model.setdefault(
            model, {ACCEPTED: 0, AMBIGUOUS: 0, "images": 0, "estimated_usd": 0.0, "unpriced": 0}
        )
        entry[outcome if outcome in (ACCEPTED, AMBIGUOUS) else AMBIGUOUS] += n
        if outcome == ACCEPTED:
            entry["images"] += int(images or 0)
        entry["estimated_usd"] = round(entry["estimated_usd"] + float(usd or 0.0), 6)
        entry["unpriced"] += int(unpriced or 0)
    total: dict[str, Any] = {
        key: sum(e[key] for e in by_model.values())
        for key in (ACCEPTED, AMBIGUOUS, "images", "unpriced")
    }
    total["estimated_usd"] = round(sum(e["estimated_usd"] for e in by_model.values()), 6)
    total["by_model"] = by_model
    return total


def costs_per_image(conn: sqlite3.Connection) -> dict[str, float | None]:
    """job_id -> estimated USD per image of its billable submissions (None: a price unknown)."""
    try:
        rows = conn.execute(
            "SELECT job_id, SUM(COALESCE(usd, 0)), SUM(usd IS NULL), MAX(images)"
            " FROM submissions GROUP BY job_id"
        ).fetchall()
    except sqlite3.OperationalError:  # schema version 1: no submissions recorded
        return {}
    return {
        job_id: None if unpriced else round(float(total) / max(int(images or 1), 1), 6)
        for job_id, total, unpriced, images in rows
    }


def read_spend_info(conn: sqlite3.Connection) -> dict[str, Any]:
    """The ``spend`` record of ``meta`` (balances, stop reason); empty when there is none."""
    row = conn.execute("SELECT value FROM meta WHERE key='spend'").fetchone()
    value: dict[str, Any] = json.loads(row[0]) if row else {}
    return value


class SpendLedger(JobTransitions):
    """The spend part of :class:`batchgen.store.state.StateStore`."""

    def record_submission(
        self, job_id: str, outcome: str, charge: Charge, task_id: str | None = None
    ) -> None:
        """Record one submission the provider may bill (its own transaction)."""
        with self._tx() as c:
            _insert(c, job_id, outcome, charge, task_id)

    def mark_running_charged(
        self, job_id: str, task_id: str, poll_url: str | None, charge: Charge
    ) -> int:
        """:meth:`mark_running` and the accepted submission's row, in one transaction."""
        return self.mark_running(
            job_id, task_id, poll_url, also=lambda c: _insert(c, job_id, ACCEPTED, charge, task_id)
        )

    def spend(self) -> dict[str, Any]:
        """:func:`spend_totals` of this file."""
        return spend_totals(self._conn)

    def costs_per_image(self) -> dict[str, float | None]:
        """:func:`costs_per_image` of this file."""
        return costs_per_image(self._conn)

    def spend_info(self) -> dict[str, Any]:
        """:func:`read_spend_info` of this file."""
        return read_spend_info(self._conn)

    def update_spend_info(self, changes: dict[str, Any]) -> None:
        """Merge ``changes`` into the ``spend`` record (a None value removes its key)."""
        with self._tx() as c:
            merged = {**read_spend_info(c), **changes}
            merged = {k: v for k, v in merged.items() if v is not None}
            c.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('spend', ?)",
                (json.dumps(merged, sort_keys=True),),
            )
