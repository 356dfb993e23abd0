"""Helpers for runner tests: jobs in a state file, a client on the simulator, checks."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from batchgen.api import ModellixClient
from batchgen.manifest.types import Job, Limits, job_id_for
from batchgen.run.runner import RunOptions, RunSummary, run_jobs
from batchgen.simulator.app import Simulator, SimulatorConfig
from batchgen.store.outputs import OutputDir, check_image
from batchgen.store.state import StateStore

MODEL = "openai/gpt-image-1.5"
SIM_KEY = "sim-key"


def make_jobs(n: int, *, tag: str = "fox") -> list[Job]:
    jobs = []
    for i in range(n):
        body = {
            "prompt": f"a {tag} number {i}",
            "size": "1024x1024",
            "quality": "low",
            "background": "auto",
        }
        jobs.append(Job(job_id_for(MODEL, body, 0), MODEL, body, 0, "jobs[0]"))
    return jobs


#: RunOptions times scaled for a simulator running at a small time scale.
FAST_TIMES: dict[str, float] = {
    "first_poll": 0.02,
    "min_poll_interval": 0.01,
    "max_poll_interval": 0.2,
    "backoff_base": 0.01,
    "backoff_cap": 0.05,
    "throttle_pause": 0.01,
    "progress_interval": 0.05,
}


def fast_options(**kw: Any) -> RunOptions:
    """Options scaled for a simulator running at a small time scale."""
    base: dict[str, Any] = {**FAST_TIMES, "seed": 1}
    base.update(kw)
    return RunOptions(**base)


def sim_config(**kw: Any) -> SimulatorConfig:
    base: dict[str, Any] = {"time_scale": 0.002, "seed": 7, "retry_after": 0.01}
    base.update(kw)
    return SimulatorConfig(**base)


def in_process_client(sim: Simulator, key: str | None = SIM_KEY) -> ModellixClient:
    return ModellixClient(
        "http://127.0.0.1", key, transport=httpx.ASGITransport(app=sim), operation_timeout=10.0
    )


async def run_in_dir(
    run_dir: Path,
    client: ModellixClient,
    jobs: list[Job] | None,
    limits: Limits,
    options: RunOptions | None = None,
) -> RunSummary:
    store = StateStore.open(run_dir, settings={"model": MODEL})
    try:
        if jobs is not None:
            store.sync_jobs(jobs)
        out = OutputDir(run_dir)
        out.prepare(store)
        return await run_jobs(store, client, limits, options=options or fast_options(), output=out)
    finally:
        store.close()


def check_run_dir(run_dir: Path) -> dict[str, int]:
    """Every done job has a valid image whose sha256 matches the state file and metadata;
    no stray files; returns the state counts."""
    store = StateStore.open_readonly(run_dir)
    try:
        counts = store.counts()
        done = {j.job_id: j for j in store.iter_jobs(["done"])}
    finally:
        store.close()
    images = sorted(os.listdir(run_dir / "images"))
    assert not [n for n in images if n.endswith(".tmp")], images
    assert len(images) == len(done), (len(images), len(done))
    meta_path = run_dir / "metadata.jsonl"
    text = meta_path.read_text() if meta_path.exists() else ""
    meta = [json.loads(line) for line in text.splitlines()]
    assert len(meta) == len(done)
    assert len({m["job_id"] for m in meta}) == len(meta)
    for m in meta:
        job = done[m["job_id"]]
        path = run_dir / m["file_name"]
        info = check_image(path)
        data = path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == job.sha256 == m["sha256"]
        assert info.bytes == job.bytes == m["bytes"]
    return counts


@contextmanager
def chdir(path: Path) -> Iterator[None]:
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)
