"""Resume from the manifest: an unchanged manifest (and prompts files) is not expanded again;
an edited one adds its new jobs."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from batchgen.run.session import FINGERPRINT_KEY, RunRequest, run_session
from batchgen.store.state import StateStore

MODEL = "openai/gpt-image-1.5"


def write_manifest(folder: Path, prompts: list[str], *, quality: str = "low") -> Path:
    (folder / "prompts.txt").write_text("".join(f"{p}\n" for p in prompts), encoding="utf-8")
    path = folder / "fp.yaml"
    path.write_text(
        f"version: 1\nname: fp\nmodel: {MODEL}\noutput: run\n"
        f"defaults: {{quality: {quality}}}\n"
        "jobs:\n  - prompts_file: prompts.txt\n",
        encoding="utf-8",
    )
    return path


def sync_once(manifest: Path, caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    """One ``run`` of the manifest that stops before any submission; its ``jobs`` event."""
    stop = asyncio.Event()
    stop.set()
    req = RunRequest(
        target=manifest, simulate=True, progress_bar=False, options={"metrics_interval": None}
    )
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="batchgen.run"):
        asyncio.run(run_session(req, stop=stop, environ={}))
    events = [
        r.data
        for r in caplog.records
        if isinstance(getattr(r, "data", None), dict) and r.data.get("event") == "jobs"
    ]
    assert len(events) == 1, events
    return dict(events[0])


def job_count(run_dir: Path) -> int:
    store = StateStore.open(run_dir)
    try:
        return sum(store.counts().values())
    finally:
        store.close()


def test_unchanged_manifest_is_not_synced_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = write_manifest(tmp_path, ["a fox", "a cat", "a owl"])
    first = sync_once(manifest, caplog)
    assert first["synced"] is True
    assert first["added"] == 3
    second = sync_once(manifest, caplog)
    assert second["synced"] is False
    assert job_count(tmp_path / "run") == 3


def test_edited_prompts_file_adds_its_new_jobs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = write_manifest(tmp_path, ["a fox", "a cat"])
    sync_once(manifest, caplog)
    (tmp_path / "prompts.txt").write_text("a fox\na cat\na heron\n", encoding="utf-8")
    event = sync_once(manifest, caplog)
    assert event["synced"] is True
    assert event["added"] == 1
    assert job_count(tmp_path / "run") == 3
    assert sync_once(manifest, caplog)["synced"] is False


def test_edited_manifest_adds_its_new_jobs_and_stores_the_new_fingerprint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = write_manifest(tmp_path, ["a fox", "a cat"])
    sync_once(manifest, caplog)
    store = StateStore.open(tmp_path / "run")
    before = store.settings()[FINGERPRINT_KEY]
    store.close()
    write_manifest(tmp_path, ["a fox", "a cat"], quality="medium")
    event = sync_once(manifest, caplog)
    assert event["synced"] is True
    assert event["added"] == 2
    assert event["not_in_manifest"] == 2
    store = StateStore.open(tmp_path / "run")
    after = store.settings()[FINGERPRINT_KEY]
    store.close()
    assert after["sha256"] != before["sha256"]
    assert job_count(tmp_path / "run") == 4
    assert sync_once(manifest, caplog)["synced"] is False


def test_a_job_made_active_again_by_retry_is_synced_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = write_manifest(tmp_path, ["a fox", "a cat"])
    sync_once(manifest, caplog)
    (tmp_path / "prompts.txt").write_text("a fox\n", encoding="utf-8")
    assert sync_once(manifest, caplog)["not_in_manifest"] == 1
    store = StateStore.open(tmp_path / "run")
    try:
        gone = [j.job_id for j in store.iter_jobs(["pending"]) if not j.active]
        assert len(gone) == 1
        store.mark_failed(gone[0], "test")
        assert store.reset(gone) == 1  # `batchgen retry` makes it active again
    finally:
        store.close()
    event = sync_once(manifest, caplog)
    assert event["synced"] is True
    assert event["not_in_manifest"] == 1
