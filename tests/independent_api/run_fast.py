"""Run ``batchgen run TARGET`` through the library with test-speed timing, in its own process.

The same session code as the ``run`` command (``batchgen.run.session.run_session``), but with
poll and backoff intervals scaled to a server whose tasks last tens of milliseconds, so a
test can SIGKILL it at random instants and resume it many times in a few seconds.

Usage: ``python run_fast.py MANIFEST|RUN_DIR --base-url URL [--seed N]``; the key comes from
``MODELLIX_API_KEY``. Prints the summary as one JSON line and exits with the run's exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

from batchgen.run.session import RunRequest, SessionError, run_session

FAST_OPTIONS = {
    "first_poll": 0.02,
    "min_poll_interval": 0.01,
    "max_poll_interval": 0.1,
    "backoff_base": 0.005,
    "backoff_cap": 0.05,
    "throttle_pause": 0.01,
    "progress_interval": 0.05,
}


async def _main(req: RunRequest) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    summary = await run_session(req, stop=stop)
    print(json.dumps(summary.as_dict(), sort_keys=True), flush=True)
    return summary.exit_code


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the session, return its exit code."""
    parser = argparse.ArgumentParser()
    parser.add_argument("target", type=Path)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-runtime", type=float, default=120.0)
    args = parser.parse_args(argv)
    req = RunRequest(
        target=args.target,
        base_url=args.base_url,
        max_runtime=args.max_runtime,
        progress_bar=False,
        options={**FAST_OPTIONS, "seed": args.seed},
    )
    try:
        return asyncio.run(_main(req))
    except SessionError as exc:
        print(f"run_fast: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
