"""One ``batchgen run``: from a manifest (or a run directory) to a finished run.

:func:`run_session` loads the manifest, picks the run directory, takes its
lock, records the jobs in the state file, prepares the output folder, builds
the client (the real API, or the in-process simulator with ``simulate``) and
runs the pool (:mod:`batchgen.run.runner`).  Everything a library user needs to
run a manifest without the command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchgen.api import (
    ENV_API_KEY,
    ENV_BASE_URL,
    ConfigError,
    ModellixClient,
    api_key_from_env,
    resolve_base_url,
)
from batchgen.errors import BatchgenError, ExitCode
from batchgen.manifest.bill import format_bill
from batchgen.manifest.compiled import Manifest
from batchgen.manifest.loader import load_manifest
from batchgen.manifest.pricing import PriceBook
from batchgen.manifest.shard import Shard, filter_shard, shard_run_dir
from batchgen.manifest.types import Limits
from batchgen.run.budget_checks import check_balance, check_ceilings, check_default, store_bill
from batchgen.run.preflight import check_key_before_run
from batchgen.run.progress import Progress
from batchgen.run.runner import RunOptions, RunSummary, run_jobs
from batchgen.store.errors import StateError
from batchgen.store.lock import acquire_run_lock
from batchgen.store.outputs import OutputDir
from batchgen.store.schema import DB_NAME
from batchgen.store.state import StateStore

__all__ = [
    "FINGERPRINT_KEY",
    "SIMULATE_TIME_SCALE",
    "RunRequest",
    "SessionError",
    "manifest_fingerprint",
    "pick_base_url",
    "resolve_target",
    "run_session",
]

logger = logging.getLogger("batchgen.run")

#: ``--simulate`` runs the simulator this much faster than real time (task latency), and
#: multiplies the manifest's rate limit by its inverse, so the demo ends in seconds.
SIMULATE_TIME_SCALE = 0.1

#: The run settings' key of the fingerprint of the manifest the jobs were last synced from.
FINGERPRINT_KEY = "manifest_fingerprint"

#: The account balance (USD) of the `--simulate` provider.
SIMULATE_BALANCE = 100.0


class SessionError(BatchgenError):
    """A run cannot start; ``exit_code`` says how the command line should exit."""

    def __init__(self, message: str, exit_code: ExitCode = ExitCode.STOPPED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class RunRequest:
    """What to run and how (the command line's options)."""

    target: Path
    """A manifest file, or a run directory (or its ``state.db``) to resume from the state alone."""
    simulate: bool = False
    base_url: str | None = None
    output: Path | None = None
    """The run directory (default: the manifest's ``output``); ``{name}``/``{date}`` allowed."""
    concurrency: int | None = None
    rate: float | None = None
    retries: int | None = None
    timeout: float | None = None
    submits_in_flight: int | None = None
    max_runtime: float | None = None
    max_jobs: int = 1_000_000
    shard: Shard | None = None
    """Run only this deterministic slice of the manifest's jobs (:mod:`batchgen.manifest.shard`),
    in its own run directory (suffix ``-shard-i-of-N``)."""
    today: _dt.date | None = None
    progress_bar: bool | None = None
    """A tqdm bar (``None``: only when stderr is a terminal)."""
    max_tasks: int | None = None
    """Override ``limits.max_tasks`` (accepted submissions of the run directory)."""
    max_cost: float | None = None
    """Override ``limits.max_cost`` (estimated USD of the run directory)."""
    yes: bool = False
    """Go ahead without a ceiling past :data:`batchgen.run.budget_checks.DEFAULT_CONFIRM_TASKS`."""
    confirm: Callable[[str], bool] | None = None
    """Asked (with the reason) when a run without a ceiling is large; None: refuse."""
    options: dict[str, Any] = field(default_factory=dict)
    """Extra :class:`batchgen.run.runner.RunOptions` fields."""
    simulate_latency: float | None = None
    """With ``simulate``: each simulated task's latency in simulated seconds (default 10)."""


def resolve_target(target: Path) -> tuple[Path | None, Path | None]:
    """``(manifest, run_dir)``: exactly one is set, depending on what ``target`` is."""
    target = Path(target)
    if target.is_dir():
        return None, target
    if target.name == DB_NAME:
        return None, target.parent
    return target, None


def _limits_from(stored: Mapping[str, Any] | None, base: Limits, req: RunRequest) -> Limits:
    limits = base
    if stored:
        known = {f.name for f in dataclasses.fields(Limits)}
        limits = dataclasses.replace(base, **{k: v for k, v in stored.items() if k in known})
    changes: dict[str, Any] = {}
    for name in (
        "concurrency",
        "rate",
        "retries",
        "timeout",
        "submits_in_flight",
        "max_tasks",
        "max_cost",
    ):
        value = getattr(req, name)
        if value is not None:
            changes[name] = value
    return dataclasses.replace(limits, **changes)


async def run_session(
    req: RunRequest,
    *,
    stop: asyncio.Event | None = None,
    environ: Mapping[str, str] | None = None,
) -> RunSummary:
    """Run ``req`` to the end; raise :class:`SessionError` when it cannot start.

    ``ManifestError`` (an invalid manifest) propagates for the caller to print.
    """
    env = os.environ if environ is None else environ
    manifest_path, run_dir = resolve_target(req.target)
    today = req.today or _dt.date.today()
    manifest: Manifest | None = None
    if manifest_path is not None:
        t0 = time.perf_counter()
        manifest = load_manifest(manifest_path, max_jobs=req.max_jobs)
        logger.debug("manifest loaded in %.3fs", time.perf_counter() - t0)
        run_dir = manifest.run_dir(today, req.output)
        run_dir = shard_run_dir(run_dir, req.shard)
    elif req.output is not None:
        raise SessionError("--output applies to a manifest, not to a run directory", ExitCode.USAGE)
    elif req.shard is not None:
        raise SessionError("--shard applies to a manifest, not to a run directory", ExitCode.USAGE)
    assert run_dir is not None
    if manifest is None and not (run_dir / DB_NAME).exists():
        raise SessionError(
            f"{req.target} is neither a manifest nor a run directory", ExitCode.USAGE
        )
    key_checked = False
    if manifest is not None and not req.simulate:
        # Before the run directory and its state file exist: a new user's first run without
        # a key, with a refused key or an unreachable base URL leaves nothing behind on disk.
        key = _require_api_key(env)
        if not (run_dir / DB_NAME).exists():
            await check_key_before_run(pick_base_url(req.base_url, env, {}), key)
            key_checked = True
    _refuse_images_without_state(run_dir)

    try:
        lock = acquire_run_lock(run_dir)
    except OSError as exc:
        raise SessionError(f"cannot use run directory {run_dir}: {exc}") from exc
    try:
        return await _locked(req, manifest, run_dir, stop, env, key_checked=key_checked)
    finally:
        lock.release()


def _require_api_key(env: Mapping[str, str]) -> str:
    key = api_key_from_env(env)
    if key is None:
        raise SessionError(
            f"{ENV_API_KEY} is not set: export your Modellix API key in it "
            "(or try the whole pipeline without a key: batchgen run MANIFEST --simulate)"
        )
    return key


def pick_base_url(flag: str | None, env: Mapping[str, str], stored: Mapping[str, Any]) -> str:
    """The API base URL of a run: ``--base-url``, else ``MODELLIX_BASE_URL``, else the one
    stored in the run directory by its last real (not simulated) session, else the default.

    A resume that uses another URL than the stored one says so once in the log.  Raises
    :class:`SessionError` (exit 3) for a URL :func:`batchgen.api.client.validate_base_url`
    refuses."""
    stored_url = None if stored.get("simulate") else stored.get("base_url")
    chosen = flag or env.get(ENV_BASE_URL, "").strip() or stored_url
    try:
        base_url = resolve_base_url(chosen or None, env)
    except ConfigError as exc:
        raise SessionError(str(exc)) from exc
    if isinstance(stored_url, str) and stored_url and stored_url != base_url:
        source = "--base-url" if flag else ENV_BASE_URL
        logger.warning(
            "using base URL %s (from %s), not %s stored in the run directory",
            base_url,
            source,
            stored_url,
            extra={"data": {"event": "base_url_changed", "base_url": base_url}},
        )
    return base_url


def _refuse_images_without_state(run_dir: Path) -> None:
    """A run directory whose images outlived its state file (deleted, moved aside, emptied):
    starting a new state file would treat every image as unrecorded and delete it."""
    db = run_dir / DB_NAME
    try:
        if db.exists() and db.stat().st_size > 0:
            return
        images = [n for n in os.listdir(run_dir / "images") if not n.startswith(".")]
    except OSError:
        return
    if images:
        raise SessionError(
            f"{run_dir} holds {len(images)} files in images/ but "
            f"{'an empty' if db.exists() else 'no'} state file {DB_NAME}: restore the state "
            "file from a backup, or run into another directory (--output); nothing was changed"
        )


async def _locked(
    req: RunRequest,
    manifest: Manifest | None,
    run_dir: Path,
    stop: asyncio.Event | None,
    env: Mapping[str, str],
    *,
    key_checked: bool,
) -> RunSummary:
    try:
        store = StateStore.open(run_dir, create=manifest is not None)
    except StateError as exc:
        raise SessionError(str(exc)) from exc
    try:
        stored = store.settings()
        simulate = req.simulate or (manifest is None and bool(stored.get("simulate")))
        base_limits = manifest.limits if manifest is not None else Limits()
        limits = _limits_from(stored.get("limits") if manifest is None else None, base_limits, req)
        base_url = "http://127.0.0.1" if simulate else pick_base_url(req.base_url, env, stored)
        if not simulate and not key_checked:
            await check_key_before_run(base_url, _require_api_key(env))
        settings: dict[str, Any] = {
            "limits": dataclasses.asdict(limits),
            "base_url": base_url,
            "simulate": simulate,
        }
        prices = (
            manifest.prices if manifest is not None else PriceBook.from_json(stored.get("prices"))
        )
        settings["prices"] = prices.to_json()
        if manifest is not None:
            settings.update(
                {
                    "manifest": str(manifest.path.resolve()),
                    "name": manifest.name,
                    "models": manifest.models,
                    "shard": str(req.shard) if req.shard else None,
                }
            )
        store.update_settings(settings)
        if manifest is not None:
            _sync_manifest(store, manifest, req, run_dir, stored.get(FINGERPRINT_KEY))
        output = OutputDir(run_dir)
        try:
            cleaned = output.prepare(store)
        except OSError as exc:
            raise SessionError(f"cannot prepare {run_dir}: {exc}") from exc
        if cleaned["temp_files"] or cleaned["stray_images"] or cleaned["rebuilt"]:
            logger.info(
                "cleaned up after the last run: %d temp files, %d unrecorded images; "
                "metadata.jsonl %s",
                cleaned["temp_files"],
                cleaned["stray_images"],
                "rebuilt" if cleaned["rebuilt"] else "kept",
            )
        bill = store_bill(store, prices, limits.retries)
        logger.info(
            "\n".join(format_bill(bill)),
            extra={"data": {"event": "bill", **{k: v for k, v in bill.items() if k != "by_model"}}},
        )
        check_ceilings(store, bill, store.spend(), limits)
        check_default(store, bill, limits, yes=req.yes, simulate=simulate, confirm=req.confirm)
        cleanup = contextlib.ExitStack()
        client = _make_client(
            simulate, base_url, limits, env, run_dir=run_dir, req=req, cleanup=cleanup
        )
        options = RunOptions(max_runtime=req.max_runtime, stop=stop, prices=prices, **req.options)
        if simulate:
            options = dataclasses.replace(
                options,
                first_poll=0.2,
                min_poll_interval=0.05,
                max_poll_interval=2.0,
                backoff_base=0.1,
                backoff_cap=2.0,
                throttle_pause=0.1,
            )
            limits = dataclasses.replace(limits, rate=limits.rate / SIMULATE_TIME_SCALE)
        if options.progress is None:
            total = sum(store.counts().values())
            options.progress = Progress(total, bar=req.progress_bar)
        session_id = store.begin_session()
        summary = RunSummary()
        try:
            with cleanup:
                async with client:
                    balance = None
                    if bill["new_jobs"]:
                        balance = await check_balance(store, client, bill, key="balance_start")
                    summary = await run_jobs(store, client, limits, options=options, output=output)
                    if balance is not None:
                        await check_balance(store, client, bill, key="balance_end")
        finally:
            try:
                store.end_session(session_id, summary.exit_code, summary.as_dict())
            except StateError as exc:  # e.g. the disk is full: the jobs' states are committed
                logger.error("%s (the end of this session is not recorded)", exc)
        return summary
    finally:
        store.close()


def manifest_fingerprint(manifest: Manifest, *, max_jobs: int, shard: Shard | None) -> str | None:
    """sha256 of everything the manifest's jobs come from: the manifest file's bytes, every
    prompts file's bytes, the models' schemas (defaults), ``max_jobs`` and the shard.  ``None``
    when a file cannot be read again."""
    h = hashlib.sha256(b"batchgen-manifest-fingerprint-1\0")
    try:
        for path in (manifest.path, *manifest.prompts_files, *manifest.input_files):
            data = Path(path).read_bytes()
            h.update(f"{len(data)}\0".encode())
            h.update(data)
    except OSError:
        return None
    for model in manifest.models:
        schema = json.dumps(manifest.model_schema(model).schema, sort_keys=True)
        h.update(f"{model}\0{schema}\0".encode())
    h.update(f"max_jobs={max_jobs}\0shard={shard}\0".encode())
    return h.hexdigest()


def _sync_manifest(
    store: StateStore, manifest: Manifest, req: RunRequest, run_dir: Path, stored_fp: Any
) -> None:
    """Record the manifest's jobs in the state file, unless the state file already holds them:
    its stored fingerprint (:func:`manifest_fingerprint`) matches and the file still has as
    many jobs, as many of them inactive, as that sync left (``batchgen retry`` may make a job
    active again), so neither expansion nor comparison of every job is needed."""
    t0 = time.perf_counter()
    # Hashed before expanding: a file edited during the sync leaves a fingerprint that does not
    # match the edited file, so the next run syncs again.
    fingerprint = manifest_fingerprint(manifest, max_jobs=req.max_jobs, shard=req.shard)
    total = sum(store.counts().values())
    inactive = sum(store.count_inactive().values())
    current = {"sha256": fingerprint, "jobs": total, "inactive": inactive}
    if fingerprint is not None and current == stored_fp:
        logger.info(
            "run directory %s: manifest unchanged since the last run; jobs not re-read",
            run_dir,
            extra={
                "data": {
                    "event": "jobs",
                    "synced": False,
                    "seconds": round(time.perf_counter() - t0, 3),
                }
            },
        )
        return
    sync = store.sync_jobs(filter_shard(manifest.iter_jobs(), req.shard))
    after = {"sha256": fingerprint, "jobs": sync.total, "inactive": sync.inactive}
    store.update_settings({FINGERPRINT_KEY: after if fingerprint is not None else None})
    logger.info(
        "run directory %s: %d jobs (%d new)%s",
        run_dir,
        sync.total,
        sync.added,
        f"; {sync.inactive} jobs no longer in the manifest are left as they are"
        if sync.inactive
        else "",
        extra={
            "data": {
                "event": "jobs",
                "synced": True,
                "total": sync.total,
                "added": sync.added,
                "not_in_manifest": sync.inactive,
                "seconds": round(time.perf_counter() - t0, 3),
            }
        },
    )


def _make_client(
    simulate: bool,
    base_url: str,
    limits: Limits,
    env: Mapping[str, str],
    *,
    run_dir: Path,
    req: RunRequest,
    cleanup: contextlib.ExitStack,
) -> ModellixClient:
    """The API client of a run.  A simulated run's simulator keeps its tasks in the run
    directory's task journal (closed by ``cleanup``), so a killed run resumes its tasks."""
    connections = max(10, min(limits.concurrency * 2 + 10, 1000))
    if simulate:
        import httpx  # noqa: PLC0415

        from batchgen.simulator.app import Latency, Simulator, SimulatorConfig  # noqa: PLC0415
        from batchgen.simulator.journal import (  # noqa: PLC0415
            JOURNAL_NAME,
            JournalError,
            TaskJournal,
        )

        # The demo account holds enough for every shipped manifest (the default is 12.3456 USD).
        latency = Latency() if req.simulate_latency is None else Latency.fixed(req.simulate_latency)
        config = SimulatorConfig(
            time_scale=SIMULATE_TIME_SCALE,
            seed=int(time.time()),
            account_balance=SIMULATE_BALANCE,
            latency=latency,
        )
        try:
            journal = TaskJournal.open(run_dir / JOURNAL_NAME)
        except JournalError as exc:
            raise SessionError(str(exc)) from exc
        cleanup.callback(journal.close)
        sim = Simulator(config, journal=journal)
        return ModellixClient(
            base_url,
            config.api_key,
            transport=httpx.ASGITransport(app=sim),
            max_connections=connections,
        )
    key = _require_api_key(env)
    try:
        return ModellixClient(base_url, key, max_connections=connections)
    except ConfigError as exc:
        raise SessionError(str(exc)) from exc
