"""Makespan of whole runs against the simulator, batchgen and the naive baseline side by side;
one JSON document.

    python benchmarks/bench_makespan.py                    # the full matrix (N=1,000, C=100)
    python benchmarks/bench_makespan.py --quick            # CI smoke run (seconds)
    python benchmarks/bench_makespan.py --cases fixed-1,documented-limits --jobs 300

Every case runs twice, each time against a fresh simulator process on a loopback port with
the same settings: once ``batchgen run`` (in a fresh child process, so CPU and memory are its
own), once the naive baseline (``naive_baseline.py``: a thread pool of synchronous httpx calls,
fixed 1 s polls, no resume).  For each: makespan, makespan / ideal, polls per task and CPU per
HTTP exchange.  Cases:

* ``fixed-0.5``, ``fixed-1``, ``fixed-2``, ``fixed-10``: every task takes that many seconds;
* ``lognormal-1``, ``lognormal-10``: median 1 s / 10 s, sigma 0.5;
* ``two-models``: half the jobs take 1 s, half (``bytedance/seedream-4.5-t2i``) 8 s,
  interleaved;
* ``throttled``: 2 s tasks, 5% of submits answered 429 (Retry-After 1 s, naming no limit);
* ``cap-80``: 2 s tasks, the account allows 80% of the manifest's concurrency;
* ``documented-limits``: the provider's documented limits, 3 running tasks and 100
  submissions per minute, 60 jobs of 2 s at the manifest's default concurrency (16).

Ideal: the greedy list-scheduling makespan of the case's task durations on the slots the
account allows (and no faster than its submission rate), averaged over 20 draws for random
durations.  Full runs are recorded in ``benchmarks/results/`` with the commit they measured.
"""

from __future__ import annotations

import argparse
import datetime
import heapq
import math
import os
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    MODEL,
    emit,
    exchanges,
    machine,
    run_in_child,
    run_manifest,
    scratch_dir,
    scratch_root,
    simulator,
    write_manifest,
)

SECOND_MODEL = "bytedance/seedream-4.5-t2i"  # the two-model case's slow model
SIGMA = 0.5
DOCUMENTED_RATE = 100 / 60  # submissions per second
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Case:
    """One row of the matrix."""

    name: str
    latency: str  # simulator --latency
    target: float  # makespan / ideal
    models: tuple[str, ...] = (MODEL,)
    by_model: tuple[str, ...] = ()  # simulator --latency-by-model
    random_429: float = 0.0
    cap_share: float | None = None  # the account's cap, a share of the concurrency
    cap: int | None = None
    rate: float | None = None  # the account's submissions per second
    jobs: int | None = None
    concurrency: int | None = None


CASES = {
    c.name: c
    for c in (
        Case("fixed-0.5", "fixed:0.5", 1.25),
        Case("fixed-1", "fixed:1", 1.05),
        Case("fixed-2", "fixed:2", 1.05),
        Case("fixed-10", "fixed:10", 1.05),
        Case("lognormal-1", f"lognormal:1,{SIGMA}", 1.20),
        Case("lognormal-10", f"lognormal:10,{SIGMA}", 1.20),
        Case(
            "two-models",
            "fixed:1",
            1.10,
            models=(MODEL, SECOND_MODEL),
            by_model=(f"{SECOND_MODEL}=fixed:8",),
        ),
        Case("throttled", "fixed:2", 1.25, random_429=0.05),
        Case("cap-80", "fixed:2", 1.25, cap_share=0.8),
        Case(
            "documented-limits",
            "fixed:2",
            1.25,
            cap=3,
            rate=DOCUMENTED_RATE,
            jobs=60,
            concurrency=16,
        ),
    )
}


def sim_flags(case: Case, concurrency: int) -> list[str]:
    """Simulator flags of a case."""
    flags = ["--latency", case.latency, "--seed", "7"]
    for spec in case.by_model:
        flags += ["--latency-by-model", spec]
    if case.random_429:
        flags += ["--error-429-rate", str(case.random_429), "--fault-routes", "submit"]
        flags += ["--retry-after", "1"]
    cap = account_cap(case, concurrency)
    if cap is not None:
        flags += ["--max-concurrent-tasks", str(cap)]
    if case.rate is not None:
        flags += ["--rate-limit", f"{case.rate:.6f}"]
    return flags


def account_cap(case: Case, concurrency: int) -> int | None:
    """The account's cap on running tasks in a case, if any."""
    if case.cap is not None:
        return case.cap
    if case.cap_share is not None:
        return max(1, int(concurrency * case.cap_share))
    return None


# --------------------------------------------------------------------------------- the ideal
def _durations(spec: str, n: int, rng: random.Random) -> list[float]:
    kind, _, rest = spec.partition(":")
    if kind == "lognormal":
        median, sigma = (float(x) for x in rest.split(","))
        return [median * math.exp(rng.gauss(0.0, sigma)) for _ in range(n)]
    return [float(rest)] * n


def greedy_makespan(durations: list[float], slots: int, rate: float | None = None) -> float:
    """Jobs in order, each on the first slot free (and no sooner than the submission rate,
    with a bucket of ``ceil(rate)``, allows): the time the last one ends."""
    free = [0.0] * slots
    burst = max(1, math.ceil(rate)) if rate else 0
    end = 0.0
    for i, duration in enumerate(durations):
        start = heapq.heappop(free)
        if rate:
            start = max(start, (i - burst + 1) / rate)
        heapq.heappush(free, start + duration)
        end = max(end, start + duration)
    return end


