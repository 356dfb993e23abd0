"""Crash-and-resume chaos: run a manifest in a child process, SIGKILL it at seeded random
instants, resume it each time, then check that nothing was lost, torn or paid for twice
unreported.

Used by ``tests/test_chaos.py`` (short run in the default suite, long run with
``pytest -m chaos``) and by ``scripts/chaos.py`` (prints the figures as JSON).

The server is either the project's simulator (``batchgen.simulator.app`` served on a loopback
port) or the independent implementation of the API in ``tests/independent_api`` (written
from the provider's documents alone); both run in this process, the runner in a child
process (``python -m tests.chaoshelpers child ...``) that is killed with SIGKILL.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

#: Poll/backoff timing of the child run, scaled to tasks that last tens of milliseconds.
FAST_OPTIONS: dict[str, Any] = {
    "first_poll": 0.03,
    "min_poll_interval": 0.01,
    "max_poll_interval": 0.2,
    "backoff_base": 0.01,
    "backoff_cap": 0.1,
    "throttle_pause": 0.01,
    "progress_interval": 0.1,
    "metrics_interval": 0.5,
}

MANIFEST = """\
version: 1
name: chaos
model: openai/gpt-image-1.5
limits: {{concurrency: {concurrency}, rate: {rate}/s, retries: {retries}, timeout: 10m}}
jobs:
  - prompt: "{{subject}} number {{n}}"
    matrix:
      subject: [a red fox, a lighthouse, a teacup, a cactus]
      n: [{numbers}]
