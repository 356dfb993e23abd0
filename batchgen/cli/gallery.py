"""`batchgen gallery RUN... [--output FILE.html] [--x VAR] [--y VAR] [--state done|all]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from batchgen.errors import ExitCode


def add_parser(subparsers: Any) -> None:
    """Register `gallery`."""
    parser = subparsers.add_parser(
        "gallery",
        help="write a static HTML contact sheet of one or more runs' images",
        description="One self-contained HTML page (opens from disk, no network) with small "
        "thumbnails, made once and kept in RUN/gallery/thumbs/. One section per job group, "
        "or a grid with --x/--y; failed jobs are labelled placeholders. Reads the state files "
        "only (the manifest may be gone; safe while a run writes). Prints the page's path. "
        "Exit 0, or 2 when a RUN has no state file or an axis is unknown.",
    )
    parser.add_argument(
        "runs", metavar="RUN", nargs="+", type=Path, help="run directory or its state.db"
    )
    parser.add_argument(
        "--output",
        type=Path,
        metavar="FILE.html",
        help="where to write the page (default RUN/gallery/index.html of the first RUN)",
    )
    parser.add_argument(
        "--x",
        metavar="VAR",
        help="columns: a template variable of the manifest (style, subject, ...), a body "
        "field (size, quality, ...), model, group, repeat, state or run",
    )
    parser.add_argument("--y", metavar="VAR", help="rows: same choices as --x")
    parser.add_argument(
        "--state",
        choices=("done", "all"),
        default="all",
        help="all (default): every job, unfinished and failed ones as placeholders; "
        "done: images only",
    )
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    """Build the gallery and print the page's path."""
    from batchgen.reports.gallery import build_gallery  # noqa: PLC0415

    # A GalleryError (no state file, unknown axis) reaches cli.main: one line, exit 2.
    result = build_gallery(args.runs, output=args.output, x=args.x, y=args.y, states=args.state)
    for name, why in sorted(result.thumbs_failed.items()):
        print(f"batchgen gallery: no thumbnail for {name}: {why}", file=sys.stderr)
    print(result.page)
    return ExitCode.OK
