"""What happened in a run, from its state file alone: ``batchgen status``.

:func:`status_report` reads ``state.db`` read-only (``mode=ro``, one read
transaction, so every number comes from one consistent snapshot) and works
while a run is writing it (WAL readers never block the writer).  It never takes
the run lock: whether a run holds it is found out without locking
(:func:`lock_status`), so a ``status`` from a monitoring script can never make a
starting ``batchgen run`` fail with "locked".

Counting rules (all from the append-only ``events`` table):

* ``submissions``: every ``pending → submitting`` transition (one per request sent).
* ``retries``: every return to ``pending`` from a job in flight that costs an
  attempt (a failed task, a server error, an unknown submit outcome, a failed
  download, ...).  A 429 or a submit refused before it was sent gives its
  attempt back and is not a retry.
* ``rate_limited``: every 429 answer to a submission.
* ``ambiguous_resubmits``: submits whose outcome was unknown (the task may exist
  and be billed) and that were sent again, including jobs a crash left in
  ``submitting``.
* ``ambiguous_submits``: every submit whose outcome was unknown, resubmitted or not.
* ``resets``: jobs put back to ``pending`` by ``batchgen retry``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from batchgen.errors import ExitCode
from batchgen.reports.reasons import failure_reason
from batchgen.reports.spend import format_spend, spend_summary
from batchgen.store.errors import StateError
from batchgen.store.lock import LOCK_NAME
from batchgen.store.queries import image_counts
from batchgen.store.records import ALL_STATES
from batchgen.store.run_dirs import missing_run_error
from batchgen.store.schema import check_version, connect_readonly, state_path

__all__ = [
    "BAD_STATES",
    "FailureExample",
    "FailureGroup",
    "LockStatus",
    "StatusReport",
    "clean_text",
    "failure_reason",
    "format_status",
    "lock_status",
    "open_readonly_db",
    "status_report",
]

#: Terminal states that are not a success, in the order ``status`` shows them.
BAD_STATES: tuple[str, ...] = ("failed", "rejected", "expired")


# ------------------------------------------------------------------ the lock
@dataclass(frozen=True)
class LockStatus:
    """Whether a process holds the run directory's lock now, and which."""

    held: bool
    pid: int | None = None
    #: How it was found out: ``"proc-locks"`` (the kernel's lock table, exact),
    #: ``"pid"`` (the pid written in ``run.lock`` is a live process) or ``"none"``.
    method: str = "none"


def _read_lock_pid(path: Path) -> int | None:
    try:
        with open(path, "rb") as f:
            data = f.read(64)
    except OSError:
        return None
    try:
        pid = int(data.decode("ascii").strip())
    except (ValueError, UnicodeDecodeError):
        return None
    return pid if pid > 0 else None


def _kernel_flock_holders(st: os.stat_result) -> list[int] | None:
    """PIDs holding a flock on the file ``st`` per ``/proc/locks``; ``None`` if unavailable."""
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    holders = []
    for line in lines:
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF" (blocked waiters have "->")
        if "->" in parts or len(parts) < 6 or parts[1] != "FLOCK":
            continue
        if parts[5] == dev:
            with contextlib.suppress(ValueError):
                holders.append(int(parts[4]))
    return holders


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_status(run: Path) -> LockStatus:
    """Whether a run holds the lock of ``run`` (a run directory or its state file), found out
    without taking the lock (not even a shared one)."""
    run = Path(run)
    run_dir = run.parent if run.suffix == ".db" or run.is_file() else run
    path = run_dir / LOCK_NAME
    try:
        st = os.stat(path)
    except OSError:
        return LockStatus(held=False)
    pid = _read_lock_pid(path)
    holders = _kernel_flock_holders(st)
    if holders is not None:
        if not holders:
            return LockStatus(held=False, method="proc-locks")
        return LockStatus(
            held=True, pid=pid if pid is not None else holders[0], method="proc-locks"
        )
    # No kernel lock table: a lock file is emptied when released, so a pid in it whose process
    # is alive holds it (a pid reused since a SIGKILL can fool this fallback).
    if pid is not None and _pid_alive(pid):
        return LockStatus(held=True, pid=pid, method="pid")
    return LockStatus(held=False, method="pid")


# ------------------------------------------------------------------- report
@dataclass(frozen=True)
class FailureExample:
    """One job of a failure group."""

    job_id: str
    prompt: str | None
    error: str | None
    attempts: int


@dataclass(frozen=True)
class FailureGroup:
    """Jobs that ended in ``state`` for the same ``reason``."""

    state: str
    reason: str
    count: int
    examples: list[FailureExample]