"""


@dataclass
class ChaosConfig:
    """One chaos run."""

    jobs: int = 100  # rounded up to a multiple of 4
    kills: int = 4
    seed: int = 1
    server: str = "simulator"  # or "independent"
    fault_rate: float = 0.04  # per fault kind
    concurrency: int = 16
    rate: int = 400
    retries: int = 12
    time_scale: float = 0.005  # simulator: 10 s tasks last 50 ms
    max_life: float = 1.5  # a killed run lives at most this long after it started working
    child_timeout: float = 300.0  # the final (unkilled) run must end within this


@dataclass
class ChaosResult:
    """What a chaos run did and found (``problems`` empty means the promise held)."""

    server: str
    jobs: int
    kills: int = 0
    lives: int = 0
    kills_before_work: int = 0
    final_exit_code: int | None = None
    counts: dict[str, int] = field(default_factory=dict)
    faults_injected: dict[str, int] = field(default_factory=dict)
    accepted_tasks: int = 0
    recorded_task_ids: int = 0
    lost_answers: int = 0
    orphan_tasks: int = 0
    orphans_from_kills: int = 0
    duplicate_submissions: int = 0
    recovered_submitting: int = 0
    resubmitted_after_failed_repoll: int = 0
    jobs_lost: int = 0
    failed_with_reason: dict[str, int] = field(default_factory=dict)
    images: int = 0
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def write_manifest(folder: Path, cfg: ChaosConfig) -> Path:
    """The chaos manifest (``cfg.jobs`` rounded up to a multiple of 4 jobs)."""
    per_subject = max(1, -(-cfg.jobs // 4))
    path = folder / "chaos.yaml"
    path.write_text(
        MANIFEST.format(
            concurrency=cfg.concurrency,
            rate=cfg.rate,
            retries=cfg.retries,
            numbers=", ".join(str(i) for i in range(per_subject)),
        )
    )
    return path


# ------------------------------------------------------------------------------ servers
class _Server:
    base_url: str
    api_key: str

    def faults(self) -> dict[str, int]:
        raise NotImplementedError

    def accepted(self) -> int:
        raise NotImplementedError

    def lost_answers(self) -> int:
        raise NotImplementedError

    def duplicates(self) -> int:
        raise NotImplementedError


class _SimServer(_Server):
    def __init__(self, sim: Any, url: str) -> None:
        self.sim = sim
        self.base_url = url
        self.api_key = sim.config.api_key

    def faults(self) -> dict[str, int]:
        stats = self.sim.stats()
        out = {k: int(v) for k, v in stats["faults"].items()}
        out["task_failed"] = int(stats["tasks"]["failed"])
        return out

    def accepted(self) -> int:
        return int(self.sim.stats()["submissions"]["accepted"])

    def lost_answers(self) -> int:
        return int(self.sim.stats()["faults"].get("lost_answer", 0))

    def duplicates(self) -> int:
        subs = self.sim.stats()["submissions"]
        return int(subs["accepted"] - subs["accepted_distinct_bodies"])


class _IndependentServer(_Server):
    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.base_url = handle.base_url
        self.api_key = handle.api_key

    def faults(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.handle.stats["faults"].items()}

    def accepted(self) -> int:
        return int(self.handle.stats["accepted_tasks"])

    def lost_answers(self) -> int:
        return sum(1 for t in self.handle.tasks() if not t.delivered)

    def duplicates(self) -> int:
        per_body = self.handle.stats["accepted_per_body"]
        return int(sum(per_body.values()) - len(per_body))


@contextlib.contextmanager
def serve(cfg: ChaosConfig) -> Iterator[_Server]:
    """The server of ``cfg`` on a loopback port, with every fault kind at ``cfg.fault_rate``."""
    r = cfg.fault_rate
    if cfg.server == "simulator":
        from batchgen.simulator.app import Simulator, SimulatorConfig, serve_in_thread  # noqa: PLC0415

        sim = Simulator(
            SimulatorConfig(time_scale=cfg.time_scale, seed=cfg.seed, retry_after=0.01).with_faults(
                r
            )
        )
        with serve_in_thread(sim) as url:
            yield _SimServer(sim, url)
    elif cfg.server == "independent":
        from tests.independent_api.server import running_server  # noqa: PLC0415

        with running_server(
            seed=cfg.seed,
            latency_ms=(10.0, 80.0),
            fault_429=r,
            fault_500=r,
            fault_502=r / 2,
            fault_503=r,
            fault_504=r / 2,
            fault_200_error=r / 2,
            fault_drop=r,
            fault_drop_after_accept=r / 2,
            fault_504_after_accept=r / 2,
            fault_task_failed=r,
            fault_url_expired=r,
            fault_unknown_status=r,
            fault_download_truncated=r,
            fault_download_503=r,
            fault_download_drop=r,
            jpeg_rate=0.2,
            chunked_downloads=0.2,
        ) as handle:
            yield _IndependentServer(handle)
    else:
        raise ValueError(f"unknown server {cfg.server!r}")


# ------------------------------------------------------------------------------- child
def spawn_child(
    target: Path, run_dir: Path, url: str, key: str, *, seed: int, log: Path
) -> subprocess.Popen[bytes]:
    """Start one ``batchgen run`` life in a child process (stdout+stderr into ``log``)."""
    env = {**os.environ, "MODELLIX_API_KEY": key, "PYTHONPATH": str(REPO)}
    env.pop("MODELLIX_BASE_URL", None)
    with open(log, "ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.chaoshelpers",
                "child",
                str(target),
                str(run_dir),
                url,
                str(seed),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )


def _child_main(argv: list[str]) -> int:
    """The child: the ``run`` command's session with test-speed timing; exit code of the run."""
    import asyncio  # noqa: PLC0415

    from batchgen.cli._runargs import run_until_signal  # noqa: PLC0415
    from batchgen.run.progress import setup_logging  # noqa: PLC0415
    from batchgen.run.session import RunRequest, SessionError  # noqa: PLC0415
    from batchgen.store.state import RunLocked  # noqa: PLC0415

    target, run_dir, url, seed = argv
    setup_logging("text")
    req = RunRequest(
        target=Path(target),
        output=Path(run_dir) if target != run_dir else None,
        base_url=url,
        progress_bar=False,
        yes=True,  # thousands of simulated tasks: no spend ceiling to ask for
        options={**FAST_OPTIONS, "seed": int(seed)},
    )
    try:
        summary = asyncio.run(run_until_signal(req))
    except RunLocked as exc:
        print(f"child: {exc}", file=sys.stderr)
        return 75
    except SessionError as exc:
        print(f"child: {exc}", file=sys.stderr)
        return exc.exit_code
    print("SUMMARY " + json.dumps(summary.as_dict(), sort_keys=True), flush=True)
    return summary.exit_code


# ------------------------------------------------------------------------------- checks
def _sessions(run_dir: Path) -> int:
    from batchgen.store.state import StateError, StateStore  # noqa: PLC0415

    try:
        with StateStore.open_readonly(run_dir) as store:
            return len(store.sessions())
    except (StateError, OSError):
        return 0
    except Exception:  # a half-created file (schema not there yet)
        return 0


