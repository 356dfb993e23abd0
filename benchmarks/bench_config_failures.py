"""How a run ends when its configuration cannot work: a closed port, a certificate that fails
verification, ``SSL_CERT_FILE`` naming a missing file, a host name that never resolves.

For each cause, ``batchgen run`` of a 12-job manifest (through the command line, in a child
process) and the figures: exit code, seconds to exit, jobs failed, attempts made (the sum of
the jobs' attempts in the state file), jobs counted submitted. Prints one JSON document.
Only loopback addresses are contacted (and a name under ``.invalid``, which never resolves).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

MANIFEST = """\
version: 1
name: cfg
model: openai/gpt-image-1.5
limits: {concurrency: 4, rate: 20/s, retries: 3, timeout: 10m}
jobs:
  - prompt: "a {n}"
    matrix: {n: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]}
"""


def _closed_port() -> tuple[str, socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, never listening: refused
    return f"http://127.0.0.1:{sock.getsockname()[1]}", sock


def _tls_server(tmp: Path) -> str:
    """An https server on loopback whose certificate nobody trusts (trustme's CA, not given)."""
    import trustme  # noqa: PLC0415

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)

    def serve() -> None:
        while True:
            conn, _ = srv.accept()
            try:
                ctx.wrap_socket(conn, server_side=True).close()
            except OSError:
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return f"https://127.0.0.1:{srv.getsockname()[1]}"


def _run(base_url: str, tmp: Path, name: str, extra_env: dict[str, str]) -> dict[str, Any]:
    manifest = tmp / f"{name}.yaml"
    manifest.write_text(MANIFEST)
    out = tmp / name
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "MODELLIX_API_KEY": "bench-key-0123456789",
        **extra_env,
    }
    t0 = time.monotonic()
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "batchgen", "run", str(manifest), "--base-url", base_url),
            *("--output", str(out), "--log-format", "json"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    seconds = time.monotonic() - t0
    failed = attempts = 0
    submitting = 0
    db = out / "state.db"
    if db.exists():
        with sqlite3.connect(db) as con:
            failed = con.execute("SELECT count(*) FROM jobs WHERE state='failed'").fetchone()[0]
            submitting = con.execute(
                "SELECT count(*) FROM jobs WHERE state='submitting'"
            ).fetchone()[0]
            attempts = con.execute("SELECT coalesce(sum(attempts),0) FROM jobs").fetchone()[0]
    submitted = None
    for line in proc.stdout.splitlines():
        if '"summary"' in line:
            submitted = json.loads(line).get("submitted")
    last = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:] or [""]
    return {
        "exit_code": proc.returncode,
        "seconds": round(seconds, 2),
        "jobs_failed": failed,
        "jobs_left_submitting": submitting,
        "attempts": attempts,
        "submitted": submitted,
        "state_file_created": db.exists(),
        "last_line": last[0][:300],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the closed port only")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        url, sock = _closed_port()
        results["connection_refused"] = _run(url, tmp, "refused", {})
        sock.close()
        if not args.quick:
            tls = _tls_server(tmp)
            results["untrusted_certificate"] = _run(tls, tmp, "untrusted", {})
            results["missing_ca_file"] = _run(
                tls, tmp, "missing-ca", {"SSL_CERT_FILE": "/nonexistent/ca.pem"}
            )
            results["dns_failure"] = _run("https://api.batchgen.invalid", tmp, "dns", {})
    print(json.dumps({"benchmark": "config_failures", "results": results}, indent=2))


if __name__ == "__main__":
    main()
