"""`batchgen run MANIFEST|RUN_DIR`: run (or resume) every job; print progress and a summary."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from batchgen.cli._runargs import (
    BASE_URL_RULE,
    add_limit_arguments,
    add_log_format_argument,
    positive_int,
    run_and_report,
    run_request,
)
from batchgen.cli.validate import add_schemas
from batchgen.manifest.loader import DEFAULT_MAX_JOBS
from batchgen.manifest.shard import Shard, ShardError, parse_shard
from batchgen.run.progress import setup_logging

logger = logging.getLogger("batchgen.run")


def _shard(text: str) -> Shard:
    try:
        return parse_shard(text)
    except ShardError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


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
        help="use the built-in fake API (no key needed; time runs 10x faster); its tasks are "
        "kept in the run directory (simulator.db), so a killed run resumes them",
    )
    parser.add_argument(
        "--simulate-latency",
        type=_seconds,
        metavar="S",
        help="with --simulate: each task takes S simulated seconds (default 10, i.e. 1 s)",
    )
    parser.add_argument(
        "--base-url",
        metavar="URL",
        help=f"API base URL (env MODELLIX_BASE_URL); {BASE_URL_RULE}",
    )
    parser.add_argument(
        "--output", metavar="DIR", help="run directory ({name} and {date} are filled in)"
    )
    add_limit_arguments(
        parser, max_runtime_help="stop submitting after T and exit 75 when work is left (2h)"
    )
    parser.add_argument(
        "--max-jobs",
        type=positive_int,
        default=DEFAULT_MAX_JOBS,
        metavar="N",
        help=f"refuse manifests that expand to more than N jobs (default {DEFAULT_MAX_JOBS:,})",
    )
    parser.add_argument(
        "--shard",
        type=_shard,
        metavar="i/N",
        help="run only shard i of N (a deterministic slice of the job IDs) in its own run "
        "directory (suffix -shard-i-of-N); `batchgen export` merges the shards",
    )
    add_log_format_argument(parser)
    add_schemas(parser)
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    """Run the manifest or resume the run directory; return the exit code."""
    setup_logging(args.log_format)
    req = run_request(
        args,
        Path(args.target),
        output=Path(args.output) if args.output else None,
        max_jobs=args.max_jobs,
        shard=args.shard,
        simulate_latency=args.simulate_latency,
    )
    return run_and_report(req, log_format=args.log_format)