def _wait_for_work(run_dir: Path, proc: subprocess.Popen[bytes], sessions: int) -> bool:
    """Until a new session has started (bounded); False if the child ended first."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if _sessions(run_dir) > sessions:
            return True
        time.sleep(0.02)
    return False


def check_after_kill(run_dir: Path) -> list[str]:
    """Right after a SIGKILL (before any cleanup): every done job's image is on disk, complete,
    with the recorded sha256; every running/downloading job has its task_id."""
    from batchgen.store.outputs import check_image  # noqa: PLC0415
    from batchgen.store.state import StateStore  # noqa: PLC0415

    problems: list[str] = []
    if not (run_dir / "state.db").exists():
        return problems
    with StateStore.open_readonly(run_dir) as store:
        for job in store.iter_jobs(["done"]):
            path = run_dir / (job.result_path or "?")
            try:
                data = path.read_bytes()
                check_image(path)
            except Exception as exc:
                problems.append(f"after kill: done job {job.job_id} has no good image: {exc}")
                continue
            if hashlib.sha256(data).hexdigest() != job.sha256:
                problems.append(f"after kill: image of {job.job_id} does not match its sha256")
        for job in store.iter_jobs(["running", "downloading"]):
            if not job.task_id:
                problems.append(f"after kill: {job.state} job {job.job_id} has no task_id")
    return problems


def check_final(run_dir: Path, expected_jobs: int) -> tuple[list[str], dict[str, Any]]:
    """The end state: every job ended, files and rows agree one to one, no temp files."""
    from batchgen.store.outputs import check_image  # noqa: PLC0415
    from batchgen.store.state import StateStore  # noqa: PLC0415

    problems: list[str] = []
    facts: dict[str, Any] = {}
    with StateStore.open_readonly(run_dir) as store:
        counts = store.counts()
        done = {j.job_id: j for j in store.iter_jobs(["done"])}
        bad = list(store.iter_jobs(["failed", "rejected", "expired"]))
        task_ids = {
            e.detail.split("=", 1)[1]
            for e in store.events()
            if e.to_state == "running" and e.detail and e.detail.startswith("task_id=")
        }
        recovered = sum(
            1
            for e in store.events()
            if e.detail and e.detail.startswith("interrupted during submit")
        )
        total = sum(counts.values())
        # A recorded task given up because a resumed download's re-poll failed, and paid for
        # again: the runner keeps polling such a task with backoff, so this must stay 0
        # (pinned in tests/test_runner_independent.py).
        repoll = sum(
            1
            for e in store.events()
            if e.to_state == "pending"
            and e.detail
            and e.detail.startswith(("re-poll failed", "task result not available"))
        )
    facts["counts"] = counts
    facts["resubmitted_after_failed_repoll"] = repoll
    facts["task_ids"] = task_ids
    facts["recovered_submitting"] = recovered
    unfinished = sum(counts[s] for s in ("pending", "submitting", "running", "downloading"))
    lost = unfinished + max(expected_jobs - total, 0)
    if unfinished:
        problems.append(f"{unfinished} jobs not finished: {counts}")
    if total != expected_jobs:
        problems.append(f"state file has {total} jobs, the manifest {expected_jobs}")
    reasons: Counter[str] = Counter()
    for job in bad:
        if not job.last_error:
            problems.append(f"{job.state} job {job.job_id} has no reason")
            lost += 1
        else:
            reasons[f"{job.state}: {job.last_error.split(' (after ')[0][:80]}"] += 1
    facts["failed_with_reason"] = dict(reasons)

    temps = [str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if ".tmp" in p.name]
    if temps:
        problems.append(f"temporary files left: {temps[:5]}")
    images = {f"images/{n}" for n in os.listdir(run_dir / "images")}
    facts["images"] = len(images)
    rows = {j.result_path for j in done.values()}
    if images - rows:
        problems.append(f"images without a row: {sorted(images - rows)[:5]}")
    if rows - images:
        problems.append(f"rows without an image: {sorted(str(r) for r in rows - images)[:5]}")
        lost += len(rows - images)
    meta_path = run_dir / "metadata.jsonl"
    lines = meta_path.read_text(encoding="utf-8").splitlines() if meta_path.exists() else []
    meta: dict[str, dict[str, Any]] = {}
    for line in lines:
        record = json.loads(line)
        if record["job_id"] in meta:
            problems.append(f"metadata.jsonl repeats {record['job_id']}")
        meta[record["job_id"]] = record
    if set(meta) != set(done):
        missing = sorted(set(done) - set(meta))[:3]
        extra = sorted(set(meta) - set(done))[:3]
        problems.append(
            f"metadata.jsonl has {len(meta)} lines for {len(done)} done jobs "
            f"(missing {missing}, extra {extra})"
        )
    for job_id, job in done.items():
        path = run_dir / (job.result_path or "?")
        if not path.exists():
            continue
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        try:
            info = check_image(path)
        except Exception as exc:
            problems.append(f"image of {job_id} is not complete: {exc}")
            lost += 1
            continue
        record = meta.get(job_id, {})
        if not (digest == job.sha256 == record.get("sha256")):
            problems.append(f"sha256 of {job_id}: file {digest}, state {job.sha256}, metadata")
            lost += 1
        if not (info.bytes == job.bytes == record.get("bytes") == len(data)):
            problems.append(f"size of {job_id} disagrees between file, state and metadata")
        if record.get("file_name") != job.result_path:
            problems.append(f"metadata file_name of {job_id} is {record.get('file_name')}")
    facts["jobs_lost"] = lost
    return problems, facts


# ---------------------------------------------------------------------------------- run
def run_chaos(cfg: ChaosConfig, workdir: Path) -> ChaosResult:
    """Run ``cfg`` in ``workdir``: kill the run ``cfg.kills`` times, resume, check."""
    workdir.mkdir(parents=True, exist_ok=True)
    manifest = write_manifest(workdir, cfg)
    expected = 4 * max(1, -(-cfg.jobs // 4))
    run_dir = workdir / "run"
    result = ChaosResult(server=cfg.server, jobs=expected)
    rng = random.Random(cfg.seed)
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    with serve(cfg) as server:
        life = 0
        attempts = 0
        while result.kills < cfg.kills and attempts < cfg.kills * 3:
            attempts += 1
            use_dir = rng.random() < 0.5 and (run_dir / "state.db").exists()
            target = run_dir if use_dir else manifest
            before = _sessions(run_dir)
            life += 1
            proc = spawn_child(
                target,
                run_dir,
                server.base_url,
                server.api_key,
                seed=life,
                log=logs / f"life{life}.log",
            )
            if rng.random() < 0.2:
                # Any instant, including start-up: manifest loading, sync, cleanup.
                time.sleep(rng.uniform(0.0, 1.0))
                if _sessions(run_dir) <= before:
                    result.kills_before_work += 1
            elif _wait_for_work(run_dir, proc, before):
                time.sleep(rng.uniform(0.0, cfg.max_life))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                result.kills += 1
            proc.wait(timeout=60)
            if proc.returncode not in (-signal.SIGKILL, 0, 1):
                result.problems.append(
                    f"life {life} exited {proc.returncode}: see {logs / f'life{life}.log'}"
                )
            result.problems.extend(check_after_kill(run_dir))
            if proc.returncode in (0, 1):
                break  # the run finished before the kill: nothing left to kill
        # The final life runs to the end.
        life += 1
        log = logs / f"life{life}.log"
        proc = spawn_child(manifest, run_dir, server.base_url, server.api_key, seed=life, log=log)
        try:
            proc.wait(timeout=cfg.child_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            result.problems.append(f"the final run did not end within {cfg.child_timeout}s")
        result.final_exit_code = proc.returncode
        result.lives = life
        if proc.returncode not in (0, 1):
            tail = log.read_text(errors="replace")[-1500:]
            result.problems.append(f"final run exited {proc.returncode}: {tail}")
        for path in sorted(logs.iterdir()):
            text = path.read_text(errors="replace")
            if "Traceback" in text:
                result.problems.append(f"a traceback in {path.name}: {text[-1500:]}")
        problems, facts = check_final(run_dir, expected)
        result.problems.extend(problems)
        result.counts = facts["counts"]
        result.jobs_lost = facts["jobs_lost"]
        result.failed_with_reason = facts["failed_with_reason"]
        result.images = facts["images"]
        result.recovered_submitting = facts["recovered_submitting"]
        result.resubmitted_after_failed_repoll = facts["resubmitted_after_failed_repoll"]
        result.recorded_task_ids = len(facts["task_ids"])
        result.accepted_tasks = server.accepted()
        result.faults_injected = server.faults()
        result.lost_answers = server.lost_answers()
        result.duplicate_submissions = server.duplicates()
    # A task the server accepted whose id the state file never recorded was paid for and
    # never used. A lost answer (the server accepted, the client got an error) is reported as
    # an ambiguous resubmit; every other such task must come from a kill inside the window
    # between the provider accepting the task and the task_id being committed.
    # At most the submits awaiting their answer at the instant of each kill: one
    # (limits.submits_in_flight defaults to 1), and every one of them reported.
    result.orphan_tasks = result.accepted_tasks - result.recorded_task_ids
    result.orphans_from_kills = max(result.orphan_tasks - result.lost_answers, 0)
    if result.orphans_from_kills > result.kills:
        result.problems.append(
            f"{result.orphans_from_kills} unrecorded accepted tasks beyond lost answers, "
            f"more than one per kill ({result.kills} kills)"
        )
    if result.orphans_from_kills > result.recovered_submitting:
        result.problems.append(
            f"{result.orphans_from_kills} unrecorded tasks but only "
            f"{result.recovered_submitting} interrupted submits were reported"
        )
    if result.resubmitted_after_failed_repoll:
        result.problems.append(
            f"{result.resubmitted_after_failed_repoll} recorded tasks were given up and submitted "
            "again after a resumed re-poll failed"
        )
    if result.jobs_lost:
        result.problems.append(f"{result.jobs_lost} jobs lost")
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        raise SystemExit(_child_main(sys.argv[2:]))
    raise SystemExit("usage: python -m tests.chaoshelpers child TARGET RUN_DIR URL SEED")
