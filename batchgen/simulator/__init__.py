"""The fake provider: an ASGI app speaking the API, its settings, its PNG bytes.

``Simulator``, ``SimulatorConfig``, ``serve_in_thread`` and ``run_server`` are importable from
here as from :mod:`batchgen.simulator.app`; they are loaded on first use, so importing a
submodule (e.g. :mod:`batchgen.simulator.png`) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batchgen.simulator.app import Simulator, SimulatorConfig, run_server, serve_in_thread

__all__ = ["Simulator", "SimulatorConfig", "run_server", "serve_in_thread"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("batchgen.simulator.app"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
