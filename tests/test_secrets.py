"""Secrets: a canary API key goes through whole runs and is never written anywhere.

Runs in process and in a child process, with text and JSON logs, with batchgen, httpx
and httpcore logging at DEBUG, through a forced internal error (traceback in the log)
and a crash escaping ``main``; a killed run leaves its ``-wal`` file behind.  Then the raw
bytes of every file of the run directory (``state.db`` and its ``-wal``/``-shm``,
``metadata.jsonl``, ``metrics.prom``, images, lock), every captured stdout/stderr and
log line, and the output of ``status`` and ``export`` are searched for the canary.
Also: the key is refused on non-https, non-loopback base URLs, and run directories and
state files are owner-only whatever the umask.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import stat
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchgen.api import ConfigError, ModellixClient
from batchgen.cli import main
from batchgen.simulator.app import Simulator, serve_in_thread
from batchgen.store.state import StateError, StateStore
from tests.runhelpers import sim_config

REPO = Path(__file__).resolve().parent.parent
FAST = {"first_poll": 0.02, "min_poll_interval": 0.01, "backoff_base": 0.01, "backoff_cap": 0.1}
CANARY = "mlx-CANARY-5e1f0c9a7b3d4e2f8a6b"
CANARY_BYTES = CANARY.encode()

MANIFEST = """\
version: 1
name: secrets
model: openai/gpt-image-1.5
limits: {{concurrency: 4, rate: 100/s, retries: 3, timeout: 10m}}
jobs:
  - prompt: "a teacup number {{n}}"
    matrix:
      n: [{numbers}]
