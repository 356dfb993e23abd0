"""The `batchgen` command line: argument parsing, printing and exit codes only.

Each subcommand lives in its own module in this package and exposes two functions:
``add_parser(subparsers)`` registers its arguments, and ``handle(args) -> int``
calls into the library and returns the exit code.  Errors are mapped to exit codes in one
place, :func:`main`: a :class:`batchgen.errors.BatchgenError` becomes one line on stderr and
its ``exit_code`` (:class:`batchgen.errors.ExitCode`, docs/exit-codes.md).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from batchgen import __version__
from batchgen.errors import BatchgenError, ExitCode

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
    "models",
    "doctor",
)


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
        return ExitCode.USAGE
    schema_dirs = getattr(args, "schemas", None)
    if schema_dirs:
        from batchgen.manifest.catalogue import set_schema_dirs  # noqa: PLC0415 - only when asked

        set_schema_dirs(schema_dirs)
    try:
        code: int = handler(args)
        sys.stdout.flush()
    except BatchgenError as exc:
        report_error(args.command, exc)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # Whoever read our output went away (`batchgen plan ... | head`): that is their
        # choice, not an error. Point stdout at /dev/null so the interpreter's final flush
        # does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return ExitCode.OK
    return code


def report_error(command: str, exc: BatchgenError) -> None:
    """An error that stopped ``command``, on stderr: one line prefixed ``batchgen COMMAND:``; an
    invalid manifest prints each of its diagnostics (file:line: ...) instead."""
    from batchgen.manifest.diagnostics import ManifestError  # noqa: PLC0415 - only on error

    if isinstance(exc, ManifestError) and exc.diagnostics:
        for diagnostic in exc.diagnostics:
            print(diagnostic.format(), file=sys.stderr)
        return
    text = " ".join(str(exc).split()) or type(exc).__name__
    print(f"batchgen {command}: {text}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
