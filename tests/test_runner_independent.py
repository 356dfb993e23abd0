"""The real runner against the independent API server (tests/independent_api).

That server follows the provider's documents but shares no code with the project's
simulator: its own task ids, status words, a separate result host with expiring
signed URLs, 429s with dates, HTML proxy pages, answers lost after a task was created.
What the runner gets right only against its own simulator fails here.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from batchgen.api import ModellixClient
from batchgen.manifest.types import Job, Limits, job_id_for
from batchgen.reports.status import status_report
from batchgen.run.runner import RunOptions, RunSummary, run_jobs
from batchgen.store.outputs import OutputDir
from batchgen.store.state import StateStore

try:  # `python -m pytest` from the checkout, or tests/ as a package
    from tests.independent_api import server as srv
    from tests.independent_api.imagecheck import check_image
    from tests.independent_api.run_fast import FAST_OPTIONS
except ModuleNotFoundError:  # plain `pytest`: tests/ itself is on sys.path
    from independent_api import server as srv  # type: ignore[no-redef]
    from independent_api.imagecheck import check_image  # type: ignore[no-redef]
    from independent_api.run_fast import FAST_OPTIONS  # type: ignore[no-redef]

MODEL = "openai/gpt-image-1.5"
REPO = Path(__file__).resolve().parent.parent
SIZES = ("1024x1024", "1536x1024", "1024x1536")
CANARY_KEY = "mlx-canary-7f3a9c1e5b2d4f60"  # must never show up in files or output
BACKGROUNDS = ("auto", "opaque", "transparent")

# Every fault the server has, at 10% each (request-level kinds share one draw).
ALL_FAULTS_10 = {
    **{f"fault_{kind}": 0.1 for kind in srv.API_FAULTS + srv.SUBMIT_ONLY_FAULTS},
    "fault_task_failed": 0.1,
    "fault_url_expired": 0.1,
    "fault_unknown_status": 0.1,
    "fault_download_truncated": 0.1,
    "fault_download_503": 0.1,
    "fault_download_drop": 0.1,
    "chunked_downloads": 0.5,
}


def make_jobs(n: int, *, tag: str = "lighthouse") -> list[Job]:
    """``n`` jobs with distinct bodies (so the server can tell duplicates apart)."""
    jobs = []
    for i in range(n):
        body = {
            "prompt": f"a {tag}, study {i}",
            "size": SIZES[i % 3],
            "quality": "low",
            "background": BACKGROUNDS[(i // 3) % 3],
        }
        jobs.append(Job(job_id_for(MODEL, body, 0), MODEL, body, 0, "jobs[0]"))
    return jobs


def fast_options(**changes: Any) -> RunOptions:
    """Runner timing scaled to a server whose tasks last tens to hundreds of ms."""
    values: dict[str, Any] = {
        **FAST_OPTIONS,
        "max_runtime": 60.0,  # a safety net: the test fails on exit 75, never hangs
        "seed": 3,
        **changes,
    }
    return RunOptions(**values)


async def run_once(
    run_dir: Path,
    server: srv.ServerHandle,
    jobs: list[Job] | None,
    limits: Limits,
    *,
    key: str | None = None,
    options: RunOptions | None = None,
) -> RunSummary:
    """One `batchgen run`-like session through the library API."""
    store = StateStore.open(run_dir, settings={"model": MODEL})
    client = ModellixClient(server.base_url, key or server.api_key, operation_timeout=30.0)
    try:
        if jobs is not None:
            store.sync_jobs(jobs)
        output = OutputDir(run_dir)
        output.prepare(store)
        async with client:
            return await run_jobs(
                store, client, limits, options=options or fast_options(), output=output
            )
    finally:
        store.close()


def job_rows(run_dir: Path) -> dict[str, Any]:
    store = StateStore.open_readonly(run_dir)
    try:
        return {job.job_id: job for job in store.iter_jobs()}
    finally:
        store.close()


def check_outputs(run_dir: Path, server: srv.ServerHandle) -> dict[str, int]:
    """Every done job has one complete image whose bytes are exactly what the server served
    for the job's recorded task, with the same sha256 in state and metadata.jsonl; nothing
    else is in images/. Returns the count of jobs per state."""
    rows = job_rows(run_dir)
    done = {job_id: job for job_id, job in rows.items() if job.state == "done"}
    tasks = {t.task_id: t for t in server.tasks()}
    names = sorted(os.listdir(run_dir / "images"))
    assert sorted(Path(job.result_path).name for job in done.values()) == names
    lines = (run_dir / "metadata.jsonl").read_text().splitlines() if done else []
    meta = {m["job_id"]: m for m in map(json.loads, lines)}
    assert len(meta) == len(lines) == len(done)
    assert set(meta) == set(done)
    for job_id, job in done.items():
        data = (run_dir / job.result_path).read_bytes()
        kind, width, height = check_image(data)
        assert f"{width}x{height}" == job.body["size"]
        digest = hashlib.sha256(data).hexdigest()
        assert digest == job.sha256 == meta[job_id]["sha256"]
        assert meta[job_id]["file_name"] == job.result_path
        assert meta[job_id]["task_id"] == job.task_id
        assert meta[job_id]["prompt"] == job.body["prompt"]
        task = tasks[job.task_id]
        assert json.loads(task.body) == job.body
        assert data == server.image_bytes(job.task_id)
        assert kind == task.fmt
    return dict(Counter(job.state for job in rows.values()))


async def run_and_check(
    run_dir: Path, jobs: list[Job], limits: Limits, **server_options: Any
) -> tuple[RunSummary, dict[str, int], dict[str, Any]]:
    """Run ``jobs`` once against a server started with ``server_options`` and check the
    outputs (:func:`check_outputs`); returns the summary, the count of jobs per state and the
    server's stats."""
    with srv.running_server(**server_options) as server:
        summary = await run_once(run_dir, server, jobs, limits)
        counts = check_outputs(run_dir, server)
        stats = server.stats.snapshot()
    return summary, counts, stats


