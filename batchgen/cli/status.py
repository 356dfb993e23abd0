"""`batchgen status RUN [--failed] [--json]`: what a run did, from its state file alone."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from batchgen.cli import EXIT_OK, EXIT_USAGE
from batchgen.reports.status import format_status, status_report
from batchgen.store.state import StateError


def add_parser(subparsers: Any) -> None:
    """Register `status`."""
    parser = subparsers.add_parser(
        "status",
        help="show a run's progress and why jobs failed (safe while it runs)",
        description="Counts per state, failures grouped by reason with example job IDs and "
        "prompts, attempts, retries, 429s, start/end, images per minute and whether a run holds "
        "the lock now. Reads the state file only (never locks it), so it works while a run is "
        "writing. Exit 0, or 2 when RUN has no state file.",
    )
    parser.add_argument("run", metavar="RUN", help="run directory or its state.db")
    parser.add_argument(
        "--failed",
        action="store_true",
        help="only the failed/rejected/expired jobs, every one of them",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object for scripts")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    """Print the status of the run."""
    try:
        report = status_report(Path(args.run), examples=1_000_000_000 if args.failed else 3)
    except StateError as exc:
        print(f"batchgen status: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        data = report.as_dict()
        if args.failed:
            data = {k: data[k] for k in ("run_dir", "counts", "failures")}
        print(json.dumps(data, ensure_ascii=False, sort_keys=True))
    else:
        print(format_status(report, failed_only=args.failed))
    return EXIT_OK
