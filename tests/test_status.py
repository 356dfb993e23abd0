"""`batchgen status`: the report of a run from its state file alone, also while it runs."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import threading
from pathlib import Path

import pytest

from batchgen.cli import main
from batchgen.manifest.types import Limits
from batchgen.reports.status import (
    failure_reason,
    format_status,
    lock_status,
    status_report,
)
from batchgen.simulator.app import Simulator
from batchgen.store.state import StateError, StateStore, acquire_run_lock

try:
    from tests.opshelpers import job, make_jobs, real_run, sim_config
except ModuleNotFoundError:
    from opshelpers import job, make_jobs, real_run, sim_config  # type: ignore[no-redef]

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run: 60 jobs, some tasks failed for good, one body the API rejects."""
    run = tmp_path_factory.mktemp("status") / "nightly-2026-11-24"
    jobs = [*make_jobs(60), job("a kite\nwith a \x1b[31mred\x1b[0m tail", size="999x999")]
    sim = Simulator(sim_config(fail_rate=0.1, seed=11))
    summary = asyncio.run(
        real_run(run, jobs, sim=sim, limits=Limits(concurrency=8, rate=1000, retries=0))
    )
    assert summary.exit_code == 1
    return run


def test_status_counts_match_the_state_file_and_name_why_jobs_failed(night: Path) -> None:
    report = status_report(night)
    with StateStore.open_readonly(night) as store:
        counts = store.counts()
        failed = list(store.iter_jobs(["failed"]))
    assert report.counts == counts
    assert report.total == 61
    assert report.counts["rejected"] == 1
    assert failed, "the simulator's fail_rate should have failed a few tasks"
    groups = {(g.state, g.reason): g for g in report.failures}
    task_failed = groups["failed", "task failed: task failed without a message"]
    assert task_failed.count == len(failed)
    assert {e.job_id for e in task_failed.examples} <= {j.job_id for j in failed}
    assert all(e.prompt and "study" in e.prompt for e in task_failed.examples)
    rejected = next(g for g in report.failures if g.state == "rejected")
    assert rejected.reason.startswith("rejected:")
    assert "999x999" in rejected.reason
    assert report.submissions == 61
    assert report.retries == 0
    assert report.sessions == 1
    assert report.last_exit_code == 1
    assert report.started_at is not None
    assert report.ended_at is not None
    assert report.started_at <= report.ended_at
    assert report.images_per_minute > 0
    assert report.last_success_at is not None
    assert not report.lock.held


def test_status_text_is_plain_and_suggests_the_retry(night: Path) -> None:
    text = format_status(status_report(night))
    assert not CONTROL.search(text)
    assert "not running" in text
    assert "task failed: task failed without a message" in text
    assert f"batchgen retry {night} --failed" in text
    only = format_status(status_report(night, examples=1000), failed_only=True)
    assert "jobs:" not in only
    assert "999x999" in only
    with StateStore.open_readonly(night) as store:
        for j in store.iter_jobs(["failed", "rejected"]):
            assert j.job_id in only


def test_status_cli_json_accepts_the_run_dir_or_its_state_file(
    night: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", str(night), "--json"]) == 1  # a job was rejected
    data = json.loads(capsys.readouterr().out)
    assert data["counts"]["rejected"] == 1
    assert data["total"] == 61
    assert data["lock"] == {"held": False, "pid": None, "method": data["lock"]["method"]}
    assert main(["status", str(night / "state.db"), "--failed", "--json"]) == 1
    failed = json.loads(capsys.readouterr().out)
    assert sum(g["count"] for g in failed["failures"]) == sum(
        len(g["examples"]) for g in failed["failures"]
    )
    assert main(["status", str(night)]) == 1
    out = capsys.readouterr().out
    assert not CONTROL.search(out)
    assert "jobs: 61 total" in out


def test_status_of_a_directory_without_state_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", str(tmp_path)]) == 2
    assert "no state file" in capsys.readouterr().err


def test_status_never_touches_the_run_lock(night: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_flock(*args: object) -> None:
        raise AssertionError("status must not take any lock")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    report = status_report(night)
    assert not report.lock.held


def test_status_sees_the_lock_holder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with acquire_run_lock(run):
        held = lock_status(run)
        assert held.held
        assert held.pid == os.getpid()
    assert not lock_status(run).held
    assert not lock_status(tmp_path / "nowhere").held


@pytest.mark.anyio
async def test_status_reads_a_run_while_it_is_being_written(tmp_path: Path) -> None:
    run = tmp_path / "live"
    jobs = make_jobs(120)
    seen: list[tuple[int, int, bool]] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def watch() -> None:
        try:
            while not stop.is_set() and len(seen) < 500:
                if not (run / "state.db").exists():
                    stop.wait(0.005)
                    continue
                try:
                    r = status_report(run)
                except StateError:  # created, but its schema not written yet
                    stop.wait(0.005)
                    continue
                seen.append((r.total, r.counts["done"], r.lock.held))
                stop.wait(0.01)
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        sim = Simulator(sim_config(time_scale=0.01))
        summary = await real_run(run, jobs, sim=sim, limits=Limits(concurrency=10, rate=1000))
    finally:
        stop.set()
        watcher.join(timeout=30)
    assert not errors, errors
    assert summary.exit_code == 0
    during = [s for s in seen if s[2]]
    assert during, "status never ran while the run held its lock"
    assert all(total == 120 for total, _, _ in during if total)
    done = [d for _, d, _ in during]
    assert done == sorted(done), "a later snapshot never shows fewer done jobs"
    assert any(0 < d < 120 for d in done), "no report was taken in the middle of the run"
    final = status_report(run)
    assert final.counts["done"] == 120
    assert not final.lock.held


def test_status_reports_jobs_a_crash_left_in_submitting(tmp_path: Path) -> None:
    run = tmp_path / "crashed"
    with StateStore.open(run, settings={"name": "crashed"}) as store:
        store.add_jobs(make_jobs(3))
        store.begin_session()  # never ended: the process was killed
        ids = sorted(store.job_ids())
        store.mark_submitting(ids[0])
    report = status_report(run)
    assert report.unknown_submits == 1
    assert report.ended_at is None or report.ended_at >= report.started_at  # type: ignore[operator]
    assert "task may exist remotely" in format_status(report)


@pytest.mark.parametrize(
    ("state", "error", "reason"),
    [
        (
            "failed",
            'task failed: task failed without a message; answer: {"code": 0, "data": '
            '{"task_id": "task-openai-6954d56e6692c9e9bcbd"}} (after 5 attempts)',
            "task failed: task failed without a message",
        ),
        (
            "failed",
            "download failed: download: GET http://127.0.0.1/files/task-openai-cde46093ade92bd5"
            "01aa/0.png: HTTP 500: Internal Server Error (after 2 attempts)",
            "download failed: HTTP 500: Internal Server Error",
        ),
        (
            "failed",
            "timed out: task task-openai-720627be12129a03e0c8 still 'processing' after 1800s "
            "(limits.timeout)",
            "timed out: task still 'processing' after 1800s (limits.timeout)",
        ),
        ("failed", "rate limited 50 times", "rate limited too many times"),
        ("failed", None, "failed (no error recorded)"),
        (
            "rejected",
            "submit: HTTP 400: size '1536x1000' is not one of ['1024x1024']",
            "rejected: HTTP 400: size '1536x1000' is not one of ['1024x1024']",
        ),
    ],
)
def test_failure_reason_groups_errors_that_differ_only_by_ids(
    state: str, error: str | None, reason: str
) -> None:
    assert failure_reason(state, error) == reason
