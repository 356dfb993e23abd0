"""Headless Chromium, to look at a gallery page without a screen (screenshots, the DOM).

:func:`run_chromium` starts one headless Chromium with a private profile and every
background service that would reach the network switched off, waits for it (bounded by
``timeout``) and returns what it printed; ``--dump-dom`` and ``--screenshot=FILE`` are the
arguments that matter for a page on disk.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

__all__ = ["HEADLESS_FLAGS", "find_chromium", "run_chromium"]

#: Headless, no sandbox (containers), no GPU, no first-run UI and no background network.
HEADLESS_FLAGS: tuple[str, ...] = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def find_chromium() -> str | None:
    """The path of an installed Chromium (``chromium`` or ``chromium-browser``), or None."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def run_chromium(
    chromium: str, profile: Path, *args: str, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """Run ``chromium`` headless with ``profile`` as its user-data directory and ``args``."""
    return subprocess.run(
        [chromium, *HEADLESS_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
