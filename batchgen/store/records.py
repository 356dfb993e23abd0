"""The state file's vocabulary: job states and their legal transitions, the row types
(:class:`JobRecord`, :class:`Event`, ...) and the SQL that reads a job row."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "ACTIVE_STATES",
    "ALL_STATES",
    "DONE",
    "FROM_STATES",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "Event",
    "ImageRecord",
    "JobLike",
    "JobRecord",
    "ResultInfo",
    "SyncResult",
    "encode_variables",
    "job_selects",
    "row_to_record",
]

PENDING = "pending"
SUBMITTING = "submitting"
RUNNING = "running"
DOWNLOADING = "downloading"
DONE = "done"
REJECTED = "rejected"
FAILED = "failed"
EXPIRED = "expired"

ALL_STATES: tuple[str, ...] = (
    PENDING,
    SUBMITTING,
    RUNNING,
    DOWNLOADING,
    DONE,
    REJECTED,
    FAILED,
    EXPIRED,
)
TERMINAL_STATES = frozenset({DONE, REJECTED, FAILED, EXPIRED})
#: States of a job that has a task_id: the task exists remotely and is polled, never resubmitted.
ACTIVE_STATES = frozenset({RUNNING, DOWNLOADING})

#: Legal transitions: ``TRANSITIONS[from_state]`` is the set of states a job may move to.
#: A failed/rejected/expired job goes back to ``pending`` only through :meth:`StateStore.reset`
#: (``batchgen retry``); ``done`` is final.
TRANSITIONS: dict[str, frozenset[str]] = {
    PENDING: frozenset({SUBMITTING, FAILED}),
    SUBMITTING: frozenset({RUNNING, PENDING, REJECTED, FAILED}),
    RUNNING: frozenset({DOWNLOADING, PENDING, FAILED}),
    DOWNLOADING: frozenset({DONE, PENDING, EXPIRED, FAILED}),
    DONE: frozenset(),
    REJECTED: frozenset({PENDING}),
    FAILED: frozenset({PENDING}),
    EXPIRED: frozenset({PENDING}),
}
FROM_STATES: dict[str, tuple[str, ...]] = {
    to: tuple(src for src, dests in TRANSITIONS.items() if to in dests) for to in ALL_STATES
}

JOB_COLUMNS = (
    "job_id",
    "model",
    "body",
    "repeat_index",
    "grp",
    "state",
    "attempts",
    "task_id",
    "poll_url",
    "submitted_at",
    "finished_at",
    "updated_at",
    "last_error",
    "result_path",
    "sha256",
    "width",
    "height",
    "bytes",
    "format",
    "active",
    "created_at",
    "vars",
)
#: Read from a file without the ``vars`` column (a read-only view of a version-3 file).
_LEGACY_COLUMNS = (*JOB_COLUMNS[:-1], "NULL")


class JobLike(Protocol):
    """What :meth:`StateStore.add_jobs` needs from a job (``batchgen.manifest.loader.Job`` fits)."""

    @property
    def job_id(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def body(self) -> Mapping[str, Any]: ...
    @property
    def repeat_index(self) -> int: ...
    @property
    def group(self) -> str: ...


@dataclass(frozen=True)
class JobRecord:
    """One row of the ``jobs`` table."""

    job_id: str
    model: str
    body: dict[str, Any]
    repeat_index: int
    group: str
    state: str
    attempts: int
    task_id: str | None
    poll_url: str | None
    submitted_at: float | None
    finished_at: float | None
    updated_at: float
    last_error: str | None
    result_path: str | None
    sha256: str | None
    width: int | None
    height: int | None
    bytes: int | None
    format: str | None
    active: bool
    created_at: float
    #: Template variables (:attr:`batchgen.manifest.types.Job.variables`); empty when the job
    #: has none, or was recorded before the state file kept them.
    variables: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    """One row of the append-only ``events`` table."""

    id: int
    job_id: str
    at: float
    from_state: str | None
    to_state: str
    detail: str | None


@dataclass(frozen=True)
class ResultInfo:
    """What a finished download recorded (relative ``result_path`` like ``images/<id>.png``)."""

    result_path: str
    sha256: str
    bytes: int
    format: str
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class ImageRecord:
    """One row of the ``images`` table: an image of a job, durable on disk under ``path``
    (relative to the run directory).  ``index`` is the image's place in the task's result
    (0 for a task's only image); ``url`` is where it was downloaded from (``None`` for an image
    recorded before the table existed)."""

    job_id: str
    index: int
    task_id: str | None
    url: str | None
    path: str
    sha256: str
    bytes: int
    width: int | None
    height: int | None
    format: str
    state: str
    recorded_at: float


IMAGE_COLUMNS = (
    "job_id, idx, task_id, url, path, sha256, bytes, width, height, format, state, recorded_at"
)
SELECT_IMAGES = f"SELECT {IMAGE_COLUMNS} FROM images"
#: Parameters: job_id, index, job_id (for its task_id), url, path, sha256, bytes, width,
#: height, format, recorded_at.  A recorded image is never replaced: it is durable, and its
#: row keeps the task it came from.
INSERT_IMAGE = (
    f"INSERT OR IGNORE INTO images({IMAGE_COLUMNS}) VALUES"
    " (?, ?, (SELECT task_id FROM jobs WHERE job_id = ?), ?, ?, ?, ?, ?, ?, ?, 'done', ?)"
)


def image_params(
    job_id: str, index: int, url: str | None, result: ResultInfo, now: float
) -> tuple[Any, ...]:
    """The parameters of :data:`INSERT_IMAGE` for one durable image."""
    return (
        job_id,
        index,
        job_id,
        url,
        result.result_path,
        result.sha256,
        result.bytes,
        result.width,
        result.height,
        result.format,
        now,
    )


@dataclass(frozen=True)
class SyncResult:
    """What :meth:`StateStore.sync_jobs` changed."""

    added: int  #: jobs new to the file
    reactivated: int  #: inactive jobs back in the manifest
    orphaned: int  #: jobs that left the manifest now
    inactive: int  #: every job not in the manifest (left as it is)
    total: int  #: every job in the file


def row_to_record(row: Sequence[Any]) -> JobRecord:
    return JobRecord(
        job_id=row[0],
        model=row[1],
        body=json.loads(row[2]),
        repeat_index=row[3],
        group=row[4],
        state=row[5],
        attempts=row[6],
        task_id=row[7],
        poll_url=row[8],
        submitted_at=row[9],
        finished_at=row[10],
        updated_at=row[11],
        last_error=row[12],
        result_path=row[13],
        sha256=row[14],
        width=row[15],
        height=row[16],
        bytes=row[17],
        format=row[18],
        active=bool(row[19]),
        created_at=row[20],
        variables=json.loads(row[21]) if row[21] else {},
    )


def encode_variables(variables: Mapping[str, Any] | None) -> str | None:
    """The ``vars`` column's text for a job's variables: JSON in their order, NULL for none."""
    if not variables:
        return None
    return _VARS_ENCODER(variables)


_VARS_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def job_selects(has_vars: bool) -> tuple[str, str]:
    """``SELECT <job row> FROM jobs`` without and with a trailing rowid, for a file with or
    without the ``vars`` column (an old file's jobs read with no variables)."""
    columns = ", ".join(JOB_COLUMNS if has_vars else _LEGACY_COLUMNS)
    return f"SELECT {columns} FROM jobs", f"SELECT {columns}, rowid FROM jobs"


SELECT_JOBS = job_selects(True)[0]
# What a transition reads first: (state, attempts), or with full=True the whole row.
SELECT_FOR_MOVE = {
    False: "SELECT state, attempts FROM jobs WHERE job_id = ?",
    True: f"{SELECT_JOBS} WHERE job_id = ?",
}
INSERT_JOB = (
    "INSERT OR IGNORE INTO jobs(job_id, model, body, repeat_index, grp, updated_at, created_at,"
    " vars) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
