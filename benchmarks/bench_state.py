"""The state file at 100,000 jobs: create, resume (time to the first submission), status.

    python benchmarks/bench_state.py           # 100,000 jobs
    python benchmarks/bench_state.py --quick   # 5,000 jobs (seconds; CI smoke run)

Each step runs in a fresh child process (its own peak memory) against a simulator in
its own process on a loopback port:

* ``create``: ``batchgen run MANIFEST`` on a new run directory, from the call to the first
  submission (load and validate the manifest, record every job), then stop;
* ``resume_from_run_dir``: ``batchgen run RUN_DIR``, call to first new submission;
* ``resume_from_manifest``: ``batchgen run MANIFEST`` again on the same directory;
* ``status``: ``batchgen status RUN --json`` as a command (process start included).

Targets: resume to first submission < 1 s; peak memory < 300 MiB.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import SIM_KEY, emit, machine, peak_rss_mib, run_in_child, simulator, write_manifest


def child(url: str, target: str) -> dict[str, Any]:
    """Time ``batchgen run TARGET`` from the call to its first submission, then stop it."""
    from batchgen.api import ModellixClient  # noqa: PLC0415
    from batchgen.run.session import RunRequest, run_session  # noqa: PLC0415

    first: list[float] = []
    stop = asyncio.Event()
    real_submit = ModellixClient.submit

    async def submit(self: ModellixClient, path: str, body: Any) -> Any:
        if not first:
            first.append(time.perf_counter())
            stop.set()
        return await real_submit(self, path, body)

    ModellixClient.submit = submit  # type: ignore[method-assign]
    req = RunRequest(
        target=Path(target),
        base_url=url,
        progress_bar=False,
        yes=True,  # thousands of simulated tasks: no spend ceiling to ask for
        options={"metrics_interval": None},
    )
    t0 = time.perf_counter()
    asyncio.run(run_session(req, stop=stop, environ={"MODELLIX_API_KEY": SIM_KEY}))
    total = time.perf_counter() - t0
    return {
        "to_first_submission_s": round(first[0] - t0, 3) if first else None,
        "whole_call_s": round(total, 3),
        "peak_rss_mib": peak_rss_mib(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--jobs", type=int)
    parser.add_argument("--child", nargs=2, metavar=("URL", "TARGET"), help="internal")
    args = parser.parse_args()
    if args.child:
        emit(child(*args.child))
        return 0
    jobs = args.jobs or (5_000 if args.quick else 100_000)
    report: dict[str, Any] = {"benchmark": "state", "mode": "quick" if args.quick else "full"}
    report["jobs"] = jobs
    with (
        tempfile.TemporaryDirectory() as tmp,
        simulator("--latency", "fixed:60") as sim,
    ):
        manifest = write_manifest(Path(tmp), jobs, concurrency=16)
        run_dir = Path(tmp) / "run"
        steps = [
            ("create", manifest),
            ("resume_from_run_dir", run_dir),
            ("resume_from_manifest", manifest),
        ]
        for name, target in steps:
            report[name] = run_in_child(sys.argv[0], "--child", sim.url, str(target))
        t0 = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "batchgen", "status", str(run_dir), "--json"],
            capture_output=True,
            text=True,
            check=False,
        )
        report["status"] = {
            "exit_code": done.returncode,
            "command_s": round(time.perf_counter() - t0, 3),
        }
        report["state_db_mib"] = round((run_dir / "state.db").stat().st_size / 2**20, 1)
    resumes = [report[k]["to_first_submission_s"] for k in steps_names(report)]
    rss = max(report[k]["peak_rss_mib"] for k in ("create", *steps_names(report)))
    report["targets"] = {
        "resume_to_first_submission_s": 1.0,
        "peak_rss_mib": 300,
        "resume_ok": all(r is not None and r < 1.0 for r in resumes),
        "memory_ok": rss < 300,
    }
    report["machine"] = machine()
    emit(report)
    return 0


def steps_names(report: dict[str, Any]) -> tuple[str, ...]:
    """The resume steps present in ``report``."""
    return tuple(k for k in ("resume_from_run_dir", "resume_from_manifest") if k in report)


if __name__ == "__main__":
    raise SystemExit(main())