def unexplained_tasks(server: srv.ServerHandle, run_dir: Path) -> dict[str, int]:
    """Reconcile every task the server accepted with the state file's jobs and events.

    Each job's last task is the one it downloaded. Any other task of the same body must
    be explained: it failed, its result URL expired, or the runner recorded why it moved
    on (a failed download); a task whose id never reached the runner (a lost answer)
    must be reported as an unknown submit outcome; a task the runner never followed at
    all can only come from a kill in the instant between submit and recording, and the
    resume must have reported that job as interrupted during submit. Returns the counts
    of the last two kinds; raises AssertionError for anything unexplained.
    """
    store = StateStore.open_readonly(run_dir)
    try:
        jobs = {srv.canonical_body(job.body): job for job in store.iter_jobs()}
        details = {
            job.job_id: " | ".join(e.detail or "" for e in store.events(job.job_id))
            for job in jobs.values()
        }
    finally:
        store.close()
    found = Counter[str]()
    for task in server.tasks():
        job = jobs.get(task.body)
        assert job is not None, f"a task for a body no job has: {task.body}"
        history = details[job.job_id]
        if task.task_id == job.task_id:
            continue
        if not task.delivered:
            assert "submit outcome unknown" in history or "interrupted during submit" in history, (
                f"lost answer for {task.task_id} not reported: {history}"
            )
            found["lost_answers"] += 1
        elif task.outcome == "failed" or task.expired_hits:
            continue
        elif task.polls:
            assert "download failed" in history or "not found" in history, (
                f"{task.task_id} was followed, then replaced without a reason: {history}"
            )
            found["replaced_after_errors"] += 1
        else:
            assert "interrupted during submit" in history, (
                f"task {task.task_id} never followed and not reported: {history}"
            )
            found["kill_window"] += 1
    return dict(found)


# ----------------------------------------------------------------------------- clean


@pytest.mark.anyio
async def test_clean_run_downloads_every_image_exactly_once(tmp_path: Path) -> None:
    jobs = make_jobs(50, tag="phare · 灯台 ☕")
    summary, counts, stats = await run_and_check(
        tmp_path, jobs, Limits(concurrency=16, rate=500.0), seed=1, latency_ms=(10.0, 150.0)
    )
    assert summary.exit_code == 0, summary.format()
    assert counts == {"done": 50}
    assert stats["accepted_tasks"] == 50
    assert set(stats["accepted_per_body"].values()) == {1}
    assert stats["downloads"] == 50
    assert stats["cdn_requests_with_authorization"] == 0  # the key stays on the API host
    assert stats["max_in_flight"] <= 16  # never more unfinished tasks than limits.concurrency
    assert stats["server_errors"] == 0
    assert set(stats["statuses_sent"]) & set(srv.SUCCESS_WORDS)
    assert summary.ambiguous_resubmits == 0


