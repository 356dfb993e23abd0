"""Helpers for gallery tests: run directories with done and failed jobs, made through the
state store's own API and the simulator's PNG maker."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from batchgen.manifest.loader import Job, job_id_for
from batchgen.simulator.png import png_bytes
from batchgen.store.state import ResultInfo, StateStore

MODEL = "openai/gpt-image-1.5"


def job(prompt: str, repeat: int = 0, group: str = "jobs[0]", **fields: Any) -> Job:
    body = {"prompt": prompt, "size": "1024x1024", "quality": "low", **fields}
    return Job(job_id_for(MODEL, body, repeat), MODEL, body, repeat, group)


def finish(store: StateStore, run_dir: Path, j: Job, *, size: tuple[int, int] = (64, 48)) -> Path:
    """Take ``j`` through submit, run and download to done with a real PNG file."""
    data = png_bytes(*size, text=j.job_id)
    rel = f"images/{j.job_id}.png"
    path = run_dir / rel
    path.write_bytes(data)
    store.mark_submitting(j.job_id)
    store.mark_running(j.job_id, f"task-{j.job_id}", None)
    store.mark_downloading(j.job_id)
    store.mark_done(
        j.job_id,
        ResultInfo(rel, hashlib.sha256(data).hexdigest(), len(data), "png", *size),
    )
    return path


def fail(store: StateStore, j: Job, reason: str, *, rejected: bool = False) -> None:
    store.mark_submitting(j.job_id)
    if rejected:
        store.mark_rejected(j.job_id, reason)
    else:
        store.mark_failed(j.job_id, reason)


def make_run(run_dir: Path, done: Sequence[Job], failed: Sequence[tuple[Job, str]] = ()) -> None:
    store = StateStore.open(run_dir)
    try:
        store.add_jobs([*done, *(j for j, _ in failed)])
        for j in done:
            finish(store, run_dir, j)
        for j, reason in failed:
            fail(store, j, reason, rejected=reason.startswith("400"))
    finally:
        store.close()


def count(html: str, pattern: str) -> int:
    return len(re.findall(pattern, html))
