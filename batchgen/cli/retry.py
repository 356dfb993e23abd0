"""`batchgen retry RUN`: put failed/rejected/expired jobs back to pending and run them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from batchgen.cli._runargs import (
    BASE_URL_RULE,
    add_limit_arguments,
    add_log_format_argument,
    run_and_report,
    run_request,
)
from batchgen.cli.validate import add_schemas
from batchgen.errors import ExitCode
from batchgen.reports.status import clean_text
from batchgen.run.progress import setup_logging
from batchgen.run.retry import reset_for_retry


def add_parser(subparsers: Any) -> None:
    """Register `retry`."""
    parser = subparsers.add_parser(
        "retry",
        help="rerun failed/rejected/expired jobs of a run from its state file alone",
        description="Reset the chosen jobs to pending (attempts start again from zero; the "
        "history stays in the state file's events) and run them like `batchgen run RUN`: same "
        "pool, limits (stored in the state file, overridable here), output and exit codes. "
        "Without a selection, failed and expired jobs are retried. A job whose body is invalid "
        "against its model's schema (e.g. a rejected one) is refused with the reason unless "
        "--set fixes it; an edited job keeps its ID and the edit is recorded in its events. "
        "Exit codes: as `run`; 2 when every chosen job was refused or a job ID is unknown.",
    )
    parser.add_argument("run", metavar="RUN", help="run directory or its state.db")
    parser.add_argument("--failed", action="store_true", help="retry every failed job")
    parser.add_argument("--rejected", action="store_true", help="retry every rejected job")
    parser.add_argument("--expired", action="store_true", help="retry every expired job")
    parser.add_argument(
        "--job", action="append", default=[], metavar="ID", help="retry this job (repeatable)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="edit the body of every retried job (validated against the model's schema)",
    )
    parser.add_argument("--simulate", action="store_true", help="use the built-in fake API")
    parser.add_argument(
        "--base-url",
        metavar="URL",
        help="API base URL (default: env MODELLIX_BASE_URL, else the one stored in the run "
        f"directory); {BASE_URL_RULE}",
    )
    add_limit_arguments(parser, max_runtime_help="stop submitting after T (exit 75)")
    add_log_format_argument(parser)
    add_schemas(parser)
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    """Reset the chosen jobs and run them; return the exit code."""
    setup_logging(args.log_format)
    states = [s for s in ("failed", "rejected", "expired") if getattr(args, s)]
    if not states and not args.job:
        states = ["failed", "expired"]
    plan = reset_for_retry(Path(args.run), states=states, job_ids=args.job, sets=args.set)
    for job_id, state in plan.skipped:
        print(f"batchgen retry: job {job_id} is {state}, not retried", file=sys.stderr)
    for job_id, reason in plan.refused:
        print(
            f"batchgen retry: job {job_id} refused: {clean_text(reason, 300)} "
            "(fix it with --set FIELD=VALUE)",
            file=sys.stderr,
        )
    if not plan.reset:
        if plan.refused:
            return ExitCode.USAGE
        print("nothing to retry", file=sys.stderr)
        return ExitCode.OK
    edited = f" ({len(plan.edited)} with an edited body)" if plan.edited else ""
    print(f"retrying {len(plan.reset)} job(s){edited}", file=sys.stderr)
    req = run_request(args, Path(args.run))
    return run_and_report(req, log_format=args.log_format)
