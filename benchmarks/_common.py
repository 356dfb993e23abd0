"""Shared pieces of the benchmarks: a simulator in its own process, manifests, measured runs.

The simulator always runs in a separate process (``python -m batchgen simulate``
on a loopback port), so its CPU time is never counted as the runner's; the
runner runs in the benchmark's own process (or a child of it), where its CPU
time is read with :func:`resource.getrusage` (every thread included).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

SIM_KEY = "sim-key"
MODEL = "openai/gpt-image-1.5"
_URL_RE = re.compile(r"listening on (http://\S+)")


def machine() -> dict[str, Any]:
    """The machine the figures come from (no paths)."""
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "system": platform.system(),
    }


class SimulatorProcess:
    """``batchgen simulate --port 0`` in a child process; ``url`` once it listens."""

    def __init__(self, *flags: str, startup_timeout: float = 30.0) -> None:
        # A balance no benchmark spends: runs check it before their first submission.
        funds = [] if "--account-balance" in flags else ["--account-balance", "1e9"]
        cmd = [sys.executable, "-m", "batchgen", "simulate", "--port", "0", *funds, *flags]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        deadline = time.monotonic() + startup_timeout
        self.url = ""
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            match = _URL_RE.search(line)
            if match:
                self.url = match.group(1)
                break
        if not self.url:
            self.stop()
            raise RuntimeError("the simulator did not start")

    def stats(self) -> dict[str, Any]:
        """The simulator's counters (GET /_sim/stats)."""
        answer = httpx.get(
            self.url + "/_sim/stats",
            headers={"Authorization": f"Bearer {SIM_KEY}"},
            timeout=30,
            trust_env=False,
        )
        answer.raise_for_status()
        result: dict[str, Any] = answer.json()
        return result

    def cpu_seconds(self) -> float | None:
        """CPU seconds the simulator process used so far (Linux /proc), or None."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def stop(self) -> None:
        """Stop the server (SIGINT, then kill after a few seconds)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextlib.contextmanager
def simulator(*flags: str) -> Iterator[SimulatorProcess]:
    """A simulator process for the duration of the block."""
    sim = SimulatorProcess(*flags)
    try:
        yield sim
    finally:
        sim.stop()


def write_manifest(
    folder: Path,
    jobs: int,
    *,
    concurrency: int,
    rate: str = "100000/s",
    retries: int = 8,
    timeout: str = "30m",
    name: str = "bench",
    models: Sequence[str] | None = None,
) -> Path:
    """A manifest of exactly ``jobs`` jobs (a prompts file, one prompt a line); with
    ``models``, one job per group, the models taking turns (interleaved); only
    :data:`MODEL`'s jobs set ``quality: low`` (the other models have no such field)."""
    folder.mkdir(parents=True, exist_ok=True)
    if models:
        groups = "".join(
            f"  - {{model: {model}, prompt: 'benchmark object number {i}'"
            + (", quality: low}\n" if model == MODEL else "}\n")
            for i, model in ((i, models[i % len(models)]) for i in range(jobs))
        )
        text = (
            f"version: 1\nname: {name}\nmodel: {models[0]}\n"
            "output: run\n"
            f"limits: {{concurrency: {concurrency}, rate: {rate}, retries: {retries}, "
            f"timeout: {timeout}}}\n"
            f"jobs:\n{groups}"
        )
        path = folder / "bench.yaml"
        path.write_text(text, encoding="utf-8")
        return path
    with (folder / "prompts.txt").open("w", encoding="utf-8") as f:
        for i in range(jobs):
            f.write(f"benchmark object number {i}, a small ceramic figurine\n")
    text = (
        f"version: 1\nname: {name}\nmodel: {MODEL}\n"
        "output: run\n"
        f"limits: {{concurrency: {concurrency}, rate: {rate}, retries: {retries}, "
        f"timeout: {timeout}}}\n"
        "defaults: {quality: low}\n"
        "jobs:\n  - prompts_file: prompts.txt\n"
    )
    path = folder / "bench.yaml"
    path.write_text(text, encoding="utf-8")
    return path


