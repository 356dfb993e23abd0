"""Polls per task with lognormal task latencies (median 10 s, scaled down); one JSON document.

    python benchmarks/bench_polls.py           # 2,000 jobs, C=100, lognormal median 10 s, sigma 0.5
    python benchmarks/bench_polls.py --quick   # 200 jobs (seconds; CI smoke run)

The simulator (own process, loopback port) runs ``--time-scale 0.05``: a 10 s task
takes 0.5 s of real time.  The runner's default poll timings (first poll of a model's
first tasks 0.1 s, min interval 0.05 s, max 30 s; each model's schedule is then learnt) are
scaled by the same factor, so the run is the real-time run played 20x faster.
Target: at most 3 polls per task on average.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import emit, machine, run_in_child, run_manifest, simulator, write_manifest

SCALE = 0.05


def child(url: str, jobs: int, concurrency: int) -> dict[str, Any]:
    """One measured run (in this fresh process)."""
    options = {
        "first_poll": 0.1 * SCALE,
        "min_poll_interval": 0.05 * SCALE,
        "max_poll_interval": 30.0 * SCALE,
    }
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_manifest(Path(tmp), jobs, concurrency=concurrency)
        m = run_manifest(manifest, url, options=options)
    s = m.summary
    return {
        "jobs": jobs,
        "concurrency": concurrency,
        "done": s["done"],
        "polls": s["polls"],
        "polls_per_task": round(s["polls"] / max(s["done"], 1), 3),
        "wall_s": round(m.wall_s, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--child", nargs=3, metavar=("URL", "N", "C"), help="internal")
    args = parser.parse_args()
    if args.child:
        url, n, c = args.child
        emit(child(url, int(n), int(c)))
        return 0
    jobs, conc = (200, 50) if args.quick else (2000, 100)
    flags = ["--latency", f"lognormal:10,{args.sigma}", "--time-scale", str(SCALE)]
    with simulator(*flags, "--seed", "3") as sim:
        result = run_in_child(sys.argv[0], "--child", sim.url, str(jobs), str(conc))
        stats = sim.stats()
    result["simulator_polls_per_task"] = stats["polls"]["per_task"]
    result["target"] = 3.0
    result["ok"] = result["polls_per_task"] <= 3.0
    emit(
        {
            "benchmark": "polls",
            "mode": "quick" if args.quick else "full",
            "latency": f"lognormal median 10 s, sigma {args.sigma}, time scale {SCALE}",
            "result": result,
            "machine": machine(),
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
