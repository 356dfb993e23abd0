"""The simulator as a module-level ASGI app, for third-party servers and process managers:
``uvicorn batchgen.simulator.asgi:app``, ``hypercorn ...``, ``gunicorn -k
uvicorn.workers.UvicornWorker ...``.

Its knobs come from the environment variable ``BATCHGEN_SIMULATOR`` (a JSON object of
:class:`~batchgen.simulator.settings.SimulatorConfig` fields with plain values: numbers,
strings, ``null``); unset means the defaults. Each worker process has its own simulator (its
own tasks): with several workers, or workers that restart, a task is known only to the
process that accepted it.
"""

from __future__ import annotations

import json
import os

from batchgen.simulator.app import Simulator
from batchgen.simulator.settings import SimulatorConfig

__all__ = ["ENV_CONFIG", "app", "config_from_env"]

ENV_CONFIG = "BATCHGEN_SIMULATOR"


def config_from_env() -> SimulatorConfig:
    """The :class:`SimulatorConfig` that ``BATCHGEN_SIMULATOR`` describes (ValueError if bad)."""
    raw = os.environ.get(ENV_CONFIG, "").strip()
    knobs = json.loads(raw) if raw else {}
    if not isinstance(knobs, dict):
        raise ValueError(f"{ENV_CONFIG} must be a JSON object")
    return SimulatorConfig(**knobs)


app = Simulator(config_from_env())