def ideal_makespan(case: Case, jobs: int, concurrency: int) -> float:
    """The case's ideal makespan (see the module docstring)."""
    cap = account_cap(case, concurrency)
    slots = min(concurrency, cap) if cap is not None else concurrency
    draws = 20 if case.latency.startswith("lognormal") else 1
    total = 0.0
    for seed in range(draws):
        rng = random.Random(seed)
        per_model = [_durations(case.latency, jobs, rng)]
        for spec in case.by_model:
            per_model.append(_durations(spec.partition("=")[2], jobs, rng))
        durations = [per_model[i % len(per_model)][i] for i in range(jobs)]
        total += greedy_makespan(durations, slots, case.rate)
    return total / draws


# ------------------------------------------------------------------------------ runner child
def child_runner(case: Case, url: str, jobs: int, concurrency: int, cap: float) -> dict[str, Any]:
    """One ``batchgen run`` of ``jobs`` jobs against ``url`` (in this fresh process), stopped
    after ``cap`` seconds (then ``makespan_s`` is a lower bound and ``capped`` is true)."""
    models = list(case.models) if len(case.models) > 1 else None
    with scratch_dir() as tmp:
        manifest = write_manifest(Path(tmp), jobs, concurrency=concurrency, models=models)
        m = run_manifest(manifest, url, max_runtime=cap)
    s = m.summary
    n = exchanges(s)
    return {
        "makespan_s": round(m.wall_s, 2),
        "capped": s["done"] < jobs and s["stop_reason"] == "max runtime reached",
        "done": s["done"],
        "failed": s["failed"],
        "submitted": s["submitted"],
        "throttled": s["throttled"],
        "throttled_by_kind": s["throttled_by_kind"],
        "concurrency_cap_learnt": s["concurrency_cap"],
        "polls": s["polls"],
        "polls_per_task": round(s["polls"] / max(jobs, 1), 2),
        "downloads": s["downloads"],
        "exchanges": n,
        "cpu_s": round(m.cpu_s, 2),
        "cpu_ms_per_exchange": round(1000 * m.cpu_s / max(n, 1), 3),
        "peak_rss_mib": m.peak_rss_mib,
    }


# ------------------------------------------------------------------------------------ parent
def _commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=HERE,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def measure(case: Case, jobs: int, conc: int, cap_x: float, poll_every: float) -> dict[str, Any]:
    """Both programs on one case; the case's JSON."""
    jobs = case.jobs or jobs
    conc = case.concurrency or conc
    ideal = ideal_makespan(case, jobs, conc)
    flags = sim_flags(case, conc)
    with simulator(*flags) as sim:
        child = [str(HERE / "bench_makespan.py"), "--child", case.name, sim.url]
        ours = run_in_child(*child, str(jobs), str(conc), "--cap", str(cap_x * ideal))
        ours["simulator_peak_concurrent"] = sim.stats()["tasks"]["peak_concurrent"]
    with simulator(*flags) as sim:
        base = run_in_child(
            str(HERE / "naive_baseline.py"),
            sim.url,
            str(jobs),
            str(conc),
            "--poll-every",
            str(poll_every),
            "--models",
            ",".join(case.models),
        )
        base["simulator_peak_concurrent"] = sim.stats()["tasks"]["peak_concurrent"]
    for result in (ours, base):
        result["ratio"] = round(result["makespan_s"] / ideal, 3)
    return {
        "jobs": jobs,
        "concurrency": conc,
        "simulator": " ".join(flags),
        "ideal_s": round(ideal, 2),
        "target": case.target,
        "batchgen": ours,
        "baseline": base,
        "meets_target": ours["ratio"] <= case.target and ours["done"] == jobs,
        "faster_than_baseline": ours["makespan_s"] <= base["makespan_s"],
        "cpu_vs_baseline": round(ours["cpu_s"] / max(base["cpu_s"], 1e-9), 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke run (seconds)")
    parser.add_argument("--cases", help="comma-separated: " + ", ".join(CASES))
    parser.add_argument("--jobs", type=int, help="N (default 1,000; 100 with --quick)")
    parser.add_argument("--concurrency", type=int, help="C (default 100; 50 with --quick)")
    parser.add_argument("--poll-every", type=float, default=1.0, help="baseline's poll sleep")
    parser.add_argument("--cap", type=float, default=5.0, help="stop batchgen at CAP x ideal")
    parser.add_argument("--no-record", action="store_true", help="do not write results/")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "URL"), help=argparse.SUPPRESS)
    parser.add_argument("child_args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, url = args.child
        jobs, conc = (int(x) for x in args.child_args)
        emit(child_runner(CASES[name], url, jobs, conc, args.cap))
        return 0

    names = (args.cases or ("fixed-0.5" if args.quick else ",".join(CASES))).split(",")
    for name in names:
        if name not in CASES:
            parser.error(f"unknown case {name!r}; known: {', '.join(CASES)}")
    jobs = args.jobs or (100 if args.quick else 1000)
    conc = args.concurrency or (50 if args.quick else 100)
    load_before = os.getloadavg()
    results: dict[str, Any] = {}
    with scratch_root():  # run folders deleted after the last case
        for name in names:
            results[name] = measure(CASES[name], jobs, conc, args.cap, args.poll_every)
            print(f"{name}: {results[name]['batchgen']['ratio']} x ideal", file=sys.stderr)
    report: dict[str, Any] = {
        "benchmark": "makespan",
        "mode": "quick" if args.quick else "full",
        "commit": _commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "cases": results,
        "machine": machine(),
    }
    emit(report)
    if not args.quick and not args.no_record:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
        label = names[0] if len(names) == 1 else "matrix"
        out = HERE / "results" / f"makespan-{label}-{stamp}.json"
        out.parent.mkdir(exist_ok=True)
        import json  # noqa: PLC0415

        out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
