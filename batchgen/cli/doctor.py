"""`batchgen doctor [--base-url URL] [--output DIR] [--json]`: is this machine ready to run?"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from batchgen.errors import ExitCode


def add_parser(subparsers: Any) -> None:
    """Register `doctor`."""
    parser = subparsers.add_parser(
        "doctor",
        help="check the key, balance, base URL, DNS/TLS/proxy, clock and disk before a run",
        description="One line per check, OK/WARN/FAIL: MODELLIX_API_KEY set, base URL valid, "
        "the proxy that applies (credentials never shown), DNS, reachable over TLS, key valid "
        "(GET /api/v1/apikey/validate), balance, clock skew against the server's Date, free "
        "disk space for the output folder. Nothing costs money, nothing is written. "
        "Exit codes: 0 no FAIL (warnings allowed), 3 some check failed.",
    )
    parser.add_argument(
        "--base-url", metavar="URL", help="API base URL (env MODELLIX_BASE_URL); https only"
    )
    parser.add_argument(
        "--output",
        metavar="DIR",
        default="output",
        help="the folder run directories go to, for the disk check (default output)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object for scripts")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    """Run every check, print them, exit 0 (no FAIL) or 3."""
    from batchgen.api.doctor import run_checks  # noqa: PLC0415 - only when asked
    from batchgen.run.event_loop import run  # noqa: PLC0415

    checks = run(run_checks(args.base_url, output=Path(args.output)))
    failed = any(check.status == "FAIL" for check in checks)
    if args.json:
        data = {"ok": not failed, "checks": [check.as_dict() for check in checks]}
        print(json.dumps(data, sort_keys=True))
    else:
        width = max(len(check.name) for check in checks)
        for check in checks:
            print(f"{check.status:<4}  {check.name:<{width}}  {check.detail}")
    return ExitCode.STOPPED if failed else ExitCode.OK
