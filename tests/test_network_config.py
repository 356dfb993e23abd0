"""A configuration failure is not a job failure: through the command line, on real sockets.

A closed port, a certificate nobody trusts, ``SSL_CERT_FILE`` naming a missing file and a name
under ``.invalid`` (never resolves, RFC 6761) each end ``batchgen run`` at once with exit 3 and
one line naming ``host:port`` (or the file) and the cause, with nothing written; a refused
key too. When the key check is passed (a resume), the runner itself stops on the first
unreachable submit without failing or counting any job.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from runhelpers import SIM_KEY, fast_options, make_jobs, run_in_dir
from tlshelpers import handshake_only, write_ca

from batchgen.api import ModellixClient
from batchgen.manifest.types import Limits
from batchgen.simulator.app import Simulator, SimulatorConfig, serve_in_thread
from batchgen.store.state import StateStore

MANIFEST = Path(__file__).parents[1] / "manifests" / "example.yaml"
KEY = "config-test-key-0123"


def _cli(tmp: Path, base_url: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(sys.executable, "-m", "batchgen", "run", str(MANIFEST)),
            *("--base-url", base_url, "--output", str(tmp / "run")),
        ],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MODELLIX_API_KEY": KEY, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _one_line_exit_3(result: subprocess.CompletedProcess[str], tmp: Path, *needles: str) -> None:
    assert result.returncode == 3, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0]
    assert "Traceback" not in result.stderr
    assert KEY not in result.stderr + result.stdout
    assert not (tmp / "run").exists()  # nothing on disk


def test_a_closed_port_stops_the_run_at_once_naming_host_and_port(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: refused
        port = sock.getsockname()[1]
        result = _cli(tmp_path, f"http://127.0.0.1:{port}")
    _one_line_exit_3(result, tmp_path, f"127.0.0.1:{port}", "refused")


def test_an_untrusted_certificate_stops_the_run_at_once(tmp_path: Path) -> None:
    _, cert = write_ca(tmp_path, "127.0.0.1")
    with handshake_only(cert) as port:
        result = _cli(tmp_path, f"https://127.0.0.1:{port}")
    _one_line_exit_3(result, tmp_path, f"127.0.0.1:{port}", "certificate verification failed")


def test_a_missing_ssl_cert_file_stops_the_run_naming_the_file(tmp_path: Path) -> None:
    result = _cli(tmp_path, "https://127.0.0.1:9", SSL_CERT_FILE="/nonexistent/ca.pem")
    _one_line_exit_3(result, tmp_path, "SSL_CERT_FILE=/nonexistent/ca.pem")


def test_a_name_that_never_resolves_stops_the_run_at_once(tmp_path: Path) -> None:
    result = _cli(tmp_path, "https://api.batchgen.invalid")
    _one_line_exit_3(result, tmp_path, "api.batchgen.invalid:443", "does not resolve")


def test_a_refused_key_stops_before_anything_is_created(tmp_path: Path) -> None:
    sim = Simulator(SimulatorConfig(api_key="the-right-key"))
    with serve_in_thread(sim) as url:
        result = _cli(tmp_path, url)
    _one_line_exit_3(result, tmp_path, "401")
    assert sim.stats()["submissions"]["total"] == 0


@pytest.mark.anyio
async def test_the_runner_stops_on_an_unreachable_server_without_failing_or_counting_jobs(
    tmp_path: Path,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        async with ModellixClient(f"http://127.0.0.1:{sock.getsockname()[1]}", SIM_KEY) as client:
            summary = await run_in_dir(
                tmp_path, client, make_jobs(6), Limits(concurrency=3, retries=3), fast_options()
            )
    assert summary.exit_code == 3
    assert "refused" in (summary.stop_reason or "")
    assert summary.submitted == 0
    assert summary.ambiguous_resubmits == 0
    store = StateStore.open_readonly(tmp_path)
    try:
        assert store.counts()["pending"] == 6
        assert all(job.attempts == 0 for job in store.iter_jobs(["pending"]))
    finally:
        store.close()
