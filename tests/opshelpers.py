"""Real run directories for the operating commands' tests (status, export, retry, metrics).

A run here is what ``batchgen run`` does, minus the manifest: the run lock, settings in
the state file, a session row, the real runner and a real (in-process) simulator with the
fault knobs a test needs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from batchgen.api import ModellixClient
from batchgen.manifest.types import Job, Limits, job_id_for
from batchgen.run.runner import RunOptions, RunSummary, run_jobs
from batchgen.simulator.app import Simulator
from batchgen.store.outputs import OutputDir
from batchgen.store.state import StateStore, acquire_run_lock

try:  # `python -m pytest` from the checkout, or tests/ on sys.path
    from tests.runhelpers import MODEL, fast_options, in_process_client, sim_config
except ModuleNotFoundError:
    from runhelpers import MODEL, fast_options, in_process_client, sim_config  # type: ignore[no-redef]

__all__ = [
    "MODEL",
    "fast_options",
    "in_process_client",
    "job",
    "make_jobs",
    "real_run",
    "sim_config",
]

SUBJECTS = ("a red fox", "a lighthouse", "a teacup", "a bicycle", "an owl")


def job(prompt: str, *, size: str = "1024x1024", repeat: int = 0, **extra: Any) -> Job:
    """One job with a complete body (``size`` may be invalid on purpose: a 400 from the API)."""
    body = {"prompt": prompt, "size": size, "quality": "low", "background": "auto", **extra}
    return Job(job_id_for(MODEL, body, repeat), MODEL, body, repeat, "jobs[0]")


def make_jobs(n: int, *, tag: str = "watercolor") -> list[Job]:
    """``n`` distinct valid jobs."""
    return [job(f"{SUBJECTS[i % len(SUBJECTS)]}, {tag}, study {i}") for i in range(n)]


async def real_run(
    run_dir: Path,
    jobs: list[Job] | None,
    *,
    sim: Simulator | None = None,
    limits: Limits | None = None,
    options: RunOptions | None = None,
    name: str = "nightly",
    client: ModellixClient | None = None,
) -> RunSummary:
    """Run ``jobs`` into ``run_dir`` like ``batchgen run --simulate`` does (lock, settings,
    session), against ``sim`` (default: a fast simulator without faults)."""
    limits = limits or Limits(concurrency=16, rate=1000.0, retries=2, timeout=30.0)
    sim = sim or Simulator(sim_config())
    with acquire_run_lock(run_dir):
        store = StateStore.open(
            run_dir,
            settings={
                "name": name,
                "models": [MODEL],
                "limits": dataclasses.asdict(limits),
                "base_url": "http://127.0.0.1",
                "simulate": True,
            },
        )
        try:
            if jobs is not None:
                store.sync_jobs(jobs)
            out = OutputDir(run_dir)
            out.prepare(store)
            session = store.begin_session()
            summary = RunSummary()
            try:
                async with client or in_process_client(sim) as c:
                    summary = await run_jobs(
                        store, c, limits, options=options or fast_options(), output=out
                    )
            finally:
                store.end_session(session, summary.exit_code, summary.as_dict())
            return summary
        finally:
            store.close()
