"""Submits on kept-alive connections that the server recycles: how many come out ambiguous.

gunicorn with uvicorn workers restarts each worker after ``--max-requests`` requests, closing
its kept-alive connections; a submit written on such a connection in that instant gets no
answer. This sends ``--submits`` submits one after another through one ``ModellixClient``
(one pool, keep-alive) and counts accepted, ambiguous and other failures, and the retries on
a fresh connection the client made. Prints one JSON document. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

from batchgen.api import ApiError, ModellixClient

SUBMIT = "/api/v1/openai/gpt-image-1.5/async"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start(server: str, port: int, max_requests: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "BATCHGEN_SIMULATOR": json.dumps({"time_scale": 0.001})}
    app = "batchgen.simulator.asgi:app"
    if server == "gunicorn":
        cmd = [
            *(sys.executable, "-m", "gunicorn", app, "-k", "uvicorn.workers.UvicornWorker"),
            *("-w", "2", "-b", f"127.0.0.1:{port}", "--max-requests", str(max_requests)),
            *("--log-level", "warning", "--keep-alive", "5"),
        ]
    else:  # hypercorn
        cmd = [
            *(sys.executable, "-m", "hypercorn", app, "-w", "2", "-b", f"127.0.0.1:{port}"),
            *("--max-requests", str(max_requests), "--log-level", "warning"),
        ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{server} did not start")


async def _submits(url: str, n: int, resend: bool) -> dict[str, Any]:
    counts = {"accepted": 0, "ambiguous": 0, "other_failures": 0}
    async with ModellixClient(
        url, "sim-key", operation_timeout=30, resend_on_recycled=resend
    ) as client:
        for i in range(n):
            try:
                await client.submit(SUBMIT, {"prompt": f"a fox {i}"})
                counts["accepted"] += 1
            except ApiError as exc:
                counts["ambiguous" if exc.ambiguous else "other_failures"] += 1
        counts["resent_on_recycled_connection"] = client.stale_connection_retries
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", choices=("gunicorn", "hypercorn"), default="gunicorn")
    parser.add_argument("--submits", type=int, default=300)
    parser.add_argument("--max-requests", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="60 submits")
    parser.add_argument(
        "--no-resend", action="store_true", help="the behaviour before: no second send"
    )
    args = parser.parse_args()
    n = 60 if args.quick else args.submits
    port = _free_port()
    proc = _start(args.server, port, args.max_requests)
    try:
        result = asyncio.run(_submits(f"http://127.0.0.1:{port}", n, not args.no_resend))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(
        json.dumps(
            {
                "benchmark": "recycled_connections",
                "server": args.server,
                "max_requests": args.max_requests,
                "submits": n,
                "resend_on_recycled": not args.no_resend,
                **result,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
