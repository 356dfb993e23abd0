"""The dataset table of one or more run directories: ``batchgen export``.

Rows come from the state files alone (read-only; safe while a run writes), so
the table is right even when ``metadata.jsonl`` is stale.  Several run
directories (e.g. the shards of one manifest, see :mod:`batchgen.manifest.shard`) merge
into one table with exactly one row per image: a job ID is exported once, from
the first directory (in the order given) where it is done.

Row shape (``state="done"``): the ``metadata.jsonl`` record of one image
(:func:`batchgen.store.outputs.metadata_record`: ``file_name``, ``job_id``, ``index`` (the
image's place in its task's result: a task that returned k images gives k rows), ``prompt``,
the other body fields, ``model``, ``task_id``, ``sha256``, ``width``,
``height``, ``bytes``, ``submitted_at``, ``finished_at``) plus ``run`` (the run
directory) and one ``vars.<name>`` column per template variable of the job (``vars.subject``;
none for a job recorded before the state file kept variables).  ``file_name`` is relative
to ``relative_to`` when given, else to its run directory (as in ``metadata.jsonl``).
``state="all"`` adds every job that is not done, once per job ID, with ``state``,
``attempts`` and ``last_error`` columns (and an empty ``file_name``).  ``cost=True`` adds
``estimated_cost_usd``: what the job's billable submissions (every attempt) are estimated to
have cost, per image of its result; empty when a price is unknown.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from batchgen.reports.status import open_readonly_db
from batchgen.store.lock import acquire_run_lock
from batchgen.store.outputs import metadata_record, open_atomic, rebuild_metadata
from batchgen.store.records import DONE, ImageRecord, JobRecord
from batchgen.store.schema import has_vars_column, state_path
from batchgen.store.state import StateStore

__all__ = [
    "ExportState",
    "ExportStats",
    "export_columns",
    "export_rows",
    "rebuild_run_metadata",
    "write_atomic",
    "write_csv",
    "write_jsonl",
]

ExportState = Literal["done", "all"]
_FIXED_HEAD = ("file_name", "job_id", "index", "prompt")
_FIXED_TAIL = (
    "model",
    "task_id",
    "sha256",
    "width",
    "height",
    "bytes",
    "submitted_at",
    "finished_at",
    "run",
)
_ALL_EXTRA = ("state", "attempts", "last_error")
VARS_PREFIX = "vars."


@dataclass
class ExportStats:
    """What an export did (filled in while :func:`export_rows` is consumed)."""

    rows: int = 0
    duplicates: int = 0
    """Job IDs seen again in a later run directory and left out."""


def _as_list(runs: Path | str | Sequence[Path | str]) -> list[Path]:
    if isinstance(runs, (str, Path)):
        return [Path(runs)]
    return [Path(r) for r in runs]


def _run_dir(run: Path) -> Path:
    return state_path(run).parent


def _done_owner(runs: list[Path]) -> dict[str, int]:
    """job_id -> index of the first run where it is done."""
    owner: dict[str, int] = {}
    for i, run in enumerate(runs):
        conn = open_readonly_db(run)
        try:
            for (job_id,) in conn.execute("SELECT job_id FROM jobs WHERE state = 'done'"):
                owner.setdefault(job_id, i)
        finally:
            conn.close()
    return owner


def _file_name(run_dir: Path, result_path: str, relative_to: Path | None) -> str:
    if relative_to is None:
        return result_path
    return os.path.relpath(run_dir / result_path, relative_to)


def _row(
    job: JobRecord,
    image: ImageRecord | None,
    run_dir: Path,
    relative_to: Path | None,
    state: str,
) -> dict[str, Any]:
    record = metadata_record(job, image)
    if job.state == DONE and image is not None:
        record["file_name"] = _file_name(run_dir, image.path, relative_to)
    else:
        record["file_name"] = None
        record["index"] = None
    record["run"] = str(run_dir)
    for name, value in job.variables.items():
        record[f"{VARS_PREFIX}{name}"] = value
    if state == "all":
        record["state"] = job.state
        record["attempts"] = job.attempts
        record["last_error"] = job.last_error
    return record


def export_rows(
    runs: Path | str | Sequence[Path | str],
    *,
    state: ExportState = "done",
    relative_to: Path | None = None,
    stats: ExportStats | None = None,
    cost: bool = False,
) -> Iterator[dict[str, Any]]:
    """The table's rows, one per image (``done``) or one per job (``all``), over ``runs``.

    Raises :class:`batchgen.store.state.StateError` for a run without a usable state file.
    """
    if state not in ("done", "all"):
        raise ValueError(f"state must be 'done' or 'all', not {state!r}")
    paths = _as_list(runs)
    stats = stats if stats is not None else ExportStats()
    owner = _done_owner(paths)
    seen: set[str] = set()
    for i, run in enumerate(paths):
        run_dir = _run_dir(run)
        with StateStore.open_readonly(run) as store:
            costs = store.costs_per_image() if cost else {}
            for job in store.iter_jobs([DONE] if state == "done" else None):
                first = owner.get(job.job_id)
                if first is not None:
                    keep = job.state == DONE and first == i
                else:
                    keep = job.job_id not in seen
                if not keep:
                    stats.duplicates += 1
                    continue
                seen.add(job.job_id)
                if job.state != DONE:
                    stats.rows += 1
                    yield _row(job, None, run_dir, relative_to, state)
                    continue
                for image in store.job_images(job.job_id):
                    stats.rows += 1
                    row = _row(job, image, run_dir, relative_to, state)
                    if cost:
                        row["estimated_cost_usd"] = costs.get(job.job_id)
                    yield row


def export_columns(
    runs: Path | str | Sequence[Path | str], *, state: ExportState = "done", cost: bool = False
) -> list[str]:
    """The CSV header: ``file_name, job_id, prompt``, every body field (in first-seen order),
    then the fixed columns, then a ``vars.<name>`` column per template variable."""
    fields: dict[str, None] = {}
    variables: dict[str, None] = {}
    where = "WHERE state = 'done'" if state == "done" else ""
    for run in _as_list(runs):
        conn = open_readonly_db(run)
        try:
            column = "vars" if has_vars_column(conn) else "NULL"
            sql = f"SELECT body, {column} FROM jobs {where} ORDER BY rowid"
            for body, names in conn.execute(sql):
                for key in json.loads(body):
                    fields.setdefault(key, None)
                if names:
                    variables.update(dict.fromkeys(f"{VARS_PREFIX}{k}" for k in json.loads(names)))
        finally:
            conn.close()
    head = list(_FIXED_HEAD)
    tail = list(_FIXED_TAIL) + (list(_ALL_EXTRA) if state == "all" else [])
    if cost:
        tail.append("estimated_cost_usd")
    middle = [k for k in fields if k not in head and k not in tail]
    return head + middle + tail + list(variables)


def write_jsonl(rows: Iterable[dict[str, Any]], out: IO[str]) -> int:
    """One JSON object per line; returns the row count."""
    n = 0
    for row in rows:
        out.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
        n += 1
    return n


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return value


def write_csv(
    rows: Iterable[dict[str, Any]], out: IO[str], columns: Sequence[str] | None = None
) -> int:
    """CSV with a header (``columns``; default: the keys of every row, rows kept in memory).
    Nested values are JSON, ``None`` is empty.  Returns the row count."""
    if columns is None:
        rows = list(rows)
        names: dict[str, None] = {}
        for row in rows:
            names.update(dict.fromkeys(row))
        columns = list(names)
    writer = csv.DictWriter(
        out, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    n = 0
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in columns})
        n += 1
    return n


@contextlib.contextmanager
def write_atomic(path: Path) -> Iterator[IO[str]]:
    """A text file written in full or not at all (temp file + fsync + rename)."""
    with open_atomic(Path(path), "w", perms=0o644) as f:
        yield f


def rebuild_run_metadata(run: Path) -> int:
    """Rewrite ``metadata.jsonl`` of ``run`` from its state file; returns the line count.

    Takes the run lock (a run appending to the file at the same time would lose lines), so it
    raises :class:`batchgen.store.state.RunLocked` while a run holds it.
    """
    run_dir = _run_dir(Path(run))
    with StateStore.open_readonly(run_dir) as store, acquire_run_lock(run_dir):
        return rebuild_metadata(store, run_dir)
