"""Which submit path each model of a run uses, and the fallback when a submit answers 404.

A submit that answers 404 created no task. :class:`SubmitPaths` then moves the model to its
next documented path shape (:attr:`batchgen.manifest.modelspec.ModelSpec.submit_path_candidates`:
the schema's ``submit_paths``, then the provider's other shapes), each tried once per run, and
records the path that is now in use in the state file's run settings (key
:data:`SUBMIT_PATHS_KEY`, ``{model: path}``) so a resume starts there. When every shape has
answered 404 the model is unknown to the provider: the 404 stops the run as before. A path
given by the caller (``RunOptions.submit_path``) is used alone, without fallback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from batchgen.store.state import StateStore

__all__ = ["SUBMIT_PATHS_KEY", "SubmitPaths"]

logger = logging.getLogger("batchgen.run")

#: The run settings' key of the submit path each model uses (``{model: path}``).
SUBMIT_PATHS_KEY = "submit_paths"


def _candidates(model: str) -> tuple[str, ...]:
    from batchgen.manifest.modelspec import model_spec  # noqa: PLC0415 - keep the runner importable alone

    return model_spec(model).submit_path_candidates


class SubmitPaths:
    """The submit path of each model of one run (see the module doc)."""

    def __init__(self, store: StateStore, fixed: Callable[[str], str] | None = None) -> None:
        self._store = store
        self._fixed = fixed
        stored = store.settings().get(SUBMIT_PATHS_KEY)
        self._stored: dict[str, str] = dict(stored) if isinstance(stored, dict) else {}
        self._current: dict[str, str] = {}
        self._tried: dict[str, set[str]] = {}

    def path(self, model: str) -> str:
        """The path to submit ``model``'s jobs to now."""
        path = self._current.get(model)
        if path is None:
            if self._fixed is not None:
                path = self._fixed(model)
            else:
                candidates = _candidates(model)
                stored = self._stored.get(model)
                path = stored if stored in candidates else candidates[0]
            self._current[model] = path
        return path

    def not_found(self, model: str, path: str) -> bool:
        """A submit of ``model`` to ``path`` answered 404: move to the next untried shape.

        True when a submit should be tried again (on the new path, or on a path another
        submit already moved to); False when no documented shape is left."""
        current = self.path(model)
        if current != path:
            return True  # another submit already moved on
        if self._fixed is not None:
            return False
        tried = self._tried.setdefault(model, set())
        tried.add(path)
        for candidate in _candidates(model):
            if candidate not in tried:
                self._current[model] = candidate
                self._stored[model] = candidate
                self._store.update_settings({SUBMIT_PATHS_KEY: dict(self._stored)})
                logger.warning(
                    "%s: submit path %s answered 404; trying %s",
                    model,
                    path,
                    candidate,
                    extra={"data": {"event": "submit_path", "model": model, "path": candidate}},
                )
                return True
        return False