@pytest.mark.anyio
async def test_jpeg_results_are_kept_as_valid_jpeg_files(tmp_path: Path) -> None:
    jobs = make_jobs(6, tag="teacup")
    summary, counts, _ = await run_and_check(
        tmp_path,
        jobs,
        Limits(concurrency=4, rate=500.0),
        seed=2,
        jpeg_rate=1.0,
        latency_ms=(10.0, 50.0),
    )
    assert summary.exit_code == 0, summary.format()
    assert counts == {"done": 6}
    assert {Path(name).suffix for name in os.listdir(tmp_path / "images")} <= {".jpg", ".jpeg"}


# ----------------------------------------------------------------------------- faults


async def _run_with_every_fault(run_dir: Path, jobs: int, seed: int, *, every_kind: bool) -> None:
    options = {**ALL_FAULTS_10, "max_concurrent_tasks": 3, "result_ttl": 30.0}
    with srv.running_server(seed=seed, latency_ms=(10.0, 120.0), **options) as server:
        summary = await run_once(
            run_dir,
            server,
            make_jobs(jobs, tag="fox"),
            # 80% of submits fault here: retries enough that a job rarely runs out of attempts
            Limits(concurrency=12, rate=500.0, retries=100),
            options=fast_options(max_runtime=600.0),
        )
        counts = check_outputs(run_dir, server)
        stats = server.stats.snapshot()
        found = unexplained_tasks(server, run_dir)
    faults = stats["faults"]
    # The request-level kinds fire hundreds of times; download faults, the concurrent-task
    # limit and failed/expired tasks depend on timing and on few draws, so a short run only
    # asserts that they fired at all (the long runs assert each kind).
    for kind in (*srv.API_FAULTS, *srv.SUBMIT_ONLY_FAULTS):
        assert faults.get(kind, 0) > 0, (kind, faults)
    rare = ("download_truncated", "download_503", "download_drop", "concurrency_limit")
    if every_kind:
        for kind in rare:
            assert faults.get(kind, 0) > 0, (kind, faults)
        assert stats["failed_tasks"] > 0
        assert stats["expired_downloads"] > 0
    else:
        assert sum(faults.get(kind, 0) for kind in rare) > 0, faults
        assert stats["failed_tasks"] + stats["expired_downloads"] > 0, stats
    # Nothing lost: every job ended, done or reported with a reason.
    rows = job_rows(run_dir)
    assert sum(counts.values()) == jobs
    assert counts.get("done", 0) >= 0.9 * jobs, (counts, summary.format())
    for job in rows.values():
        assert job.state in ("done", "failed", "expired"), (job.job_id, job.state)
        if job.state != "done":
            assert job.last_error
    assert summary.exit_code == (0 if counts == {"done": jobs} else 1), summary.format()
    # Paid twice only for tasks whose id never reached the runner, and those are reported.
    assert found.get("kill_window", 0) == 0
    assert found.get("lost_answers", 0) == stats["orphaned_tasks"] > 0
    assert summary.ambiguous_resubmits >= stats["orphaned_tasks"]
    assert stats["server_errors"] == 0


@pytest.mark.anyio
async def test_every_fault_kind_at_10_percent_loses_nothing_and_pays_twice_only_when_ambiguous(
    tmp_path: Path,
) -> None:
    await _run_with_every_fault(tmp_path, jobs=16, seed=5, every_kind=False)


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.parametrize("seed", [11, 12, 13])
async def test_every_fault_kind_at_10_percent_over_many_jobs(tmp_path: Path, seed: int) -> None:
    await _run_with_every_fault(tmp_path, jobs=100, seed=seed, every_kind=True)


@pytest.mark.anyio
async def test_unknown_status_words_count_as_still_running(tmp_path: Path) -> None:
    summary, counts, stats = await run_and_check(
        tmp_path,
        make_jobs(8, tag="owl"),
        Limits(concurrency=8, rate=500.0),
        seed=8,
        latency_ms=(80.0, 160.0),
        fault_unknown_status=0.6,
    )
    assert summary.exit_code == 0, summary.format()
    assert counts == {"done": 8}
    assert stats["faults"]["unknown_status"] > 0
    assert stats["accepted_tasks"] == 8