@dataclass(frozen=True)
class StatusReport:
    """Everything ``batchgen status`` shows; see the module doc for the counting rules."""

    run_dir: str
    state_file: str
    name: str
    models: list[str]
    manifest: str | None
    counts: dict[str, int]
    total: int
    not_in_manifest: int
    lock: LockStatus
    failures: list[FailureGroup]
    submissions: int
    retries: int
    rate_limited: int
    ambiguous_resubmits: int
    ambiguous_submits: int
    """Submits whose outcome was unknown (resubmitted or failed): tasks that may be billed."""
    resets: int
    unknown_submits: int
    """Jobs in ``submitting`` with no run holding the lock: a crash left them; their task may
    exist remotely (the next run submits them again, or fails them)."""
    max_attempts: int
    created_at: float | None
    started_at: float | None
    ended_at: float | None
    """End of the last session; ``None`` while a run holds the lock or if none ended."""
    last_success_at: float | None
    active_seconds: float
    images_per_minute: float
    sessions: int
    last_exit_code: int | None
    settings: dict[str, Any] = field(default_factory=dict)
    images: dict[str, int] = field(default_factory=lambda: {"done": 0, "partial": 0})
    """Images on disk and recorded: ``done`` (of done jobs; a task may return several) and
    ``partial`` (of jobs not done: still downloading the rest, or failed after some)."""
    spend: dict[str, Any] = field(default_factory=dict)
    """:func:`batchgen.reports.spend.spend_summary`."""

    @property
    def finished(self) -> int:
        """Jobs in a terminal state."""
        return sum(self.counts.get(s, 0) for s in ("done", *BAD_STATES))

    @property
    def left(self) -> int:
        """Jobs not yet in a terminal state."""
        return self.total - self.finished

    @property
    def exit_code(self) -> ExitCode:
        """How ``batchgen status`` exits: 1 when a job ended failed/rejected/expired (whether or
        not others are left), else 75 while jobs are left (the run is not finished: look again
        later), else 0 (every job done)."""
        if any(self.counts.get(s, 0) for s in BAD_STATES):
            return ExitCode.JOBS_FAILED
        if self.left:
            return ExitCode.TEMPFAIL
        return ExitCode.OK

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (``batchgen status --json``)."""
        out = asdict(self)
        out["finished"] = self.finished
        out["left"] = self.left
        return out


def open_readonly_db(run: Path) -> sqlite3.Connection:
    """A read-only connection (``mode=ro`` URI) to the state file of ``run``, version checked.

    Raises :class:`StateError` when there is no usable state file.
    """
    path = state_path(Path(run))
    if not path.exists():
        raise missing_run_error(path)
    try:
        conn = connect_readonly(path)
    except sqlite3.DatabaseError as exc:
        raise StateError(f"{path} is not a readable batchgen state file: {exc}") from exc
    try:
        check_version(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


@contextlib.contextmanager
def _snapshot(run: Path) -> Iterator[sqlite3.Connection]:
    conn = open_readonly_db(run)
    try:
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("COMMIT")
    except sqlite3.DatabaseError as exc:
        raise StateError(f"cannot read {state_path(Path(run))}: {exc}") from exc
    finally:
        conn.close()


def _prompt_of(body_json: str) -> str | None:
    try:
        body = json.loads(body_json)
    except ValueError:
        return None
    prompt = body.get("prompt") if isinstance(body, dict) else None
    return prompt if isinstance(prompt, str) else None


def _failure_groups(conn: sqlite3.Connection, examples: int) -> list[FailureGroup]:
    groups: dict[tuple[str, str], list[FailureExample]] = {}
    counts: dict[tuple[str, str], int] = {}
    marks = ",".join("?" * len(BAD_STATES))
    for job_id, state, error, attempts, body in conn.execute(
        f"SELECT job_id, state, last_error, attempts, body FROM jobs WHERE state IN ({marks})"
        " ORDER BY rowid",
        BAD_STATES,
    ):
        key = (state, failure_reason(state, error))
        counts[key] = counts.get(key, 0) + 1
        shown = groups.setdefault(key, [])
        if len(shown) < examples:
            shown.append(FailureExample(job_id, _prompt_of(body), error, attempts))
    order = {s: i for i, s in enumerate(BAD_STATES)}
    keys = sorted(counts, key=lambda k: (order[k[0]], -counts[k], k[1]))
    return [FailureGroup(k[0], k[1], counts[k], groups[k]) for k in keys]


def _event_counts(conn: sqlite3.Connection) -> dict[str, Any]:
    row = conn.execute(
        """
        SELECT
          COALESCE(SUM(to_state = 'submitting'), 0),
          COALESCE(SUM(to_state = 'pending' AND from_state IN ('submitting','running','downloading')
                AND detail NOT LIKE 'rate limited%' AND detail NOT LIKE 'not submitted%'
                AND detail NOT LIKE 'no task_id%'), 0),
          COALESCE(SUM(detail LIKE 'rate limited%'
                AND (to_state = 'pending' OR to_state = 'failed')), 0),
          COALESCE(SUM(to_state = 'pending' AND (detail LIKE 'submit outcome unknown%'
                OR detail LIKE 'interrupted during submit%')), 0),
          COALESCE(SUM(to_state = 'pending' AND from_state IN ('failed','rejected','expired')), 0),
          COALESCE(SUM(from_state = 'submitting' AND (detail LIKE 'submit outcome unknown%'
                OR detail LIKE 'interrupted during submit%')), 0),
          MIN(at),
          MAX(at)
        FROM events
        """
    ).fetchone()
    keys = (
        "submissions",
        "retries",
        "rate_limited",
        "ambiguous_resubmits",
        "resets",
        "ambiguous_submits",
    )
    out: dict[str, Any] = {k: int(v) for k, v in zip(keys, row[: len(keys)], strict=True)}
    out["first_at"], out["last_at"] = row[-2], row[-1]
    return out


def _session_times(
    conn: sqlite3.Connection, now: float, live: bool
) -> tuple[float | None, float | None, float, int, int | None]:
    """(started_at, ended_at, active seconds, sessions, last exit code)."""
    rows = conn.execute(
        "SELECT started_at, ended_at, exit_code FROM sessions ORDER BY id"
    ).fetchall()
    if not rows:
        return None, None, 0.0, 0, None
    active = 0.0
    for i, (start, ended_at, _code) in enumerate(rows):
        end = ended_at
        if end is None:
            last = i == len(rows) - 1
            if last and live:
                end = now
            else:  # a crashed session: it lasted until its last recorded event
                limit = rows[i + 1][0] if not last else now
                got = conn.execute(
                    "SELECT MAX(at) FROM events WHERE at >= ? AND at < ?", (start, limit)
                ).fetchone()[0]
                end = got if got is not None else start
        active += max(float(end) - float(start), 0.0)
    ended = rows[-1][1] if not live else None
    return rows[0][0], ended, active, len(rows), rows[-1][2]


def status_report(run: Path, *, examples: int = 3, now: float | None = None) -> StatusReport:
    """The status of ``run`` (a run directory or its ``state.db``) from the state file alone.

    Read-only; safe while a run is writing.  ``examples`` job IDs and prompts are kept per
    failure group.  Raises :class:`batchgen.store.state.StateError` when there is no usable
    state file.
    """
    run = Path(run)
    path = state_path(run)
    run_dir = path.parent
    lock = lock_status(run_dir)
    now = time.time() if now is None else now
    with _snapshot(path) as conn:
        row = conn.execute("SELECT value FROM meta WHERE key='settings'").fetchone()
        settings: dict[str, Any] = json.loads(row[0]) if row else {}
        row = conn.execute("SELECT value FROM meta WHERE key='created_at'").fetchone()
        created = float(row[0]) if row else None
        counts = dict.fromkeys(ALL_STATES, 0)
        for state, n in conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
            counts[state] = n
        inactive = conn.execute("SELECT COUNT(*) FROM jobs WHERE active = 0").fetchone()[0]
        models = [r[0] for r in conn.execute("SELECT DISTINCT model FROM jobs ORDER BY model")]
        max_attempts = conn.execute("SELECT COALESCE(MAX(attempts), 0) FROM jobs").fetchone()[0]
        last_success = conn.execute(
            "SELECT MAX(finished_at) FROM jobs WHERE state = 'done'"
        ).fetchone()[0]
        failures = _failure_groups(conn, examples)
        images = image_counts(conn)
        events = _event_counts(conn)
        started, ended, active, sessions, last_code = _session_times(conn, now, lock.held)
        spend = spend_summary(conn)
    if sessions == 0 and events["first_at"] is not None:
        # Jobs run through the library without sessions: the span of the recorded events.
        started = events["first_at"]
        ended = None if lock.held else events["last_at"]
        active = (now if lock.held else events["last_at"]) - events["first_at"]
    ipm = images["done"] / active * 60.0 if active > 0 else 0.0
    public_settings = {k: v for k, v in settings.items() if "key" not in k.lower()}
    return StatusReport(
        run_dir=str(run_dir),
        state_file=str(path),
        name=str(settings.get("name") or run_dir.name),
        models=models or list(settings.get("models") or []),
        manifest=settings.get("manifest"),
        counts=counts,
        total=sum(counts.values()),
        not_in_manifest=int(inactive),
        lock=lock,
        failures=failures,
        submissions=events["submissions"],
        retries=events["retries"],
        rate_limited=events["rate_limited"],
        ambiguous_resubmits=events["ambiguous_resubmits"],
        ambiguous_submits=events["ambiguous_submits"],
        resets=events["resets"],
        unknown_submits=0 if lock.held else counts.get("submitting", 0),
        max_attempts=int(max_attempts),
        created_at=created,
        started_at=started,
        ended_at=ended,
        last_success_at=last_success,
        active_seconds=active,
        images_per_minute=ipm,
        sessions=sessions,
        last_exit_code=last_code,
        settings=public_settings,
        images=images,
        spend=spend,
    )


# --------------------------------------------------------------- plain text
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def clean_text(text: str, limit: int | None = None) -> str:
    """``text`` on one line with every control character (ANSI escapes included) replaced."""
    out = _CONTROL.sub(" ", text)
    if limit is not None and len(out) > limit:
        out = out[: limit - 1].rstrip() + "…"
    return out


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _span(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _failure_lines(report: StatusReport) -> list[str]:
    lines: list[str] = []
    bad = sum(g.count for g in report.failures)
    if not bad:
        return ["no failed, rejected or expired jobs"]
    lines.append(f"not done ({bad}), by reason:")
    for group in report.failures:
        lines.append(f"  {group.count:>6} {group.state:<8} {clean_text(group.reason)}")
        for ex in group.examples:
            prompt = clean_text(ex.prompt, 70) if ex.prompt is not None else "(no prompt)"
            lines.append(f"           {ex.job_id}  {prompt!r}")
        more = group.count - len(group.examples)
        if more > 0:
            lines.append(f"           ... and {more} more")
    return lines


def format_status(report: StatusReport, *, failed_only: bool = False) -> str:
    """``batchgen status`` as plain text lines (no control characters, no colours)."""
    r = report
    lines: list[str] = []
    if not failed_only:
        lines.append(f"run {clean_text(r.name)}: {clean_text(r.run_dir)}")
        if r.lock.held:
            who = f"process {r.lock.pid}" if r.lock.pid else "another process"
            lines.append(f"  running now: locked by {who}")
        else:
            lines.append("  not running (no process holds the lock)")
        if r.started_at is not None:
            end = "still running" if r.lock.held else f"ended {_when(r.ended_at)}"
            code = f", last exit code {r.last_exit_code}" if r.last_exit_code is not None else ""
            runs = (
                f" over {r.sessions} session{'s' if r.sessions != 1 else ''}" if r.sessions else ""
            )
            lines.append(
                f"  started {_when(r.started_at)}, {end} "
                f"({_span(r.active_seconds)} running{runs}{code})"
            )
        parts = [f"{r.counts.get(s, 0)} {s}" for s in ALL_STATES if r.counts.get(s, 0)]
        lines.append(f"jobs: {r.total} total; " + (", ".join(parts) if parts else "none"))
        if r.left:
            lines.append(f"  {r.left} not finished yet")
        done_images = r.images.get("done", 0)
        partial = r.images.get("partial", 0)
        lines.append(
            f"images: {done_images} image{'s' if done_images != 1 else ''} of done jobs"
            + (f", {partial} more on disk of jobs not done" if partial else "")
        )
        if r.not_in_manifest:
            lines.append(f"  {r.not_in_manifest} no longer in the manifest (left as they are)")
        lines.append(
            f"attempts: {r.submissions} submissions, {r.retries} retries, "
            f"{r.rate_limited} rate limited (429), {r.ambiguous_resubmits} ambiguous resubmits"
            + (
                f" (of {r.ambiguous_submits} unknown submit outcomes)"
                if r.ambiguous_submits != r.ambiguous_resubmits
                else ""
            )
            + (f", {r.resets} reset by retry" if r.resets else "")
            + f"; at most {r.max_attempts} attempt{'s' if r.max_attempts != 1 else ''} for one job"
        )
        if r.unknown_submits:
            lines.append(
                f"  {r.unknown_submits} jobs were being submitted when a run stopped: their task "
                "may exist remotely; the next run submits them again"
            )
        if r.spend:
            lines.extend(format_spend(r.spend))
        lines.append(
            f"throughput: {r.images_per_minute:.1f} images/min; "
            f"last image {_when(r.last_success_at)}"
        )
    lines.extend(_failure_lines(r))
    flags = [f"--{s}" for s in ("failed", "expired") if r.counts.get(s, 0)]
    if flags and not r.lock.held:
        lines.append(f"rerun them: batchgen retry {clean_text(r.run_dir)} {' '.join(flags)}")
    return "\n".join(lines)
