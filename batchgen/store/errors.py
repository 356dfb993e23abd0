"""Errors of the state file and the run lock, each with its exit code (batchgen.errors)."""

from __future__ import annotations

from pathlib import Path

from batchgen.errors import BatchgenError, ExitCode

__all__ = [
    "IllegalTransition",
    "NoStateFile",
    "RunLocked",
    "StateError",
    "StateVersionError",
    "StateWriteError",
]


class StateError(BatchgenError):
    """The state file cannot be used (corrupt, unreadable, unwritable); the message says why.

    A damaged or newer state file stops a command with exit 3."""

    exit_code = ExitCode.STOPPED


class NoStateFile(StateError):
    """There is no state file where one was expected (a mistyped run directory): exit 2."""

    exit_code = ExitCode.USAGE


class StateWriteError(StateError):
    """A transaction could not be committed (disk full, I/O error...); nothing was written."""


class StateVersionError(StateError):
    """The state file was written by a newer batchgen with a schema this one cannot read."""


class IllegalTransition(StateError):
    """A job was asked to move to a state that is not reachable from its current one."""


class RunLocked(StateError):
    """Another process holds the run directory's lock: exit 75 (try again later)."""

    exit_code = ExitCode.TEMPFAIL

    def __init__(self, run_dir: Path, pid: int | None) -> None:
        who = f"process {pid}" if pid is not None else "another process"
        super().__init__(
            f"run directory {run_dir} is locked by {who} (a run is in progress); "
            "wait for it to finish or stop it first"
        )
        self.run_dir = run_dir
        self.pid = pid
