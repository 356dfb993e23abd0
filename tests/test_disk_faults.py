"""Disk and file faults: a file-size limit during a download, an unwritable output
directory, a corrupt / truncated / newer state file, a live or a dead lock holder.

Each one ends with a clear message (no traceback) and the right exit code, and once the
cause is gone a rerun completes with nothing lost.  Every run is a real ``batchgen run``
in a child process against the simulator on a loopback port.
"""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from batchgen.cli import main
from batchgen.manifest.loader import load_manifest
from batchgen.manifest.types import Limits
from batchgen.run.session import RunRequest, run_session
from batchgen.simulator.app import Simulator, serve_in_thread
from batchgen.store.outputs import ImageFile, OutputDir
from batchgen.store.state import LOCK_NAME, StateStore, lock_holder
from tests.runhelpers import (
    SIM_KEY,
    check_run_dir,
    in_process_client,
    make_jobs,
    run_in_dir,
    sim_config,
)

REPO = Path(__file__).resolve().parent.parent

MANIFEST = """\
version: 1
name: disk
model: openai/gpt-image-1.5
limits: {{concurrency: 4, rate: 100/s, retries: 3, timeout: 10m}}
jobs:
  - prompt: "a lighthouse number {{n}}"
    size: 1536x1024
    background: transparent
    matrix:
      n: [{numbers}]
"""


def write_manifest(folder: Path, n: int) -> Path:
    path = folder / "disk.yaml"
    path.write_text(MANIFEST.format(numbers=", ".join(str(i) for i in range(n))))
    return path


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    sim = Simulator(sim_config(time_scale=0.001, seed=5))  # 10 ms tasks
    with serve_in_thread(sim) as url:
        yield url


