"""Finding run directories: what to suggest when a command names one that does not exist."""

from __future__ import annotations

import difflib
from pathlib import Path

from batchgen.store.errors import NoStateFile
from batchgen.store.schema import DB_NAME

__all__ = ["missing_run_error", "nearest_run_dirs"]


def nearest_run_dirs(run: Path, *, limit: int = 3) -> list[Path]:
    """The run directories beside ``run`` (siblings holding a ``state.db``) whose names are
    most like its name, most similar first; at most ``limit``, none when nothing is alike."""
    run = Path(run)
    if run.name == DB_NAME:
        run = run.parent
    parent = run.parent
    try:
        names = [
            entry.name
            for entry in parent.iterdir()
            if entry.name != run.name and (entry / DB_NAME).is_file()
        ]
    except OSError:
        return []
    return [parent / n for n in difflib.get_close_matches(run.name, names, n=limit, cutoff=0.3)]


def missing_run_error(run: Path) -> NoStateFile:
    """The error for a ``run`` (directory or its ``state.db``) that has no state file: says
    which of the two is missing and suggests :func:`nearest_run_dirs` (exit 2)."""
    run = Path(run)
    run_dir = run.parent if run.name == DB_NAME else run
    if run_dir.is_dir():
        text = f"{run_dir} is not a run directory (no state file {DB_NAME} in it)"
    else:
        text = f"no run directory at {run_dir}"
    near = nearest_run_dirs(run_dir)
    if near:
        text += "; did you mean " + " or ".join(str(p) for p in near) + "?"
    return NoStateFile(text)
