"""Makespan of a whole run against the simulator, and the thread-pool baseline; one JSON document.

    python benchmarks/bench_makespan.py           # N=10,000, C=200, L=2 s (several minutes)
    python benchmarks/bench_makespan.py --quick   # N=200, C=50, L=0.5 s (seconds; CI smoke run)
    python benchmarks/bench_makespan.py --cases fixed,baseline

Cases, each with a fresh simulator process on a loopback port and the runner (or
the baseline) in a fresh child process (so CPU and peak memory are its own):

* ``fixed``: every task takes L; ideal = ceil(N/C) x L.
* ``lognormal``: median L, sigma 0.5 (mean L x e^0.125); ideal = ceil(N/C) x mean.
* ``throttled``: fixed L and 5% of submissions answered 429 (Retry-After 1 s).
* ``baseline``: what a user would write instead: a ThreadPoolExecutor of C threads
  sharing one httpx.Client that submit, sleep-poll every second, then download.

The manifest's rate is 100,000/s, so the rate limit is never what bounds a run;
the concurrency C is. Real time, no time scaling.  Target: makespan <= 1.05 x ideal.
"""

from __future__ import annotations

import argparse
import math
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _common import (
    MODEL,
    SIM_KEY,
    cpu_now,
    emit,
    exchanges,
    machine,
    peak_rss_mib,
    run_in_child,
    run_manifest,
    scratch_dir,
    scratch_root,
    simulator,
    write_manifest,
)

SIGMA = 0.5
CASES = ("fixed", "lognormal", "throttled", "baseline")


def sim_flags(case: str, latency: float) -> list[str]:
    """Simulator flags of a case."""
    if case == "lognormal":
        return ["--latency", f"lognormal:{latency},{SIGMA}", "--seed", "7"]
    flags = ["--latency", f"fixed:{latency}", "--seed", "7"]
    if case == "throttled":
        flags += ["--error-429-rate", "0.05", "--fault-routes", "submit", "--retry-after", "1"]
    return flags


def mean_latency(case: str, latency: float) -> float:
    """The mean task latency of a case."""
    return latency * math.exp(SIGMA**2 / 2) if case == "lognormal" else latency


# ------------------------------------------------------------------------------ runner child
def child_runner(url: str, jobs: int, concurrency: int, cap: float) -> dict[str, Any]:
    """One ``batchgen run`` of ``jobs`` jobs against ``url`` (in this fresh process), stopped
    after ``cap`` seconds (then ``makespan_s`` is a lower bound and ``capped`` is true)."""
    with scratch_dir() as tmp:
        manifest = write_manifest(Path(tmp), jobs, concurrency=concurrency)
        m = run_manifest(manifest, url, max_runtime=cap)
    s = m.summary
    return {
        "makespan_s": round(m.wall_s, 2),
        "capped": s["done"] < jobs and s["stop_reason"] == "max runtime reached",
        "done": s["done"],
        "failed": s["failed"],
        "submitted": s["submitted"],
        "polls": s["polls"],
        "downloads": s["downloads"],
        "throttled": s["throttled"],
        "exchanges": exchanges(s),
        "cpu_s": round(m.cpu_s, 2),
        "cpu_ms_per_exchange": round(1000 * m.cpu_s / max(exchanges(s), 1), 3),
        "peak_rss_mib": m.peak_rss_mib,
    }


