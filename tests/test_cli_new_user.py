"""What a new user meets first (issue 18): a missing key, which API URL a run uses, what
`status` exits with and says about a mistyped run directory, and argument spelling."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from batchgen.cli import main
from batchgen.cli._runargs import positive_int
from batchgen.run.session import pick_base_url
from batchgen.simulator.app import Simulator, serve_in_thread
from batchgen.store.state import StateStore
from tests.runhelpers import SIM_KEY, make_jobs, sim_config

MANIFEST = """\
version: 1
name: newuser
model: openai/gpt-image-1.5
limits: {{concurrency: 4, rate: 200/s, retries: 0, timeout: 10m}}
jobs:
  - prompt: "a red fox number {{n}}"
    matrix: {{n: [{numbers}]}}
"""


def _manifest(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(MANIFEST.format(numbers=", ".join(str(i) for i in range(n))))
    return path


def test_missing_api_key_is_reported_before_anything_is_created_on_disk(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MODELLIX_API_KEY", raising=False)
    manifest = _manifest(tmp_path, 1)
    run_dir = tmp_path / "out" / "run"
    assert main(["run", str(manifest), "--output", str(run_dir)]) == 3
    assert "MODELLIX_API_KEY is not set" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_base_url_precedence_is_flag_then_env_then_stored_then_default() -> None:
    stored = {"base_url": "https://stored.example"}
    env = {"MODELLIX_BASE_URL": "https://env.example"}
    assert pick_base_url("https://flag.example", env, stored) == "https://flag.example"
    assert pick_base_url(None, env, stored) == "https://env.example"
    assert pick_base_url(None, {}, stored) == "https://stored.example"
    assert pick_base_url(None, {}, {}) == "https://api.modellix.ai"
    # A simulated run's loopback URL is never reused by a real one.
    simulated = {"base_url": "http://127.0.0.1", "simulate": True}
    assert pick_base_url(None, {}, simulated) == "https://api.modellix.ai"


def test_run_and_retry_follow_flag_env_stored_precedence_and_log_a_changed_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MODELLIX_API_KEY", SIM_KEY)
    monkeypatch.delenv("MODELLIX_BASE_URL", raising=False)
    run_dir = tmp_path / "run"
    failing = Simulator(sim_config(fail_rate=1.0))
    healthy = Simulator(sim_config())
    with serve_in_thread(failing) as url_a, serve_in_thread(healthy) as url_b:
        # run MANIFEST --base-url A: every task fails there; A is stored.
        manifest = _manifest(tmp_path, 2)
        args = ["--output", str(run_dir), "--log-format", "json"]
        assert main(["run", str(manifest), "--base-url", url_a, *args]) == 1
        # retry with MODELLIX_BASE_URL=B: the environment beats the stored URL, said once.
        monkeypatch.setenv("MODELLIX_BASE_URL", url_b)
        capsys.readouterr()
        assert main(["retry", str(run_dir), "--log-format", "json"]) == 0
        err = capsys.readouterr().err
        changed = [line for line in err.splitlines() if "stored in the run directory" in line]
        assert len(changed) == 1
        assert url_b in changed[0]
        assert SIM_KEY not in err
        assert healthy.stats()["submissions"]["accepted"] == 2
        # run RUN_DIR with neither flag nor environment: the stored URL (now B).
        monkeypatch.delenv("MODELLIX_BASE_URL")
        with StateStore.open(run_dir, create=False) as store:
            store.add_jobs(make_jobs(2, tag="cat"))
        assert main(["run", str(run_dir), "--log-format", "json"]) == 0
        assert healthy.stats()["submissions"]["accepted"] == 4
        # run MANIFEST with the environment at A and the flag at B: the flag wins.
        monkeypatch.setenv("MODELLIX_BASE_URL", url_a)
        manifest = _manifest(tmp_path, 4)
        assert main(["run", str(manifest), "--base-url", url_b, *args]) == 0
        assert healthy.stats()["submissions"]["accepted"] == 6
        assert failing.stats()["submissions"]["accepted"] == 2


def _sim_run(tmp_path: Path, n: int, **knobs: float) -> Path:
    run_dir = tmp_path / "newuser-2026-11-24"
    manifest = _manifest(tmp_path, n)
    main(["run", str(manifest), "--simulate", "--output", str(run_dir), "--log-format", "json"])
    return run_dir


def test_status_exits_0_when_every_job_is_done_1_with_failures_75_while_pending(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = _sim_run(tmp_path, 2)
    assert main(["status", str(run_dir)]) == 0
    with StateStore.open(run_dir, create=False) as store:
        store.add_jobs(make_jobs(1, tag="owl"))
        assert main(["status", str(run_dir)]) == 75
        (job_id,) = [j.job_id for j in store.iter_jobs(["pending"])]
        store.mark_submitting(job_id)
        store.mark_failed(job_id, "task failed: test")
    assert main(["status", str(run_dir), "--json"]) == 1


def test_status_of_a_missing_run_directory_suggests_the_nearest_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = _sim_run(tmp_path, 1)
    (tmp_path / "unrelated").mkdir()
    capsys.readouterr()
    assert main(["status", str(tmp_path / "newuser-2026-11-25")]) == 2
    err = capsys.readouterr().err
    assert "no run directory at" in err
    assert f"did you mean {run_dir}?" in err
    assert "unrelated" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("text", "value"), [("1,000", 1000), ("1_000", 1000), ("7", 7)])
def test_whole_number_arguments_accept_digit_group_separators(text: str, value: int) -> None:
    assert positive_int(text) == value


@pytest.mark.parametrize("text", ["0", "-1", "1.5", "x"])
def test_whole_number_arguments_refuse_what_is_not_a_positive_whole_number(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        positive_int(text)


def test_max_jobs_accepts_commas_in_every_command(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, 2)
    assert main(["validate", str(manifest), "--max-jobs", "1,000"]) == 0
    assert main(["plan", str(manifest), "--max-jobs", "1,000"]) == 0
