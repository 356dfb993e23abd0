"""``metrics.prom``: a run's numbers in the Prometheus text exposition format.

The runner writes it into the run directory every minute and when it ends, so
node_exporter's textfile collector can alert when a night goes wrong.  When the
environment variable ``BATCHGEN_TEXTFILE_DIR`` names a folder (the collector's
``--collector.textfile.directory``), the same text also goes to
``<dir>/batchgen_<run name>.prom``, a path that stays the same from one night
to the next.  Files are written atomically (temp file + rename), so the
collector never reads half a file.

Every number comes from the state file (:func:`batchgen.reports.status.status_report`
plus the done jobs' task durations), so the file can be regenerated at any
time, e.g. after a crash: ``write_metrics(run_dir)``.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from batchgen.reports.status import StatusReport, open_readonly_db, status_report
from batchgen.store.outputs import open_atomic
from batchgen.store.records import ALL_STATES
from batchgen.store.state import StateStore

__all__ = [
    "METRICS_NAME",
    "QUANTILES",
    "TEXTFILE_ENV",
    "render_metrics",
    "task_durations",
    "write_metrics",
]

METRICS_NAME = "metrics.prom"
TEXTFILE_ENV = "BATCHGEN_TEXTFILE_DIR"
QUANTILES: tuple[float, ...] = (0.5, 0.9, 0.99)
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(items: Mapping[str, str]) -> str:
    return "{" + ",".join(f'{k}="{_label(v)}"' for k, v in items.items()) + "}"


def _num(value: float) -> str:
    if isinstance(value, int) or (math.isfinite(value) and value == int(value)):
        return str(int(value))
    return repr(float(value))


def task_durations(run: Path) -> list[float]:
    """Seconds from the last submit to the finished download of every done job, sorted."""
    conn = open_readonly_db(run)
    try:
        rows = conn.execute(
            "SELECT finished_at - submitted_at AS d FROM jobs WHERE state = 'done'"
            " AND finished_at IS NOT NULL AND submitted_at IS NOT NULL ORDER BY d"
        ).fetchall()
    finally:
        conn.close()
    return [max(float(r[0]), 0.0) for r in rows]


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    rank = max(math.ceil(q * len(sorted_values)) - 1, 0)
    return sorted_values[min(rank, len(sorted_values) - 1)]


def render_metrics(
    report: StatusReport,
    durations: Sequence[float],
    *,
    running: bool | None = None,
    exit_code: int | None = None,
    now: float | None = None,
) -> str:
    """The exposition text for one run (``running``/``exit_code`` override the report's)."""
    now = time.time() if now is None else now
    base = {"run": report.name}
    out: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        for suffix_labels, value in samples:
            out.append(f"{name}{suffix_labels} {_num(value)}")

    info = {**base, "run_dir": report.run_dir, "models": ",".join(report.models)}
    metric(
        "batchgen_run_info",
        "gauge",
        "The run (labels: name, directory, models).",
        [(_labels(info), 1)],
    )
    metric(
        "batchgen_jobs",
        "gauge",
        "Jobs in the state file by state.",
        [(_labels({**base, "state": s}), report.counts.get(s, 0)) for s in ALL_STATES],
    )
    counters = [
        (
            "batchgen_images_done_total",
            "Images downloaded and recorded, of done jobs (a task may return several).",
            report.images.get("done", 0),
        ),
        ("batchgen_submissions_total", "Submit requests sent.", report.submissions),
        ("batchgen_retries_total", "Attempts that failed and were tried again.", report.retries),
        ("batchgen_rate_limited_total", "Submits answered 429.", report.rate_limited),
        (
            "batchgen_ambiguous_resubmits_total",
            "Submits with an unknown outcome that were sent again (possibly billed twice).",
            report.ambiguous_resubmits,
        ),
        ("batchgen_resets_total", "Jobs put back to pending by batchgen retry.", report.resets),
    ]
    for name, help_text, value in counters:
        metric(name, "counter", help_text, [(_labels(base), value)])
    spend = report.spend
    by_model = spend.get("by_model", {})
    metric(
        "batchgen_submissions_accepted_total",
        "counter",
        "Submissions the provider accepted (billed), every session of the run directory.",
        [(_labels({**base, "model": m}), v["accepted"]) for m, v in by_model.items()],
    )
    metric(
        "batchgen_estimated_spend_usd",
        "gauge",
        "Estimated USD of the billable submissions (accepted and ambiguous) at known prices.",
        [(_labels({**base, "model": m}), v["estimated_usd"]) for m, v in by_model.items()],
    )
    name = "batchgen_task_duration_seconds"
    samples = [
        (_labels({**base, "quantile": f"{q:g}"}), _quantile(durations, q)) for q in QUANTILES
    ]
    out.append(f"# HELP {name} Seconds from submit to downloaded image, done jobs.")
    out.append(f"# TYPE {name} summary")
    out.extend(f"{name}{lbl} {_num(v) if not math.isnan(v) else 'NaN'}" for lbl, v in samples)
    out.append(f"{name}_sum{_labels(base)} {_num(sum(durations))}")
    out.append(f"{name}_count{_labels(base)} {len(durations)}")
    metric(
        "batchgen_images_per_minute",
        "gauge",
        "Images done per minute of run time.",
        [(_labels(base), round(report.images_per_minute, 3))],
    )
    if report.last_success_at is not None:
        metric(
            "batchgen_last_success_timestamp_seconds",
            "gauge",
            "Unix time of the last image done.",
            [(_labels(base), round(report.last_success_at, 3))],
        )
    if report.started_at is not None:
        metric(
            "batchgen_started_timestamp_seconds",
            "gauge",
            "Unix time the run first started.",
            [(_labels(base), round(report.started_at, 3))],
        )
    is_running = report.lock.held if running is None else running
    metric(
        "batchgen_running",
        "gauge",
        "1 while a run holds the run directory.",
        [(_labels(base), int(is_running))],
    )
    code = report.last_exit_code if exit_code is None else exit_code
    if code is not None and not is_running:
        metric(
            "batchgen_last_exit_code",
            "gauge",
            "Exit code of the last run session (0 all done, 1 jobs failed, 3 stopped, 75...).",
            [(_labels(base), code)],
        )
    metric(
        "batchgen_metrics_timestamp_seconds",
        "gauge",
        "Unix time this file was written.",
        [(_labels(base), round(now, 3))],
    )
    return "\n".join(out) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    # Rewritten every minute and regenerable from the state file: no fsync.
    with open_atomic(path, "w", perms=0o644, fsync=False) as f:
        f.write(text)
        os.fchmod(f.fileno(), 0o644)  # umask aside: the collector usually runs as another user


def write_metrics(
    source: StateStore | Path,
    path: Path | None = None,
    *,
    running: bool | None = None,
    exit_code: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> Path:
    """Write ``metrics.prom`` (default: in the run directory) for the run ``source`` (a state
    store, a run directory or a state file); also to ``$BATCHGEN_TEXTFILE_DIR`` when set.
    Returns the path written.  Raises :class:`batchgen.store.state.StateError` or ``OSError``."""
    run = source.path if isinstance(source, StateStore) else Path(source)
    report = status_report(run)
    text = render_metrics(report, task_durations(run), running=running, exit_code=exit_code)
    target = Path(path) if path is not None else Path(report.run_dir) / METRICS_NAME
    _write_atomic(target, text)
    env = os.environ if environ is None else environ
    textfile_dir = env.get(TEXTFILE_ENV)
    if textfile_dir:
        safe = _SAFE_NAME.sub("_", report.name).strip("._") or "run"
        _write_atomic(Path(textfile_dir) / f"batchgen_{safe}.prom", text)
    return target
