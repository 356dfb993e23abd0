"""The event loop a run uses: uvloop's where it is installed, else asyncio's own.

uvloop (libuv under asyncio's API) runs the loop's own machinery in C, which leaves more CPU
for the runner (figures in docs/performance.md).  It is a dependency on Linux and macOS;
elsewhere, or with ``BATCHGEN_LOOP=asyncio`` in the environment, runs use asyncio's loop,
and behave the same.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["LOOP_ENV", "run"]

T = TypeVar("T")

#: Set to ``asyncio`` to run on asyncio's own loop even where uvloop is installed.
LOOP_ENV = "BATCHGEN_LOOP"


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on uvloop's loop when it is installed and not turned off."""
    if os.environ.get(LOOP_ENV, "").strip().lower() != "asyncio":
        try:
            import uvloop  # noqa: PLC0415 - optional, and only when a run starts
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)
