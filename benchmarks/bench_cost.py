"""The runner's CPU seconds per HTTP exchange and its peak memory; prints one JSON document.

    python benchmarks/bench_cost.py           # 10, 100 and 1,000 concurrent tasks
    python benchmarks/bench_cost.py --quick   # 10 and 100, few jobs (seconds; CI smoke run)

Each level runs ``batchgen run`` (state file, downloads, metadata: the whole runner) in a
fresh child process against a simulator in its own process on a loopback port. Tasks take
``--latency`` seconds (fixed) so that ``C`` tasks are really in flight at once; the CPU
time of the child (every thread) over the run is divided by its HTTP exchanges
(submissions + polls + downloads). Target: <= 1 ms per exchange at 100 and 1,000 tasks.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from _common import (
    emit,
    exchanges,
    file_create_cpu_us,
    machine,
    run_in_child,
    run_manifest,
    scratch_dir,
    scratch_root,
    simulator,
    write_manifest,
)


def child(url: str, jobs: int, concurrency: int, latency: float) -> dict[str, Any]:
    """One measured run (in this fresh process)."""
    options = {"first_poll": latency, "min_poll_interval": latency / 4}
    with scratch_dir() as tmp:
        manifest = write_manifest(Path(tmp), jobs, concurrency=concurrency)
        m = run_manifest(manifest, url, options=options)
    s = m.summary
    n = exchanges(s)
    return {
        "concurrency": concurrency,
        "jobs": jobs,
        "done": s["done"],
        "submitted": s["submitted"],
        "polls": s["polls"],
        "downloads": s["downloads"],
        "exchanges": n,
        "wall_s": round(m.wall_s, 2),
        "cpu_s": round(m.cpu_s, 3),
        "cpu_ms_per_exchange": round(1000 * m.cpu_s / max(n, 1), 3),
        "peak_rss_mib": m.peak_rss_mib,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--latency", type=float, default=2.0, help="task latency, seconds")
    parser.add_argument("--rounds", type=int, default=5, help="jobs = rounds x concurrency")
    parser.add_argument("--child", nargs=4, metavar=("URL", "N", "C", "L"), help="internal")
    args = parser.parse_args()
    if args.child:
        url, n, c, lat = args.child
        emit(child(url, int(n), int(c), float(lat)))
        return 0
    levels = (10, 100) if args.quick else (10, 100, 1000)
    latency = 0.5 if args.quick else args.latency
    rounds = 2 if args.quick else args.rounds
    results = []
    with scratch_root() as root:  # run folders deleted after the last level, not between levels
        disk_before = file_create_cpu_us(root)
        for conc in levels:
            jobs = conc * rounds if conc >= 100 else conc * rounds * 10
            with simulator("--latency", f"fixed:{latency}") as sim:
                result = run_in_child(
                    sys.argv[0], "--child", sim.url, str(jobs), str(conc), str(latency)
                )
            result["target_ms"] = 1.0 if conc >= 100 else None
            result["ok"] = conc < 100 or result["cpu_ms_per_exchange"] <= 1.0
            results.append(result)
        disk_after = file_create_cpu_us(root)
    emit(
        {
            "benchmark": "cost",
            "mode": "quick" if args.quick else "full",
            "latency_s": latency,
            "levels": results,
            # CPU to create one small file, before and after the levels: far above the usual
            # (tens of µs) when many files were deleted in the last minutes (README: Noise).
            "file_create_cpu_us": {"before": disk_before, "after": disk_after},
            "machine": machine(),
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
