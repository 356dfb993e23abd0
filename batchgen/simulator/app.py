"""A fake Modellix async API: a plain ASGI application for demos, tests and benchmarks.

It speaks the API batchgen relies on (submit, poll, download result files),
validates submitted bodies with the same JSON Schemas as the manifest checker,
answers errors in the provider's format, and injects faults on request, all
deterministically under a seed (see :class:`SimulatorConfig`).

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
key. Task progress is computed from timestamps when a task is polled: no timer or
background task exists per task.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import hmac
import json
import math
import random
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
from jsonschema import Draft202012Validator

from batchgen.api import is_loopback_host
from batchgen.manifest.catalogue import ModelSchema, load_models_in, model_dirs
from batchgen.manifest.modelspec import ModelSpec, expected_images, list_price, spec_of
from batchgen.simulator.journal import JournalError, StoredTask, TaskJournal
from batchgen.simulator.png import MAX_SIDE, png_bytes
from batchgen.simulator.settings import FAULT_ROUTES, Latency, SimulatorConfig, StatusNames

__all__ = [
    "FAULT_ROUTES",
    "Latency",
    "Simulator",
    "SimulatorConfig",
    "StatusNames",
    "is_loopback_host",
    "run_server",
    "serve_in_thread",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

TASKS_PREFIX = "/api/v1/tasks/"
FILES_PREFIX = "/files/"
STATS_PATH = "/_sim/stats"
MAX_BODY_BYTES = 32 << 20  # input images travel as base64 data URIs
VALIDATE_PATH = "/api/v1/apikey/validate"
BALANCE_PATH = "/api/v1/team/balance"
SUBMIT_SHAPES = (
    "/api/v1/{type}/{provider}/{model}/async",
    "/api/v1/{provider}/{model}/async",
    "/api/v1/{provider}/{model}",
)
_FILE_RE = re.compile(r"^([0-9]{1,3})\.png$")
_SIZE_RE = re.compile(r"^\s*(\d{1,5})\s*[xX*]\s*(\d{1,5})\s*$")
_JSON_HEADERS: Headers = [(b"content-type", b"application/json")]
_REASONS = {
    400: "Invalid parameters",
    401: "Unauthorized",
    402: "Insufficient balance",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    410: "Gone",
    413: "Invalid parameters",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _error_body(status: int, detail: str) -> bytes:
    """The provider's error format: ``{"code": <status>, "message": "<Category>: <detail>"}``."""
    message = f"{_REASONS.get(status, 'Error')}: {detail}"
    return _dumps({"code": status, "message": message})


def _canonical_key(model: str, body: object) -> bytes:
    """A compact key for "the same body": a digest of the model and canonical JSON."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.blake2b(f"{model}\n{text}".encode(), digest_size=16).digest()


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class _Model:
    name: str
    provider: str
    model_id: str
    submit_path: str  # the preferred one
    validator: Draft202012Validator
    default_size: str | None
    spec: ModelSpec


def _model_schemas(schema_dir: Path | None) -> list[ModelSchema]:
    """Every model with a body schema: the catalogue's, or those under ``schema_dir``."""
    dirs = model_dirs() if schema_dir is None else [schema_dir / "models"]
    return load_models_in(dirs)


def _load_models(schema_dir: Path | None) -> dict[str, _Model]:
    """The simulated models, keyed by every submit path they answer at."""
    by_path: dict[str, _Model] = {}
    for schema in _model_schemas(schema_dir):
        spec = spec_of(schema)
        size = schema.properties.get("size", {}).get("default")
        model = _Model(
            name=schema.name,
            provider=spec.provider,
            model_id=schema.name.partition("/")[2],
            submit_path=schema.submit_path,
            validator=Draft202012Validator(schema.schema),
            default_size=size if isinstance(size, str) else None,
            spec=spec,
        )
        shapes = [*spec.submit_paths]
        for shape in SUBMIT_SHAPES:
            shapes.append(
                shape.format(type=spec.task_type, provider=spec.provider, model=model.model_id)
            )
        for path in shapes:
            by_path.setdefault(path, model)
    return by_path


