"""`batchgen validate MANIFEST...`: check manifests, print every problem, exit 0 or 2."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from batchgen.cli._runargs import positive_int
from batchgen.errors import ExitCode
from batchgen.manifest.diagnostics import Diagnostic, ManifestError
from batchgen.manifest.loader import DEFAULT_MAX_JOBS, load_manifest


def add_max_jobs(parser: argparse.ArgumentParser) -> None:
    """The shared ``--max-jobs`` option."""
    parser.add_argument(
        "--max-jobs",
        type=positive_int,
        default=DEFAULT_MAX_JOBS,
        metavar="N",
        help=f"refuse manifests that expand to more than N jobs (default {DEFAULT_MAX_JOBS:,})",
    )


def add_schemas(parser: argparse.ArgumentParser) -> None:
    """``--schemas DIR`` (repeatable): model schema folders searched before the shipped ones."""
    parser.add_argument(
        "--schemas",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder of <provider>/<model>.json schemas, searched first (also BATCHGEN_SCHEMAS)",
    )


def add_parser(subparsers: Any) -> None:
    """Register `validate`."""
    parser = subparsers.add_parser(
        "validate",
        help="check manifests; print every error with file:line",
        description="Check manifests without sending anything. Exit 0 when all are valid, "
        "2 otherwise.",
    )
    parser.add_argument("manifests", nargs="+", metavar="MANIFEST")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    add_schemas(parser)
    add_max_jobs(parser)
    parser.set_defaults(handler=handle)


def check(path: str, max_jobs: int) -> tuple[int | None, list[Diagnostic]]:
    """Load one manifest: (job count or None when invalid, diagnostics). Never raises."""
    try:
        manifest = load_manifest(path, max_jobs=max_jobs)
    except ManifestError as exc:
        return None, exc.diagnostics
    except Exception as exc:  # last resort: a message, never a traceback
        message = f"internal error while checking this manifest: {type(exc).__name__}: {exc}"
        return None, [Diagnostic(path, 0, 0, "", message, hint="please report it")]
    return manifest.count(), manifest.warnings


def handle(args: argparse.Namespace) -> int:
    """Validate each manifest; print diagnostics; exit 0 or 2."""
    report: list[dict[str, Any]] = []
    ok = True
    for path in args.manifests:
        count, diagnostics = check(path, args.max_jobs)
        errors = [d for d in diagnostics if d.is_error]
        ok = ok and count is not None
        if args.json:
            report.append(
                {
                    "manifest": path,
                    "valid": count is not None,
                    "jobs": count,
                    "errors": [d.to_dict() for d in errors],
                    "warnings": [d.to_dict() for d in diagnostics if not d.is_error],
                }
            )
            continue
        for diagnostic in diagnostics:
            print(diagnostic.format(), file=sys.stderr)
        if count is None:
            plural = "s" if len(errors) != 1 else ""
            print(f"{path}: invalid ({len(errors)} error{plural})", file=sys.stderr)
        else:
            print(f"{path}: valid ({count:,} jobs)")
    if args.json:
        print(json.dumps({"valid": ok, "manifests": report}, indent=2, ensure_ascii=False))
    return ExitCode.OK if ok else ExitCode.USAGE
