"""`batchgen plan MANIFEST [--json]`: what a run would do; nothing is sent."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any

from batchgen.cli._runargs import positive_int
from batchgen.cli.validate import add_max_jobs, add_schemas
from batchgen.errors import ExitCode
from batchgen.manifest.diagnostics import Diagnostic, ManifestError
from batchgen.manifest.loader import load_manifest
from batchgen.manifest.plan import build_plan, format_plan
from batchgen.store.errors import StateError
from batchgen.store.state import StateStore


def add_parser(subparsers: Any) -> None:
    """Register `plan`."""
    parser = subparsers.add_parser(
        "plan",
        help="count jobs by model and field, show sample bodies; nothing is sent",
        description="Expand a manifest and summarise the jobs a run would send.",
    )
    parser.add_argument("manifest", metavar="MANIFEST")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--samples", type=positive_int, default=3, metavar="N", help="sample bodies to show"
    )
    parser.add_argument(
        "--output",
        metavar="DIR",
        help="the run directory, as for `batchgen run` ({name} and {date} are filled in); "
        "jobs already done there are not billed again",
    )
    add_max_jobs(parser)
    add_schemas(parser)
    parser.set_defaults(handler=handle)


def known_jobs(run_dir: Path) -> dict[str, tuple[str, int]]:
    """``job_id -> (state, attempts)`` of the jobs already in ``run_dir`` (none when it has
    no readable state file)."""
    try:
        with StateStore.open_readonly(run_dir) as store:
            return {job.job_id: (job.state, job.attempts) for job in store.iter_jobs()}
    except StateError:
        return {}


def handle(args: argparse.Namespace) -> int:
    """Print the plan, or the manifest's errors (exit 2)."""
    try:
        manifest = load_manifest(args.manifest, max_jobs=args.max_jobs)
        today = datetime.date.today()
        run_dir = manifest.run_dir(today, args.output)
        plan = build_plan(
            manifest,
            today=today,
            samples=args.samples,
            known=known_jobs(run_dir),
            run_dir=run_dir,
        )
    except ManifestError as exc:
        diagnostics = exc.diagnostics
    except Exception as exc:  # last resort: a message, never a traceback
        message = f"internal error while planning: {type(exc).__name__}: {exc}"
        diagnostics = [Diagnostic(args.manifest, 0, 0, "", message, hint="please report it")]
    else:
        if args.json:
            plan.pop("warning_lines", None)
            print(json.dumps(plan, indent=2, ensure_ascii=False))
        else:
            print(format_plan(plan))
        return ExitCode.OK
    if args.json:
        doc = {"valid": False, "errors": [d.to_dict() for d in diagnostics]}
        print(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        for diagnostic in diagnostics:
            print(diagnostic.format(), file=sys.stderr)
    return ExitCode.USAGE
