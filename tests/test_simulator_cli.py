"""`batchgen simulate`: flags for every knob, loopback only, a real server process."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys

import httpx
import pytest

from batchgen.cli import build_parser, main
from batchgen.cli.simulate import config_from_args
from batchgen.simulator.settings import Latency, SimulatorConfig, StatusNames


def parse(*argv: str) -> SimulatorConfig:
    return config_from_args(build_parser().parse_args(["simulate", *argv]))


def test_simulate_without_flags_gives_the_default_config() -> None:
    assert parse() == SimulatorConfig()


def test_every_config_field_has_a_flag() -> None:
    parser = build_parser()
    args = parser.parse_args(["simulate"])
    for field in dataclasses.fields(SimulatorConfig):
        assert hasattr(args, field.name), field.name


def test_flags_set_every_knob() -> None:
    config = parse(
        "--seed=5",
        "--api-key=k2",
        "--latency=lognormal:12,0.5",
        "--pending-fraction=0.3",
        "--time-scale=0.01",
        "--fail-rate=0.1",
        "--status-names=queued,running,completed,error",
        "--failed-error-field",
        "--balance=100",
        "--max-concurrent-tasks=8",
        "--rate-limit=4",
        "--rate-burst=2",
        "--rate-limit-scope=all",
        "--error-500-rate=0.1",
        "--error-503-rate=0.2",
        "--error-429-rate=0.05",
        "--drop-rate=0.1",
        "--fault-routes=submit,poll",
        "--lost-answer-fraction=0.25",
        "--retry-after=3",
        "--integer-retry-after",
        "--result-ttl=60",
        "--expired-rate=0.1",
        "--expired-status=403",
        "--download-bytes-per-second=1000",
        "--download-chunk-size=512",
        "--submit-paths=no-async",
    )
    assert config == SimulatorConfig(
        seed=5,
        api_key="k2",
        latency=Latency.lognormal(12, 0.5),
        pending_fraction=0.3,
        time_scale=0.01,
        fail_rate=0.1,
        status_names=StatusNames("queued", "running", "completed", "error"),
        failed_error_field=True,
        balance=100,
        max_concurrent_tasks=8,
        rate_limit=4.0,
        rate_burst=2,
        rate_limit_scope="all",
        error_500_rate=0.1,
        error_503_rate=0.2,
        error_429_rate=0.05,
        drop_rate=0.1,
        fault_routes=frozenset({"submit", "poll"}),
        lost_answer_fraction=0.25,
        retry_after=3.0,
        integer_retry_after=True,
        result_ttl=60.0,
        expired_rate=0.1,
        expired_status=403,
        download_bytes_per_second=1000.0,
        download_chunk_size=512,
        submit_paths="no-async",
    )


def test_realistic_sets_the_documented_limits_and_explicit_flags_win() -> None:
    config = parse("--realistic")
    assert config.max_concurrent_tasks == 3
    assert config.rate_limit == pytest.approx(100 / 60)
    assert config.rate_limit_scope == "all"
    assert config.result_ttl == 24 * 3600
    assert dataclasses.replace(
        config, max_concurrent_tasks=None, rate_limit=None, rate_limit_scope="submit",
        result_ttl=None,
    ) == SimulatorConfig()  # fmt: skip
    mine = parse("--realistic", "--max-concurrent-tasks=10", "--rate-limit-scope=submit")
    assert (mine.max_concurrent_tasks, mine.rate_limit_scope) == (10, "submit")
    assert mine.result_ttl == 24 * 3600


def test_faults_flag_switches_every_random_fault_on_and_no_auth_drops_the_key() -> None:
    config = parse("--faults=0.1", "--no-auth")
    assert config == SimulatorConfig(api_key=None).with_faults(0.1)


@pytest.mark.parametrize(
    "argv",
    [
        ["--latency=uniform:9..1"],
        ["--fail-rate=2"],
        ["--status-names=a,b"],
        ["--fault-routes=submit,stats"],
    ],
)
def test_bad_knobs_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["simulate", *argv])
    assert exited.value.code == 2
    assert "error" in capsys.readouterr().err


def test_knobs_that_conflict_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--error-500-rate=0.7", "--drop-rate=0.7"]) == 2
    assert "add up to" in capsys.readouterr().err


def test_non_loopback_host_is_refused_without_allow_remote(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["simulate", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "--allow-remote" in capsys.readouterr().err


def test_simulate_serves_a_real_port_until_interrupted() -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "batchgen", "simulate", "--port", "0", "--latency", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "listening on http://127.0.0.1:" in line
        base_url = line.split("listening on ", 1)[1].split()[0]
        headers = {"Authorization": "Bearer sim-key"}
        body = {"prompt": "a lighthouse"}
        with httpx.Client(base_url=base_url, timeout=10) as client:
            for _ in range(100):  # the socket listens before uvicorn is up: connects queue
                submitted = client.post(
                    "/api/v1/openai/gpt-image-1.5/async", json=body, headers=headers
                )
                break
            assert submitted.status_code == 200
            polled = client.get(submitted.json()["data"]["get_result"]["url"], headers=headers)
            assert polled.json()["data"]["status"] == "success"
            stats = json.loads(client.get("/_sim/stats").text)
        assert stats["submissions"]["accepted"] == 1
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
            raise
    assert code == 0
