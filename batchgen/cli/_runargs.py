"""What `batchgen run` and `batchgen retry` share: argument types, the run-limit options,
running a session until a signal, and printing its outcome."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchgen.manifest.units import parse_duration, parse_rate

if TYPE_CHECKING:
    # The session (runner, HTTP client) is imported when a run starts, not when the
    # parser is built: `batchgen validate`/`plan`/`status` do not pay for the HTTP stack.
    from batchgen.run.session import RunRequest
    from batchgen.run.summary import RunSummary


#: How every ``--base-url`` help text states the URL rule (:func:`batchgen.api.validate_base_url`).
BASE_URL_RULE = "https, or http to a loopback address (127.0.0.0/8, ::1, localhost)"


def _whole_number(text: str, *, minimum: int, separators: bool) -> int:
    try:
        value = int(text.replace("_", "").replace(",", "") if separators else text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < minimum:
        rule = "must not be negative" if minimum == 0 else f"must be at least {minimum}"
        raise argparse.ArgumentTypeError(f"{rule}: {text!r}")
    return value


def positive_int(text: str) -> int:
    """Argument type: a whole number >= 1; digit groups may be separated (``1,000``, ``1_000``)."""
    return _whole_number(text, minimum=1, separators=True)


def count(text: str) -> int:
    """Argument type: a whole number >= 0."""
    return _whole_number(text, minimum=0, separators=False)


def rate(text: str) -> float:
    """Argument type: submissions per second ("4/s", "240/m")."""
    try:
        return parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"invalid rate {text!r} ({exc}); e.g. 4/s, 240/m"
        ) from None


def duration(text: str) -> float:
    """Argument type: a duration of more than zero seconds ("90s", "30m", "2h")."""
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r} ({exc}); e.g. 90s, 30m, 2h"
        ) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be more than zero: {text!r}")
    return seconds


def add_limit_arguments(parser: argparse.ArgumentParser, *, max_runtime_help: str) -> None:
    """--concurrency, --rate, --retries, --timeout, --submits-in-flight and --max-runtime."""
    parser.add_argument("--concurrency", type=positive_int, metavar="N", help="tasks in flight")
    parser.add_argument("--rate", type=rate, metavar="R", help="submissions per second (4/s)")
    parser.add_argument("--retries", type=count, metavar="N", help="retries per job")
    parser.add_argument("--timeout", type=duration, metavar="T", help="per-task deadline (30m)")
    parser.add_argument(
        "--submits-in-flight",
        type=positive_int,
        metavar="N",
        help="submit requests awaiting their answer at once (default 1: a crash can orphan at "
        "most one accepted task; raise it for a slow submit round trip)",
    )
    parser.add_argument("--max-runtime", type=duration, metavar="T", help=max_runtime_help)
    parser.add_argument(
        "--max-tasks",
        type=positive_int,
        metavar="N",
        help="billable submissions of the run directory at most, every attempt and resume "
        "counted (overrides limits.max_tasks)",
    )
    parser.add_argument(
        "--max-cost",
        type=usd_amount,
        metavar="USD",
        help="estimated spend of the run directory at most (overrides limits.max_cost)",
    )
    parser.add_argument(
        "--yes",
        action="store_true",
        help="run more than 1,000 new tasks without a ceiling and without asking",
    )


def usd_amount(text: str) -> float:
    """Argument type: an amount of USD above zero ("25", "7.50", "$10")."""
    try:
        value = float(text.strip().lstrip("$").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an amount of USD: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than zero: {text!r}")
    return value


def ask_on_terminal(question: str) -> bool:
    """Ask ``question`` on the terminal (stdin a tty); False under cron or on no answer."""
    if not sys.stdin.isatty():
        return False
    try:
        answer = input(f"{question}. Go ahead? [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def add_log_format_argument(parser: argparse.ArgumentParser) -> None:
    """--log-format text|json."""
    parser.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="log lines on stderr"
    )


def run_request(args: argparse.Namespace, target: Path, **extra: Any) -> RunRequest:
    """The :class:`RunRequest` of parsed run/retry arguments (``extra``: command-specific)."""
    from batchgen.run.session import RunRequest  # noqa: PLC0415 - only when a run starts

    return RunRequest(
        target=target,
        simulate=args.simulate,
        base_url=args.base_url,
        concurrency=args.concurrency,
        rate=args.rate,
        retries=args.retries,
        timeout=args.timeout,
        submits_in_flight=args.submits_in_flight,
        max_runtime=args.max_runtime,
        max_tasks=args.max_tasks,
        max_cost=args.max_cost,
        yes=args.yes,
        confirm=ask_on_terminal,
        progress_bar=None if args.log_format == "text" else False,
        **extra,
    )


async def run_until_signal(req: RunRequest) -> RunSummary:
    """Run the session; SIGINT/SIGTERM ask it to stop cleanly."""
    import asyncio  # noqa: PLC0415 - only when a run starts

    from batchgen.run.session import run_session  # noqa: PLC0415

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        return await run_session(req, stop=stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def print_summary(summary: RunSummary, fmt: str) -> None:
    """The run summary on stdout, as text or as one JSON line."""
    if fmt == "json":
        print(json.dumps({"event": "summary", **summary.as_dict()}, sort_keys=True))
    else:
        print(summary.format())


def run_and_report(req: RunRequest, *, log_format: str) -> int:
    """Run ``req``, print its summary and return the exit code.  Errors that stop the run
    before it starts (``BatchgenError``) propagate to :func:`batchgen.cli.main`."""
    from batchgen.run.event_loop import run  # noqa: PLC0415 - only when a run starts

    summary = run(run_until_signal(req))
    print_summary(summary, log_format)
    return summary.exit_code