@pytest.mark.anyio
@pytest.mark.parametrize(
    "style", ["date", "reset", pytest.param("seconds", marks=pytest.mark.slow)]
)
async def test_rate_limit_hints_are_honoured_in_every_form(tmp_path: Path, style: str) -> None:
    # Retry-After as an HTTP date, as seconds, or only X-RateLimit-Reset (epoch seconds).
    # The server counts submits that arrive before the instant it advertised.
    options = {"first_submits_429": 1, "retry_after": 1.2, "retry_after_style": style}
    summary, counts, stats = await run_and_check(
        tmp_path,
        make_jobs(3, tag="gull"),
        Limits(concurrency=1, rate=500.0),
        seed=1,
        latency_ms=(10.0, 30.0),
        **options,
    )
    assert summary.exit_code == 0, summary.format()
    assert counts == {"done": 3}
    assert stats["faults"] == {"429": 1}
    assert stats["submits_before_retry_after"] == 0
    assert stats["accepted_tasks"] == 3


@pytest.mark.anyio
async def test_a_task_that_never_ends_fails_at_its_deadline_and_the_run_ends(
    tmp_path: Path,
) -> None:
    with srv.running_server(seed=2, latency_ms=(10.0, 50.0), fault_task_stuck=0.3) as server:
        summary = await run_once(
            tmp_path,
            server,
            make_jobs(10, tag="heron"),
            Limits(concurrency=10, rate=500.0, timeout=0.6),
        )
        counts = check_outputs(tmp_path, server)
        stuck = {t.body for t in server.tasks() if t.finish_at == float("inf")}
        stats = server.stats.snapshot()
    assert stuck
    rows = job_rows(tmp_path)
    failed = {srv.canonical_body(j.body) for j in rows.values() if j.state == "failed"}
    assert failed == stuck
    assert all("timed out" in (j.last_error or "") for j in rows.values() if j.state == "failed")
    assert counts == {"done": 10 - len(stuck), "failed": len(stuck)}
    assert summary.exit_code == 1, summary.format()
    assert stats["accepted_tasks"] == 10


@pytest.mark.anyio
async def test_resubmit_unknown_false_fails_lost_answers_instead_of_paying_twice(
    tmp_path: Path,
) -> None:
    options = {"fault_drop_after_accept": 0.2, "fault_504_after_accept": 0.2}
    summary, counts, stats = await run_and_check(
        tmp_path,
        make_jobs(12, tag="wren"),
        Limits(concurrency=4, rate=500.0, resubmit_unknown=False),
        seed=3,
        latency_ms=(10.0, 50.0),
        **options,
    )
    assert stats["orphaned_tasks"] > 0
    assert set(stats["accepted_per_body"].values()) == {1}  # nothing paid twice
    assert counts == {"done": 12 - stats["orphaned_tasks"], "failed": stats["orphaned_tasks"]}
    rows = job_rows(tmp_path)
    assert all("unknown" in (j.last_error or "") for j in rows.values() if j.state == "failed")
    assert summary.exit_code == 1, summary.format()


@pytest.mark.anyio
async def test_failed_tasks_keep_the_most_specific_message_as_their_reason(
    tmp_path: Path,
) -> None:
    with srv.running_server(seed=1, latency_ms=(5.0, 20.0), fault_task_failed=1.0) as server:
        summary = await run_once(
            tmp_path, server, make_jobs(8, tag="moth"), Limits(concurrency=8, rate=500.0, retries=0)
        )
    messages = ("the prompt was refused", "ran out of memory", "canceled by the scheduler")
    for job in job_rows(tmp_path).values():
        assert job.state == "failed"
        reason = job.last_error or ""
        # the provider's own words, or the raw answer when it gave none
        assert any(m in reason for m in messages) or '"status": ' in reason, reason
    assert summary.exit_code == 1


@pytest.mark.anyio
async def test_failures_without_a_message_are_grouped_under_one_reason(tmp_path: Path) -> None:
    options = {"fault_task_failed": 1.0, "failure_messages": False}
    with srv.running_server(seed=1, latency_ms=(5.0, 20.0), **options) as server:
        summary = await run_once(
            tmp_path, server, make_jobs(6, tag="newt"), Limits(concurrency=6, rate=500.0, retries=0)
        )
    assert summary.failed == 6
    assert summary.failed_by_reason == {"task failed: task failed without a message": 6}
    # the same group as `batchgen status` shows
    report = status_report(tmp_path)
    assert [(g.reason, g.count) for g in report.failures] == [
        ("task failed: task failed without a message", 6)
    ]


