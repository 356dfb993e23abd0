"""`batchgen simulate`: serve the fake Modellix API on a loopback port."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from typing import Any, TypeVar, cast

from batchgen.errors import ExitCode
from batchgen.simulator.settings import (
    FAULT_ROUTES,
    REALISTIC_LIMITS,
    SUBMIT_PATHS_SERVED,
    FaultRoute,
    Latency,
    SimulatorConfig,
    StatusNames,
    parse_model_latency,
)

T = TypeVar("T")
DEFAULT_PORT = 8765
DEFAULT_KEY = SimulatorConfig().api_key


def _typed(parse: Callable[[str], T], name: str) -> Callable[[str], T]:
    """An argparse ``type`` that shows the parser's own message on bad input."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = name
    return convert


def _status_names(text: str) -> StatusNames:
    names = [part.strip() for part in text.split(",")]
    if len(names) != 4 or not all(names):
        raise ValueError("expected four names: PENDING,PROCESSING,SUCCESS,FAILED")
    return StatusNames(*names)


def _fault_routes(text: str) -> frozenset[FaultRoute]:
    routes = {part.strip() for part in text.split(",") if part.strip()}
    unknown = routes - set(FAULT_ROUTES)
    if unknown:
        raise ValueError(f"unknown routes {sorted(unknown)}; choose from {', '.join(FAULT_ROUTES)}")
    return cast(frozenset[FaultRoute], frozenset(routes))


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"a rate is between 0 and 1, not {text}")
    return value


def add_parser(subparsers: Any) -> None:
    """Register ``batchgen simulate`` and its knobs (one flag per SimulatorConfig field)."""
    parser = subparsers.add_parser(
        "simulate",
        help="serve the fake Modellix API on loopback (for demos, tests, benchmarks)",
        description=(
            "Serve a fake Modellix async API with injectable faults. Every request needs "
            f"'Authorization: Bearer {DEFAULT_KEY}' unless --api-key/--no-auth say otherwise. "
            "Simulated times (latency, --result-ttl) run --time-scale times faster."
        ),
    )
    rate = _typed(_rate, "rate")
    serve = parser.add_argument_group("serving")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
    serve.add_argument(
        "--allow-remote", action="store_true", help="allow a non-loopback --host (no TLS!)"
    )
    serve.add_argument(
        "--http", choices=("auto", "h11", "httptools"), default="auto", help="uvicorn HTTP parser"
    )
    serve.add_argument("--seed", type=int, default=0, help="seed of every random decision")
    serve.add_argument(
        "--state-file",
        metavar="PATH",
        help="keep accepted tasks in this SQLite file: a restarted simulator still answers "
        "them (default: in memory only, the fastest)",
    )
    auth = serve.add_mutually_exclusive_group()
    auth.add_argument("--api-key", default=DEFAULT_KEY, help="bearer key to require")
    auth.add_argument(
        "--no-auth", dest="api_key", action="store_const", const=None, help="accept any request"
    )

    tasks = parser.add_argument_group("tasks (simulated time)")
    tasks.add_argument(
        "--latency",
        type=_typed(Latency.parse, "latency"),
        default=Latency(),
        help="SECONDS | fixed:S | uniform:LO..HI | lognormal:MEDIAN,SIGMA (default fixed:10)",
    )
    tasks.add_argument(
        "--latency-by-model",
        type=_typed(parse_model_latency, "model latency"),
        action="append",
        default=[],
        metavar="MODEL=LATENCY",
        help="tasks of MODEL take LATENCY instead (repeatable)",
    )
    tasks.add_argument(
        "--pending-fraction", type=rate, default=0.1, help="share of latency spent 'pending'"
    )
    tasks.add_argument(
        "--time-scale", type=float, default=1.0, help="real s per simulated s (0.01 = 100x faster)"
    )
    tasks.add_argument("--fail-rate", type=rate, default=0.0, help="share of tasks ending failed")
    tasks.add_argument(
        "--status-names",
        type=_typed(_status_names, "status names"),
        default=StatusNames(),
        metavar="P,R,S,F",
        help="data.status strings, e.g. pending,processing,completed,error",
    )
    tasks.add_argument(
        "--failed-error-field", action="store_true", help="add the retired data.error on failure"
    )

    limits = parser.add_argument_group("account limits")
    limits.add_argument("--balance", type=int, help="answer 402 after this many accepted tasks")
    limits.add_argument(
        "--account-balance",
        type=float,
        default=SimulatorConfig().account_balance,
        metavar="USD",
        help="what GET /api/v1/team/balance reports; list prices are taken from it",
    )
    limits.add_argument(
        "--max-concurrent-tasks", type=int, help="429 while this many tasks are running"
    )
    limits.add_argument("--rate-limit", type=float, help="token bucket, requests per real second")
    limits.add_argument("--rate-burst", type=int, help="token bucket size")
    limits.add_argument(
        "--rate-limit-scope",
        choices=("submit", "all"),
        help="what the token bucket counts (default submit)",
    )
    limits.add_argument(
        "--realistic",
        action="store_true",
        help="the provider's documented limits: --rate-limit 100/60 --rate-limit-scope all "
        "--max-concurrent-tasks 3 --result-ttl 86400 (flags given explicitly win)",
    )
    serve.add_argument(
        "--submit-paths",
        choices=SUBMIT_PATHS_SERVED,
        default="all",
        help="which submit-path shapes answer (others 404): all, async (only .../async), "
        "no-async (only the shape without /async)",
    )

    faults = parser.add_argument_group("random faults (per request, seeded)")
    faults.add_argument(
        "--faults",
        type=rate,
        metavar="RATE",
        help="shortcut: 500, 503, 429 and drop rates, --fail-rate and --expired-rate all = RATE",
    )
    faults.add_argument("--error-500-rate", type=rate, default=0.0)
    faults.add_argument("--error-503-rate", type=rate, default=0.0)
    faults.add_argument("--error-429-rate", type=rate, default=0.0)
    faults.add_argument("--drop-rate", type=rate, default=0.0, help="close without answering")
    faults.add_argument(
        "--fault-routes",
        type=_typed(_fault_routes, "routes"),
        default=frozenset(FAULT_ROUTES),
        metavar="ROUTES",
        help="comma list of submit,poll,download (default all)",
    )
    faults.add_argument(
        "--lost-answer-fraction",
        type=rate,
        default=0.5,
        help="share of submit 500s/drops whose task was created anyway",
    )
    faults.add_argument(
        "--retry-after", type=float, default=1.0, help="Retry-After (s) of 503 / random 429"
    )
    faults.add_argument(
        "--integer-retry-after", action="store_true", help="whole seconds in Retry-After"
    )

    files = parser.add_argument_group("result files")
    files.add_argument("--result-ttl", type=float, help="URLs expire this long after task end")
    files.add_argument(
        "--expired-rate", type=rate, default=0.0, help="share of URLs dead from the start"
    )
    files.add_argument("--expired-status", type=int, choices=(403, 404, 410), default=410)
    files.add_argument(
        "--download-bytes-per-second", type=float, help="slow downloads: bytes per real second"
    )
    files.add_argument("--download-chunk-size", type=int, default=65536)
    files.add_argument(
        "--download-latency",
        type=float,
        default=0.0,
        help="real seconds each result file waits before its first byte (default 0)",
    )
    parser.set_defaults(handler=handle)


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """The :class:`SimulatorConfig` the parsed flags describe."""
    config = SimulatorConfig(
        seed=args.seed,
        api_key=args.api_key,
        latency=args.latency,
        latency_by_model=tuple(args.latency_by_model),
        pending_fraction=args.pending_fraction,
        time_scale=args.time_scale,
        fail_rate=args.fail_rate,
        status_names=args.status_names,
        failed_error_field=args.failed_error_field,
        balance=args.balance,
        account_balance=args.account_balance,
        max_concurrent_tasks=args.max_concurrent_tasks,
        rate_limit=args.rate_limit,
        rate_burst=args.rate_burst,
        rate_limit_scope=args.rate_limit_scope or "submit",
        submit_paths=args.submit_paths,
        error_500_rate=args.error_500_rate,
        error_503_rate=args.error_503_rate,
        error_429_rate=args.error_429_rate,
        drop_rate=args.drop_rate,
        fault_routes=args.fault_routes,
        lost_answer_fraction=args.lost_answer_fraction,
        retry_after=args.retry_after,
        integer_retry_after=args.integer_retry_after,
        result_ttl=args.result_ttl,
        expired_rate=args.expired_rate,
        expired_status=args.expired_status,
        download_bytes_per_second=args.download_bytes_per_second,
        download_chunk_size=args.download_chunk_size,
        download_latency=args.download_latency,
    )
    if args.faults is not None:
        config = config.with_faults(args.faults)
    if args.realistic:
        preset = {k: v for k, v in REALISTIC_LIMITS.items() if getattr(args, k) is None}
        config = dataclasses.replace(config, **preset)  # type: ignore[arg-type]
    return config


