"""`batchgen export RUN [RUN...]`: the dataset table (JSONL or CSV), or a rebuilt metadata.jsonl."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import IO, Any

from batchgen.errors import ExitCode
from batchgen.reports.export import (
    ExportStats,
    export_columns,
    export_rows,
    rebuild_run_metadata,
    write_atomic,
    write_csv,
    write_jsonl,
)


def add_parser(subparsers: Any) -> None:
    """Register `export`."""
    parser = subparsers.add_parser(
        "export",
        help="write the dataset table of one or more runs (JSONL or CSV)",
        description="One row per image, from the state files alone (safe while a run writes). "
        "Several RUNs (e.g. the shards of one manifest) merge into one table; a job done in "
        "more than one RUN is exported once, from the first. file_name is relative to the "
        "output file's folder (or the current folder for stdout) unless --relative-to says "
        "otherwise. --rebuild-metadata rewrites each RUN's metadata.jsonl from its state file "
        "instead. Exit 0; 2 when a RUN has no state file; 75 when --rebuild-metadata finds a "
        "run holding the lock.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run directory or its state.db")
    parser.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    parser.add_argument(
        "--state",
        choices=("done", "all"),
        default="done",
        help="done: one row per image (default); all: every job, with its state and last error",
    )
    parser.add_argument(
        "--cost",
        action="store_true",
        help="add estimated_cost_usd: the job's billable submissions (every attempt) per image",
    )
    parser.add_argument("--output", "-o", metavar="FILE", help="write here (atomically)")
    parser.add_argument(
        "--relative-to", metavar="DIR", help="folder that file_name paths are relative to"
    )
    parser.add_argument(
        "--rebuild-metadata",
        action="store_true",
        help="rewrite RUN/metadata.jsonl from the state file instead of writing a table",
    )
    parser.set_defaults(handler=handle)


def _rebuild(runs: list[Path]) -> int:
    for run in runs:
        n = rebuild_run_metadata(run)
        print(f"{run}: metadata.jsonl rebuilt with {n} lines", file=sys.stderr)
    return ExitCode.OK


def _write(args: argparse.Namespace, runs: list[Path], out: IO[str], rel: Path) -> ExportStats:
    stats = ExportStats()
    rows = export_rows(runs, state=args.state, relative_to=rel, stats=stats, cost=args.cost)
    if args.format == "csv":
        write_csv(rows, out, export_columns(runs, state=args.state, cost=args.cost))
    else:
        write_jsonl(rows, out)
    return stats


def handle(args: argparse.Namespace) -> int:
    """Export the table (or rebuild metadata.jsonl)."""
    runs = [Path(r) for r in args.runs]
    if args.rebuild_metadata:
        return _rebuild(runs)
    if args.output:
        output = Path(args.output)
        rel = Path(args.relative_to) if args.relative_to else output.absolute().parent
        with write_atomic(output) as f:
            stats = _write(args, runs, f, rel)
    else:
        rel = Path(args.relative_to) if args.relative_to else Path.cwd()
        stats = _write(args, runs, sys.stdout, rel)
        sys.stdout.flush()
    if stats.duplicates:
        print(
            f"batchgen export: {stats.duplicates} job(s) found in more than one run directory "
            "were exported once",
            file=sys.stderr,
        )
    if args.output:
        print(f"wrote {stats.rows} rows to {args.output}", file=sys.stderr)
    return ExitCode.OK