@pytest.mark.anyio
async def test_retry_after_on_503_is_honoured_before_submitting_again(tmp_path: Path) -> None:
    options = {"first_submits_503": 1, "retry_after": 1.0}
    with srv.running_server(seed=1, latency_ms=(5.0, 20.0), **options) as server:
        summary = await run_once(
            tmp_path, server, make_jobs(2, tag="lark"), Limits(concurrency=1, rate=500.0)
        )
        stats = server.stats.snapshot()
    assert summary.exit_code == 0, summary.format()
    assert stats["faults"] == {"503": 1}
    assert stats["resubmits_before_retry_after"] == 0


# ----------------------------------------------------------------------------- stops


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("option", "status"), [("balance", 402), ("submit_unauthorized_after", 401)]
)
async def test_401_or_402_mid_run_stops_submitting_and_keeps_accepted_tasks(
    tmp_path: Path, option: str, status: int
) -> None:
    jobs = make_jobs(16, tag="kite")
    limits = Limits(concurrency=4, rate=500.0)
    with srv.running_server(seed=4, latency_ms=(20.0, 80.0), **{option: 6}) as server:
        summary = await run_once(tmp_path, server, jobs, limits)
        counts = check_outputs(tmp_path, server)
        stats = server.stats.snapshot()
        assert summary.exit_code == 3, summary.format()
        assert stats["accepted_tasks"] == 6
        assert counts == {"done": 6, "pending": 10}  # every accepted task downloaded
        # Submitting stopped at once: at most the submits already in flight got refused.
        assert 1 <= stats["status_codes"][status] <= limits.concurrency
        # The cause is fixed (top-up / new key): the next run finishes the rest.
        setattr(server.options, option, None)
        again = await run_once(tmp_path, server, None, limits)
        counts = check_outputs(tmp_path, server)
        stats = server.stats.snapshot()
    assert again.exit_code == 0, again.format()
    assert counts == {"done": 16}
    assert stats["accepted_tasks"] == 16


@pytest.mark.anyio
async def test_unknown_model_on_submit_is_a_configuration_stop(tmp_path: Path) -> None:
    with srv.running_server(seed=1, models=("openai/gpt-image-2",)) as server:
        summary = await run_once(
            tmp_path, server, make_jobs(5, tag="yak"), Limits(concurrency=2, rate=500.0)
        )
        stats = server.stats.snapshot()
    assert summary.exit_code == 3, summary.format()
    assert stats["accepted_tasks"] == 0
    # Stopped at once: each documented submit-path shape tried once (3), not once per job.
    assert 3 <= stats["status_codes"][404] <= 4
    assert {j.state for j in job_rows(tmp_path).values()} == {"pending"}


@pytest.mark.anyio
async def test_key_revoked_mid_run_exits_3_and_the_next_run_polls_the_recorded_tasks(
    tmp_path: Path,
) -> None:
    jobs = make_jobs(12, tag="bridge")
    limits = Limits(concurrency=4, rate=500.0)
    with srv.running_server(seed=6, latency_ms=(50.0, 100.0), revoke_key_after=4) as server:
        summary = await run_once(tmp_path, server, jobs, limits)
        first = server.stats.snapshot()
        rows = job_rows(tmp_path)
        assert summary.exit_code == 3, summary.format()
        recorded = {job.task_id for job in rows.values() if job.task_id}
        assert recorded == {t.task_id for t in server.tasks()}  # no accepted task forgotten
        server.options.revoke_key_after = None
        again = await run_once(tmp_path, server, None, limits)
        counts = check_outputs(tmp_path, server)
        stats = server.stats.snapshot()
    assert first["accepted_tasks"] == 4
    assert again.exit_code == 0, again.format()
    assert counts == {"done": 12}
    assert stats["accepted_tasks"] == 12  # the 4 recorded tasks were polled, not resubmitted


# ----------------------------------------------------------------------------- resume


def submit_outside_the_runner(
    server: srv.ServerHandle, job: Job
) -> tuple[dict[str, Any], srv.TaskRecord]:
    """Submit ``job`` straight to the server (as a run killed before it finished would have);
    returns the answer's ``data`` and the server's record of the task."""
    with httpx.Client(headers={"Authorization": f"Bearer {server.api_key}"}) as api:
        data: dict[str, Any] = api.post(server.submit_url(), json=job.body).json()["data"]
    (task,) = server.tasks()
    return data, task


