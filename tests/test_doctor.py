"""``batchgen doctor``: one line per check, OK/WARN/FAIL, exit 0 or 3; the simulator on a
loopback port stands for the provider."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from batchgen.api.doctor import key_check, proxy_for, run_checks
from batchgen.api.errors import AuthError, NotFound, ServerError
from batchgen.simulator.app import Simulator, SimulatorConfig, serve_in_thread

KEY = "doctor-key-0123"


def _doctor(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchgen", "doctor", *args],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_doctor_is_all_ok_against_a_working_provider_and_prints_one_line_per_check(
    tmp_path: Path,
) -> None:
    config = SimulatorConfig(api_key=KEY, account_balance=12.3456)
    with serve_in_thread(Simulator(config)) as url:
        result = _doctor("--base-url", url, "--output", str(tmp_path), MODELLIX_API_KEY=KEY)
        as_json = _doctor(
            "--base-url", url, "--output", str(tmp_path), "--json", MODELLIX_API_KEY=KEY
        )
    assert result.returncode == 0, result.stdout + result.stderr
    names = [line.split()[1] for line in result.stdout.splitlines()]
    assert names[:3] == ["key", "base", "proxy"]
    assert {"DNS", "reachable", "balance", "clock", "disk"} <= set(names)
    assert KEY not in result.stdout + result.stderr
    data = json.loads(as_json.stdout)
    assert data["ok"] is True
    checks = {c["name"]: c for c in data["checks"]}
    assert checks["key"]["status"] == "OK"
    assert checks["balance"]["detail"] == "12.3456"


def test_doctor_fails_with_exit_3_on_a_refused_key_or_a_closed_port(tmp_path: Path) -> None:
    with serve_in_thread(Simulator(SimulatorConfig(api_key=KEY))) as url:
        refused = _doctor("--base-url", url, "--json", MODELLIX_API_KEY="wrong-key-9876")
    assert refused.returncode == 3
    checks = {c["name"]: c for c in json.loads(refused.stdout)["checks"]}
    assert checks["key"]["status"] == "FAIL"
    assert "wrong-key-9876" not in refused.stdout
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        closed = _doctor("--base-url", f"http://127.0.0.1:{port}", MODELLIX_API_KEY=KEY)
    assert closed.returncode == 3
    assert f"FAIL  reachable  127.0.0.1:{port}: connection refused" in closed.stdout
    unset = _doctor("--base-url", "http://127.0.0.1:9")
    assert unset.returncode == 3
    assert unset.stdout.startswith("FAIL  key set")


def test_the_proxy_in_use_is_shown_without_its_credentials() -> None:
    env = {"HTTPS_PROXY": "http://alice:s3cret@proxy.example.test:3128", "NO_PROXY": "internal"}
    shown = proxy_for(httpx.URL("https://api.modellix.ai"), env)
    assert shown is not None
    assert "proxy.example.test:3128" in shown
    assert "s3cret" not in shown
    assert "alice" not in shown
    assert proxy_for(httpx.URL("https://api.internal"), env) is None
    assert proxy_for(httpx.URL("http://127.0.0.1:8000"), {"ALL_PROXY": "http://p:1"}) is None


def test_the_key_check_judges_each_outcome() -> None:
    assert key_check(True).status == "OK"
    assert key_check(False).status == "FAIL"
    assert key_check(AuthError("401", status=401)).status == "FAIL"
    assert key_check(NotFound("404", status=404)).status == "WARN"
    assert key_check(ServerError("503", status=503)).status == "WARN"


@pytest.mark.anyio
async def test_run_checks_in_process_needs_no_socket(tmp_path: Path) -> None:
    sim = Simulator(SimulatorConfig(api_key=KEY))
    checks = await run_checks(
        "http://127.0.0.1",
        output=tmp_path,
        environ={"MODELLIX_API_KEY": KEY},
        transport=httpx.ASGITransport(app=sim),
    )
    assert [c.status for c in checks if c.name in ("key", "balance")] == ["OK", "OK"]
