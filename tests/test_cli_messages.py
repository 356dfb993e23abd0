"""What a run says when things go wrong (issue 18, item 7): short failure warnings with the
provider's message, where a connection failed, what was wrong with a base URL, true help."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from batchgen.cli import main
from batchgen.simulator.app import Simulator, serve_in_thread
from batchgen.store.state import StateStore
from tests.runhelpers import SIM_KEY, sim_config

MANIFEST = """\
version: 1
name: messages
model: openai/gpt-image-1.5
limits: {concurrency: 2, rate: 200/s, retries: 1, timeout: 10m}
jobs:
  - prompt: "a red fox number {n}"
    matrix: {n: [0, 1]}
"""


@pytest.fixture
def manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MODELLIX_API_KEY", SIM_KEY)
    monkeypatch.delenv("MODELLIX_BASE_URL", raising=False)
    path = tmp_path / "m.yaml"
    path.write_text(MANIFEST)
    return path


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if " WARNING " in line]


@pytest.mark.parametrize("with_message", [False, True])
def test_a_failed_task_is_one_short_warning_with_job_attempt_and_message(
    manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], with_message: bool
) -> None:
    sim = Simulator(sim_config(fail_rate=1.0, failed_error_field=with_message))
    run_dir = tmp_path / "run"
    with serve_in_thread(sim) as url:
        assert main(["run", str(manifest), "--base-url", url, "--output", str(run_dir)]) == 1
    err = capsys.readouterr().err
    warnings = _warnings(err)
    assert len(warnings) == 2
    message = "Simulated failure: the model could not generate the image"
    for line in warnings:
        assert len(line) <= 160, line
        assert "failed (attempt 2/2): task failed: " in line
        assert (message if with_message else "task failed without a message") in line
        assert "{" not in line  # no raw JSON
        assert "task-openai-" not in line
    job_ids = {line.split(" job ", 1)[1].split()[0] for line in warnings}
    # The raw details stay in the state file.
    store = StateStore.open_readonly(run_dir)
    try:
        for job_id in job_ids:
            error = store.get(job_id).last_error or ""
            assert error.endswith("(after 2 attempts)")
            assert ("answer: {" in error) is not with_message
    finally:
        store.close()


def test_an_unreachable_api_stops_the_run_naming_host_and_port(
    manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    run_dir = tmp_path / "run"
    assert main(["run", str(manifest), "--base-url", url, "--output", str(run_dir)]) == 3
    captured = capsys.readouterr()
    assert f"cannot reach 127.0.0.1:{port}: connection refused" in captured.err
    # Checked before anything is created: the next run starts from scratch, nothing lost.
    assert not run_dir.exists()


def test_a_base_url_with_a_query_string_shows_the_query_but_never_its_values(
    manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "https://127.0.0.1/v1?api_key=sk-secret-123&region=eu"
    assert main(["run", str(manifest), "--base-url", url, "--output", str(tmp_path / "r")]) == 3
    err = capsys.readouterr().err
    assert "must not contain a query string" in err
    assert "'?api_key=…&region=…'" in err
    assert "sk-secret-123" not in err
    assert "eu'" not in err
    bare = "https://127.0.0.1/v1?sk-secret-123"
    assert main(["run", str(manifest), "--base-url", bare, "--output", str(tmp_path / "r")]) == 3
    err = capsys.readouterr().err
    assert "'?…'" in err
    assert "sk-secret-123" not in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command", ["run", "retry"])
def test_base_url_help_says_loopback_http_works(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "https only" not in help_text
    assert "https, or http to a loopback address" in help_text