def sleep_until(instant: float) -> None:
    """Sleep until ``time.monotonic()`` passes ``instant`` (bounded: two seconds at most)."""
    for _ in range(200):
        if time.monotonic() > instant:
            break
        time.sleep(0.01)


def record_left_in(
    run_dir: Path, job: Job, left_in: str, task_id: str, poll_url: str | None
) -> None:
    """The state file of a run killed with ``job`` submitted as ``task_id`` and left in
    ``left_in`` ("running" or "downloading")."""
    store = StateStore.open(run_dir, settings={"model": MODEL})
    try:
        store.sync_jobs([job])
        store.mark_submitting(job.job_id)
        store.mark_running(job.job_id, task_id, poll_url)
        if left_in == "downloading":
            store.mark_downloading(job.job_id, "task succeeded")
    finally:
        store.close()


@pytest.mark.anyio
@pytest.mark.parametrize("left_in", ["running", "downloading"])
async def test_resumed_task_survives_a_failed_poll_without_being_paid_twice(
    tmp_path: Path, left_in: str
) -> None:
    (job,) = make_jobs(1, tag="resume")
    with srv.running_server(seed=3, latency_ms=(5.0, 20.0)) as server:
        # A previous run submitted the job, recorded its task and was killed while it was
        # `left_in` that state; the task has since succeeded.
        data, task = submit_outside_the_runner(server, job)
        sleep_until(task.finish_at)  # the task lasts at most 20 ms
        record_left_in(tmp_path, job, left_in, data["task_id"], data["get_result"]["url"])
        server.options.first_polls_fail = 1  # the resumed run's first poll meets a 503
        summary = await run_once(tmp_path, server, None, Limits(concurrency=2, rate=500.0))
        counts = check_outputs(tmp_path, server)
        stats = server.stats.snapshot()
    assert summary.exit_code == 0, summary.format()
    assert counts == {"done": 1}
    assert job_rows(tmp_path)[job.job_id].task_id == data["task_id"]
    assert stats["accepted_tasks"] == 1
    assert summary.regenerated == 0


@pytest.mark.anyio
async def test_resumed_task_whose_result_url_expired_is_generated_again(tmp_path: Path) -> None:
    (job,) = make_jobs(1, tag="expired")
    with srv.running_server(seed=4, latency_ms=(5.0, 10.0), result_ttl=0.05) as server:
        data, task = submit_outside_the_runner(server, job)
        sleep_until(task.expires_at)  # until the result URL has expired (60 ms at most)
        server.options.result_ttl = 3600.0  # the new task's URL lives
        record_left_in(tmp_path, job, "downloading", data["task_id"], data["get_result"]["url"])
        summary = await run_once(tmp_path, server, None, Limits(concurrency=2, rate=500.0))
        counts = check_outputs(tmp_path, server)
        stats = server.stats.snapshot()
        found = unexplained_tasks(server, tmp_path)
    assert summary.exit_code == 0, summary.format()
    assert counts == {"done": 1}
    assert stats["accepted_tasks"] == 2
    assert stats["expired_downloads"] == 1
    assert found == {}
    assert summary.regenerated == 1  # reported


@pytest.mark.anyio
@pytest.mark.parametrize("left_in", ["running", "downloading"])
async def test_recorded_task_the_provider_no_longer_knows_is_submitted_again(
    tmp_path: Path, left_in: str
) -> None:
    (job,) = make_jobs(1, tag="purged")
    with srv.running_server(seed=4, latency_ms=(5.0, 20.0)) as server:
        record_left_in(tmp_path, job, left_in, "task-openai-purged", None)
        summary = await run_once(tmp_path, server, None, Limits(concurrency=2, rate=500.0))
        counts = check_outputs(tmp_path, server)
        stats = server.stats.snapshot()
    assert summary.exit_code == 0, summary.format()
    assert counts == {"done": 1}
    assert stats["accepted_tasks"] == 1
    assert stats["status_codes"][404] >= 1
    assert summary.regenerated == 1  # reported


# ----------------------------------------------------------------------------- kill -9

RUN_FAST = Path(srv.__file__).with_name("run_fast.py")
KILL_CONCURRENCY = 8


