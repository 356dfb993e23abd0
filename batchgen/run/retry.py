"""Rerun finished-but-unsuccessful jobs from the state file alone: ``batchgen retry``.

:func:`reset_for_retry` picks terminal jobs (``failed``, ``rejected``,
``expired``, or named job IDs), optionally edits their bodies (``--set
field=value``), and puts them back to ``pending``; :func:`retry_run` then runs
the run directory with the same session code as ``batchgen run RUN_DIR``
(stored limits, base URL and ``--simulate`` choice, overridable), so the pool,
limits, exit codes and output are those of ``run``.  The manifest is not read:
it may have changed or be gone.

Semantics:

* Each reset job gets ``attempts = 0`` (the full ``1 + retries`` attempts
  again) and one ``events`` row (``failed → pending``, detail ``batchgen
  retry...``); its earlier attempts stay in the events table (``status`` counts
  them).
* A job whose body is invalid against its model's schema (typically a
  ``rejected`` one) is refused with the schema's reasons and left as it is,
  unless ``--set`` edits make it valid.  Edits are validated before anything is
  written.
* Editing a body keeps the job's row and ID (the ID hashed the original body,
  so a later ``run`` of the unchanged manifest still recognises the job as
  done instead of generating it again); the edit is recorded in the reset
  event's detail and the new body is what is submitted and exported.
* The reset happens under the run lock, which is released just before the run
  takes it again: if another ``batchgen run`` starts in that instant, it runs
  the reset jobs itself and ``retry`` exits 75.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchgen.errors import BatchgenError, ExitCode
from batchgen.manifest.catalogue import UnknownModelError, load_model
from batchgen.store.lock import acquire_run_lock
from batchgen.store.schema import state_path
from batchgen.store.state import StateStore

if TYPE_CHECKING:
    # Imported by retry_run when it runs: resetting jobs needs no HTTP stack.
    import asyncio

    from batchgen.run.runner import RunSummary
    from batchgen.run.session import RunRequest

__all__ = [
    "RETRYABLE_STATES",
    "RetryError",
    "RetryPlan",
    "parse_assignments",
    "reset_for_retry",
    "retry_run",
]

#: The terminal states a job can be retried from (``done`` is final).
RETRYABLE_STATES: tuple[str, ...] = ("failed", "rejected", "expired")


class RetryError(BatchgenError):
    """``retry`` cannot go ahead (bad ``--set``, unknown job ID, no state file): exit 2."""

    exit_code = ExitCode.USAGE


@dataclass
class RetryPlan:
    """What :func:`reset_for_retry` did."""

    reset: list[str] = field(default_factory=list)
    """Jobs put back to ``pending``."""
    edited: list[str] = field(default_factory=list)
    """Of those, jobs whose body ``--set`` changed."""
    refused: list[tuple[str, str]] = field(default_factory=list)
    """``(job_id, reason)``: invalid bodies, left as they are."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """``(job_id, state)``: named with ``--job`` but not in a retryable state."""


def _coerce(model_props: Mapping[str, Any], name: str, text: str) -> Any:
    """A ``--set`` value: a string for string fields, else JSON when it parses (numbers,
    booleans, null, lists), else the string itself."""
    prop = model_props.get(name)
    types = prop.get("type") if isinstance(prop, Mapping) else None
    if types == "string" or (isinstance(types, list) and types == ["string"]):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_assignments(items: Sequence[str]) -> list[tuple[str, str]]:
    """``["size=1024x1024"]`` -> ``[("size", "1024x1024")]``; :class:`RetryError` if malformed."""
    out = []
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise RetryError(f"--set expects field=value, not {item!r}")
        out.append((name, value))
    return out


def _edit(body: Mapping[str, Any], model: str, sets: Sequence[tuple[str, str]]) -> dict[str, Any]:
    new = dict(body)
    if not sets:
        return new
    props = load_model(model).properties
    for name, text in sets:
        new[name] = _coerce(props, name, text)
    return new


def _problems(model: str, body: Mapping[str, Any]) -> list[str]:
    try:
        return load_model(model).validate(body)
    except UnknownModelError as exc:
        return [str(exc)]


def reset_for_retry(
    run: Path,
    *,
    states: Iterable[str] = (),
    job_ids: Iterable[str] = (),
    sets: Sequence[str] = (),
) -> RetryPlan:
    """Put the chosen terminal jobs of ``run`` back to ``pending`` (see the module doc).

    ``states`` picks every job in those states; ``job_ids`` names jobs.  Raises
    :class:`RetryError`, :class:`batchgen.store.state.RunLocked` while a run holds the lock, or
    :class:`batchgen.store.state.StateError` when the state file is damaged or from a newer
    batchgen.
    """
    wanted = set(states)
    bad = wanted - set(RETRYABLE_STATES)
    if bad:
        raise RetryError(f"cannot retry jobs in state(s) {sorted(bad)}")
    assignments = parse_assignments(sets)
    path = state_path(Path(run))
    if not path.exists():
        raise RetryError(f"no state file at {path}")
    run_dir = path.parent
    plan = RetryPlan()
    with acquire_run_lock(run_dir):
        store = StateStore.open(run_dir, create=False)
        try:
            chosen: dict[str, Any] = {}
            if wanted:
                for job in store.iter_jobs(sorted(wanted)):
                    chosen[job.job_id] = job
            for job_id in job_ids:
                try:
                    job = store.get(job_id)
                except KeyError:
                    raise RetryError(f"no job {job_id!r} in {path}") from None
                if job.state not in RETRYABLE_STATES:
                    plan.skipped.append((job_id, job.state))
                    continue
                chosen[job_id] = job
            edits: dict[str, dict[str, Any]] = {}
            for job_id, job in chosen.items():
                try:
                    body = _edit(job.body, job.model, assignments)
                except UnknownModelError as exc:
                    plan.refused.append((job_id, str(exc)))
                    continue
                problems = _problems(job.model, body)
                if problems:
                    plan.refused.append((job_id, "; ".join(problems)))
                    continue
                if body != job.body:
                    edits[job_id] = body
                plan.reset.append(job_id)
            for job_id, body in edits.items():
                store.update_body(job_id, body)
                plan.edited.append(job_id)
            detail = "reset by batchgen retry"
            if assignments:
                shown = ", ".join(f"{k}={v}" for k, v in assignments)
                detail += f"; body edited with --set {shown}"
            plain = [j for j in plan.reset if j not in edits]
            store.reset(plain, reason="reset by batchgen retry")
            store.reset(list(edits), reason=detail)
        finally:
            store.close()
    return plan


async def retry_run(
    run: Path,
    *,
    states: Iterable[str] = (),
    job_ids: Iterable[str] = (),
    sets: Sequence[str] = (),
    request: RunRequest | None = None,
    stop: asyncio.Event | None = None,
) -> tuple[RetryPlan, RunSummary | None]:
    """:func:`reset_for_retry`, then run the run directory with the same session as ``batchgen
    run RUN_DIR`` (limits, base URL and ``--simulate`` from the state file unless ``request``
    overrides them; its ``target`` is replaced by the run directory).  The summary is ``None``
    when nothing was reset."""
    from batchgen.run.session import RunRequest, run_session  # noqa: PLC0415 - only to run

    plan = reset_for_retry(run, states=states, job_ids=job_ids, sets=sets)
    if not plan.reset:
        return plan, None
    req = dataclasses.replace(request or RunRequest(target=Path(run)), target=Path(run))
    return plan, await run_session(req, stop=stop)