def _validation_messages(validator: Draft202012Validator, body: object) -> list[str]:
    messages = []
    for error in sorted(validator.iter_errors(body), key=lambda e: [str(p) for p in e.path]):
        where = ".".join(str(part) for part in error.path)
        messages.append(f"{where}: {error.message}" if where else error.message)
    return messages


def _image_size(model: _Model, body: Mapping[str, Any]) -> tuple[int, int]:
    size = body.get("size", model.default_size)
    if isinstance(size, str) and (match := _SIZE_RE.match(size)):
        width, height = int(match[1]), int(match[2])
    else:
        width, height = body.get("width", 1024), body.get("height", 1024)
        if not isinstance(width, int) or not isinstance(height, int):
            width, height = 1024, 1024
    return min(max(width, 1), MAX_SIDE), min(max(height, 1), MAX_SIDE)


# --------------------------------------------------------------------------- tasks


class _Task:
    __slots__ = (
        "alpha",
        "downloads",
        "duration_ms",
        "ends_at",
        "expired_early",
        "fails",
        "final",
        "height",
        "ident",
        "images",
        "model",
        "polls",
        "processing_at",
        "submitted_at",
        "task_id",
        "width",
    )

    def __init__(
        self,
        task_id: str,
        model: _Model,
        *,
        submitted_at: float,
        latency: float,
        real_latency: float,
        pending_fraction: float,
        fails: bool,
        expired_early: bool,
        size: tuple[int, int],
        alpha: bool,
        images: int = 1,
    ) -> None:
        self.task_id = task_id
        self.model = model
        self.submitted_at = submitted_at
        self.processing_at = submitted_at + real_latency * pending_fraction
        self.ends_at = submitted_at + real_latency
        self.duration_ms = round(latency * 1000)
        self.fails = fails
        self.expired_early = expired_early
        self.width, self.height = size
        self.alpha = alpha
        self.images = images
        self.polls = 0
        self.downloads = 0
        self.final: tuple[str, bytes] | None = None
        ident = {"task_id": task_id, "model_id": model.model_id}
        self.ident = _dumps(ident)[1:-1]


def _stored(task: _Task, submitted_wall: float, body_key: bytes, price: float | None) -> StoredTask:
    """What the journal keeps of ``task`` (real-time offsets from its submit)."""
    return StoredTask(
        task_id=task.task_id,
        model=task.model.name,
        submitted_wall=submitted_wall,
        processing_after=task.processing_at - task.submitted_at,
        ends_after=task.ends_at - task.submitted_at,
        duration_ms=task.duration_ms,
        fails=task.fails,
        expired_early=task.expired_early,
        width=task.width,
        height=task.height,
        alpha=task.alpha,
        images=task.images,
        body_key=body_key,
        price=price,
    )


@dataclass
class _Answer:
    status: int
    body: bytes
    headers: Headers


# --------------------------------------------------------------------------- the app


