"""`batchgen run` end to end: the example with --simulate, lock, key, signals, kill -9 + resume."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batchgen.cli import main
from batchgen.simulator.app import Simulator, serve_in_thread
from batchgen.store.state import StateError, StateStore, acquire_run_lock
from tests.runhelpers import SIM_KEY, check_run_dir, sim_config

REPO = Path(__file__).resolve().parent.parent

MANIFEST = """\
version: 1
name: killtest
model: openai/gpt-image-1.5
limits: {{concurrency: 8, rate: 200/s, retries: 6, timeout: 10m}}
jobs:
  - prompt: "{{subject}} number {{n}}"
    matrix:
      subject: [a red fox, a lighthouse, a teacup, a cactus]
      n: [{numbers}]
"""


def write_manifest(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(MANIFEST.format(numbers=", ".join(str(i) for i in range(n))))
    return path


def test_example_manifest_runs_end_to_end_with_simulate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(REPO / "manifests", tmp_path / "manifests")
    run_dir = tmp_path / "run"
    code = main(
        [
            "run",
            str(tmp_path / "manifests" / "example.yaml"),
            "--simulate",
            "--output",
            str(run_dir),
        ]
    )
    assert code == 0
    assert "done 12" in capsys.readouterr().out
    assert check_run_dir(run_dir)["done"] == 12
    # Running it again resumes: nothing left to do, still exit 0.
    assert main(["run", str(run_dir)]) == 0


def test_second_run_on_a_locked_directory_exits_75_naming_the_pid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = write_manifest(tmp_path, 1)
    run_dir = tmp_path / "run"
    with acquire_run_lock(run_dir):
        code = main(["run", str(manifest), "--simulate", "--output", str(run_dir)])
    assert code == 75
    assert str(os.getpid()) in capsys.readouterr().err


def test_missing_api_key_is_a_clear_configuration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MODELLIX_API_KEY", raising=False)
    manifest = write_manifest(tmp_path, 1)
    code = main(["run", str(manifest), "--output", str(tmp_path / "run")])
    assert code == 3
    assert "MODELLIX_API_KEY" in capsys.readouterr().err


def test_invalid_manifest_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: x\nmodel: openai/gpt-image-1.5\njobs: [{prompt: 3}]\n")
    assert main(["run", str(bad), "--simulate", "--output", str(tmp_path / "r")]) == 2


def _spawn_run(manifest: Path, run_dir: Path, url: str) -> subprocess.Popen[str]:
    env = {**os.environ, "MODELLIX_API_KEY": SIM_KEY, "PYTHONPATH": str(REPO)}
    script = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from batchgen.run.session import RunRequest, run_session\n"
        "from batchgen.cli._runargs import run_until_signal\n"
        "opts = dict(first_poll=0.05, min_poll_interval=0.02, max_poll_interval=0.3,\n"
        "            backoff_base=0.02, backoff_cap=0.2, throttle_pause=0.02)\n"
        f"req = RunRequest(target=Path({str(manifest)!r}), output=Path({str(run_dir)!r}),\n"
        f"                 base_url={url!r}, options=opts, progress_bar=False)\n"
        "summary = asyncio.run(run_until_signal(req))\n"
        "sys.exit(summary.exit_code)\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", script],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_running(run_dir: Path, proc: subprocess.Popen[str], sessions: int = 1) -> None:
    """Until the ``sessions``-th run has started and a task is in flight (bounded)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with StateStore.open_readonly(run_dir) as store:
                if store.counts()["running"] > 0 and len(store.sessions()) >= sessions:
                    return
        except StateError:
            pass  # not created yet
        time.sleep(0.02)


def test_kill_9_at_random_instants_then_resume_loses_nothing(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, 15)  # 60 jobs
    run_dir = tmp_path / "run"
    sim = Simulator(sim_config(time_scale=0.02, seed=21))  # 0.2 s tasks
    rng = random.Random(4)
    kills = 0
    with serve_in_thread(sim) as url:
        for i in range(3):
            proc = _spawn_run(manifest, run_dir, url)
            _wait_for_running(run_dir, proc, sessions=i + 1)
            time.sleep(rng.uniform(0.0, 0.5))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.communicate(timeout=60)
        proc = _spawn_run(manifest, run_dir, url)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
    counts = check_run_dir(run_dir)
    assert counts["done"] == 60
    subs = sim.stats()["submissions"]
    assert subs["accepted_distinct_bodies"] == 60
    assert subs["accepted"] - subs["accepted_distinct_bodies"] <= kills
    with StateStore.open_readonly(run_dir) as store:
        assert len(store.sessions()) == 1 + kills


def test_sigint_stops_promptly_with_130_and_resume_finishes(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, 10)
    run_dir = tmp_path / "run"
    env = {**os.environ, "MODELLIX_API_KEY": SIM_KEY}
    sim = Simulator(sim_config(time_scale=0.2, seed=2))  # 2 s tasks
    with serve_in_thread(sim) as url:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "batchgen",
                "run",
                str(manifest),
                "--output",
                str(run_dir),
                "--base-url",
                url,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        _wait_for_running(run_dir, proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err[-2000:]
        assert "interrupted" in out
        with StateStore.open_readonly(run_dir) as store:
            counts = store.counts()
            kept = [j.task_id for j in store.iter_jobs(["running"])]
        assert counts["running"] > 0
        assert all(kept)
    check_run_dir(run_dir)