def run_cli(
    *args: str,
    url: str,
    preexec: Callable[[], None] | None = None,
    no_override: bool = False,
) -> subprocess.CompletedProcess[str]:
    """``batchgen run ARGS --base-url URL`` in a child process; stdout/stderr captured.

    ``no_override``: as root, run without the capabilities that bypass file permissions.
    """
    env = {**os.environ, "MODELLIX_API_KEY": SIM_KEY, "PYTHONPATH": str(REPO)}
    prefix = _NO_OVERRIDE if no_override and os.geteuid() == 0 else []
    return subprocess.run(
        [
            *prefix,
            sys.executable,
            "-m",
            "batchgen",
            "run",
            *args,
            "--base-url",
            url,
            "--log-format",
            "text",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        preexec_fn=preexec,
        check=False,
    )


def assert_clear(proc: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """Exit ``code``, no traceback, and every word in the output."""
    text = proc.stdout + proc.stderr
    assert proc.returncode == code, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    for word in words:
        assert word in text, (word, text[-3000:])
    return text


def run_to_the_end(manifest: Path, run_dir: Path, url: str, jobs: int) -> None:
    """Once the cause is fixed: the same session as ``batchgen run``, in process, with
    test-speed polling; every job ends done and the files agree with the state."""
    req = RunRequest(
        target=manifest,
        output=run_dir,
        base_url=url,
        progress_bar=False,
        options={"first_poll": 0.02, "min_poll_interval": 0.01, "backoff_base": 0.01},
    )
    summary = asyncio.run(run_session(req, environ={"MODELLIX_API_KEY": SIM_KEY}))
    assert summary.exit_code == 0, summary.format()
    assert check_run_dir(run_dir)["done"] == jobs


# ----------------------------------------------------------------------- file-size limit
def _limit_file_size(limit: int) -> Callable[[], None]:
    def preexec() -> None:
        # Ignored SIGXFSZ turns "file too large" into EFBIG from write() instead of a kill.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def _record_jobs(manifest: Path, run_dir: Path) -> None:
    with StateStore.open(run_dir) as store:
        store.sync_jobs(load_manifest(manifest).iter_jobs())


def test_file_size_limit_during_a_download_stops_cleanly_and_rerun_loses_nothing(
    tmp_path: Path, sim_url: str
) -> None:
    manifest = write_manifest(tmp_path, 1)
    run_dir = tmp_path / "run"
    # The job is recorded first (no limit), so only a few small state commits (~70 kB of
    # WAL) are written under the 128 KiB limit: the image (~150 kB) is the first to hit it.
    _record_jobs(manifest, run_dir)
    proc = run_cli(
        str(manifest), "--output", str(run_dir), url=sim_url, preexec=_limit_file_size(2**17)
    )
    assert_clear(proc, 3, "cannot write the result of job", "File too large")
    with StateStore.open_readonly(run_dir) as store:
        counts = store.counts()
        waiting = list(store.iter_jobs(["downloading"]))
    assert counts["done"] == 0
    assert len(waiting) == 1
    assert waiting[0].task_id  # the paid task is kept, its result fetched next time
    assert not list((run_dir / "images").iterdir())  # no partial file left
    # The disk has room again: the rerun downloads the same task, nothing is lost.
    run_to_the_end(manifest, run_dir, sim_url, 1)
    with StateStore.open_readonly(run_dir) as store:
        assert store.get(waiting[0].job_id).task_id == waiting[0].task_id


def test_file_size_limit_on_the_state_file_stops_cleanly_and_rerun_loses_nothing(
    tmp_path: Path, sim_url: str
) -> None:
    manifest = write_manifest(tmp_path, 4)
    run_dir = tmp_path / "run"
    _record_jobs(manifest, run_dir)
    size = (run_dir / "state.db").stat().st_size
    proc = run_cli(
        str(manifest),
        "--output",
        str(run_dir),
        url=sim_url,
        preexec=_limit_file_size(size + 40_000),  # a few commits' worth of WAL
    )
    assert_clear(proc, 3, "cannot write the state file")
    with StateStore.open_readonly(run_dir) as store:
        kept = {j.job_id: j.task_id for j in store.iter_jobs(["running", "downloading"])}
    run_to_the_end(manifest, run_dir, sim_url, 4)
    with StateStore.open_readonly(run_dir) as store:
        for job_id, task_id in kept.items():
            assert store.get(job_id).task_id == task_id


# ------------------------------------------------------------------- unwritable directory
_NO_OVERRIDE = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
needs_permissions = pytest.mark.skipif(
    os.geteuid() == 0 and shutil.which("setpriv") is None,
    reason="running as root without setpriv: file permissions cannot be enforced",
)


@needs_permissions
def test_unwritable_output_directory_is_a_clear_error_then_runs_once_fixed(
    tmp_path: Path, sim_url: str
) -> None:
    manifest = write_manifest(tmp_path, 3)
    parent = tmp_path / "out"
    parent.mkdir()
    os.chmod(parent, 0o555)
    run_dir = parent / "run"
    proc = run_cli(str(manifest), "--output", str(run_dir), url=sim_url, no_override=True)
    assert_clear(proc, 3, "cannot use run directory", str(run_dir))
    assert not run_dir.exists()
    os.chmod(parent, 0o755)  # fixed
    run_to_the_end(manifest, run_dir, sim_url, 3)


def test_output_path_that_is_a_file_is_a_clear_error(
    tmp_path: Path,
    sim_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODELLIX_API_KEY", SIM_KEY)
    manifest = write_manifest(tmp_path, 1)
    target = tmp_path / "taken"
    target.write_text("not a directory")
    code, text = run_main(str(manifest), "--output", str(target), url=sim_url, capsys=capsys)
    assert code == 3, text
    assert "not a directory" in text
    assert target.read_text() == "not a directory"


@needs_permissions
def test_unwritable_images_folder_stops_with_3_and_the_rerun_finishes(
    tmp_path: Path, sim_url: str
) -> None:
    manifest = write_manifest(tmp_path, 3)
    run_dir = tmp_path / "run"
    _record_jobs(manifest, run_dir)
    os.chmod(run_dir / "images", 0o555)
    proc = run_cli(str(manifest), "--output", str(run_dir), url=sim_url, no_override=True)
    assert_clear(proc, 3, "Permission denied")
    with StateStore.open_readonly(run_dir) as store:
        assert store.counts()["done"] == 0
        kept = {j.job_id: j.task_id for j in store.iter_jobs(["running", "downloading"])}
    assert kept
    os.chmod(run_dir / "images", 0o700)  # fixed
    run_to_the_end(manifest, run_dir, sim_url, 3)
    with StateStore.open_readonly(run_dir) as store:
        for job_id, task_id in kept.items():
            assert store.get(job_id).task_id == task_id


# ------------------------------------------------------------------------- state file
def run_main(*args: str, url: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``batchgen run`` in process (faster than a child): exit code and all output."""
    code = main(["run", *args, "--base-url", url])
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text, text[-3000:]
    return code, text


@pytest.fixture(scope="module")
def finished_template(tmp_path_factory: pytest.TempPathFactory, sim_url: str) -> Path:
    """One complete 3-job run, copied by each test that damages it."""
    folder = tmp_path_factory.mktemp("finished")
    manifest = write_manifest(folder, 3)
    run_dir = folder / "run"
    run_to_the_end(manifest, run_dir, sim_url, 3)
    return folder


@pytest.fixture
def finished_run(
    finished_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, Path]:
    """A copy of the complete run (manifest, run directory) and a backup of its state file."""
    monkeypatch.setenv("MODELLIX_API_KEY", SIM_KEY)
    shutil.copy2(finished_template / "disk.yaml", tmp_path / "disk.yaml")
    shutil.copytree(finished_template / "run", tmp_path / "run")
    shutil.copy2(tmp_path / "run" / "state.db", tmp_path / "state.db.backup")
    return tmp_path / "disk.yaml", tmp_path / "run"


def _restore(run_dir: Path) -> None:
    for suffix in ("-wal", "-shm"):
        with_suffix = run_dir / f"state.db{suffix}"
        if with_suffix.exists():
            with_suffix.unlink()
    shutil.copy2(run_dir.parent / "state.db.backup", run_dir / "state.db")


def _images(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (run_dir / "images").iterdir()}


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "garbage":
        path.write_bytes(b"this is not a database at all\n" * 200)
    elif how == "truncated_half":
        path.write_bytes(data[: len(data) // 2])
    elif how == "truncated_to_header":
        path.write_bytes(data[:100])
    elif how == "zero_bytes":
        path.write_bytes(b"")
    elif how == "deleted":
        path.unlink()
    else:  # overwrite the second page (a table's root) with noise
        noisy = bytearray(data)
        noisy[4096:8192] = bytes((i * 37 + 11) % 256 for i in range(4096))
        path.write_bytes(bytes(noisy))


@pytest.mark.parametrize(
    "damage",
    ["garbage", "truncated_half", "truncated_to_header", "zero_bytes", "deleted", "noisy_page"],
)
def test_damaged_or_missing_state_file_is_refused_and_no_image_is_touched(
    finished_run: tuple[Path, Path],
    sim_url: str,
    damage: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    manifest, run_dir = finished_run
    before = _images(run_dir)
    _damage(run_dir / "state.db", damage)
    code, text = run_main(str(manifest), "--output", str(run_dir), url=sim_url, capsys=capsys)
    assert code == 3, text
    assert "state" in text
    code, text = run_main(str(run_dir), url=sim_url, capsys=capsys)
    assert code in (2, 3), text
    for command in (["status", str(run_dir)], ["export", str(run_dir)]):
        code = main(command)
        out = capsys.readouterr()
        assert code != 0, (command, out)
        assert "Traceback" not in out.out + out.err
        assert out.err.strip(), command  # says why
    assert _images(run_dir) == before  # a bad state file never costs an image
    # Fixed (the state file restored from a backup): the run is complete, nothing lost.
    _restore(run_dir)
    code, text = run_main(str(manifest), "--output", str(run_dir), url=sim_url, capsys=capsys)
    assert code == 0, text
    assert check_run_dir(run_dir)["done"] == 3
    assert _images(run_dir) == before


def test_state_file_from_a_newer_batchgen_is_refused_with_upgrade_advice(
    finished_run: tuple[Path, Path], sim_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest, run_dir = finished_run
    conn = sqlite3.connect(run_dir / "state.db")
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    before = _images(run_dir)
    for args in ((str(manifest), "--output", str(run_dir)), (str(run_dir),)):
        code, text = run_main(*args, url=sim_url, capsys=capsys)
        assert code == 3, text
        assert "schema version 99" in text
        assert "upgrade batchgen" in text
    assert _images(run_dir) == before
    conn = sqlite3.connect(run_dir / "state.db")
    assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("99",)
    conn.close()
    _restore(run_dir)
    code, text = run_main(str(run_dir), url=sim_url, capsys=capsys)
    assert code == 0, text


# ---------------------------------------------------------------------------- locks
_HOLD_LOCK = """\
import sys, time
from pathlib import Path
from batchgen.store.state import acquire_run_lock
lock = acquire_run_lock(Path(sys.argv[1]))
print("locked", flush=True)
time.sleep(120)
"""


def _lock_holder_process(run_dir: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(run_dir)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_held_by_a_live_process_exits_75_naming_it_then_runs_after_it_ends(
    finished_run: tuple[Path, Path], sim_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest, run_dir = finished_run
    holder = _lock_holder_process(run_dir)
    try:
        for args in ((str(manifest), "--output", str(run_dir)), (str(run_dir),)):
            code, text = run_main(*args, url=sim_url, capsys=capsys)
            assert code == 75, text
            assert f"locked by process {holder.pid}" in text
        assert lock_holder(run_dir) == holder.pid
    finally:
        holder.terminate()
        holder.wait(timeout=30)
    code, text = run_main(str(run_dir), url=sim_url, capsys=capsys)
    assert code == 0, text
    assert check_run_dir(run_dir)["done"] == 3


def test_lock_left_by_a_killed_process_is_taken_over(
    finished_run: tuple[Path, Path], sim_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, run_dir = finished_run
    holder = _lock_holder_process(run_dir)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert (run_dir / LOCK_NAME).read_text().strip() == str(holder.pid)  # stale pid left
    assert lock_holder(run_dir) is None
    code, text = run_main(str(run_dir), url=sim_url, capsys=capsys)
    assert code == 0, text


def test_lock_file_with_garbage_in_it_is_taken_over(
    finished_run: tuple[Path, Path], sim_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, run_dir = finished_run
    (run_dir / LOCK_NAME).write_bytes(b"\xff\x00 999999999 not a pid\n" * 10)
    code, text = run_main(str(run_dir), url=sim_url, capsys=capsys)
    assert code == 0, text
    assert check_run_dir(run_dir)["done"] == 3


# ------------------------------------------------------------- ENOSPC, in process
DISK_LIMITS = Limits(concurrency=4, rate=1000.0, retries=3, timeout=60.0)


async def _run_jobs(run_dir: Path, n: int) -> Any:
    sim = Simulator(sim_config(seed=3))
    async with in_process_client(sim) as client:
        return await run_in_dir(run_dir, client, make_jobs(n), DISK_LIMITS)


def test_no_space_left_during_downloads_stops_cleanly_and_rerun_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = ImageFile.write

    def full(self: ImageFile, data: bytes) -> int:
        if self.size + len(data) > 10_000:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, data)

    monkeypatch.setattr(ImageFile, "write", full)
    summary = asyncio.run(_run_jobs(tmp_path, 6))
    assert summary.exit_code == 3
    assert summary.stop_reason is not None
    assert "No space left on device" in summary.stop_reason
    assert summary.counts["done"] == 0
    assert not list((tmp_path / "images").iterdir())  # no partial file
    monkeypatch.setattr(ImageFile, "write", real_write)  # space freed
    summary = asyncio.run(_run_jobs(tmp_path, 6))
    assert summary.exit_code == 0, summary.format()
    assert check_run_dir(tmp_path)["done"] == 6


def test_no_space_left_for_metadata_stops_cleanly_and_rerun_rebuilds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_append = OutputDir.append_metadata

    def full(self: OutputDir, job: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(OutputDir, "append_metadata", full)
    summary = asyncio.run(_run_jobs(tmp_path, 4))
    assert summary.exit_code == 3
    assert "metadata.jsonl" in (summary.stop_reason or "")
    monkeypatch.setattr(OutputDir, "append_metadata", real_append)
    summary = asyncio.run(_run_jobs(tmp_path, 4))
    assert summary.exit_code == 0, summary.format()
    assert check_run_dir(tmp_path)["done"] == 4  # metadata.jsonl rebuilt: one line per image
