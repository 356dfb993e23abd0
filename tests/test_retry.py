"""`batchgen retry`: the morning after a night with failures, from the state file alone."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from batchgen.cli import main
from batchgen.manifest.types import Job, Limits
from batchgen.reports.export import export_rows
from batchgen.reports.status import status_report
from batchgen.run.retry import RetryError, reset_for_retry
from batchgen.simulator.app import Simulator
from batchgen.store.state import StateStore, acquire_run_lock

try:
    from tests.opshelpers import job, make_jobs, real_run, sim_config
except ModuleNotFoundError:
    from opshelpers import job, make_jobs, real_run, sim_config  # type: ignore[no-redef]

NO_RETRIES = Limits(concurrency=16, rate=1000, retries=0, timeout=60)


def _night(run: Path, n: int, *, fail_rate: float, extra: list[Job] | None = None) -> None:
    sim = Simulator(sim_config(fail_rate=fail_rate, seed=21))
    jobs = [*make_jobs(n), *(extra or [])]
    summary = asyncio.run(real_run(run, jobs, sim=sim, limits=NO_RETRIES))
    assert summary.exit_code == 1


def test_morning_after_status_names_why_retry_finishes_export_has_one_row_per_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "nightly-2026-11-24"
    _night(run, 100, fail_rate=0.05)
    before = status_report(run)
    failed = before.counts["failed"]
    assert 1 <= failed <= 15
    assert [(g.state, g.reason) for g in before.failures] == [
        ("failed", "task failed: task failed without a message")
    ]
    # status names why, then the user retries the failed jobs (the manifest never existed)
    assert main(["status", str(run)]) == 1  # some jobs failed
    out = capsys.readouterr().out
    assert f"{failed} failed   task failed: task failed without a message" in out
    assert f"batchgen retry {run} --failed" in out
    assert main(["retry", str(run), "--failed", "--log-format", "json"]) == 0
    captured = capsys.readouterr()
    assert f"retrying {failed} job(s)" in captured.err
    summary = json.loads(captured.out.splitlines()[-1])
    assert summary["event"] == "summary"
    assert summary["exit_code"] == 0
    after = status_report(run)
    assert after.counts["done"] == 100
    assert after.total == 100
    assert after.resets == failed
    assert after.sessions == 2
    rows = list(export_rows(run))
    assert len(rows) == 100
    assert len({r["job_id"] for r in rows}) == 100
    assert len({r["file_name"] for r in rows}) == 100
    assert all((run / r["file_name"]).is_file() for r in rows)
    meta = (run / "metadata.jsonl").read_text().splitlines()
    assert sorted(json.loads(m)["job_id"] for m in meta) == sorted(r["job_id"] for r in rows)


@pytest.fixture
def rejected_run(tmp_path: Path) -> tuple[Path, str]:
    run = tmp_path / "rejected"
    bad = job("a kite over the sea", size="999x999")
    _night(run, 3, fail_rate=0.0, extra=[bad])
    with StateStore.open_readonly(run) as store:
        assert store.get(bad.job_id).state == "rejected"
    return run, bad.job_id


def test_a_rejected_job_with_an_invalid_body_is_refused_with_the_reason(
    rejected_run: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    run, job_id = rejected_run
    assert main(["retry", str(run), "--rejected"]) == 2
    err = capsys.readouterr().err
    assert f"job {job_id} refused" in err
    assert "999x999" in err
    assert "--set" in err
    with StateStore.open_readonly(run) as store:
        assert store.get(job_id).state == "rejected"


def test_an_invalid_edit_is_refused_before_anything_is_written(
    rejected_run: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    run, job_id = rejected_run
    assert main(["retry", str(run), "--job", job_id, "--set", "quality=ultra"]) == 2
    assert "quality" in capsys.readouterr().err
    with StateStore.open_readonly(run) as store:
        record = store.get(job_id)
    assert record.state == "rejected"
    assert record.body["size"] == "999x999"
    assert "quality" not in record.body or record.body["quality"] == "low"


def test_set_fixes_a_rejected_job_which_keeps_its_id_and_records_the_edit(
    rejected_run: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    run, job_id = rejected_run
    assert main(["retry", str(run), "--rejected", "--set", "size=1024x1536"]) == 0
    assert "1 with an edited body" in capsys.readouterr().err
    with StateStore.open_readonly(run) as store:
        record = store.get(job_id)
        events = store.events(job_id)
    assert record.state == "done"
    assert record.body["size"] == "1024x1536"
    assert record.height == 1536
    reset = [e for e in events if e.from_state == "rejected"]
    assert len(reset) == 1
    assert reset[0].to_state == "pending"
    assert "--set size=1024x1536" in (reset[0].detail or "")
    row = next(r for r in export_rows(run) if r["job_id"] == job_id)
    assert row["size"] == "1024x1536"


def test_reset_gives_every_attempt_back_and_logs_one_event_per_job(tmp_path: Path) -> None:
    run = tmp_path / "reset"
    _night(run, 40, fail_rate=0.2)
    with StateStore.open_readonly(run) as store:
        failed = [j.job_id for j in store.iter_jobs(["failed"])]
        done = next(iter(store.iter_jobs(["done"]))).job_id
    assert failed
    plan = reset_for_retry(run, states=["failed"], job_ids=[done])
    assert sorted(plan.reset) == sorted(failed)
    assert plan.skipped == [(done, "done")]
    assert plan.refused == []
    with StateStore.open_readonly(run) as store:
        for job_id in failed:
            record = store.get(job_id)
            assert record.state == "pending"
            assert record.attempts == 0
            assert record.task_id is None
            events = store.events(job_id)
            assert [e.to_state for e in events][-1] == "pending"
            assert sum(e.from_state == "failed" for e in events) == 1
    assert status_report(run).resets == len(failed)


def test_retry_refuses_unknown_jobs_and_runs_held_by_another_process(
    rejected_run: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    run, _ = rejected_run
    with pytest.raises(RetryError, match="no job"):
        reset_for_retry(run, job_ids=["0123456789abcdef"])
    with pytest.raises(RetryError, match="field=value"):
        reset_for_retry(run, states=["rejected"], sets=["size"])
    with acquire_run_lock(run):
        assert main(["retry", str(run), "--rejected"]) == 75
    assert "locked" in capsys.readouterr().err
    assert main(["retry", str(run.parent / "none")]) == 2


def test_retry_with_nothing_to_do_exits_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "clean"
    assert asyncio.run(real_run(run, make_jobs(3))).exit_code == 0
    assert main(["retry", str(run)]) == 0
    assert "nothing to retry" in capsys.readouterr().err


def test_retry_on_a_damaged_state_file_exits_3_like_run(
    rejected_run: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    run, _ = rejected_run
    (run / "state.db").write_bytes(b"not a database" * 100)
    for name in ("state.db-wal", "state.db-shm"):
        (run / name).unlink(missing_ok=True)
    assert main(["retry", str(run), "--rejected"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("batchgen retry: ")
    assert "Traceback" not in err
