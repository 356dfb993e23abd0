"""`batchgen run MANIFEST|RUN_DIR`: run (or resume) every job; print progress and a summary."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from batchgen.cli import EXIT_INTERRUPTED, EXIT_STOPPED, EXIT_USAGE
from batchgen.diagnostics import ManifestError
from batchgen.manifest import parse_duration, parse_rate
from batchgen.progress import setup_logging
from batchgen.runner import RunSummary
from batchgen.session import RunRequest, SessionError, run_session
from batchgen.shard import Shard, ShardError, parse_shard
from batchgen.state import RunLocked, StateError

logger = logging.getLogger("batchgen.run")


def _positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def _rate(text: str) -> float:
    try:
        return parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"invalid rate {text!r} ({exc}); e.g. 4/s, 240/m"
        ) from None


def _duration(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r} ({exc}); e.g. 90s, 30m, 2h"
        ) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be more than zero: {text!r}")
    return seconds


def _shard(text: str) -> Shard:
    try:
        return parse_shard(text)
    except ShardError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(subparsers: Any) -> None:
    """Register `run`."""
    parser = subparsers.add_parser(
        "run",
        help="run a manifest (or resume a run directory) to the end",
        description="Submit every job of MANIFEST, poll and download the results into the run "
        "directory; running it again resumes. RUN_DIR resumes from its state file alone. "
        "Exit codes: 0 all done, 1 some jobs failed/rejected/expired, 2 invalid manifest or "
        "usage, 3 stopped by auth/payment/configuration (including a missing MODELLIX_API_KEY), "
        "75 run directory locked by another run or --max-runtime reached with work left, "
        "130 interrupted.",
    )
    parser.add_argument("target", metavar="MANIFEST|RUN_DIR")
    parser.add_argument(
        "--simulate",
        action="store_true",
        help="use the built-in fake API (no key needed; time runs 10x faster)",
    )
    parser.add_argument(
        "--base-url", metavar="URL", help="API base URL (env MODELLIX_BASE_URL); https only"
    )
    parser.add_argument(
        "--output", metavar="DIR", help="run directory ({name} and {date} are filled in)"
    )
    parser.add_argument("--concurrency", type=_positive_int, metavar="N", help="tasks in flight")
    parser.add_argument("--rate", type=_rate, metavar="R", help="submissions per second (4/s)")
    parser.add_argument("--retries", type=_count, metavar="N", help="retries per job")
    parser.add_argument("--timeout", type=_duration, metavar="T", help="per-task deadline (30m)")
    parser.add_argument(
        "--submits-in-flight",
        type=_positive_int,
        metavar="N",
        help="submit requests awaiting their answer at once (default 1: a crash can orphan at "
        "most one accepted task; raise it for a slow submit round trip)",
    )
    parser.add_argument(
        "--max-runtime",
        type=_duration,
        metavar="T",
        help="stop submitting after T and exit 75 when work is left (2h)",
    )
    parser.add_argument(
        "--max-jobs",
        type=_positive_int,
        default=1_000_000,
        metavar="N",
        help="refuse manifests that expand to more than N jobs (default 1,000,000)",
    )
    parser.add_argument(
        "--shard",
        type=_shard,
        metavar="i/N",
        help="run only shard i of N (a deterministic slice of the job IDs) in its own run "
        "directory (suffix -shard-i-of-N); `batchgen export` merges the shards",
    )
    parser.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="log lines on stderr"
    )
    parser.set_defaults(handler=handle)


def _print_summary(summary: RunSummary, fmt: str) -> None:
    if fmt == "json":
        print(json.dumps({"event": "summary", **summary.as_dict()}, sort_keys=True))
    else:
        print(summary.format())


async def _main(req: RunRequest) -> RunSummary:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        return await run_session(req, stop=stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def handle(args: argparse.Namespace) -> int:
    """Run the manifest or resume the run directory; return the exit code."""
    setup_logging(args.log_format)
    req = RunRequest(
        target=Path(args.target),
        simulate=args.simulate,
        base_url=args.base_url,
        output=Path(args.output) if args.output else None,
        concurrency=args.concurrency,
        rate=args.rate,
        retries=args.retries,
        timeout=args.timeout,
        submits_in_flight=args.submits_in_flight,
        max_runtime=args.max_runtime,
        max_jobs=args.max_jobs,
        shard=args.shard,
        progress_bar=None if args.log_format == "text" else False,
    )
    try:
        summary = asyncio.run(_main(req))
    except ManifestError as exc:
        for diagnostic in exc.diagnostics:
            print(diagnostic.format(), file=sys.stderr)
        return EXIT_USAGE
    except RunLocked as exc:
        print(f"batchgen run: {exc}", file=sys.stderr)
        return 75
    except SessionError as exc:
        print(f"batchgen run: {exc}", file=sys.stderr)
        return exc.exit_code
    except StateError as exc:  # e.g. the disk filled up while writing the state file
        print(f"batchgen run: {exc}", file=sys.stderr)
        return EXIT_STOPPED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    _print_summary(summary, args.log_format)
    return summary.exit_code