def handle(args: argparse.Namespace) -> int:
    """Serve until interrupted; exit 2 on bad knobs or host, 3 if the port cannot be bound."""
    from batchgen.simulator.app import Simulator, is_loopback_host, run_server  # noqa: PLC0415

    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"batchgen simulate: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    if not args.allow_remote and not is_loopback_host(args.host):
        print(
            f"batchgen simulate: error: refusing to serve on {args.host!r}, which is not a "
            "loopback address (add --allow-remote to mean it)",
            file=sys.stderr,
        )
        return ExitCode.USAGE
    journal = None
    if args.state_file is not None:
        from batchgen.simulator.journal import JournalError, TaskJournal  # noqa: PLC0415

        try:
            journal = TaskJournal.open(args.state_file)
        except JournalError as exc:
            print(f"batchgen simulate: error: {exc}", file=sys.stderr)
            return ExitCode.STOPPED
    sim = Simulator(config, journal=journal)
    key_note = (
        "no key needed"
        if config.api_key is None
        else f"key {config.api_key!r}"
        if config.api_key == DEFAULT_KEY
        else "key given with --api-key"
    )

    def ready(url: str) -> None:
        print(f"batchgen simulator listening on {url} ({key_note}; stats at {url}/_sim/stats)")
        print(f"models: {', '.join(sim.models)}", flush=True)
        if journal is not None:
            known = sim.stats()["tasks"]["accepted"]
            print(f"tasks kept in {journal.path} ({known} known from before)", flush=True)

    try:
        run_server(
            sim, args.host, args.port, allow_remote=args.allow_remote, http=args.http, ready=ready
        )
    except OSError as exc:
        print(
            f"batchgen simulate: error: cannot listen on {args.host}:{args.port}: {exc}",
            file=sys.stderr,
        )
        return ExitCode.STOPPED
    finally:
        if journal is not None:
            journal.close()
    return ExitCode.OK
