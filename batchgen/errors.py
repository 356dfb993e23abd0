"""The root of batchgen's errors and the one table of exit codes.

Every error batchgen raises on purpose derives from :class:`BatchgenError` and carries the
exit code a command ends with when that error stops it; ``batchgen.cli.main`` maps errors
to codes through :attr:`BatchgenError.exit_code` and nothing else.
"""

from __future__ import annotations

import enum

__all__ = ["BatchgenError", "ExitCode"]


class ExitCode(enum.IntEnum):
    """Exit codes of every ``batchgen`` command (docs/exit-codes.md)."""

    OK = 0
    """Every job is done (or, for read-only commands, the command did what it was asked)."""
    JOBS_FAILED = 1
    """Some jobs ended failed, rejected or expired."""
    USAGE = 2
    """Bad command line or invalid manifest; nothing was sent."""
    STOPPED = 3
    """Stopped by an authentication, payment, budget or configuration error."""
    TEMPFAIL = 75
    """The run directory is locked by another run, or the deadline came with work left."""
    INTERRUPTED = 130
    """SIGINT or SIGTERM: the run stopped submitting and saved its state."""


class BatchgenError(Exception):
    """Base of every error batchgen raises on purpose; ``exit_code`` says how a command ends."""

    exit_code: ExitCode = ExitCode.STOPPED