# ---------------------------------------------------------------------------- baseline child
def child_baseline(url: str, jobs: int, concurrency: int, poll_every: float) -> dict[str, Any]:
    """The straightforward alternative: C threads, sync httpx, submit / sleep-poll / download."""
    import httpx  # noqa: PLC0415

    headers = {"Authorization": f"Bearer {SIM_KEY}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    counts = {"submitted": 0, "polls": 0, "downloads": 0, "done": 0, "failed": 0}
    lock = threading.Lock()
    submit_url = f"{url}/api/v1/{MODEL}/async"

    def one(http: httpx.Client, i: int, folder: Path) -> None:
        body = {"prompt": f"benchmark object number {i}, a small ceramic figurine"}
        body["quality"] = "low"
        for _attempt in range(20):
            answer = http.post(submit_url, json=body)
            with lock:
                counts["submitted"] += 1
            if answer.status_code == 429:
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
        "poll_every_s": poll_every,
        "cpu_s": round(cpu, 2),
        "cpu_ms_per_exchange": round(1000 * cpu / max(n, 1), 3),
        "peak_rss_mib": peak_rss_mib(),
    }


# ------------------------------------------------------------------------------------ parent
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run for CI (seconds)")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--jobs", type=int)
    parser.add_argument("--concurrency", type=int)
    parser.add_argument("--latency", type=float)
    parser.add_argument("--poll-every", type=float, default=1.0, help="baseline's poll sleep")
    parser.add_argument(
        "--cap", type=float, default=10.0, help="stop a runner case after CAP x ideal seconds"
    )
    parser.add_argument("--child", nargs=4, metavar=("CASE", "URL", "N", "C"), help="internal")
    args = parser.parse_args()
    if args.child:
        case, url, n, c = args.child
        if case == "baseline":
            emit(child_baseline(url, int(n), int(c), args.poll_every))
        else:
            emit(child_runner(url, int(n), int(c), args.cap))
        return 0

    jobs = args.jobs or (200 if args.quick else 10_000)
    conc = args.concurrency or (50 if args.quick else 200)
    latency = args.latency or (0.5 if args.quick else 2.0)
    poll_every = args.poll_every if not args.quick else min(args.poll_every, latency / 2)
    results: dict[str, Any] = {}
    with scratch_root():  # run folders deleted after the last case, not between cases
        for case in args.cases.split(","):
            if case not in CASES:
                parser.error(f"unknown case {case!r}")
            flags = sim_flags("fixed" if case == "baseline" else case, latency)
            with simulator(*flags) as sim:
                child = [sys.argv[0], "--child", case, sim.url, str(jobs), str(conc)]
                sim_cpu0 = sim.cpu_seconds()
                ideal = math.ceil(jobs / conc) * mean_latency(case, latency)
                cap = str((min(args.cap, 3.0) if args.quick else args.cap) * ideal)
                result = run_in_child(*child, "--poll-every", str(poll_every), "--cap", cap)
                sim_cpu1 = sim.cpu_seconds()
                stats = sim.stats()
            result["ideal_s"] = round(ideal, 2)
            result["makespan_over_ideal"] = round(result["makespan_s"] / ideal, 4)
            result["simulator_peak_concurrent"] = stats["tasks"]["peak_concurrent"]
            result["simulator_status_codes"] = stats["status_codes"]
            if sim_cpu0 is not None and sim_cpu1 is not None:
                result["simulator_cpu_s"] = round(sim_cpu1 - sim_cpu0, 2)
            if case != "baseline":
                result["target"] = 1.05
                result["ok"] = result["makespan_over_ideal"] <= 1.05 and result["done"] == jobs
            results[case] = result
    report: dict[str, Any] = {
        "benchmark": "makespan",
        "mode": "quick" if args.quick else "full",
        "jobs": jobs,
        "concurrency": conc,
        "latency_s": latency,
        "lognormal_sigma": SIGMA,
        "rate_limit": "100000/s (never the bound)",
        "cases": results,
    }
    if "fixed" in results and "baseline" in results:
        r, b = results["fixed"], results["baseline"]
        report["baseline_vs_runner"] = {
            "makespan_ratio": round(b["makespan_s"] / r["makespan_s"], 3),
            "cpu_ratio": round(b["cpu_s"] / max(r["cpu_s"], 1e-9), 2),
            "peak_rss_ratio": round(b["peak_rss_mib"] / r["peak_rss_mib"], 2),
        }
    report["machine"] = machine()
    emit(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
