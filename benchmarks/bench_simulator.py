"""How many task-status answers per second the simulator sustains; prints one JSON document.

Full mode starts `batchgen simulate` (a real uvicorn server) in a subprocess on a
loopback port, submits a set of long-running tasks, then polls them from a
concurrent httpx client for a fixed time and counts the answers. `--quick` (for
CI) does a small in-process run and a short real-socket run in a few seconds.

    python benchmarks/bench_simulator.py [--quick] [--seconds 10] [--concurrency 64]
        [--clients 2] [--httpx-concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import time
from typing import Any

import httpx

from batchgen.simulator.app import Latency, Simulator, SimulatorConfig, serve_in_thread

SUBMIT = "/api/v1/openai/gpt-image-1.5/async"
AUTH = {"Authorization": "Bearer sim-key"}


async def submit_tasks(client: httpx.AsyncClient, count: int) -> list[str]:
    """Submit ``count`` distinct bodies; return the task ids."""
    ids = []
    for i in range(count):
        answer = await client.post(SUBMIT, json={"prompt": f"bench {i}"}, headers=AUTH)
        answer.raise_for_status()
        ids.append(answer.json()["data"]["task_id"])
    return ids


async def poll_for(
    client: httpx.AsyncClient, ids: list[str], seconds: float, concurrency: int
) -> dict[str, Any]:
    """Poll the tasks round-robin from ``concurrency`` workers for ``seconds``."""
    done = 0
    errors = 0
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def worker(offset: int) -> None:
        nonlocal done, errors
        i = offset
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            answer = await client.get(f"/api/v1/tasks/{ids[i % len(ids)]}", headers=AUTH)
            if answer.status_code == 200:
                done += 1
                if len(latencies) < 200_000:
                    latencies.append(time.perf_counter() - started)
            else:
                errors += 1
            i += concurrency

    started = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(q: float) -> float:
        return round(latencies[int(q * (len(latencies) - 1))] * 1000, 3) if latencies else 0.0

    return {
        "answers": done,
        "errors": errors,
        "seconds": round(elapsed, 3),
        "answers_per_second": round(done / elapsed, 1),
        "latency_ms": {"p50": pct(0.5), "p95": pct(0.95), "p99": pct(0.99)},
    }


async def run_against(
    base_url: str,
    transport: httpx.AsyncBaseTransport | None,
    tasks: int,
    seconds: float,
    concurrency: int,
) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=base_url, transport=transport, limits=limits, timeout=30
    ) as client:
        ids = await submit_tasks(client, tasks)
        result = await poll_for(client, ids, seconds, concurrency)
        stats = (await client.get("/_sim/stats")).json()
    result["server_polls_counted"] = stats["polls"]["total"]
    result["tasks"] = tasks
    result["concurrency"] = concurrency
    return result


def start_server(http: str) -> tuple[subprocess.Popen[str], str]:
    """`batchgen simulate` in a subprocess: (process, base URL)."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "batchgen",
            "simulate",
            "--port=0",
            f"--http={http}",
            "--latency=86400",
            "--seed=1",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if "listening on " not in line:
        process.kill()
        raise RuntimeError(f"the simulator did not start: {line!r}")
    return process, line.split("listening on ", 1)[1].split()[0]


def stop_server(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc), or None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def http_parsers() -> list[str]:
    try:
        import httptools  # noqa: F401, PLC0415
    except ImportError:
        return ["h11"]
    return ["h11", "httptools"]


def httpx_client_process(url: str, seconds: float, concurrency: int, tasks: int) -> dict[str, Any]:
    """One client process: its own tasks, then polling (run through multiprocessing)."""
    return asyncio.run(run_against(url, None, tasks, seconds, concurrency))


async def raw_load(url: str, ids: list[str], seconds: float, connections: int) -> dict[str, Any]:
    """A lean HTTP/1.1 keep-alive load generator (stdlib asyncio): it costs the client so
    little CPU that the server, not the client, sets the pace."""
    host, _, port = url.removeprefix("http://").rpartition(":")
    done = 0
    stop_at = time.perf_counter() + seconds

    async def worker(offset: int) -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection(host, int(port))
        i = offset
        try:
            while time.perf_counter() < stop_at:
                task_id = ids[i % len(ids)]
                writer.write(
                    f"GET /api/v1/tasks/{task_id} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                    "Authorization: Bearer sim-key\r\n\r\n".encode()
                )
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length)
                if head.startswith(b"HTTP/1.1 200") and body.startswith(b'{"code":0'):
                    done += 1
                i += connections
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(connections)))
    elapsed = time.perf_counter() - started
    return {
        "answers": done,
        "seconds": round(elapsed, 3),
        "answers_per_second": round(done / elapsed, 1),
        "connections": connections,
    }


