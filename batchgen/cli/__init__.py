"""The `batchgen` command line: argument parsing, printing and exit codes only.

Each subcommand lives in its own module in this package and exposes two functions:
``add_parser(subparsers)`` registers its arguments, and ``handle(args) -> int``
calls into the library and returns the exit code.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from batchgen import __version__

# Subcommand modules, in the order `batchgen --help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "validate",
    "plan",
    "run",
    "status",
    "retry",
    "export",
    "gallery",
    "simulate",
)

EXIT_OK = 0
EXIT_JOBS_FAILED = 1
EXIT_USAGE = 2
EXIT_STOPPED = 3
EXIT_TEMPFAIL = 75
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="batchgen",
        description="Generate image datasets through asynchronous image APIs.",
    )
    parser.add_argument("--version", action="version", version=f"batchgen {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"batchgen.cli.{name}")
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        code: int = handler(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # Whoever read our output went away (`batchgen plan ... | head`): that is their
        # choice, not an error. Point stdout at /dev/null so the interpreter's final flush
        # does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    return code


if __name__ == "__main__":
    raise SystemExit(main())
