"""The naive baseline: what a user would write instead of batchgen; one JSON document.

    python benchmarks/naive_baseline.py URL JOBS CONCURRENCY [--poll-every 1] [--models A,B]

A ``ThreadPoolExecutor`` of CONCURRENCY threads sharing one synchronous ``httpx.Client``; each
thread submits a job (sleeping ``Retry-After`` and trying again on a 429), polls its task every
``--poll-every`` seconds until it ends, then downloads the image to a file.  No state file, no
resume.  With ``--models``, job i uses model i mod len(models).  Prints the makespan, the
request counts and the CPU it used (this process, every thread).
"""

from __future__ import annotations

import argparse
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from _common import MODEL, SIM_KEY, cpu_now, emit, peak_rss_mib, scratch_dir


def run(
    url: str, jobs: int, concurrency: int, poll_every: float, models: list[str]
) -> dict[str, Any]:
    """Run the baseline against the API at ``url``; return its figures."""
    headers = {"Authorization": f"Bearer {SIM_KEY}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    counts = {"submitted": 0, "throttled": 0, "polls": 0, "downloads": 0, "done": 0, "failed": 0}
    lock = threading.Lock()

    def one(http: httpx.Client, i: int, folder: Path) -> None:
        model = models[i % len(models)]
        body: dict[str, str] = {"prompt": f"benchmark object number {i}"}
        if model == MODEL:
            body["quality"] = "low"  # as in the benchmark's manifests (other models lack it)
        submit_url = f"{url}/api/v1/{model}/async"
        for _attempt in range(1000):
            answer = http.post(submit_url, json=body)
            with lock:
                counts["submitted"] += 1
            if answer.status_code == 429:
                with lock:
                    counts["throttled"] += 1
                time.sleep(float(answer.headers.get("retry-after", "1")))
                continue
            answer.raise_for_status()
            break
        task_id = answer.json()["data"]["task_id"]
        while True:
            time.sleep(poll_every)
            data = http.get(f"{url}/api/v1/tasks/{task_id}").json()["data"]
            with lock:
                counts["polls"] += 1
            if data["status"] in ("success", "failed"):
                break
        if data["status"] != "success":
            with lock:
                counts["failed"] += 1
            return
        image = http.get(data["result"]["resources"][0]["url"])
        image.raise_for_status()
        (folder / f"{i}.png").write_bytes(image.content)
        with lock:
            counts["downloads"] += 1
            counts["done"] += 1

    with (
        scratch_dir() as tmp,
        httpx.Client(headers=headers, limits=limits, timeout=60, trust_env=False) as http,
    ):
        cpu0 = cpu_now()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            for future in [pool.submit(one, http, i, Path(tmp)) for i in range(jobs)]:
                future.result()
        wall = time.perf_counter() - t0
        cpu = cpu_now() - cpu0
    n = counts["submitted"] + counts["polls"] + counts["downloads"]
    return {
        "makespan_s": round(wall, 2),
        **counts,
        "exchanges": n,
        "polls_per_task": round(counts["polls"] / max(jobs, 1), 2),
        "poll_every_s": poll_every,
        "cpu_s": round(cpu, 2),
        "cpu_ms_per_exchange": round(1000 * cpu / max(n, 1), 3),
        "peak_rss_mib": peak_rss_mib(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("jobs", type=int)
    parser.add_argument("concurrency", type=int)
    parser.add_argument("--poll-every", type=float, default=1.0)
    parser.add_argument("--models", default=MODEL, help="comma-separated, taking turns")
    args = parser.parse_args()
    emit(run(args.url, args.jobs, args.concurrency, args.poll_every, args.models.split(",")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
