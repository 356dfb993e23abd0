"""A simulated run keeps its simulator's tasks in the run directory (issue 18, item 6):
killed at any instant and resumed, it follows the tasks it had, and redoes none."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from batchgen.cli import main
from batchgen.simulator.app import Latency, Simulator
from batchgen.simulator.journal import JOURNAL_NAME, TaskJournal
from tests.runhelpers import SIM_KEY, sim_config

REPO = Path(__file__).resolve().parent.parent
SUBMIT = "/api/v1/openai/gpt-image-1.5/async"
AUTH = {"Authorization": f"Bearer {SIM_KEY}"}


async def _exchange(sim: Simulator, method: str, path: str, body: object = None) -> httpx.Response:
    transport = httpx.ASGITransport(app=sim)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        return await client.request(method, path, json=body, headers=AUTH)


def _call(sim: Simulator, method: str, path: str, body: object = None) -> httpx.Response:
    return asyncio.run(_exchange(sim, method, path, body))


def test_a_restarted_simulator_answers_the_tasks_its_journal_recorded(tmp_path: Path) -> None:
    path = tmp_path / JOURNAL_NAME
    first = Simulator(sim_config(latency=Latency.fixed(0)), journal=TaskJournal.open(path))
    done_id = _call(first, "POST", SUBMIT, {"prompt": "a fox"}).json()["data"]["task_id"]
    slow = Simulator(
        sim_config(latency=Latency.fixed(10_000), time_scale=1.0), journal=TaskJournal.open(path)
    )
    slow_id = _call(slow, "POST", SUBMIT, {"prompt": "a cat"}).json()["data"]["task_id"]

    again = Simulator(sim_config(), journal=TaskJournal.open(path))
    finished = _call(again, "GET", f"/api/v1/tasks/{done_id}").json()["data"]
    assert finished["status"] == "success"
    image = _call(again, "GET", f"/files/{done_id}/0.png")
    assert image.status_code == 200
    assert image.content.startswith(b"\x89PNG")
    # Progress comes from the stored submit time and duration: still running.
    assert _call(again, "GET", f"/api/v1/tasks/{slow_id}").json()["data"]["status"] in (
        "pending",
        "processing",
    )
    stats = again.stats()
    assert stats["submissions"]["accepted"] == 2
    assert stats["polls"]["unknown_task"] == 0
    # A new task gets a new id, never one of the recorded ones.
    new_id = _call(again, "POST", SUBMIT, {"prompt": "a owl"}).json()["data"]["task_id"]
    assert new_id not in (done_id, slow_id)
    assert len(TaskJournal.open(path).load()) == 3


def test_without_a_journal_the_simulator_keeps_nothing_on_disk(tmp_path: Path) -> None:
    sim = Simulator(sim_config())
    assert _call(sim, "POST", SUBMIT, {"prompt": "a fox"}).status_code == 200
    assert list(tmp_path.iterdir()) == []


def test_simulate_state_file_flag_refuses_an_unusable_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "missing-folder" / "sim.db"
    assert main(["simulate", "--port", "0", "--state-file", str(bad)]) == 3
    assert "task journal" in capsys.readouterr().err


def _status(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, int]:
    if main(["status", str(run_dir), "--json"]) not in (0, 1, 75):
        capsys.readouterr()
        return {}
    counts: dict[str, int] = json.loads(capsys.readouterr().out)["counts"]
    return counts


def test_simulated_run_killed_mid_run_resumes_without_redoing_a_task(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELLIX_")}
    command = [
        sys.executable,
        "-m",
        "batchgen",
        "run",
        "manifests/example.yaml",
        "--simulate",
        "--output",
        str(run_dir),
    ]
    # 40 simulated seconds = 4 real seconds a task: long enough to catch tasks running.
    process = subprocess.Popen(
        [*command, "--simulate-latency", "40"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(3000):  # bounded: at most a few minutes on a loaded machine
            if _status(run_dir, capsys).get("running", 0) >= 1:
                break
            assert process.poll() is None, "the run ended before a task was seen running"
            time.sleep(0.05)
        else:
            pytest.fail("no job reached 'running'")
        process.send_signal(signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    killed = _status(run_dir, capsys)
    assert killed["running"] + killed.get("downloading", 0) >= 1
    assert killed["done"] < 12

    resumed = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "generated again" in resumed.stdout  # the resumed-tasks line says so
    assert "none generated again" in resumed.stdout
    assert "recorded tasks generated again" not in resumed.stdout
    assert _status(run_dir, capsys)["done"] == 12
    with sqlite3.connect(run_dir / "state.db") as db:
        accepted = Counter(
            job
            for (job,) in db.execute(
                "SELECT job_id FROM events WHERE from_state = 'submitting' AND to_state = 'running'"
            )
        )
    assert len(accepted) == 12
    assert set(accepted.values()) == {1}
