"""Several images per task: every image downloaded, recorded and listed; resume fetches only
the missing ones; the answer variants the provider documents are all read."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from batchgen.api.answers import task_status_from
from batchgen.manifest.types import Job, Limits, job_id_for
from batchgen.reports.export import export_rows
from batchgen.reports.metrics import write_metrics
from batchgen.reports.status import format_status, status_report
from batchgen.simulator.app import Latency, Simulator, serve_in_thread
from batchgen.store.outputs import OutputDir, check_image
from batchgen.store.records import ResultInfo
from batchgen.store.schema import SCHEMA_VERSION
from batchgen.store.state import StateError, StateStore
from tests.runhelpers import SIM_KEY, in_process_client, run_in_dir, sim_config
from tests.simhelpers import FakeClock

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.anyio

WAN = "alibaba/wan2.7-image"
CDN = "https://127.0.0.2:9443"


def wan_job(prompt: str = "a lighthouse at dawn", **fields: Any) -> Job:
    body = {"prompt": prompt, **fields}
    return Job(job_id_for(WAN, body, 0), WAN, body, 0, "jobs[0]")


def limits() -> Limits:
    return Limits(concurrency=4, rate=100.0, retries=2, timeout=60.0)


def metadata(run_dir: Path) -> list[dict[str, Any]]:
    text = (run_dir / "metadata.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def check_images(run_dir: Path, job_id: str, count: int) -> list[dict[str, Any]]:
    """The job's ``count`` images are on disk, in the state file and in metadata.jsonl, with
    matching sha256; returns the job's metadata rows."""
    with StateStore.open_readonly(run_dir) as store:
        assert store.get(job_id).state == "done"
        images = store.job_images(job_id)
    assert [i.index for i in images] == list(range(count))
    names = [f"images/{job_id}-{i}.png" for i in range(count)] if count > 1 else None
    assert names is None or [i.path for i in images] == names
    rows = [m for m in metadata(run_dir) if m["job_id"] == job_id]
    assert [(m["index"], m["file_name"]) for m in rows] == [(i.index, i.path) for i in images]
    for image in images:
        data = (run_dir / image.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == image.sha256
        assert check_image(run_dir / image.path).bytes == image.bytes == len(data)
    return rows


# -- answers -------------------------------------------------------------------------------------


def _success(**data: Any) -> dict[str, Any]:
    return {"code": 0, "data": {"status": "success", "task_id": "t1", **data}}


@pytest.mark.parametrize(
    "data",
    [
        {"result": {"resources": [{"url": f"{CDN}/a.png"}, {"url": f"{CDN}/b.png"}]}},
        {"resources": [{"url": f"{CDN}/a.png"}, {"url": f"{CDN}/b.png"}]},
        {"result": {"resources": [f"{CDN}/a.png", f"{CDN}/b.png"]}},
        {"resources": [f"{CDN}/a.png", f"{CDN}/b.png"]},
        {"results": [{"image_url": f"{CDN}/a.png"}, {"image_url": f"{CDN}/b.png"}]},
    ],
    ids=["result.resources", "resources", "plain-strings", "resources-strings", "results"],
)
def test_every_documented_result_shape_gives_every_image_in_order(data: dict[str, Any]) -> None:
    status = task_status_from("t1", 200, {}, _success(**data))
    assert status.state == "success"
    assert [r.url for r in status.resources] == [f"{CDN}/a.png", f"{CDN}/b.png"]


def test_result_items_without_a_usable_url_are_skipped() -> None:
    items = [7, {"url": "file:///etc/passwd"}, "not a url", {"image_url": f"{CDN}/ok.png"}]
    status = task_status_from("t1", 200, {}, _success(results=items))
    assert [r.url for r in status.resources] == [f"{CDN}/ok.png"]


# -- a run -------------------------------------------------------------------------------------


async def test_a_wan27_job_without_n_yields_four_images_and_four_metadata_rows(
    tmp_path: Path,
) -> None:
    sim = Simulator(sim_config())
    job, single = wan_job(), wan_job("a teacup", n=1)
    async with in_process_client(sim) as client:
        summary = await run_in_dir(tmp_path, client, [job, single], limits())
    assert summary.exit_code == 0
    rows = check_images(tmp_path, job.job_id, 4)
    assert all(r["prompt"] == "a lighthouse at dawn" and r["model"] == WAN for r in rows)
    assert len({r["sha256"] for r in rows}) == 4  # four different images
    (one,) = check_images(tmp_path, single.job_id, 1)
    assert one["file_name"] == f"images/{single.job_id}.png"  # a task's only image: unchanged
    assert one["index"] == 0
    assert sorted(os.listdir(tmp_path / "images")) == sorted(
        [f"{job.job_id}-{i}.png" for i in range(4)] + [f"{single.job_id}.png"]
    )
    assert sim.stats()["downloads"]["max_per_file"] == 1


async def _partly_downloaded(tmp_path: Path, sim: Simulator, job: Job, keep: int) -> str:
    """The job's task succeeded and its first ``keep`` images are durable and recorded, as a
    run killed between two downloads leaves it; returns the task id."""
    with StateStore.open(tmp_path) as store:
        store.sync_jobs([job])
        async with in_process_client(sim) as client:
            store.mark_submitting(job.job_id)
            task = await client.submit(sim.submit_path(WAN), job.body)
            store.mark_running(job.job_id, task.task_id, task.poll_url)
            for _ in range(500):
                status = await client.poll(task.task_id, task.poll_url)
                if status.state == "success":
                    break
                time.sleep(0.01)
            assert status.state == "success"
            store.mark_downloading(job.job_id)
            out = OutputDir(tmp_path)
            for i, resource in enumerate(status.resources[:keep]):
                image = out.new_image(job.job_id, i)
                got = await client.download(resource.url, image)
                result = image.check(expected_bytes=got.bytes, sha256=got.sha256)
                out.commit([(image, result)])
                store.record_image(job.job_id, i, resource.url, result)
        return task.task_id


async def test_resume_downloads_only_the_images_not_yet_recorded(tmp_path: Path) -> None:
    sim = Simulator(sim_config())
    job = wan_job()
    task_id = await _partly_downloaded(tmp_path, sim, job, keep=2)
    (tmp_path / "images" / f"{job.job_id}-2.png").write_bytes(b"torn")  # renamed, not recorded
    async with in_process_client(sim) as client:
        summary = await run_in_dir(tmp_path, client, None, limits())
    assert summary.exit_code == 0
    assert summary.downloads == 2
    check_images(tmp_path, job.job_id, 4)
    assert sim.download_counts() == {f"{task_id}/{i}.png": 1 for i in range(4)}
    assert sim.stats()["submissions"]["accepted"] == 1  # polled again, never resubmitted


async def test_a_job_with_every_image_recorded_is_finished_without_a_download(
    tmp_path: Path,
) -> None:
    sim = Simulator(sim_config())
    job = wan_job(n=2)
    await _partly_downloaded(tmp_path, sim, job, keep=2)
    async with in_process_client(sim) as client:
        summary = await run_in_dir(tmp_path, client, None, limits())
    assert (summary.exit_code, summary.downloads) == (0, 0)
    check_images(tmp_path, job.job_id, 2)


async def test_a_regenerated_task_fills_only_the_missing_images_and_keeps_the_others(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    config = sim_config(time_scale=1.0, latency=Latency.fixed(0), result_ttl=10)
    sim = Simulator(config, clock=clock)
    job = wan_job()
    old_task = await _partly_downloaded(tmp_path, sim, job, keep=2)
    clock.advance(60)  # the first task's result URLs have expired
    async with in_process_client(sim) as client:
        summary = await run_in_dir(tmp_path, client, None, limits())
    assert (summary.exit_code, summary.regenerated) == (0, 1)
    check_images(tmp_path, job.job_id, 4)
    with StateStore.open_readonly(tmp_path) as store:
        images = store.job_images(job.job_id)
        new_task = store.get(job.job_id).task_id
    assert new_task != old_task
    assert [i.task_id for i in images] == [old_task, old_task, new_task, new_task]
    assert sim.download_counts() == {
        **{f"{old_task}/{i}.png": 1 for i in (0, 1)},
        **{f"{new_task}/{i}.png": 1 for i in (2, 3)},
    }


# -- the state file ------------------------------------------------------------------------------


def test_a_version_1_state_file_is_migrated_with_its_images(tmp_path: Path) -> None:
    with StateStore.open(tmp_path) as store:
        store.sync_jobs([wan_job(n=1)])
        (job,) = store.iter_jobs()
        store.mark_submitting(job.job_id)
        store.mark_running(job.job_id, "task-x", None)
        store.mark_downloading(job.job_id)
        store.mark_done(job.job_id, ResultInfo(f"images/{job.job_id}.png", "ab" * 32, 99, "png"))
    conn = sqlite3.connect(tmp_path / "state.db")  # back to the layout of version 1
    conn.execute("DROP TABLE images")
    conn.execute("DROP TABLE submissions")
    conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with StateStore.open_readonly(tmp_path) as old:  # read-only: read as it is
        assert [i.path for i in old.job_images(job.job_id)] == [f"images/{job.job_id}.png"]
        assert old.image_counts() == {"done": 1, "partial": 0}
    with StateStore.open(tmp_path) as store:
        (image,) = store.job_images(job.job_id)
    assert (image.index, image.task_id, image.sha256, image.bytes) == (0, "task-x", "ab" * 32, 99)
    conn = sqlite3.connect(tmp_path / "state.db")
    version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert version == (str(SCHEMA_VERSION),)
    assert conn.execute("SELECT COUNT(*) FROM submissions").fetchone() == (0,)
    conn.close()


# -- reports -------------------------------------------------------------------------------------


async def test_status_export_and_metrics_count_images_as_well_as_jobs(tmp_path: Path) -> None:
    sim = Simulator(sim_config())
    jobs = [wan_job(), wan_job("a teacup", n=2), wan_job("a cactus", n=1)]
    async with in_process_client(sim) as client:
        await run_in_dir(tmp_path, client, jobs, limits())
    report = status_report(tmp_path)
    assert report.counts["done"] == 3
    assert report.images == {"done": 7, "partial": 0}
    assert report.as_dict()["images"] == {"done": 7, "partial": 0}
    assert "7 images" in format_status(report)
    rows = list(export_rows(tmp_path))
    assert len(rows) == 7
    assert sorted((r["job_id"], r["index"]) for r in rows) == sorted(
        (j.job_id, i) for j, k in zip(jobs, (4, 2, 1), strict=True) for i in range(k)
    )
    text = write_metrics(tmp_path).read_text()
    assert 'batchgen_images_done_total{run="' in text
    assert next(
        line for line in text.splitlines() if line.startswith("batchgen_images_done_total")
    ).endswith(" 7")


# -- the Hugging Face imagefolder loader -----------------------------------------------------


async def test_datasets_imagefolder_loads_one_row_per_image(tmp_path: Path) -> None:
    if os.environ.get("CI"):  # a dev dependency: CI must have it
        import datasets  # noqa: PLC0415
    else:
        datasets = pytest.importorskip("datasets")
    run_dir = tmp_path / "run"
    sim = Simulator(sim_config())
    jobs = [wan_job(), wan_job("a teacup", n=1)]
    async with in_process_client(sim) as client:
        await run_in_dir(run_dir, client, jobs, limits())
    (run_dir / "state.db-wal").unlink(missing_ok=True)  # not part of a dataset
    for name in os.listdir(run_dir):
        if name.startswith("state.db") or name == "metrics.prom" or name.startswith("."):
            (run_dir / name).unlink()
    loaded = datasets.load_dataset(
        "imagefolder", data_dir=str(run_dir), split="train", cache_dir=str(tmp_path / "cache")
    )
    assert loaded.num_rows == 5
    assert sorted(zip(loaded["job_id"], loaded["index"], strict=True)) == sorted(
        [(jobs[0].job_id, i) for i in range(4)] + [(jobs[1].job_id, 0)]
    )
    assert all(img.size[0] > 0 for img in loaded["image"])


# -- SIGKILL between two downloads of one job ---------------------------------------------------

KILL_MANIFEST = """\
version: 1
name: several
model: alibaba/wan2.7-image
limits: {concurrency: 2, rate: 50/s, retries: 2, timeout: 10m}
jobs:
  - prompt: a lighthouse at dawn
"""


def _batchgen_run(manifest: Path, run_dir: Path, url: str) -> subprocess.Popen[str]:
    env = {**os.environ, "MODELLIX_API_KEY": SIM_KEY}
    argv = [sys.executable, "-m", "batchgen", "run", str(manifest)]
    argv += ["--output", str(run_dir), "--base-url", url]
    return subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
    )


def _recorded(run_dir: Path) -> list[str]:
    """The image files the state file records (nothing while it does not exist yet)."""
    try:
        with StateStore.open_readonly(run_dir) as store:
            return sorted(store.done_result_paths())
    except StateError:
        return []


def test_sigkill_between_two_downloads_of_a_job_loses_no_image_and_fetches_none_twice(
    tmp_path: Path,
) -> None:
    manifest = tmp_path / "several.yaml"
    manifest.write_text(KILL_MANIFEST)
    run_dir = tmp_path / "run"
    # Each result file waits 0.8 s before its first byte: the kill lands while the third
    # download waits, two images recorded, two not.
    sim = Simulator(sim_config(time_scale=0.01, download_latency=0.8))
    with serve_in_thread(sim) as url:
        proc = _batchgen_run(manifest, run_dir, url)
        before: list[str] = []
        for _ in range(3000):  # bounded: at most about a minute
            before = _recorded(run_dir)
            if len(before) >= 2 or proc.poll() is not None:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        assert 2 <= len(before) < 4, before
        on_disk = sorted(f"images/{n}" for n in os.listdir(run_dir / "images"))
        assert set(before) <= set(on_disk)
        with StateStore.open_readonly(run_dir) as store:
            (job,) = store.iter_jobs()
            assert job.state == "downloading"
            recorded = store.job_images(job.job_id)
            task_id = job.task_id
        proc = _batchgen_run(manifest, run_dir, url)
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
    check_images(run_dir, job.job_id, 4)
    counts = sim.download_counts()
    assert set(counts) == {f"{task_id}/{i}.png" for i in range(4)}
    for image in recorded:  # durable before the kill: never fetched again
        assert counts[f"{task_id}/{image.index}.png"] == 1
    # At most the one download in flight at the kill was fetched a second time.
    assert sum(counts.values()) <= 4 + 1
    assert sim.stats()["submissions"]["accepted"] == 1