def write_manifest(folder: Path, jobs: int, *, concurrency: int, rate: str) -> Path:
    numbers = ", ".join(f'"{i}"' for i in range(jobs))
    text = f"""\
        version: 1
        name: kill-test
        model: {MODEL}
        output: run
        limits: {{concurrency: {concurrency}, rate: {rate}, retries: 20, timeout: 2m}}
        jobs:
          - prompt: "a paper crane, fold {{n}}"
            size: 1024x1024
            matrix:
              n: [{numbers}]
        """
    path = folder / "kill-test.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def start_run(target: Path, server: srv.ServerHandle, seed: int) -> subprocess.Popen[str]:
    env = {**os.environ, "MODELLIX_API_KEY": server.api_key}
    env.pop("MODELLIX_BASE_URL", None)
    return subprocess.Popen(
        [
            sys.executable,
            str(RUN_FAST),
            str(target),
            "--base-url",
            server.base_url,
            "--seed",
            f"{seed}",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_and_resume(
    tmp_path: Path, server: srv.ServerHandle, *, jobs: int, rounds: int, seed: int
) -> tuple[int, dict[str, Any]]:
    """Start the runner, SIGKILL it at a random instant once it is submitting, `rounds`
    times, then let a last run finish; returns (kills, last summary)."""
    rng = random.Random(seed)
    manifest = write_manifest(tmp_path, jobs, concurrency=KILL_CONCURRENCY, rate="40/s")
    kills = 0
    outputs: list[str] = []
    for round_no in range(rounds):
        before = server.stats["accepted_tasks"]
        proc = start_run(manifest, server, seed + round_no)
        try:
            for _ in range(3000):  # until this run has a task accepted (or has ended)
                if proc.poll() is not None or server.stats["accepted_tasks"] > before:
                    break
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.4))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            outputs.extend(proc.communicate(timeout=60))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    final = start_run(manifest, server, seed + rounds)
    out, err = final.communicate(timeout=120)
    assert final.returncode == 0, (final.returncode, out[-2000:], err[-4000:])
    assert_key_nowhere(tmp_path / "run", out, err, *outputs)
    return kills, json.loads(out.strip().splitlines()[-1])


KILL_FAULTS = {
    "fault_drop_after_accept": 0.05,
    "fault_500": 0.05,
    "fault_429": 0.05,
    "fault_drop": 0.05,
    "fault_task_failed": 0.05,
    "fault_url_expired": 0.05,
    "fault_download_truncated": 0.05,
}


def _check_kill_run(tmp_path: Path, server: srv.ServerHandle, kills: int, jobs: int) -> None:
    run_dir = tmp_path / "run"
    counts = check_outputs(run_dir, server)
    assert counts == {"done": jobs}
    found = unexplained_tasks(server, run_dir)
    stats = server.stats.snapshot()
    # Each kill can catch the one submit awaiting its answer (limits.submits_in_flight is 1)
    # after the provider accepted it and before its id was written; it is reported as
    # interrupted during submit (checked by unexplained_tasks). Lost answers are a separate,
    # reported cause. Pinned by test_one_kill_pays_twice_for_at_most_one_task below.
    assert found.get("kill_window", 0) <= kills
    assert found.get("lost_answers", 0) == stats["orphaned_tasks"]
    duplicates = sum(n - 1 for n in stats["accepted_per_body"].values())
    paid_for_failures = sum(1 for t in server.tasks() if t.outcome == "failed" or t.expired_hits)
    explained = sum(found.values())  # kill window, lost answers, failed downloads
    assert duplicates - paid_for_failures <= explained
    assert not [p for p in (run_dir / "images").iterdir() if p.name.endswith(".tmp")]


def test_sigkill_at_random_instants_then_resume_loses_nothing(tmp_path: Path) -> None:
    # Request-level faults hit polls too: a kill during a download, then a failed poll on
    # resume, must not pay for the task twice.
    faults = {**KILL_FAULTS, "api_key": CANARY_KEY}
    with srv.running_server(seed=9, latency_ms=(30.0, 200.0), **faults) as server:
        kills, summary = kill_and_resume(tmp_path, server, jobs=16, rounds=2, seed=17)
        _check_kill_run(tmp_path, server, kills, 16)
    assert kills >= 1
    assert summary["exit_code"] == 0


