"""batchgen: generate image datasets through asynchronous image APIs, driven by YAML manifests.

The public face for Python users (docs/python-api.md).  Names are imported on first use
(module ``__getattr__``), so ``import batchgen`` stays cheap and the command line's
``validate`` never loads the HTTP stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from batchgen.errors import BatchgenError, ExitCode

__version__ = "0.1.0"

# Public name -> the module that defines it.
_LAZY: dict[str, str] = {
    # load and plan a manifest
    "load_manifest": "batchgen.manifest.loader",
    "Manifest": "batchgen.manifest.loader",
    "build_plan": "batchgen.manifest.plan",
    # run it
    "run_session": "batchgen.run.session",
    "RunRequest": "batchgen.run.session",
    "run_jobs": "batchgen.run.runner",
    "RunOptions": "batchgen.run.options",
    "RunSummary": "batchgen.run.summary",
    # a run's state and what it did
    "StateStore": "batchgen.store.state",
    "status_report": "batchgen.reports.status",
    "StatusReport": "batchgen.reports.status",
    # the fake provider
    "Simulator": "batchgen.simulator.app",
    "SimulatorConfig": "batchgen.simulator.settings",
    # errors (all derive from BatchgenError)
    "ManifestError": "batchgen.manifest.diagnostics",
    "UnknownModelError": "batchgen.manifest.catalogue",
    "StateError": "batchgen.store.errors",
    "RunLocked": "batchgen.store.errors",
    "SessionError": "batchgen.run.session",
    "RetryError": "batchgen.run.retry",
}

__all__ = [
    "BatchgenError",
    "ExitCode",
    "Manifest",
    "ManifestError",
    "RetryError",
    "RunLocked",
    "RunOptions",
    "RunRequest",
    "RunSummary",
    "SessionError",
    "Simulator",
    "SimulatorConfig",
    "StateError",
    "StateStore",
    "StatusReport",
    "UnknownModelError",
    "__version__",
    "build_plan",
    "load_manifest",
    "run_jobs",
    "run_session",
    "status_report",
]

if TYPE_CHECKING:
    from batchgen.manifest.catalogue import UnknownModelError
    from batchgen.manifest.diagnostics import ManifestError
    from batchgen.manifest.loader import Manifest, load_manifest
    from batchgen.manifest.plan import build_plan
    from batchgen.reports.status import StatusReport, status_report
    from batchgen.run.options import RunOptions
    from batchgen.run.retry import RetryError
    from batchgen.run.runner import run_jobs
    from batchgen.run.session import RunRequest, SessionError, run_session
    from batchgen.run.summary import RunSummary
    from batchgen.simulator.app import Simulator
    from batchgen.simulator.settings import SimulatorConfig
    from batchgen.store.errors import RunLocked, StateError
    from batchgen.store.state import StateStore


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'batchgen' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
