"""A fake Modellix async API: a plain ASGI application for demos, tests and benchmarks.

It speaks the API batchgen relies on (submit, poll, download result files),
validates submitted bodies with the catalogue's model schemas (the same check as the
manifest checker), answers errors in the provider's format, and injects faults on request,
all deterministically under a seed (see :class:`SimulatorConfig`).

Use it in process::

    sim = Simulator(SimulatorConfig(time_scale=0.01))
    transport = httpx.ASGITransport(app=sim)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client: ...

or on a loopback port with :func:`serve_in_thread` (tests, benchmarks) or
``batchgen simulate --port N``.

Every model of the catalogue (:mod:`batchgen.manifest.catalogue`) is served at the
three submit-path shapes the provider has used, returns as many result resources
as the body's outputs field asks for (the model's default when absent), and
costs its list price (when known) from the account balance that
``GET /api/v1/team/balance`` reports. ``GET /api/v1/apikey/validate`` checks the
key.

This module holds the routes (the ASGI entry, which route a request takes, the submit, poll
and download decisions) and the statistics.  The parts: :mod:`.protocol` (paths, answers,
the error format), :mod:`.models` (simulated models and body validation), :mod:`.tasks`
(the task store and result bodies), :mod:`.faults` (random faults, the rate bucket,
``Retry-After`` answers), :mod:`.account` (key check, balance), :mod:`.serving` (sockets).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import httpx

from batchgen.api import is_loopback_host
from batchgen.manifest.modelspec import expected_images, list_price
from batchgen.simulator.account import account_answer, authorize
from batchgen.simulator.faults import FaultDraw, TokenBucket, retry_answer
from batchgen.simulator.journal import JournalError, StoredTask, TaskJournal
from batchgen.simulator.models import SimModel, body_problems, image_size, load_models
from batchgen.simulator.png import png_bytes
from batchgen.simulator.protocol import (
    BALANCE_PATH,
    FILES_PREFIX,
    JSON_HEADERS,
    MAX_BODY_BYTES,
    STATS_PATH,
    TASKS_PREFIX,
    VALIDATE_PATH,
    Answer,
    Receive,
    Scope,
    Send,
    dumps,
    error_answer,
    error_body,
)
from batchgen.simulator.serving import run_server, serve_in_thread
from batchgen.simulator.settings import FAULT_ROUTES, Latency, SimulatorConfig, StatusNames
from batchgen.simulator.tasks import (
    SimTask,
    TaskStore,
    canonical_key,
    result_body,
    stored_task,
    task_from_record,
)

__all__ = [
    "FAULT_ROUTES",
    "MAX_BODY_BYTES",
    "Latency",
    "Simulator",
    "SimulatorConfig",
    "StatusNames",
    "is_loopback_host",
    "png_bytes",
    "run_server",
    "serve_in_thread",
]

_FILE_RE = re.compile(r"^([0-9]{1,3})\.png$")
_INVALID = object()


class Simulator:
    """The fake API, an ASGI application: ``await sim(scope, receive, send)``.

    ``clock`` (default :func:`time.monotonic`) is the real-time clock in seconds;
    tests may pass a fake one to move time by hand. ``schema_dir`` overrides
    where the model schemas are read from (a folder holding ``models/``).
    """

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        *,
        clock: Callable[[], float] | None = None,
        schema_dir: Path | None = None,
        journal: TaskJournal | None = None,
    ) -> None:
        self.config = config or SimulatorConfig()
        self._clock: Callable[[], float] = clock or time.monotonic
        self._models = load_models(schema_dir)
        self._lock = threading.Lock()
        self._faults_draw = FaultDraw(self.config)
        self._task_rng = random.Random(f"{self.config.seed}:tasks")
        self._epoch_clock = self._clock()
        self._epoch_wall = time.time()
        self._auth_value = (
            None if self.config.api_key is None else f"Bearer {self.config.api_key}".encode()
        )
        names = self.config.status_names
        self._prefix = {
            state: b'{"code":0,"message":"success","data":{"status":'
            + json.dumps(getattr(names, state)).encode()
            + b","
            for state in ("pending", "processing")
        }
        self._tasks = TaskStore()
        self._bucket = TokenBucket(self.config.burst, self._epoch_clock)
        self._requests = 0
        self._submissions = 0
        self._submitted_bodies: Counter[bytes] = Counter()
        self._polls = 0
        self._unknown_polls = 0
        self._downloads = 0
        self._download_bytes = 0
        self._file_downloads: Counter[str] = Counter()
        self._codes: Counter[int] = Counter()
        self._faults: Counter[str] = Counter()
        self._balance_usd = self.config.account_balance
        self._journal = journal
        if journal is not None:
            self._restore(journal.load())

    # ------------------------------------------------------------------ public

    @property
    def models(self) -> list[str]:
        """Names of the simulated models, e.g. ``["openai/gpt-image-1.5"]``."""
        return sorted({model.name for model in self._models.values()})

    @property
    def account_balance(self) -> float:
        """What ``GET /api/v1/team/balance`` answers now (USD)."""
        with self._lock:
            return round(self._balance_usd, 6)

    def submit_path(self, model: str) -> str:
        """The submit path of ``model`` (``KeyError`` if it has no schema)."""
        for candidate in self._models.values():
            if candidate.name == model:
                return candidate.submit_path
        raise KeyError(model)

    def download_counts(self) -> dict[str, int]:
        """Result-file requests answered 200 so far, per file (``<task_id>/<i>.png``)."""
        with self._lock:
            return dict(self._file_downloads)

    def stats(self) -> dict[str, Any]:
        """Counters a test can assert on; the same JSON as ``GET /_sim/stats``."""
        with self._lock:
            now = self._clock()
            polls = Counter(task.polls for task in self._tasks)
            accepted = len(self._tasks)
            submitted_counts = self._submitted_bodies.values()
            accepted_counts = self._tasks.accepted_bodies.values()
            return {
                "requests": self._requests,
                "status_codes": {str(code): n for code, n in sorted(self._codes.items())},
                "submissions": {
                    "total": self._submissions,
                    "distinct_bodies": len(self._submitted_bodies),
                    "bodies_submitted_more_than_once": sum(1 for n in submitted_counts if n > 1),
                    "max_per_body": max(submitted_counts, default=0),
                    "accepted": accepted,
                    "accepted_distinct_bodies": len(self._tasks.accepted_bodies),
                    "bodies_accepted_more_than_once": sum(1 for n in accepted_counts if n > 1),
                    "max_accepted_per_body": max(accepted_counts, default=0),
                },
                "tasks": self._tasks.stats(now),
                "polls": {
                    "total": self._polls,
                    "unknown_task": self._unknown_polls,
                    "per_task": {
                        "mean": (sum(k * n for k, n in polls.items()) / accepted)
                        if accepted
                        else 0.0,
                        "max": max(polls, default=0),
                        "distribution": {str(k): n for k, n in sorted(polls.items())},
                    },
                },
                "downloads": {
                    "total": self._downloads,
                    "bytes": self._download_bytes,
                    "max_per_task": max((t.downloads for t in self._tasks), default=0),
                    "files": len(self._file_downloads),
                    "max_per_file": max(self._file_downloads.values(), default=0),
                },
                "faults": dict(sorted(self._faults.items())),
            }

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection scope (``http`` or ``lifespan``)."""
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if path == STATS_PATH:
            body = json.dumps(self.stats(), indent=1).encode()
            await self._respond(send, Answer(200, body, []), count=False)
            return
        if path in (VALIDATE_PATH, BALANCE_PATH):
            route = "account"
        elif path.startswith(TASKS_PREFIX):
            route = "poll"
        elif path in self._models and self.config.serves_submit_path(path):
            route = "submit"
        elif path.startswith(FILES_PREFIX):
            route = "download"
        else:
            with self._lock:
                self._requests += 1
            await self._respond(send, Answer(404, error_body(404, f"no route {path}"), []))
            return

        body = b""
        if route == "submit" and method == "POST":
            try:
                body = await self._read_body(receive)
            except ValueError:
                with self._lock:
                    self._requests += 1
                await self._respond(send, Answer(413, error_body(413, "body too large"), []))
                return

        with self._lock:
            self._requests += 1
            parsed = self._count_submission(path, body) if route == "submit" else None
            answer = self._dispatch(scope, route, method, path, parsed)

        if answer is None:
            await self._drop(receive, send)
        elif route == "download" and answer.status == 200:
            await self._stream_file(send, answer.body)
        else:
            await self._respond(send, answer)

    # ------------------------------------------------------------------ decisions
    # Everything below runs under self._lock and never awaits.

    def _dispatch(
        self, scope: Scope, route: str, method: str, path: str, parsed: object
    ) -> Answer | None:
        """The answer to one API request, or ``None`` to drop the connection."""
        fault = self._faults_draw.draw(route)
        if fault is None:
            return self._handle(scope, route, method, path, parsed)
        kind, lost = fault
        self._faults[kind] += 1
        # A lost answer: the request went through (the task exists), only its answer is lost.
        if (
            route == "submit"
            and kind in ("dropped_connection", "error_500")
            and lost
            and self._handle(scope, route, method, path, parsed).status == 200
        ):
            self._faults["lost_answer"] += 1
        if kind == "dropped_connection":
            return None
        if kind == "error_500":
            return Answer(500, error_body(500, "simulated internal error"), [])
        if kind == "error_503":
            return self._retry_answer(503, "simulated outage", self.config.retry_after)
        return self._retry_answer(
            429, "the server is busy, try again later", self.config.retry_after
        )

    def _handle(self, scope: Scope, route: str, method: str, path: str, parsed: object) -> Answer:
        expected = "POST" if route == "submit" else "GET"
        if method != expected:
            detail = f"{method} is not allowed on {path}"
            return Answer(405, error_body(405, detail), [(b"allow", expected.encode())])
        if route == "download":
            return self._download(path[len(FILES_PREFIX) :])
        denied = authorize(scope, self._auth_value)
        if denied is not None:
            return denied
        now = self._clock()
        config = self.config
        if config.rate_limit is not None and (
            route == "submit" or config.rate_limit_scope == "all"
        ):
            wait = self._bucket.take(now, config.rate_limit)
            if wait is not None:
                self._faults["rate_limit"] += 1
                detail = (
                    f"too many requests: request rate limit of {config.rate_limit * 60:g} "
                    "per minute exceeded"
                )
                limit = str(round(config.rate_limit * 60)).encode()
                extra = [(b"x-ratelimit-limit", limit), (b"x-ratelimit-remaining", b"0")]
                return self._retry_answer(429, detail, wait, extra)
        if route == "account":
            return account_answer(path, self._balance_usd)
        if route == "submit":
            return self._submit(scope, self._models[path], parsed, now)
        return self._poll(scope, path[len(TASKS_PREFIX) :], now)

    def _count_submission(self, path: str, body: bytes) -> object:
        """Count a submission per distinct body; return the parsed body (or ``_INVALID``)."""
        self._submissions += 1
        try:
            parsed: object = json.loads(body)
        except ValueError:
            return _INVALID
        self._submitted_bodies[canonical_key(self._models[path].name, parsed)] += 1
        return parsed

    def _submit(self, scope: Scope, model: SimModel, parsed: object, now: float) -> Answer:
        config = self.config
        if parsed is _INVALID:
            return Answer(400, error_body(400, "the body is not valid JSON"), [])
        messages = body_problems(model, parsed)
        if messages:
            return error_answer(400, "; ".join(messages))
        body = cast(dict[str, Any], parsed)
        if config.balance is not None and len(self._tasks) >= config.balance:
            self._faults["payment_required"] += 1
            detail = f"the account balance covered {config.balance} tasks"
            return Answer(402, error_body(402, detail), [])
        active = self._tasks.active(now)
        limit = config.max_concurrent_tasks
        if limit is not None and active >= limit:
            self._faults["concurrency_limit"] += 1
            detail = f"too many running tasks: the concurrent task limit of {limit} is reached"
            return self._retry_answer(429, detail, self._tasks.next_end() - now)

        task_id = self._tasks.new_task_id(config.seed, model.provider)
        latency = config.latency_for(model.name).sample(self._task_rng)
        fails = self._task_rng.random() < config.fail_rate
        expired_early = self._task_rng.random() < config.expired_rate and not fails
        if fails:
            self._faults["task_failed"] += 1
        task = SimTask(
            task_id,
            model,
            submitted_at=now,
            latency=latency,
            real_latency=latency * config.time_scale,
            pending_fraction=config.pending_fraction,
            fails=fails,
            expired_early=expired_early,
            size=image_size(model, body),
            alpha=body.get("background") == "transparent",
            images=expected_images(model.spec, body),
        )
        price = list_price(model.spec, body)
        key = canonical_key(model.name, body)
        if self._journal is not None:
            try:
                self._journal.record(stored_task(task, self._wall_time(now), key, price))
            except JournalError as exc:
                return error_answer(500, str(exc))
        if price is not None:
            self._balance_usd -= price
        self._tasks.add(task, key, active)
        data = {
            "status": config.status_names.pending,
            "task_id": task_id,
            "model_id": model.model_id,
            "get_result": {"method": "GET", "url": self._base_url(scope) + TASKS_PREFIX + task_id},
        }
        answer = {"code": 0, "message": "success", "data": data}
        return Answer(200, dumps(answer), [])

    def _poll(self, scope: Scope, task_id: str, now: float) -> Answer:
        task = self._tasks.get(task_id)
        if task is None:
            self._unknown_polls += 1
            return Answer(404, error_body(404, f"task {task_id!r} does not exist"), [])
        task.polls += 1
        self._polls += 1
        if now < task.processing_at:
            return Answer(200, self._prefix["pending"] + task.ident + b"}}", [])
        if now < task.ends_at:
            return Answer(200, self._prefix["processing"] + task.ident + b"}}", [])
        base = self._base_url(scope)
        if task.final is None or task.final[0] != base:
            task.final = (base, result_body(task, base, self.config, self._wall_time))
        return Answer(200, task.final[1], [])

    def _restore(self, stored: list[StoredTask]) -> None:
        """Know again the tasks a journal recorded (a restarted simulator)."""
        by_name = {model.name: model for model in self._models.values()}
        now = self._clock()
        for record in stored:
            model = by_name.get(record.model)
            if model is None:
                continue  # a model no longer in the catalogue: its task is unknown (404)
            submitted_at = self._epoch_clock + (record.submitted_wall - self._epoch_wall)
            self._tasks.restore(task_from_record(record, model, submitted_at), record.body_key, now)
            if record.price is not None:
                self._balance_usd -= record.price

    def _wall_time(self, at: float) -> float:
        """Unix time (the real wall clock) at the simulator's clock reading ``at``: the API's
        timestamps never run ahead of the real clock, whatever ``time_scale``."""
        return self._epoch_wall + (at - self._epoch_clock)

    def _download(self, rest: str) -> Answer:
        task_id, _, name = rest.partition("/")
        task = self._tasks.get(task_id)
        now = self._clock()
        match = _FILE_RE.match(name)
        if task is None or not match or int(match[1]) >= task.images:
            return Answer(404, error_body(404, f"no file {rest!r}"), [])
        if task.fails or now < task.ends_at:
            return Answer(404, error_body(404, f"no file {rest!r}"), [])
        ttl = self.config.result_ttl
        if task.expired_early or (
            ttl is not None and now >= task.ends_at + ttl * self.config.time_scale
        ):
            self._faults["expired_url"] += 1
            status = self.config.expired_status
            return Answer(status, error_body(status, "the result URL has expired"), [])
        data = png_bytes(
            task.width,
            task.height,
            alpha=task.alpha,
            text=task.task_id if name == "0.png" else f"{task.task_id}/{name}",
        )
        task.downloads += 1
        self._file_downloads[rest] += 1
        self._downloads += 1
        self._download_bytes += len(data)
        return Answer(200, data, [])

    def _retry_answer(
        self,
        status: int,
        detail: str,
        seconds: float,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> Answer:
        return retry_answer(
            status, detail, seconds, integer=self.config.integer_retry_after, extra=extra
        )

    @staticmethod
    def _base_url(scope: Scope) -> str:
        """``scheme://host[:port]`` as the client addressed this server."""
        scheme = scope.get("scheme", "http")
        for name, value in scope["headers"]:
            if name == b"host":
                return f"{scheme}://{value.decode('latin-1')}"
        server = scope.get("server")
        if server:
            host, port = server
            return f"{scheme}://{host}:{port}" if port else f"{scheme}://{host}"
        return f"{scheme}://127.0.0.1"

    # ------------------------------------------------------------------ I/O

    async def _read_body(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise ValueError("body too large")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _respond(self, send: Send, answer: Answer, *, count: bool = True) -> None:
        if count:
            with self._lock:
                self._codes[answer.status] += 1
        headers = [
            *JSON_HEADERS,
            (b"content-length", str(len(answer.body)).encode()),
            *answer.headers,
        ]
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": answer.body})

    async def _stream_file(self, send: Send, data: bytes) -> None:
        with self._lock:
            self._codes[200] += 1
        headers = [(b"content-type", b"image/png"), (b"content-length", str(len(data)).encode())]
        if self.config.download_latency > 0:
            await asyncio.sleep(self.config.download_latency)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        speed = self.config.download_bytes_per_second
        if speed is None:
            await send({"type": "http.response.body", "body": data})
            return
        step = self.config.download_chunk_size
        for start in range(0, len(data), step):
            chunk = data[start : start + step]
            await asyncio.sleep(len(chunk) / speed)
            more = start + step < len(data)
            await send({"type": "http.response.body", "body": chunk, "more_body": more})

    async def _drop(self, receive: Receive, send: Send) -> None:
        """Close the connection without answering.

        On uvicorn the ``send`` callable is a method of the request cycle, which
        holds the socket's transport: close it, then wait for uvicorn to notice.
        Elsewhere (e.g. ``httpx.ASGITransport``) raise the error httpx raises when
        a server hangs up, so the client sees a transport failure either way.
        """
        transport = getattr(getattr(send, "__self__", None), "transport", None)
        if transport is None or not hasattr(transport, "close"):
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        transport.close()
        for _ in range(16):
            if (await receive())["type"] == "http.disconnect":
                return