@pytest.mark.slow
def test_one_kill_pays_twice_for_at_most_one_task(tmp_path: Path) -> None:
    # A slow gateway: tasks are created at once but their ids come back 3 s later. With
    # concurrency 4, one submit awaits its answer at a time (limits.submits_in_flight), so the
    # kill finds one task accepted and unrecorded, never four (deterministic: the test waits
    # until the first answer is pending, then long enough for more submits to have started).
    manifest = write_manifest(tmp_path, 4, concurrency=4, rate="100/s")
    options = {"submit_answer_delay": 3.0, "latency_ms": (10.0, 30.0)}
    with srv.running_server(seed=5, **options) as server:
        proc = start_run(manifest, server, 1)
        try:
            for _ in range(6000):  # bounded: until the first task exists remotely
                if proc.poll() is not None or server.stats["answers_waiting"] >= 1:
                    break
                time.sleep(0.005)
            time.sleep(0.5)  # at 100/s, three more submits would have gone by now
            assert server.stats["answers_waiting"] == 1
            assert server.stats["accepted_tasks"] == 1
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        server.options.submit_answer_delay = 0.0
        final = start_run(manifest, server, 2)
        out, err = final.communicate(timeout=120)
        assert final.returncode == 0, (out, err)
        counts = check_outputs(tmp_path / "run", server)
        stats = server.stats.snapshot()
        found = unexplained_tasks(server, tmp_path / "run")
    assert counts == {"done": 4}
    assert json.loads(out.strip().splitlines()[-1])["recovered_submitting"] == 1  # reported
    assert found == {"kill_window": 1}
    assert sum(n - 1 for n in stats["accepted_per_body"].values()) <= 1  # the bar: one kill


@pytest.mark.slow
@pytest.mark.parametrize("poll_faults", [False, True])
@pytest.mark.parametrize("seed", [31, 32])
def test_many_sigkills_then_resume_loses_nothing(
    tmp_path: Path, seed: int, poll_faults: bool
) -> None:
    faults = {**KILL_FAULTS, "poll_faults": poll_faults, "api_key": CANARY_KEY}
    with srv.running_server(seed=seed, latency_ms=(30.0, 300.0), **faults) as server:
        kills, _ = kill_and_resume(tmp_path, server, jobs=120, rounds=10, seed=seed)
        _check_kill_run(tmp_path, server, kills, 120)
    assert kills >= 5


# ----------------------------------------------------------------------------- the CLI


def run_cli(manifest: Path, server: srv.ServerHandle) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODELLIX_API_KEY": server.api_key}
    env.pop("MODELLIX_BASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "batchgen", "run", str(manifest), "--base-url", server.base_url],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=manifest.parent,
    )


def assert_key_nowhere(run_dir: Path, *texts: str) -> None:
    for text in texts:
        assert CANARY_KEY not in text
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert CANARY_KEY.encode() not in path.read_bytes(), path


@pytest.mark.slow  # the command's real poll timing: seconds, not milliseconds
def test_batchgen_run_command_against_the_independent_server(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, 4, concurrency=4, rate="20/s")
    with srv.running_server(seed=12, api_key=CANARY_KEY, latency_ms=(10.0, 60.0)) as server:
        done = run_cli(manifest, server)
        counts = check_outputs(tmp_path / "run", server)
        stats = server.stats.snapshot()
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert counts == {"done": 4}
    assert stats["accepted_tasks"] == 4
    assert stats["cdn_requests_with_authorization"] == 0
    assert_key_nowhere(tmp_path / "run", done.stdout, done.stderr)


@pytest.mark.slow
def test_batchgen_run_command_exits_3_on_402_and_resumes_after_top_up(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, 6, concurrency=2, rate="20/s")
    with srv.running_server(seed=13, api_key=CANARY_KEY, balance=3) as server:
        stopped = run_cli(manifest, server)
        first = check_outputs(tmp_path / "run", server)
        server.options.balance = None
        resumed = run_cli(manifest, server)
        counts = check_outputs(tmp_path / "run", server)
        stats = server.stats.snapshot()
    assert stopped.returncode == 3, (stopped.stdout, stopped.stderr)
    assert first == {"done": 3, "pending": 3}
    assert resumed.returncode == 0, (resumed.stdout, resumed.stderr)
    assert counts == {"done": 6}
    assert stats["accepted_tasks"] == 6
    assert_key_nowhere(tmp_path / "run", stopped.stdout, stopped.stderr, resumed.stdout)
