"""`batchgen status RUN [--failed] [--json]`: what a run did, from its state file alone."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from batchgen.reports.status import format_status, status_report


def add_parser(subparsers: Any) -> None:
    """Register `status`."""
    parser = subparsers.add_parser(
        "status",
        help="show a run's progress and why jobs failed (safe while it runs)",
        description="Counts per state, failures grouped by reason with example job IDs and "
        "prompts, attempts, retries, 429s, start/end, images per minute and whether a run holds "
        "the lock now. Reads the state file only (never locks it), so it works while a run is "
        "writing. Exit codes: 0 every job done; 1 some jobs failed/rejected/expired (even if "
        "others are still pending); 75 no failure yet but jobs still pending or in flight (look "
        "again later); 2 RUN has no state file (the nearest run directories are suggested); "
        "3 the state file is damaged or newer than this batchgen.",
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
    """Print the status of the run; exit as :attr:`StatusReport.exit_code` says."""
    report = status_report(Path(args.run), examples=1_000_000_000 if args.failed else 3)
    if args.json:
        data = report.as_dict()
        if args.failed:
            data = {k: data[k] for k in ("run_dir", "counts", "failures")}
        print(json.dumps(data, ensure_ascii=False, sort_keys=True))
    else:
        print(format_status(report, failed_only=args.failed))
    return report.exit_code