class Simulator:
    """The fake API, an ASGI application: ``await sim(scope, receive, send)``.

    ``clock`` (default :func:`time.monotonic`) is the real-time clock in seconds;
    tests may pass a fake one to move time by hand. ``schema_dir`` overrides
    where the model schemas are read from (a folder holding ``models/``).
    ``journal`` keeps accepted tasks in a file (:mod:`batchgen.simulator.journal`): the
    tasks recorded there before are known again, and each new one is committed before
    its submit is answered.
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
        self._models = _load_models(schema_dir)
        self._lock = threading.Lock()
        self._fault_rng = random.Random(f"{self.config.seed}:faults")
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
        self._tasks: dict[str, _Task] = {}
        self._ends: list[float] = []  # heap: end times of tasks not known to have ended
        self._tokens = float(self.config.burst)
        self._tokens_at = self._epoch_clock
        self._requests = 0
        self._submissions = 0
        self._submitted_bodies: Counter[bytes] = Counter()
        self._accepted_bodies: Counter[bytes] = Counter()
        self._accepted = 0
        self._polls = 0
        self._unknown_polls = 0
        self._downloads = 0
        self._download_bytes = 0
        self._codes: Counter[int] = Counter()
        self._faults: Counter[str] = Counter()
        self._peak = 0
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

    def stats(self) -> dict[str, Any]:
        """Counters a test can assert on; the same JSON as ``GET /_sim/stats``."""
        with self._lock:
            now = self._clock()
            active = self._active(now)
            polls = Counter(task.polls for task in self._tasks.values())
            accepted = len(self._tasks)
            ended = [task for task in self._tasks.values() if task.ends_at <= now]
            failed = sum(1 for task in ended if task.fails)
            submitted_counts = self._submitted_bodies.values()
            accepted_counts = self._accepted_bodies.values()
            return {
                "requests": self._requests,
                "status_codes": {str(code): n for code, n in sorted(self._codes.items())},
                "submissions": {
                    "total": self._submissions,
                    "distinct_bodies": len(self._submitted_bodies),
                    "bodies_submitted_more_than_once": sum(1 for n in submitted_counts if n > 1),
                    "max_per_body": max(submitted_counts, default=0),
                    "accepted": accepted,
                    "accepted_distinct_bodies": len(self._accepted_bodies),
                    "bodies_accepted_more_than_once": sum(1 for n in accepted_counts if n > 1),
                    "max_accepted_per_body": max(accepted_counts, default=0),
                },
                "tasks": {
                    "accepted": accepted,
                    "active": active,
                    "peak_concurrent": self._peak,
                    "ended": len(ended),
                    "succeeded": len(ended) - failed,
                    "failed": failed,
                },
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
                    "max_per_task": max((t.downloads for t in self._tasks.values()), default=0),
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
            await self._respond(send, _Answer(200, body, []), count=False)
            return
        if path in (VALIDATE_PATH, BALANCE_PATH):
            route = "account"
        elif path.startswith(TASKS_PREFIX):
            route = "poll"
        elif path in self._models:
            route = "submit"
        elif path.startswith(FILES_PREFIX):
            route = "download"
        else:
            with self._lock:
                self._requests += 1
            await self._respond(send, _Answer(404, _error_body(404, f"no route {path}"), []))
            return

        body = b""
        if route == "submit" and method == "POST":
            try:
                body = await self._read_body(receive)
            except ValueError:
                with self._lock:
                    self._requests += 1
                await self._respond(send, _Answer(413, _error_body(413, "body too large"), []))
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
    ) -> _Answer | None:
        """The answer to one API request, or ``None`` to drop the connection."""
        fault = self._draw_fault(route)
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
            return _Answer(500, _error_body(500, "simulated internal error"), [])
        if kind == "error_503":
            return self._retry_answer(503, "simulated outage", self.config.retry_after)
        return self._retry_answer(429, "simulated rate limit", self.config.retry_after)

    def _draw_fault(self, route: str) -> tuple[str, bool] | None:
        """Two draws per request on a faulty route: which fault (if any), and whether a
        faulted submit was carried out anyway."""
        config = self.config
        if route not in config.fault_routes:
            return None
        which = self._fault_rng.random()
        lost = self._fault_rng.random() < config.lost_answer_fraction
        for kind, rate in (
            ("dropped_connection", config.drop_rate),
            ("error_500", config.error_500_rate),
            ("error_503", config.error_503_rate),
            ("error_429", config.error_429_rate),
        ):
            if which < rate:
                return kind, lost
            which -= rate
        return None

    def _handle(self, scope: Scope, route: str, method: str, path: str, parsed: object) -> _Answer:
        expected = "POST" if route == "submit" else "GET"
        if method != expected:
            detail = f"{method} is not allowed on {path}"
            return _Answer(405, _error_body(405, detail), [(b"allow", expected.encode())])
        if route == "download":
            return self._download(path[len(FILES_PREFIX) :])
        denied = self._authorize(scope)
        if denied is not None:
            return denied
        now = self._clock()
        config = self.config
        if config.rate_limit is not None and (
            route == "submit" or config.rate_limit_scope == "all"
        ):
            wait = self._take_token(now, config.rate_limit)
            if wait is not None:
                self._faults["rate_limit"] += 1
                detail = f"request rate limit of {config.rate_limit:g}/s exceeded"
                return self._retry_answer(429, detail, wait)
        if route == "account":
            return self._account(path)
        if route == "submit":
            return self._submit(scope, self._models[path], parsed, now)
        return self._poll(scope, path[len(TASKS_PREFIX) :], now)

    def _account(self, path: str) -> _Answer:
        """The key check and the balance (the caller already checked the key)."""
        if path == VALIDATE_PATH:
            data: dict[str, Any] = {"is_valid": True}
        else:
            data = {"balance": round(self._balance_usd, 4)}
        return _Answer(200, _dumps({"code": 0, "message": "success", "data": data}), [])

    def _authorize(self, scope: Scope) -> _Answer | None:
        if self._auth_value is None:
            return None
        for name, value in scope["headers"]:
            if name == b"authorization":
                if hmac.compare_digest(value, self._auth_value):
                    return None
                return _Answer(401, _error_body(401, "invalid API key"), [])
        return _Answer(401, _error_body(401, "missing bearer token"), [])

    def _take_token(self, now: float, rate: float) -> float | None:
        """Token bucket: ``None`` if a token was taken, else seconds until one is ready."""
        self._tokens = min(float(self.config.burst), self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return None
        return (1.0 - self._tokens) / rate

    def _count_submission(self, path: str, body: bytes) -> object:
        """Count a submission per distinct body; return the parsed body (or ``_INVALID``)."""
        self._submissions += 1
        try:
            parsed: object = json.loads(body)
        except ValueError:
            return _INVALID
        self._submitted_bodies[_canonical_key(self._models[path].name, parsed)] += 1
        return parsed

    def _active(self, now: float) -> int:
        """Tasks submitted and not ended at ``now``."""
        ends = self._ends
        while ends and ends[0] <= now:
            heapq.heappop(ends)
        return len(ends)

    def _submit(self, scope: Scope, model: _Model, parsed: object, now: float) -> _Answer:
        config = self.config
        if parsed is _INVALID:
            return _Answer(400, _error_body(400, "the body is not valid JSON"), [])
        messages = _validation_messages(model.validator, parsed)
        if messages:
            return _Answer(400, _error_body(400, "; ".join(messages)), [])
        body = cast(dict[str, Any], parsed)
        if config.balance is not None and len(self._tasks) >= config.balance:
            self._faults["payment_required"] += 1
            detail = f"the account balance covered {config.balance} tasks"
            return _Answer(402, _error_body(402, detail), [])
        active = self._active(now)
        limit = config.max_concurrent_tasks
        if limit is not None and active >= limit:
            self._faults["concurrency_limit"] += 1
            detail = f"concurrent task limit of {limit} reached"
            return self._retry_answer(429, detail, self._ends[0] - now)

        seq = len(self._tasks)
        digest = hashlib.sha256(f"{config.seed}:{seq}".encode()).hexdigest()[:20]
        task_id = f"task-{model.provider}-{digest}"
        latency = config.latency.sample(self._task_rng)
        fails = self._task_rng.random() < config.fail_rate
        expired_early = self._task_rng.random() < config.expired_rate and not fails
        if fails:
            self._faults["task_failed"] += 1
        task = _Task(
            task_id,
            model,
            submitted_at=now,
            latency=latency,
            real_latency=latency * config.time_scale,
            pending_fraction=config.pending_fraction,
            fails=fails,
            expired_early=expired_early,
            size=_image_size(model, body),
            alpha=body.get("background") == "transparent",
            images=expected_images(model.spec, body),
        )
        price = list_price(model.spec, body)
        key = _canonical_key(model.name, body)
        if self._journal is not None:
            try:
                self._journal.record(_stored(task, self._wall_of(now), key, price))
            except JournalError as exc:
                return _Answer(500, _error_body(500, str(exc)), [])
        if price is not None:
            self._balance_usd -= price
        self._tasks[task_id] = task
        self._accepted_bodies[key] += 1
        heapq.heappush(self._ends, task.ends_at)
        self._peak = max(self._peak, active + 1)
        data = {
            "status": config.status_names.pending,
            "task_id": task_id,
            "model_id": model.model_id,
            "get_result": {"method": "GET", "url": self._base_url(scope) + TASKS_PREFIX + task_id},
        }
        answer = {"code": 0, "message": "success", "data": data}
        return _Answer(200, _dumps(answer), [])

    def _poll(self, scope: Scope, task_id: str, now: float) -> _Answer:
        task = self._tasks.get(task_id)
        if task is None:
            self._unknown_polls += 1
            return _Answer(404, _error_body(404, f"task {task_id!r} does not exist"), [])
        task.polls += 1
        self._polls += 1
        if now < task.processing_at:
            return _Answer(200, self._prefix["pending"] + task.ident + b"}}", [])
        if now < task.ends_at:
            return _Answer(200, self._prefix["processing"] + task.ident + b"}}", [])
        base = self._base_url(scope)
        if task.final is None or task.final[0] != base:
            task.final = (base, self._final_body(task, base))
        return _Answer(200, task.final[1], [])

    def _wall_of(self, at: float) -> float:
        """Unix time at real clock reading ``at``."""
        return self._epoch_wall + (at - self._epoch_clock)

    def _restore(self, stored: list[StoredTask]) -> None:
        """Know again the tasks a journal recorded (a restarted simulator)."""
        by_name = {model.name: model for model in self._models.values()}
        now = self._clock()
        for record in stored:
            model = by_name.get(record.model)
            if model is None:
                continue  # a model no longer in the catalogue: its task is unknown (404)
            ends = record.ends_after
            task = _Task(
                record.task_id,
                model,
                submitted_at=self._epoch_clock + (record.submitted_wall - self._epoch_wall),
                latency=record.duration_ms / 1000,
                real_latency=ends,
                pending_fraction=record.processing_after / ends if ends > 0 else 0.0,
                fails=record.fails,
                expired_early=record.expired_early,
                size=(record.width, record.height),
                alpha=record.alpha,
                images=record.images,
            )
            self._tasks[task.task_id] = task
            self._accepted_bodies[record.body_key] += 1
            if record.price is not None:
                self._balance_usd -= record.price
            if task.ends_at > now:
                heapq.heappush(self._ends, task.ends_at)

    def _simulated_epoch(self, at: float) -> float:
        """Unix time of the simulated clock at real clock reading ``at``."""
        return self._epoch_wall + (at - self._epoch_clock) / self.config.time_scale

    def _final_body(self, task: _Task, base: str) -> bytes:
        config = self.config
        names = config.status_names
        data: dict[str, Any] = {
            "status": names.failed if task.fails else names.success,
            "task_id": task.task_id,
            "model_id": task.model.model_id,
            "duration": task.duration_ms,
        }
        if task.fails:
            if config.failed_error_field:
                data["error"] = "Simulated failure: the model could not generate the image"
        else:
            submit_time = self._simulated_epoch(task.submitted_at)
            end_time = submit_time + task.duration_ms / 1000
            data["result"] = {
                "resources": [
                    {
                        "url": f"{base}{FILES_PREFIX}{task.task_id}/{i}.png",
                        "type": "image",
                        "width": task.width,
                        "height": task.height,
                        "format": "png",
                        "role": "primary",
                    }
                    for i in range(task.images)
                ],
                "metadata": {
                    "image_count": task.images,
                    "request_id": "req-" + task.task_id[5:],
                },
                "extensions": {"submit_time": int(submit_time), "end_time": int(end_time)},
            }
            if config.result_ttl is not None:
                data["result_expires_at"] = int(end_time + config.result_ttl)
        return _dumps({"code": 0, "message": "success", "data": data})

    def _download(self, rest: str) -> _Answer:
        task_id, _, name = rest.partition("/")
        task = self._tasks.get(task_id)
        now = self._clock()
        match = _FILE_RE.match(name)
        if task is None or not match or int(match[1]) >= task.images:
            return _Answer(404, _error_body(404, f"no file {rest!r}"), [])
        if task.fails or now < task.ends_at:
            return _Answer(404, _error_body(404, f"no file {rest!r}"), [])
        ttl = self.config.result_ttl
        if task.expired_early or (
            ttl is not None and now >= task.ends_at + ttl * self.config.time_scale
        ):
            self._faults["expired_url"] += 1
            status = self.config.expired_status
            return _Answer(status, _error_body(status, "the result URL has expired"), [])
        data = png_bytes(
            task.width,
            task.height,
            alpha=task.alpha,
            text=task.task_id if name == "0.png" else f"{task.task_id}/{name}",
        )
        task.downloads += 1
        self._downloads += 1
        self._download_bytes += len(data)
        return _Answer(200, data, [])

    def _retry_answer(self, status: int, detail: str, seconds: float) -> _Answer:
        seconds = max(0.0, seconds)
        if self.config.integer_retry_after or seconds >= 1:
            value = str(math.ceil(seconds))
        else:
            value = f"{max(seconds, 0.001):.3f}"
        headers = [(b"retry-after", value.encode())]
        if status == 429:
            reset = str(math.ceil(time.time() + seconds)).encode()
            headers.append((b"x-ratelimit-reset", reset))
        return _Answer(status, _error_body(status, detail), headers)

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

    async def _respond(self, send: Send, answer: _Answer, *, count: bool = True) -> None:
        if count:
            with self._lock:
                self._codes[answer.status] += 1
        headers = [
            *_JSON_HEADERS,
            (b"content-length", str(len(answer.body)).encode()),
            *answer.headers,
        ]
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": answer.body})

    async def _stream_file(self, send: Send, data: bytes) -> None:
        with self._lock:
            self._codes[200] += 1
        headers = [(b"content-type", b"image/png"), (b"content-length", str(len(data)).encode())]
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


_INVALID = object()


# --------------------------------------------------------------------------- serving


def _bind(host: str, port: int, allow_remote: bool) -> socket.socket:
    if not allow_remote and not is_loopback_host(host):
        raise ValueError(f"refusing to serve on non-loopback host {host!r} (allow_remote=False)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets that say they are
    # TCP, and without it Nagle + delayed ACKs add ~40 ms to every answer.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)  # accept (queue) connections from now on, before uvicorn starts
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _uvicorn_server(sim: Simulator, http: str, *, own_logging: bool) -> Any:
    import uvicorn  # noqa: PLC0415  (only the served modes need it)

    # log_config=None: a server inside someone else's process leaves their logging alone
    # (uvicorn's default config re-enables every logger another configuration disabled).
    extra: dict[str, Any] = {} if own_logging else {"log_config": None}
    config = uvicorn.Config(
        cast(Any, sim),
        http=http,
        ws="none",
        lifespan="off",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=3,
        **extra,
    )
    return uvicorn.Server(config)


def run_server(
    sim: Simulator,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    allow_remote: bool = False,
    http: str = "auto",
    ready: Callable[[str], None] | None = None,
) -> None:
    """Serve ``sim`` with uvicorn until interrupted (SIGINT returns; SIGTERM ends the process).

    Refuses a non-loopback ``host`` unless ``allow_remote``. ``ready`` is called
    with the base URL (real port, when ``port`` is 0) once the socket is bound.
    """
    sock = _bind(host, port, allow_remote)
    if ready is not None:
        ready(_url_of(sock))
    server = _uvicorn_server(sim, http, own_logging=True)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        # uvicorn shuts down gracefully on SIGINT, then re-raises it: that is a normal stop.
        pass
    finally:
        sock.close()


@contextlib.contextmanager
def serve_in_thread(
    sim: Simulator,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    allow_remote: bool = False,
    http: str = "auto",
    startup_timeout: float = 10.0,
) -> Iterator[str]:
    """Serve ``sim`` with a real uvicorn server in a thread; yield its base URL.

    For tests and benchmarks over real sockets: ``with serve_in_thread(sim) as
    url: ...``. ``port=0`` picks a free port. The server stops when the block
    exits (waiting at most a few seconds for open requests).
    """
    sock = _bind(host, port, allow_remote)
    server = _uvicorn_server(sim, http, own_logging=False)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="batchgen-simulator", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the simulator server stopped during startup")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the simulator server did not start in {startup_timeout} s")
            time.sleep(0.005)
        yield _url_of(sock)
    finally:
        server.should_exit = True
        thread.join(timeout=startup_timeout)
        sock.close()
