"""The state file: schema, permissions, transitions, durability and the run lock."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from batchgen.store.state import (
    ALL_STATES,
    TRANSITIONS,
    IllegalTransition,
    ResultInfo,
    RunLocked,
    StateError,
    StateStore,
    StateVersionError,
    StateWriteError,
    acquire_run_lock,
    lock_holder,
)


@dataclass(frozen=True)
class FakeJob:
    job_id: str
    body: dict[str, Any] = field(default_factory=lambda: {"prompt": "a red fox"})
    model: str = "openai/gpt-image-1.5"
    repeat_index: int = 0
    group: str = "jobs[0]"


def jobs(n: int, prefix: str = "j") -> list[FakeJob]:
    return [
        FakeJob(f"{prefix}{i:05d}", {"prompt": f"fox {i}", "size": "1024x1024"}) for i in range(n)
    ]


def test_new_state_file_is_owner_only_and_in_wal_mode(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with StateStore.open(run, settings={"model": "openai/gpt-image-1.5"}) as store:
        store.add_jobs(jobs(3))
        assert stat.S_IMODE(os.stat(run).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(run / "state.db").st_mode) == 0o600
        assert stat.S_IMODE(os.stat(run / "state.db-wal").st_mode) == 0o600
    conn = sqlite3.connect(run / "state.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_settings_are_stored_and_merged(tmp_path: Path) -> None:
    with StateStore.open(tmp_path, settings={"model": "m", "limits": {"rate": 4.0}}) as store:
        assert store.settings()["model"] == "m"
        assert "created_at" in store.settings()
    with StateStore.open(tmp_path, settings={"base_url": "http://127.0.0.1:1"}) as store:
        assert store.settings()["model"] == "m"
        assert store.settings()["base_url"] == "http://127.0.0.1:1"


def test_bodies_and_fields_round_trip(tmp_path: Path) -> None:
    job = FakeJob("abc", {"prompt": "ünïcode fox", "size": "1536x1024"}, repeat_index=2, group="g")
    with StateStore.open(tmp_path) as store:
        assert store.add_jobs([job]) == 1
        assert store.add_jobs([job]) == 0
        rec = store.get("abc")
    assert rec.body == job.body
    assert (rec.repeat_index, rec.group, rec.state, rec.attempts) == (2, "g", "pending", 0)


def test_newer_schema_version_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    StateStore.open(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "state.db")
    conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(StateVersionError, match="newer"):
        StateStore.open(tmp_path)
    with pytest.raises(StateVersionError):
        StateStore.open_readonly(tmp_path)


def test_corrupt_state_file_is_a_state_error(tmp_path: Path) -> None:
    (tmp_path / "state.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError, match=r"corrupt|not a batchgen"):
        StateStore.open(tmp_path)


def test_missing_state_file_is_a_state_error(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="no state file"):
        StateStore.open_readonly(tmp_path)
    with pytest.raises(StateError, match="no state file"):
        StateStore.open(tmp_path, create=False)


def test_sync_adds_new_jobs_and_leaves_missing_ones_alone(tmp_path: Path) -> None:
    with StateStore.open(tmp_path) as store:
        first = store.sync_jobs(jobs(5))
        assert (first.added, first.orphaned, first.total) == (5, 0, 5)
        store.mark_submitting("j00000")
        store.mark_running("j00000", "task-0", None)
        second = store.sync_jobs([*jobs(5)[2:], FakeJob("new")])
        assert (second.added, second.orphaned, second.inactive, second.total) == (1, 2, 2, 6)
        # Left alone: still there, progress untouched, just not active.
        kept = store.get("j00000")
        assert (kept.state, kept.task_id, kept.active) == ("running", "task-0", False)
        assert [j.job_id for _, j in store.pending_page(0, 100)] == [
            "j00002",
            "j00003",
            "j00004",
            "new",
        ]
        third = store.sync_jobs(jobs(5))
        assert (third.reactivated, third.orphaned) == (2, 1)


def test_a_full_state_file_refuses_the_transaction_in_words_and_keeps_what_was_there(
    tmp_path: Path,
) -> None:
    with StateStore.open(tmp_path) as store:
        store.add_jobs(jobs(3))
        pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
        store._conn.execute(f"PRAGMA max_page_count = {pages}")  # the file cannot grow
        with pytest.raises(StateWriteError, match="cannot write the state file"):
            store.add_jobs(jobs(2000, prefix="big"))
        assert len(store.job_ids()) == 3  # rolled back: not one of the 2,000 rows
        assert store.mark_submitting("j00000") == 1  # and the file still takes transactions
        with pytest.raises(IllegalTransition):
            store.mark_done("j00001", ResultInfo("images/j00001.png", "ab" * 32, 10, "png"))
        assert store.get("j00001").state == "pending"


def test_transitions_write_the_row_and_an_event(tmp_path: Path) -> None:
    with StateStore.open(tmp_path) as store:
        store.add_jobs(jobs(1))
        assert store.mark_submitting("j00000") == 1
        store.mark_running("j00000", "task-1", "http://127.0.0.1/api/v1/tasks/task-1")
        store.mark_downloading("j00000")
        done = store.mark_done(
            "j00000", ResultInfo("images/j00000.png", "ab" * 32, 10, "png", 4, 4)
        )
        rec = store.get("j00000")
        assert done == rec  # the record mark_done returns is the row as written
        assert (rec.state, rec.task_id, rec.result_path, rec.width) == (
            "done",
            "task-1",
            "images/j00000.png",
            4,
        )
        assert rec.submitted_at is not None
        assert rec.finished_at is not None
        events = [(e.from_state, e.to_state) for e in store.events("j00000")]
        assert events == [
            ("pending", "submitting"),
            ("submitting", "running"),
            ("running", "downloading"),
            ("downloading", "done"),
        ]
        with pytest.raises(IllegalTransition):
            store.mark_submitting("j00000")


def test_refunded_attempt_does_not_count(tmp_path: Path) -> None:
    with StateStore.open(tmp_path) as store:
        store.add_jobs(jobs(1))
        store.mark_submitting("j00000")
        assert store.mark_pending("j00000", "429", refund_attempt=True) == 0
        assert store.mark_submitting("j00000") == 1
        assert store.mark_pending("j00000", "500") == 1


def test_crash_in_submitting_is_recovered_for_resubmission_or_failed(tmp_path: Path) -> None:
    with StateStore.open(tmp_path) as store:
        store.add_jobs(jobs(2))
        store.mark_submitting("j00000")
        assert store.recover_submitting(resubmit=True) == ["j00000"]
        assert store.get("j00000").state == "pending"
        store.mark_submitting("j00001")
        assert store.recover_submitting(resubmit=False) == ["j00001"]
        failed = store.get("j00001")
        assert failed.state == "failed"
        assert "may exist remotely" in (failed.last_error or "")


def test_reset_puts_terminal_failures_back_to_pending(tmp_path: Path) -> None:
    with StateStore.open(tmp_path) as store:
        store.add_jobs(jobs(2))
        store.mark_submitting("j00000")
        store.mark_rejected("j00000", "400 bad size")
        assert store.reset(["j00000", "j00001"]) == 1
        rec = store.get("j00000")
        assert (rec.state, rec.attempts) == ("pending", 0)


def test_reader_sees_committed_state_while_writer_is_open(tmp_path: Path) -> None:
    with StateStore.open(tmp_path) as writer:
        writer.add_jobs(jobs(3))
        writer.mark_submitting("j00001")
        with StateStore.open_readonly(tmp_path / "state.db") as reader:
            assert reader.counts()["submitting"] == 1
            writer.mark_running("j00001", "t", None)
            assert reader.counts()["running"] == 1
            with pytest.raises(StateError):
                reader.mark_downloading("j00001")


def _walk_jobs(store: StateStore, ids: list[str]) -> None:
    for job_id in ids:
        store.mark_submitting(job_id)
        store.mark_running(job_id, f"t-{job_id}", None)


def test_background_checkpoints_fold_the_wal_into_the_file_off_the_writer(
    tmp_path: Path,
) -> None:
    with StateStore.open(tmp_path) as store:
        store.add_jobs(jobs(400))
        store.close()
    with StateStore.open(tmp_path) as store:
        size_before = (tmp_path / "state.db").stat().st_size
        with store.background_checkpoints(interval=0.01, backstop_pages=1_000_000):
            assert store._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1_000_000
            _walk_jobs(store, [f"j{i:05d}" for i in range(400)])
            grown = False
            for _ in range(500):  # bounded: the worker checkpoints every 10 ms
                if (tmp_path / "state.db").stat().st_size > size_before:
                    grown = True
                    break
                threading.Event().wait(0.01)
            assert grown, "the worker thread never checkpointed the WAL"
        assert store._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
        assert not [t for t in threading.enumerate() if t.name == "batchgen-wal-checkpoint"]
        assert store.counts()["running"] == 400
    with StateStore.open_readonly(tmp_path) as reader:
        assert reader.get("j00399").task_id == "t-j00399"


def test_background_checkpoints_backstop_bounds_the_wal(tmp_path: Path) -> None:
    with StateStore.open(tmp_path) as store:
        store.add_jobs(jobs(1500))
        # The worker never gets a turn (one hour): only the writer's backstop checkpoints.
        with store.background_checkpoints(interval=3600.0, backstop_pages=64):
            _walk_jobs(store, [f"j{i:05d}" for i in range(1500)])
            wal = (tmp_path / "state.db-wal").stat().st_size
        assert wal < 200 * 4096
        assert store.counts()["running"] == 1500


def test_task_id_survives_sigkill_right_after_it_is_recorded(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal
        from batchgen.store.state import StateStore
        from dataclasses import dataclass
        @dataclass(frozen=True)
        class J:
            job_id: str = "k"; model: str = "m"; body: dict = None; repeat_index: int = 0
            group: str = "g"
        store = StateStore.open({str(tmp_path)!r})
        store.add_jobs([J(body={{"prompt": "x"}})])
        store.mark_submitting("k")
        store.mark_running("k", "task-survives", None)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], check=False)
    assert done.returncode == -signal.SIGKILL
    with StateStore.open(tmp_path) as store:
        rec = store.get("k")
    assert (rec.state, rec.task_id) == ("running", "task-survives")


def test_second_lock_names_the_holder_pid(tmp_path: Path) -> None:
    with acquire_run_lock(tmp_path):
        with pytest.raises(RunLocked, match=str(os.getpid())) as locked:
            acquire_run_lock(tmp_path)
        assert locked.value.pid == os.getpid()
        assert lock_holder(tmp_path) == os.getpid()
    assert lock_holder(tmp_path) is None
    acquire_run_lock(tmp_path).release()


def test_lock_of_a_killed_process_is_taken_over(tmp_path: Path) -> None:
    script = (
        "import os, signal, sys\n"
        "from batchgen.store.state import acquire_run_lock\n"
        f"acquire_run_lock({str(tmp_path)!r})\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], check=False)
    assert done.returncode == -signal.SIGKILL
    assert (tmp_path / "run.lock").read_text().strip().isdigit()  # stale pid left behind
    with acquire_run_lock(tmp_path):
        assert lock_holder(tmp_path) == os.getpid()


def test_lock_held_by_live_process_is_respected(tmp_path: Path) -> None:
    script = (
        "import sys, time\n"
        "from batchgen.store.state import acquire_run_lock\n"
        f"acquire_run_lock({str(tmp_path)!r})\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunLocked) as locked:
            acquire_run_lock(tmp_path)
        assert locked.value.pid == proc.pid
    finally:
        proc.communicate("", timeout=30)
    acquire_run_lock(tmp_path).release()


_OPS = ("submitting", "running", "downloading", "done", "pending", "failed", "rejected", "expired")


class TransitionMachine(RuleBasedStateMachine):
    """Random operations on a few jobs: legal ones succeed, illegal ones change nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp: Any = None
        self.model: dict[str, str] = {}
        self.events = 0

    @initialize(tmp=st.just(None))
    def setup(self, tmp: None) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.store = StateStore.open(Path(self.tmp.name))
        self.store.add_jobs(jobs(3))
        self.model = {f"j{i:05d}": "pending" for i in range(3)}

    @rule(index=st.integers(0, 2), op=st.sampled_from(_OPS))
    def move(self, index: int, op: str) -> None:
        job_id = f"j{index:05d}"
        before = self.model[job_id]
        calls = {
            "submitting": lambda: self.store.mark_submitting(job_id),
            "running": lambda: self.store.mark_running(job_id, f"task-{job_id}", None),
            "downloading": lambda: self.store.mark_downloading(job_id),
            "done": lambda: self.store.mark_done(
                job_id, ResultInfo(f"images/{job_id}.png", "0" * 64, 1, "png")
            ),
            "pending": lambda: self.store.mark_pending(job_id, "retry"),
            "failed": lambda: self.store.mark_failed(job_id, "boom"),
            "rejected": lambda: self.store.mark_rejected(job_id, "400"),
            "expired": lambda: self.store.mark_expired(job_id, "gone"),
        }
        legal = op in TRANSITIONS[before]
        if legal:
            calls[op]()
            self.model[job_id] = op
            self.events += 1
        else:
            with pytest.raises(IllegalTransition):
                calls[op]()

    @rule(index=st.integers(0, 2))
    def reset(self, index: int) -> None:
        job_id = f"j{index:05d}"
        moved = self.store.reset([job_id])
        if self.model[job_id] in ("failed", "rejected", "expired"):
            assert moved == 1
            self.model[job_id] = "pending"
            self.events += 1
        else:
            assert moved == 0

    @invariant()
    def file_matches_model(self) -> None:
        if not self.model:
            return
        for job_id, state in self.model.items():
            rec = self.store.get(job_id)
            assert rec.state == state
            assert state in ALL_STATES
            if state in ("running", "downloading"):
                assert rec.task_id == f"task-{job_id}"
        assert len(self.store.events()) == self.events

    def teardown(self) -> None:
        if self.tmp is not None:
            self.store.close()
            self.tmp.cleanup()


TestTransitionMachine = TransitionMachine.TestCase
TestTransitionMachine.settings = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