def measure_server(
    http: str, seconds: float, concurrency: int, tasks: int, *, clients: int, httpx_concurrency: int
) -> dict[str, Any]:
    """Both loads against one `batchgen simulate` subprocess, with its CPU use."""
    process, url = start_server(http)
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            ids = [
                client.post(SUBMIT, json={"prompt": f"raw {i}"}, headers=AUTH).json()["data"][
                    "task_id"
                ]
                for i in range(tasks)
            ]
        result: dict[str, Any] = {}
        before = cpu_seconds(process.pid)
        raw = asyncio.run(raw_load(url, ids, seconds, concurrency))
        after = cpu_seconds(process.pid)
        if before is not None and after is not None:
            raw["server_cpu_share"] = round((after - before) / raw["seconds"], 2)
            per_answer = (after - before) / raw["answers"]
            raw["server_cpu_us_per_answer"] = round(per_answer * 1e6, 1)
            raw["server_capacity_per_core"] = round(1 / per_answer) if per_answer else None
        result["lean_client"] = raw

        context = multiprocessing.get_context("spawn")
        with context.Pool(clients) as pool:
            before = cpu_seconds(process.pid)
            started = time.perf_counter()
            parts = pool.starmap(
                httpx_client_process,
                [(url, seconds, httpx_concurrency, tasks // clients)] * clients,
            )
            elapsed = time.perf_counter() - started
            after = cpu_seconds(process.pid)
        answers = sum(part["answers"] for part in parts)
        polling = max(part["seconds"] for part in parts)
        httpx_run: dict[str, Any] = {
            "client_processes": clients,
            "concurrency_per_process": httpx_concurrency,
            "answers": answers,
            "errors": sum(part["errors"] for part in parts),
            "answers_per_second": round(sum(p["answers_per_second"] for p in parts), 1),
            "latency_ms_p50": max(part["latency_ms"]["p50"] for part in parts),
            "seconds": round(polling, 3),
        }
        if before is not None and after is not None:
            # Includes the clients' submissions; a rough share of one core.
            httpx_run["server_cpu_share"] = round((after - before) / elapsed, 2)
        result["httpx_client"] = httpx_run
        return result
    finally:
        stop_server(process)


async def quick() -> dict[str, Any]:
    """A few seconds: in process through ASGITransport, then over a socket in a thread."""
    sim = Simulator(SimulatorConfig(latency=Latency.fixed(86400)))
    in_process = await run_against(
        "http://127.0.0.1", httpx.ASGITransport(app=sim), tasks=50, seconds=0.5, concurrency=8
    )
    with serve_in_thread(Simulator(SimulatorConfig(latency=Latency.fixed(86400)))) as url:
        threaded = await run_against(url, None, tasks=50, seconds=1.0, concurrency=16)
        async with httpx.AsyncClient(base_url=url) as client:
            ids = await submit_tasks(client, 50)
        lean = await raw_load(url, ids, seconds=1.0, connections=16)
    return {
        "in_process_asgi": in_process,
        "loopback_thread_httpx": threaded,
        "loopback_thread_lean": lean,
    }


def full(
    seconds: float, concurrency: int, tasks: int, clients: int, httpx_concurrency: int
) -> dict[str, Any]:
    """The bar: a real server process on loopback, under a lean load and under httpx."""
    return {
        f"loopback_subprocess_{http}": measure_server(
            http, seconds, concurrency, tasks, clients=clients, httpx_concurrency=httpx_concurrency
        )
        for http in http_parsers()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, for CI")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=2, help="httpx client processes")
    parser.add_argument(
        "--httpx-concurrency",
        type=int,
        default=8,
        help="requests in flight per httpx process (httpx's pool costs more CPU per request "
        "beyond ~8)",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    if args.quick:
        runs = asyncio.run(quick())
        best = max(run["answers_per_second"] for run in runs.values())
    else:
        runs = full(
            args.seconds, args.concurrency, args.tasks, args.clients, args.httpx_concurrency
        )
        best = max(load["answers_per_second"] for run in runs.values() for load in run.values())
    document = {
        "benchmark": "simulator_task_status",
        "mode": "quick" if args.quick else "full",
        "bar_answers_per_second": 2000,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "runs": runs,
        "best_answers_per_second": best,
        "bar_met": best >= 2000,
        "wall_seconds": round(time.perf_counter() - started, 2),
    }
    json.dump(document, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