"""


def write_manifest(folder: Path, n: int = 4) -> Path:
    path = folder / "secrets.yaml"
    path.write_text(MANIFEST.format(numbers=", ".join(str(i) for i in range(n))))
    return path


@pytest.fixture(scope="module")
def canary_url() -> Iterator[str]:
    """The simulator on loopback, accepting only the canary key, with some faults."""
    sim = Simulator(sim_config(api_key=CANARY, time_scale=0.001, seed=9).with_faults(0.05))
    with serve_in_thread(sim) as url:
        yield url


def assert_no_canary_in_dir(folder: Path) -> int:
    """Raw bytes of every file below ``folder``; returns how many files were searched."""
    n = 0
    for path in folder.rglob("*"):
        if path.is_file():
            n += 1
            assert CANARY_BYTES not in path.read_bytes(), path
    return n


def assert_no_canary(*texts: str) -> None:
    for text in texts:
        assert CANARY not in text
        assert CANARY[4:] not in text  # not even in part


@pytest.fixture
def debug_logging() -> Iterator[io.StringIO]:
    """Every logger at DEBUG (httpx, httpcore, asyncio...) into one buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for name in ("httpx", "httpcore", "batchgen", "uvicorn"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def _debug_setup_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run command's logging, at DEBUG and propagating to the root buffer too; and
    test-speed polling (the simulator's tasks last milliseconds)."""
    import batchgen.run.session  # noqa: PLC0415
    from batchgen.cli import run as cli_run  # noqa: PLC0415
    from batchgen.run.progress import setup_logging  # noqa: PLC0415
    from batchgen.run.runner import RunOptions  # noqa: PLC0415

    def fast(**kw: object) -> RunOptions:
        return RunOptions(**{**FAST, **kw})  # type: ignore[arg-type]

    monkeypatch.setattr(batchgen.run.session, "RunOptions", fast)

    def at_debug(fmt: str = "text", stream: object = None, level: int = logging.DEBUG) -> None:
        setup_logging(fmt, level=logging.DEBUG)
        logging.getLogger("batchgen").propagate = True

    monkeypatch.setattr(cli_run, "setup_logging", at_debug)


def _status_and_export(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> str:
    out = []
    for args in (
        ["status", str(run_dir)],
        ["status", str(run_dir), "--json"],
        ["status", str(run_dir), "--failed"],
        ["export", str(run_dir), "--format", "jsonl"],
        ["export", str(run_dir), "--format", "csv"],
    ):
        code = main(args)
        captured = capsys.readouterr()
        assert code in (0, 1), (args, captured.err)
        out.append(captured.out + captured.err)
    return "\n".join(out)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_canary_key_never_leaves_memory_in_process_at_debug(  # noqa: PLR0917
    tmp_path: Path,
    canary_url: str,
    log_format: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    debug_logging: io.StringIO,
) -> None:
    monkeypatch.setenv("MODELLIX_API_KEY", CANARY)
    _debug_setup_logging(monkeypatch)
    run_dir = tmp_path / "run"
    manifest = write_manifest(tmp_path)
    argv = ["run", str(manifest), "--output", str(run_dir), "--base-url", canary_url]
    code = main([*argv, "--log-format", log_format])
    captured = capsys.readouterr()
    assert code in (0, 1), captured.err[-2000:]
    logs = debug_logging.getvalue()
    assert "HTTP Request" in logs or "send_request" in logs  # httpx/httpcore did log
    assert_no_canary(captured.out, captured.err, logs)
    assert_no_canary(_status_and_export(run_dir, capsys))
    code = main(["retry", str(run_dir), "--failed", "--rejected"])  # runs with the key again
    captured = capsys.readouterr()
    assert code in (0, 1), captured.err[-2000:]
    assert_no_canary(captured.out, captured.err, debug_logging.getvalue())
    for name in ("state.db", "metadata.jsonl", "metrics.prom", "run.lock"):
        assert (run_dir / name).exists(), name  # each of them was searched
    assert assert_no_canary_in_dir(tmp_path) >= 5


def test_forced_internal_error_traceback_has_no_key(
    tmp_path: Path,
    canary_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    debug_logging: io.StringIO,
) -> None:
    from batchgen.store.outputs import OutputDir  # noqa: PLC0415

    monkeypatch.setenv("MODELLIX_API_KEY", CANARY)
    _debug_setup_logging(monkeypatch)

    def broken(self: OutputDir, *args: object, **kwargs: object) -> None:
        raise RuntimeError("forced failure while committing a download")

    monkeypatch.setattr(OutputDir, "commit", broken)
    run_dir = tmp_path / "run"
    argv = ["run", str(write_manifest(tmp_path)), "--output", str(run_dir)]
    code = main([*argv, "--base-url", canary_url])
    captured = capsys.readouterr()
    logs = debug_logging.getvalue()
    assert code == 3
    assert "Traceback" in captured.err + logs  # the internal-error path was taken
    assert_no_canary(captured.out, captured.err, logs)
    assert_no_canary_in_dir(tmp_path)


def test_crash_escaping_main_traceback_has_no_key(
    tmp_path: Path,
    canary_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import batchgen.run.session  # noqa: PLC0415

    monkeypatch.setenv("MODELLIX_API_KEY", CANARY)

    async def crash(store: object, client: ModellixClient, *args: object, **kw: object) -> None:
        raise RuntimeError(f"crash with the client in hand: {client!r} {vars(client)!r}")

    monkeypatch.setattr(batchgen.run.session, "run_jobs", crash)
    run_dir = tmp_path / "run"
    argv = ["run", str(write_manifest(tmp_path)), "--output", str(run_dir)]
    with pytest.raises(RuntimeError) as info:
        main([*argv, "--base-url", canary_url])
    text = "".join(traceback.format_exception(info.type, info.value, info.tb))
    assert "crash with the client in hand" in text
    assert_no_canary(text, capsys.readouterr().err)
    assert_no_canary_in_dir(tmp_path)


_CHILD = """\
import logging, sys
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,
                    format="%(name)s %(levelname)s %(message)s")
for name in ("httpx", "httpcore", "asyncio"):
    logging.getLogger(name).setLevel(logging.DEBUG)
import batchgen.run.progress as progress
_setup = progress.setup_logging
def at_debug(fmt="text", stream=None, level=logging.DEBUG):
    _setup(fmt, stream, logging.DEBUG)
    logging.getLogger("batchgen").propagate = True
progress.setup_logging = at_debug
import batchgen.run.session as session
from batchgen.run.runner import RunOptions
FAST = dict(first_poll=0.02, min_poll_interval=0.01, backoff_base=0.01, backoff_cap=0.1)
session.RunOptions = lambda **kw: RunOptions(**{**FAST, **kw})
from batchgen.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _child(args: list[str], *, umask: int | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MODELLIX_API_KEY": CANARY, "PYTHONPATH": str(REPO)}

    def preexec() -> None:
        if umask is not None:
            os.umask(umask)

    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
        preexec_fn=preexec,  # noqa: PLW1509 - only os.umask, async-signal-safe enough
    )


def test_canary_key_in_a_child_process_killed_mid_run_and_resumed(
    tmp_path: Path, canary_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = Simulator(sim_config(api_key=CANARY, time_scale=0.05, seed=4))  # 0.5 s tasks
    run_dir = tmp_path / "run"
    manifest = write_manifest(tmp_path, 6)
    with serve_in_thread(sim) as slow_url:
        argv = ["run", str(manifest), "--output", str(run_dir), "--base-url", slow_url]
        proc = _child([*argv, "--log-format", "json"])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if (run_dir / "state.db-wal").exists():
                try:
                    with StateStore.open_readonly(run_dir) as store:
                        if store.counts()["running"]:
                            break
                except StateError:
                    pass  # being created
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
        assert (run_dir / "state.db-wal").exists()  # the WAL is searched as it was left
        assert_no_canary(out.decode(), err.decode())
        assert_no_canary_in_dir(tmp_path)
    # Resume in a child at DEBUG against the fast server, text logs.
    proc = _child(["run", str(run_dir), "--base-url", canary_url])
    out, err = proc.communicate(timeout=120)
    stopped = [line for line in err.decode().splitlines() if "ERROR" in line]
    assert proc.returncode in (0, 1), stopped[:5]
    assert b"httpx" in err or b"httpcore" in err
    assert_no_canary(out.decode(), err.decode())
    assert_no_canary_in_dir(tmp_path)
    assert_no_canary(_status_and_export(run_dir, capsys))


# --------------------------------------------------------------------- insecure URLs
@pytest.mark.parametrize(
    "url",
    [
        "http://api.modellix.example",
        "http://127.0.0.1.nip.example",
        "http://localhost.evil.example",
        "http://10.0.0.7:8080",
        "http://[::ffff:8.8.8.8]",
        "ftp://127.0.0.1",
        "http://user:pw@api.example.com",
        "https://",
        "api.modellix.ai",
    ],
)
def test_key_is_refused_on_non_https_non_loopback_base_urls(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        ModellixClient(url, CANARY)
    assert_no_canary(str(info.value), repr(info.value))
    monkeypatch.setenv("MODELLIX_API_KEY", CANARY)
    run_dir = tmp_path / "run"
    argv = ["run", str(write_manifest(tmp_path, 1)), "--output", str(run_dir)]
    code = main([*argv, "--base-url", url])
    captured = capsys.readouterr()
    assert code == 3, captured.err
    assert "https" in captured.err or "base URL" in captured.err
    assert_no_canary(captured.out, captured.err)
    if run_dir.exists():
        with StateStore.open_readonly(run_dir) as store:
            assert store.counts()["submitting"] + store.counts()["running"] == 0
        assert_no_canary_in_dir(run_dir)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "http://localhost", "http://[::1]:9"])
def test_loopback_http_is_allowed(url: str) -> None:
    ModellixClient(url, CANARY)


# ----------------------------------------------------------------------- permissions
def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(
    "umask",
    [0o000, *(pytest.param(m, marks=pytest.mark.slow) for m in (0o022, 0o027, 0o077))],
)
def test_run_dir_and_state_files_are_owner_only_whatever_the_umask(
    tmp_path: Path, canary_url: str, umask: int
) -> None:
    run_dir = tmp_path / "deep" / "run"
    argv = ["run", str(write_manifest(tmp_path, 2)), "--output", str(run_dir)]
    proc = _child([*argv, "--base-url", canary_url], umask=umask)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert _mode(run_dir) == 0o700
    assert _mode(run_dir / "images") == 0o700
    for name in ("state.db", "run.lock", "metadata.jsonl"):
        assert _mode(run_dir / name) == 0o600, name
    for image in (run_dir / "images").iterdir():
        assert _mode(image) == 0o600, image
    # While a writer has it open, the WAL and shared-memory files are owner-only too.
    old = os.umask(umask)
    try:
        with StateStore.open(run_dir, create=False) as store:
            store.update_settings({"touched": True})
            for name in ("state.db-wal", "state.db-shm"):
                assert _mode(run_dir / name) == 0o600, name
    finally:
        os.umask(old)