_SCRATCH_ENV = "BATCHGEN_BENCH_SCRATCH"


@contextlib.contextmanager
def scratch_root() -> Iterator[Path]:
    """One folder for every run directory of a whole benchmark, removed when it ends.

    Deleting thousands of image files makes creating files slower for a minute or more on
    some file systems (ext4 without a journal checks every candidate inode for a recent
    deletion): a case measured right after the previous case's folder was deleted paid up
    to 0.3 ms of CPU per exchange for it.  Child processes (:func:`run_in_child`) inherit
    the folder through the environment; nothing is deleted until every case is measured.
    """
    root = Path(tempfile.mkdtemp(prefix="batchgen-bench-"))
    old = os.environ.get(_SCRATCH_ENV)
    os.environ[_SCRATCH_ENV] = str(root)
    try:
        yield root
    finally:
        if old is None:
            os.environ.pop(_SCRATCH_ENV, None)
        else:
            os.environ[_SCRATCH_ENV] = old
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    """A new empty folder for one measured run: inside the :func:`scratch_root` of the
    benchmark (left for it to remove), or a temporary folder removed at once when a child
    runs on its own."""
    root = os.environ.get(_SCRATCH_ENV)
    if root is None:
        with tempfile.TemporaryDirectory() as tmp:
            yield Path(tmp)
        return
    yield Path(tempfile.mkdtemp(prefix="run-", dir=root))


def file_create_cpu_us(folder: Path, files: int = 400) -> float:
    """CPU microseconds to create one small file in ``folder`` (files kept): how slow the disk's
    file creation is right now.  On ext4 without a journal it is many times slower for a few
    minutes after many files were deleted, and every image the runner writes is a new file, so
    the CPU figures of a run measured then are higher (benchmarks/README.md, Noise)."""
    probe = Path(tempfile.mkdtemp(prefix="probe-", dir=folder))
    cpu0 = cpu_now()
    for i in range(files):
        fd = os.open(probe / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, b"x" * 4096)
        os.close(fd)
    return round(1e6 * (cpu_now() - cpu0) / files, 1)


def cpu_now() -> float:
    """CPU seconds (user + system) of this process so far, every thread included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


@dataclass
class Measured:
    """One measured ``batchgen run``."""

    summary: dict[str, Any]
    wall_s: float
    cpu_s: float
    peak_rss_mib: float


def run_manifest(
    manifest: Path,
    base_url: str,
    *,
    options: Mapping[str, Any] | None = None,
    max_runtime: float | None = None,
) -> Measured:
    """``batchgen run MANIFEST --base-url URL`` in this process, timed and CPU-measured."""
    from batchgen.run.event_loop import run  # noqa: PLC0415
    from batchgen.run.session import RunRequest, run_session  # noqa: PLC0415

    req = RunRequest(
        target=manifest,
        base_url=base_url,
        progress_bar=False,
        yes=True,  # thousands of simulated tasks: no spend ceiling to ask for
        max_runtime=max_runtime,
        options={"metrics_interval": None, **dict(options or {})},
    )
    cpu0 = cpu_now()
    t0 = time.perf_counter()
    summary = run(run_session(req, environ={"MODELLIX_API_KEY": SIM_KEY}))  # as `batchgen run`
    wall = time.perf_counter() - t0
    cpu = cpu_now() - cpu0
    return Measured(summary.as_dict(), wall, cpu, peak_rss_mib())


def run_in_child(script: str, *args: str, timeout: float = 3600) -> dict[str, Any]:
    """Run ``script --child ARGS`` in a fresh interpreter; return its JSON output."""
    done = subprocess.run(
        [sys.executable, script, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(args)} failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def emit(report: Mapping[str, Any]) -> None:
    """Print the one JSON document of a benchmark."""
    print(json.dumps(report, indent=2, sort_keys=False))


def exchanges(summary: Mapping[str, Any]) -> int:
    """HTTP exchanges of a run: submissions + polls + downloads."""
    return int(summary["submitted"]) + int(summary["polls"]) + int(summary["downloads"])
