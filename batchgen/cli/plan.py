"""`batchgen plan MANIFEST [--json]`: what a run would do; nothing is sent."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from typing import Any

from batchgen.cli._runargs import positive_int
from batchgen.cli.validate import add_max_jobs, add_schemas
from batchgen.errors import ExitCode
from batchgen.manifest.diagnostics import Diagnostic, ManifestError
from batchgen.manifest.loader import load_manifest
from batchgen.manifest.plan import build_plan, format_plan


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
    add_max_jobs(parser)
    add_schemas(parser)
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    """Print the plan, or the manifest's errors (exit 2)."""
    try:
        manifest = load_manifest(args.manifest, max_jobs=args.max_jobs)
        plan = build_plan(manifest, today=datetime.date.today(), samples=args.samples)
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
