"""An independent Modellix-compatible API server on loopback, for tests.

Written from the provider's documents only, the way another vendor's engineer would,
and deliberately exercising the documented-but-less-common paths:

* submit answers carry an absolute ``get_result.url`` and a ``model_id`` that does
  not match the model in the path;
* task statuses ``pending``/``processing``, then one of ``success``/``completed``/
  ``succeeded`` or ``failed``/``error``/``canceled`` (and, optionally, unknown ones);
* results are served by a second loopback server (a "CDN" host on another port) with
  signed URLs that need no key and expire (403, 404 or 410), plus
  ``data.result_expires_at``;
* 429 with ``Retry-After`` as an HTTP date, as seconds, or absent with
  ``X-RateLimit-Reset``; a concurrent-task limit; 502/504 HTML pages, 503 with
  ``Retry-After``, 500 JSON, HTTP 200 with ``code != 0``; connections closed without an
  answer before or *after* a task was accepted;
* 400 for bodies that break the documented field rules, 401 without the key, 402 once
  the balance is spent.

Every decision comes from ``random.Random`` instances derived from the seed and the
request's identity (body, n-th submission of it; task id, n-th poll of it), so a run is
reproducible whatever order concurrent requests arrive in. Every fault is a per-kind
probability, 0 by default. Only the standard library is used.

Use::

    with running_server(seed=1, fault_429=0.1) as server:
        server.base_url, server.api_key, server.stats["accepted_tasks"]
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import hashlib
import heapq
import json
import math
import random
import re
import socket
import struct
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "ManualClock",
    "ServerHandle",
    "ServerOptions",
    "ServerStats",
    "TaskRecord",
    "canonical_body",
    "jpeg_bytes",
    "png_bytes",
    "running_server",
]

SIZES = ("1024x1024", "1536x1024", "1024x1536")
QUALITIES = ("low", "medium", "high")
BACKGROUNDS = ("transparent", "opaque", "auto")
PROMPT_MAX = 32000

SUCCESS_WORDS = ("success", "completed", "succeeded")
FAILURE_WORDS = ("failed", "error", "canceled")
UNKNOWN_RUNNING_WORDS = ("queued", "in_queue", "starting", "running")

# Request-level faults, in the order their probability bands are laid out on [0, 1).
API_FAULTS = ("429", "500", "502", "503", "504", "200_error", "drop")
SUBMIT_ONLY_FAULTS = ("drop_after_accept", "504_after_accept")
DOWNLOAD_FAULTS = ("download_truncated", "download_503", "download_drop")

_SUBMIT_RE = re.compile(r"^/api/v1/([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+?)(/async)?$")
_TASK_RE = re.compile(r"^/api/v1/tasks/([A-Za-z0-9_.-]+)$")
_CDN_RE = re.compile(r"^/o/([0-9a-f]{32})/([A-Za-z0-9_.-]+)\.(png|jpg)$")


def canonical_body(body: Any) -> str:
    """The canonical JSON text of a request body (sorted keys, no spaces)."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _rng(seed: int, *parts: object) -> random.Random:
    text = "\x1f".join(str(p) for p in (seed, *parts))
    return random.Random(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big"))


def _pick_band(rng: random.Random, bands: Mapping[str, float]) -> str | None:
    """One draw on [0, 1): each kind owns a band as wide as its probability."""
    u = rng.random()
    edge = 0.0
    for kind, p in bands.items():
        edge += p
        if u < edge:
            return kind
    return None


# --------------------------------------------------------------------------- images


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


_REST_CACHE: dict[tuple[int, int, int], bytes] = {}
_REST_LOCK = threading.Lock()


def _idat(width: int, height: int, pixel: bytes) -> bytes:
    """The zlib stream of a solid image, cheaply: the first scanline uses the Sub filter (one
    pixel, then zero differences), every other one the Up filter (all zeros). The colour only
    lives in the first scanline, so the deflate data of the rest is compressed once per size
    (after a full flush, deflate blocks do not refer back) and the Adler-32 is recomputed."""
    bpp = len(pixel)
    first = b"\x01" + pixel + bytes(width * bpp - bpp)
    row = b"\x02" + bytes(width * bpp)
    key = (width, height, bpp)
    with _REST_LOCK:
        rest = _REST_CACHE.get(key)
    if rest is None:
        packer = zlib.compressobj(6, zlib.DEFLATED, -15)
        rest = b"".join(packer.compress(row) for _ in range(height - 1)) + packer.flush()
        with _REST_LOCK:
            _REST_CACHE[key] = rest
    head = zlib.compressobj(6, zlib.DEFLATED, -15)
    start = head.compress(first) + head.flush(zlib.Z_FULL_FLUSH)
    adler = zlib.adler32(first)
    for _ in range(height - 1):
        adler = zlib.adler32(row, adler)
    return b"\x78\x9c" + start + rest + struct.pack(">I", adler)


def png_bytes(
    width: int, height: int, rgb: tuple[int, int, int], *, alpha: bool = False, text: str = ""
) -> bytes:
    """A complete, valid PNG: a solid colour, 8-bit RGB or RGBA, with an optional tEXt."""
    pixel = bytes(rgb) + (b"\xc0" if alpha else b"")
    colour_type = 6 if alpha else 2
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    parts = [b"\x89PNG\r\n\x1a\n", _png_chunk(b"IHDR", ihdr)]
    if text:
        parts.append(_png_chunk(b"tEXt", b"Comment\x00" + text.encode("latin-1", "replace")))
    parts += [_png_chunk(b"IDAT", _idat(width, height, pixel)), _png_chunk(b"IEND", b"")]
    return b"".join(parts)


def _jpeg_segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">HH", 0xFF00 | marker, len(payload) + 2) + payload


def jpeg_bytes(width: int, height: int, grey: int, *, comment: str = "") -> bytes:
    """A complete, valid baseline JPEG (greyscale, one solid level), SOI..EOI.

    Quantisation is all ones, so a solid 8x8 block has only a DC coefficient of
    ``8 * (grey - 128)``. The Huffman tables hold exactly the symbols used: DC
    categories 0 (code ``0``) and that of the first block (code ``10``), AC end-of-block
    (code ``0``). The first block codes the DC value, every later one a zero difference.
    """
    if grey == 128:
        grey = 129  # keep a non-zero DC so the DC table has its two symbols
    dc = 8 * (grey - 128)
    category = abs(dc).bit_length()
    extra = dc if dc > 0 else dc + (1 << category) - 1  # one's-complement form for negatives
    blocks = math.ceil(width / 8) * math.ceil(height / 8)
    first = "10" + format(extra, f"0{category}b") + "0"
    bits = first + "00" * (blocks - 1)
    bits += "1" * (-len(bits) % 8)  # pad the last byte with ones
    raw = int(bits, 2).to_bytes(len(bits) // 8, "big")
    scan = raw.replace(b"\xff", b"\xff\x00")  # byte stuffing

    def bits_table(lengths: list[int]) -> bytes:
        counts = [0] * 16
        for n in lengths:
            counts[n - 1] += 1
        return bytes(counts)

    jfif = b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    dqt = b"\x00" + b"\x01" * 64
    sof = struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00"
    dht_dc = b"\x00" + bits_table([1, 2]) + bytes([0, category])
    dht_ac = b"\x10" + bits_table([1]) + b"\x00"
    sos = b"\x01\x01\x00\x00\x3f\x00"
    out = [b"\xff\xd8", _jpeg_segment(0xE0, jfif)]
    if comment:
        out.append(_jpeg_segment(0xFE, comment.encode("latin-1", "replace")))
    out += [
        _jpeg_segment(0xDB, dqt),
        _jpeg_segment(0xC0, sof),
        _jpeg_segment(0xC4, dht_dc),
        _jpeg_segment(0xC4, dht_ac),
        _jpeg_segment(0xDA, sos),
        scan,
        b"\xff\xd9",
    ]
    return b"".join(out)


# --------------------------------------------------------------------------- options


class ManualClock:
    """A clock that only moves when told to (``advance``); thread-safe."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        with self._lock:
            self._now += seconds


@dataclasses.dataclass
class ServerOptions:
    """Every knob of the server. Probabilities are per request (or per task), 0..1."""

    seed: int = 0
    api_key: str = "independent-test-key"
    models: tuple[str, ...] = ("openai/gpt-image-1.5",)
    model_id: str = "gpt-image-2"  # what answers claim, deliberately not the path's model
    latency_ms: tuple[float, float] = (20.0, 250.0)  # task duration, uniform in this range
    result_ttl: float = 3600.0  # seconds a result URL lives after the task ends
    retry_after: float = 0.0  # seconds advertised by 429/503 answers
    retry_after_style: str | None = None  # "date", "seconds" or "reset"; None: a random one
    first_submits_429: int = 0  # the first N submit requests answer 429 (deterministic)
    first_submits_503: int = 0  # then the next N answer 503 with Retry-After (deterministic)
    max_concurrent_tasks: int | None = None  # 429 while this many tasks are unfinished
    balance: int | None = None  # 402 on submit once this many tasks were accepted
    submit_unauthorized_after: int | None = None  # submits answer 401 after N accepted
    revoke_key_after: int | None = None  # every API request answers 401 after N accepted
    # Request-level faults on the API host (submit and poll); they share one draw, so
    # their sum (with the submit-only ones) must stay <= 1.
    fault_429: float = 0.0
    fault_500: float = 0.0
    fault_502: float = 0.0
    fault_503: float = 0.0
    fault_504: float = 0.0
    fault_200_error: float = 0.0
    fault_drop: float = 0.0  # connection closed without an answer, nothing done
    poll_faults: bool = True  # False: the request-level faults above hit submits only
    first_polls_fail: int = 0  # the first N polls of every task answer 503 (deterministic)
    submit_answer_delay: float = 0.0  # seconds between creating a task and answering
    # Submit only: the task IS created, then the client never learns its id.
    fault_drop_after_accept: float = 0.0
    fault_504_after_accept: float = 0.0
    # Per task, independent draws.
    fault_task_failed: float = 0.0
    fault_url_expired: float = 0.0  # the result URL is already expired when first shown
    fault_task_stuck: float = 0.0  # the task never ends ("processing" forever)
    failure_messages: bool = True  # False: failed tasks carry no reason at all
    jpeg_rate: float = 0.0  # share of results that are JPEG instead of PNG
    # Per poll of a running task: an undocumented status word.
    fault_unknown_status: float = 0.0
    # Per download request on the CDN host (one shared draw).
    fault_download_truncated: float = 0.0  # Content-Length promised, half sent, closed
    fault_download_503: float = 0.0
    fault_download_drop: float = 0.0  # closed without an answer
    chunked_downloads: float = 0.0  # share of downloads sent chunked, no Content-Length
    cdn_rejects_authorization: bool = False  # 400 when a key is sent to the CDN (S3-like)
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            if field.name.startswith("fault_") or field.name in ("jpeg_rate", "chunked_downloads"):
                value = getattr(self, field.name)
                if not 0.0 <= value <= 1.0:
                    raise ValueError(f"{field.name} must be within 0..1, got {value!r}")
        if sum(self.api_fault_bands(submit=True).values()) > 1.0 + 1e-9:
            raise ValueError("the request-level fault probabilities add up to more than 1")
        if sum(self.download_fault_bands().values()) > 1.0 + 1e-9:
            raise ValueError("the download fault probabilities add up to more than 1")
        if self.retry_after_style not in (None, "date", "seconds", "reset"):
            raise ValueError("retry_after_style must be 'date', 'seconds', 'reset' or None")
        low, high = self.latency_ms
        if not 0 <= low <= high:
            raise ValueError("latency_ms must be (low, high) with 0 <= low <= high")

    def api_fault_bands(self, *, submit: bool) -> dict[str, float]:
        """The request-level fault kinds that apply, with their probabilities."""
        kinds = API_FAULTS + (SUBMIT_ONLY_FAULTS if submit else ())
        return {kind: float(getattr(self, f"fault_{kind}")) for kind in kinds}

    def download_fault_bands(self) -> dict[str, float]:
        """The download fault kinds with their probabilities."""
        return {kind: float(getattr(self, f"fault_{kind}")) for kind in DOWNLOAD_FAULTS}


# --------------------------------------------------------------------------- state


@dataclasses.dataclass
class TaskRecord:
    """One accepted task, as the server sees it."""

    task_id: str
    body: str  # canonical JSON
    accepted_at: float
    pending_until: float
    finish_at: float
    outcome: str  # "success" or "failed"
    status_word: str  # the terminal status string this task reports
    width: int
    height: int
    fmt: str  # "png" or "jpeg"
    token: str
    signature: str
    expires_at: float  # when the result URL stops working
    delivered: bool = True  # False: the client never got this task's id (ambiguous)
    polls: int = 0
    downloads: int = 0
    expired_hits: int = 0  # download attempts answered "expired"


class ServerStats(Mapping[str, Any]):
    """Thread-safe counters; reading a key returns a copy (plain dicts for counters)."""

    _SCALARS = (
        "submit_requests",
        "accepted_tasks",
        "orphaned_tasks",
        "failed_tasks",
        "poll_requests",
        "downloads",
        "expired_downloads",
        "cdn_requests_with_authorization",
        "max_in_flight",
        "server_errors",
        "submits_before_retry_after",
        "resubmits_before_retry_after",
        "answers_waiting",
    )
    _COUNTERS = (
        "submissions_per_body",
        "accepted_per_body",
        "polls_per_task",
        "downloads_per_task",
        "status_codes",
        "cdn_status_codes",
        "faults",
        "statuses_sent",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, Any] = dict.fromkeys(self._SCALARS, 0)
        for name in self._COUNTERS:
            self._values[name] = Counter()

    def add(self, name: str, key: object = None, n: int = 1) -> None:
        """Add ``n`` to a scalar counter, or to ``key`` of a keyed counter."""
        with self._lock:
            if key is None:
                self._values[name] += n
            else:
                self._values[name][key] += n

    def raise_to(self, name: str, value: int) -> None:
        """Keep the maximum seen of a scalar."""
        with self._lock:
            self._values[name] = max(self._values[name], value)

    def __getitem__(self, name: str) -> Any:
        with self._lock:
            value = self._values[name]
            return dict(value) if isinstance(value, Counter) else value

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._values))

    def __len__(self) -> int:
        return len(self._values)

    def snapshot(self) -> dict[str, Any]:
        """Every counter at once, consistently."""
        with self._lock:
            return {k: dict(v) if isinstance(v, Counter) else v for k, v in self._values.items()}


class _Backend:
    """The task store and every decision; shared by the API and CDN servers."""

    def __init__(self, options: ServerOptions, stats: ServerStats) -> None:
        self.options = options
        self.stats = stats
        self.lock = threading.Lock()
        self.tasks: dict[str, TaskRecord] = {}
        self.by_token: dict[str, TaskRecord] = {}
        self.submits_seen: Counter[str] = Counter()
        self.accepted_seen: Counter[str] = Counter()
        self.downloads_seen: Counter[str] = Counter()
        self.running_heap: list[float] = []  # finish times of tasks maybe still running
        self.accepted_total = 0
        self.submits_total = 0
        self.blocked_until = 0.0  # epoch seconds advertised by the latest 429
        self.body_blocked: dict[str, float] = {}  # body -> Retry-After instant of its 503
        self.epoch0 = time.time()
        self.clock0 = options.clock()
        self.api_base = ""
        self.cdn_base = ""

    def now(self) -> float:
        return self.options.clock()

    def epoch(self, t: float) -> float:
        return self.epoch0 + (t - self.clock0)

    def in_flight(self, now: float) -> int:
        """Unfinished tasks; call with the lock held."""
        while self.running_heap and self.running_heap[0] <= now:
            heapq.heappop(self.running_heap)
        return len(self.running_heap)

    def new_task(self, body_key: str, body: Mapping[str, Any], now: float) -> TaskRecord:
        """Create a task; call with the lock held."""
        o = self.options
        n = self.accepted_seen[body_key]
        self.accepted_seen[body_key] += 1
        ident = hashlib.sha256(f"{o.seed}\x1f{body_key}\x1f{n}".encode()).hexdigest()
        task_id = f"task-openai-{ident[:24]}"
        rng = _rng(o.seed, "task", task_id)
        duration = rng.uniform(*o.latency_ms) / 1000.0
        pending_share = rng.uniform(0.1, 0.6)
        failed = rng.random() < o.fault_task_failed
        expired_at_birth = rng.random() < o.fault_url_expired
        jpeg = rng.random() < o.jpeg_rate
        stuck = rng.random() < o.fault_task_stuck
        width, height = (int(x) for x in str(body.get("size", "1024x1024")).split("x"))
        finish_at = math.inf if stuck else now + duration
        task = TaskRecord(
            task_id=task_id,
            body=body_key,
            accepted_at=now,
            pending_until=now + duration * pending_share,
            finish_at=finish_at,
            outcome="failed" if failed else "success",
            status_word=rng.choice(FAILURE_WORDS if failed else SUCCESS_WORDS),
            width=width,
            height=height,
            fmt="jpeg" if jpeg else "png",
            token=ident[24:56].ljust(32, "0"),
            signature=hashlib.sha256(f"sig\x1f{o.seed}\x1f{task_id}".encode()).hexdigest()[:40],
            expires_at=finish_at if expired_at_birth else finish_at + o.result_ttl,
        )
        self.tasks[task_id] = task
        self.by_token[task.token] = task
        heapq.heappush(self.running_heap, finish_at)
        self.accepted_total += 1
        self.stats.add("accepted_tasks")
        self.stats.add("accepted_per_body", body_key)
        if failed:
            self.stats.add("failed_tasks")
        if stuck:
            self.stats.add("faults", "task_stuck")
        self.stats.raise_to("max_in_flight", self.in_flight(now))
        return task

    def image(self, task: TaskRecord) -> tuple[bytes, str]:
        rng = _rng(self.options.seed, "image", task.task_id)
        if task.fmt == "jpeg":
            data = jpeg_bytes(task.width, task.height, rng.randrange(16, 240), comment=task.task_id)
            return data, "image/jpeg"
        body = json.loads(task.body)
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        alpha = body.get("background") == "transparent"
        return png_bytes(task.width, task.height, colour, alpha=alpha, text=task.task_id), (
            "image/png"
        )

    def result_url(self, task: TaskRecord) -> str:
        ext = "jpg" if task.fmt == "jpeg" else "png"
        expires = int(self.epoch(task.expires_at))
        return (
            f"{self.cdn_base}/o/{task.token}/{task.task_id}.{ext}"
            f"?Expires={expires}&Signature={task.signature}"
        )


# --------------------------------------------------------------------------- HTTP plumbing


_HTML_PAGES = {
    502: (
        "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
        "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>edge-proxy</center>\r\n"
        "</body>\r\n</html>\r\n"
    ),
    504: (
        "<html>\r\n<head><title>504 Gateway Time-out</title></head>\r\n<body>\r\n"
        "<center><h1>504 Gateway Time-out</h1></center>\r\n<hr><center>edge-proxy</center>\r\n"
        "</body>\r\n</html>\r\n"
    ),
}
_REASONS = {
    400: "Invalid parameters",
    401: "Unauthorized",
    402: "Insufficient balance",
    404: "Not Found",
    405: "Method Not Allowed",
    429: "Too Many Requests",
    500: "Internal",
    503: "Service Unavailable",
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server_version = "edge/2.4"
    sys_version = ""
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # silence the stderr log
        return

    # -- sending ---------------------------------------------------------------------
    def send_bytes(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.server.count_status(status)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(
        self, status: int, payload: Any, headers: Mapping[str, str] | None = None
    ) -> None:
        body = json.dumps(payload, ensure_ascii=False).encode()
        self.send_bytes(status, body, "application/json; charset=utf-8", headers)

    def send_error_json(
        self, status: int, detail: str, headers: Mapping[str, str] | None = None
    ) -> None:
        message = f"{_REASONS.get(status, 'Error')}: {detail}"
        self.send_json(status, {"code": status, "message": message}, headers)

    def send_html(self, status: int) -> None:
        self.send_bytes(status, _HTML_PAGES[status].encode(), "text/html")

    def drop(self, rng: random.Random) -> None:
        """Close the connection without answering (sometimes with a TCP reset)."""
        self.server.backend.stats.add("faults", "dropped_connection")
        self.close_connection = True
        with contextlib.suppress(OSError):
            if rng.random() < 0.5:
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
            self.connection.shutdown(socket.SHUT_RDWR)

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    # -- dispatch --------------------------------------------------------------------
    def do_GET(self) -> None:
        self.server.route(self)

    def do_POST(self) -> None:
        self.server.route(self)

    def do_HEAD(self) -> None:
        self.server.route(self)

    def do_PUT(self) -> None:
        self.server.route(self)

    def do_DELETE(self) -> None:
        self.server.route(self)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, backend: _Backend, name: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.backend = backend
        self.name = name
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.discard(request)
        super().shutdown_request(request)

    def close_open_connections(self) -> None:
        with self.sockets_lock:
            sockets = list(self.open_sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return  # the client went away: normal
        self.backend.stats.add("server_errors")
        super().handle_error(request, client_address)

    def count_status(self, status: int) -> None:
        key = "status_codes" if self.name == "api" else "cdn_status_codes"
        self.backend.stats.add(key, status)

    def route(self, h: _Handler) -> None:
        if self.name == "api":
            _serve_api(self.backend, h)
        else:
            _serve_cdn(self.backend, h)


# --------------------------------------------------------------------------- API host


def _retry_headers(backend: _Backend, rng: random.Random, now: float) -> dict[str, str]:
    """429 headers: Retry-After as an HTTP date or seconds, or only X-RateLimit-Reset.

    The instant advertised is remembered: a submit that arrives before it is counted in
    ``stats["submits_before_retry_after"]`` (a client that ignores the hint).
    """
    wait = backend.options.retry_after
    style = backend.options.retry_after_style or rng.choice(("date", "seconds", "reset"))
    epoch = backend.epoch(now)
    if style == "date":
        until = float(int(epoch + wait))  # HTTP dates have whole seconds
        headers = {"Retry-After": email.utils.formatdate(until, usegmt=True)}
    elif style == "seconds":
        until = epoch + math.ceil(wait)
        headers = {"Retry-After": str(math.ceil(wait)), "X-RateLimit-Remaining": "0"}
    else:
        until = float(int(epoch + wait))
        headers = {
            "X-RateLimit-Limit": "6000",  # per minute: what a client honours must not bound a test
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(int(until)),
        }
    with backend.lock:
        backend.blocked_until = max(backend.blocked_until, until)
    return headers


def _validate(body: Any) -> str | None:
    """The documented field rules; the first problem, or None."""
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    allowed = {"prompt", "size", "quality", "background"}
    extra = sorted(set(body) - allowed)
    if extra:
        return f"unknown field '{extra[0]}' (allowed: background, prompt, quality, size)"
    prompt = body.get("prompt")
    if "prompt" not in body:
        return "prompt is required"
    if not isinstance(prompt, str):
        return "prompt must be a string"
    if not 1 <= len(prompt) <= PROMPT_MAX:
        return f"prompt length must be between 1 and {PROMPT_MAX} characters, got {len(prompt)}"
    for name, choices in (("size", SIZES), ("quality", QUALITIES), ("background", BACKGROUNDS)):
        if name in body and body[name] not in choices:
            return f"{name} must be one of {', '.join(choices)}, got {body[name]!r}"
    return None


def _authorized(backend: _Backend, h: _Handler) -> bool:
    return h.headers.get("Authorization", "") == f"Bearer {backend.options.api_key}"


def _apply_request_fault(
    backend: _Backend, h: _Handler, kind: str | None, rng: random.Random, now: float
) -> bool:
    """Answer with a request-level fault; True when it did."""
    if kind is None or kind in SUBMIT_ONLY_FAULTS:
        return False
    backend.stats.add("faults", kind)
    if kind == "drop":
        h.drop(rng)
    elif kind == "429":
        h.send_error_json(429, "request rate limit exceeded", _retry_headers(backend, rng, now))
    elif kind == "500":
        h.send_error_json(500, "unexpected error while handling the request")
    elif kind in ("502", "504"):
        h.send_html(int(kind))
    elif kind == "503":
        wait = str(math.ceil(backend.options.retry_after))
        h.send_error_json(503, "the service is overloaded, try again", {"Retry-After": wait})
    elif kind == "200_error":
        h.send_json(200, {"code": 500, "message": "Internal: upstream worker crashed"})
    return True


def _serve_api(backend: _Backend, h: _Handler) -> None:
    path = urlsplit(h.path).path
    if h.command == "POST":
        raw = h.read_body()
        match = _SUBMIT_RE.match(path)
        if match is None:
            h.send_error_json(404, f"no route for POST {path}")
            return
        _submit(backend, h, f"{match.group(1)}/{match.group(2)}", raw)
        return
    if h.command == "GET":
        match = _TASK_RE.match(path)
        if match is None:
            h.send_error_json(404, f"no route for GET {path}")
            return
        _poll(backend, h, match.group(1))
        return
    h.send_error_json(405, f"{h.command} is not supported here")


def _submit(backend: _Backend, h: _Handler, model: str, raw: bytes) -> None:
    o = backend.options
    now = backend.now()
    try:
        body: Any = json.loads(raw)
    except ValueError:
        body = None
    body_key = canonical_body(body) if isinstance(body, dict) else "<invalid>"
    backend.stats.add("submit_requests")
    backend.stats.add("submissions_per_body", body_key)
    with backend.lock:
        n = backend.submits_seen[body_key]
        backend.submits_seen[body_key] += 1
        nth_submit = backend.submits_total
        backend.submits_total += 1
        early = backend.epoch(now) < backend.blocked_until - 0.05
        early_again = backend.epoch(now) < backend.body_blocked.get(body_key, 0.0) - 0.05
    if early:
        backend.stats.add("submits_before_retry_after")
    if early_again:
        backend.stats.add("resubmits_before_retry_after")
    rng = _rng(o.seed, "submit", body_key, n)
    fault = _pick_band(rng, o.api_fault_bands(submit=True))
    if nth_submit < o.first_submits_429:
        fault = "429"
    elif nth_submit < o.first_submits_429 + o.first_submits_503:
        fault = "503"
    if fault == "503":
        with backend.lock:
            until = backend.epoch(now) + math.ceil(o.retry_after)
            backend.body_blocked[body_key] = max(backend.body_blocked.get(body_key, 0.0), until)
    if _apply_request_fault(backend, h, fault, rng, now):
        return
    if not _authorized(backend, h):
        h.send_error_json(401, "missing or invalid API key")
        return
    if o.revoke_key_after is not None and backend.accepted_total >= o.revoke_key_after:
        h.send_error_json(401, "this API key has been revoked")
        return
    if model not in o.models:
        h.send_error_json(404, f"model '{model}' does not exist")
        return
    content_type = h.headers.get("Content-Type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        h.send_error_json(400, "Content-Type must be application/json")
        return
    if body is None:
        h.send_error_json(400, "request body is not valid JSON")
        return
    problem = _validate(body)
    if problem is not None:
        h.send_error_json(400, problem)
        return
    task: TaskRecord | None = None
    with backend.lock:
        if (
            o.submit_unauthorized_after is not None
            and backend.accepted_total >= o.submit_unauthorized_after
        ):
            answer: tuple[int, str] | None = (401, "this API key may no longer create tasks")
        elif o.balance is not None and backend.accepted_total >= o.balance:
            answer = (402, "account balance is exhausted, top up to continue")
        elif (
            o.max_concurrent_tasks is not None and backend.in_flight(now) >= o.max_concurrent_tasks
        ):
            answer = (429, f"concurrent task limit ({o.max_concurrent_tasks}) reached")
        else:
            answer = None
            task = backend.new_task(body_key, body, now)
    if answer is not None or task is None:
        status, detail = answer or (500, "task was not created")
        headers = _retry_headers(backend, rng, now) if status == 429 else None
        if status == 429:
            backend.stats.add("faults", "concurrency_limit")
        h.send_error_json(status, detail, headers)
        return
    if fault in SUBMIT_ONLY_FAULTS:
        task.delivered = False
        backend.stats.add("orphaned_tasks")
        backend.stats.add("faults", fault)
        if fault == "drop_after_accept":
            h.drop(rng)
        else:
            h.send_html(504)
        return
    if o.submit_answer_delay > 0:
        backend.stats.add("answers_waiting")
        time.sleep(o.submit_answer_delay)  # a slow gateway: the task exists, the id is unsent
        backend.stats.add("answers_waiting", n=-1)
    poll_url = f"{backend.api_base}/api/v1/tasks/{task.task_id}"
    h.send_json(
        200,
        {
            "code": 0,
            "message": "success",
            "data": {
                "status": "pending",
                "task_id": task.task_id,
                "model_id": o.model_id,
                "get_result": {"method": "GET", "url": poll_url},
            },
        },
    )


def _failure_fields(rng: random.Random) -> dict[str, Any]:
    style = rng.randrange(4)
    if style == 0:
        return {}
    if style == 1:
        return {"error": {"code": "content_policy", "message": "the prompt was refused"}}
    if style == 2:
        return {"reason": "generation worker ran out of memory"}
    return {"error_message": "task was canceled by the scheduler"}


def _poll(backend: _Backend, h: _Handler, task_id: str) -> None:
    o = backend.options
    now = backend.now()
    backend.stats.add("poll_requests")
    with backend.lock:
        task = backend.tasks.get(task_id)
        n = task.polls if task is not None else 0
        if task is not None:
            task.polls += 1
    rng = _rng(o.seed, "poll", task_id, n)
    fault = _pick_band(rng, o.api_fault_bands(submit=False)) if o.poll_faults else None
    if task is not None and n < o.first_polls_fail:
        fault = "503"
    if _apply_request_fault(backend, h, fault, rng, now):
        return
    if not _authorized(backend, h) or (
        o.revoke_key_after is not None and backend.accepted_total >= o.revoke_key_after
    ):
        h.send_error_json(401, "missing or invalid API key")
        return
    if task is None:
        h.send_error_json(404, f"task '{task_id}' does not exist")
        return
    backend.stats.add("polls_per_task", task_id)
    data: dict[str, Any] = {"task_id": task.task_id, "model_id": o.model_id}
    if now < task.finish_at:
        if rng.random() < o.fault_unknown_status:
            status = rng.choice(UNKNOWN_RUNNING_WORDS)
            backend.stats.add("faults", "unknown_status")
        else:
            status = "pending" if now < task.pending_until else "processing"
        data["status"] = status
        if status == "processing":
            span = max(task.finish_at - task.pending_until, 1e-9)
            data["progress"] = min(99, int(100 * (now - task.pending_until) / span))
    elif task.outcome == "failed":
        data["status"] = task.status_word
        if o.failure_messages:
            data.update(_failure_fields(_rng(o.seed, "failure", task_id)))
    else:
        data["status"] = task.status_word
        data["duration"] = int(1000 * (task.finish_at - task.accepted_at))
        style = _rng(o.seed, "expiry-style", task_id).randrange(3)
        if style == 1:
            data["result_expires_at"] = int(backend.epoch(task.expires_at))
        elif style == 2:
            stamp = time.gmtime(backend.epoch(task.expires_at))
            data["result_expires_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", stamp)
        data["result"] = {
            "resources": [
                {
                    "url": backend.result_url(task),
                    "type": "image",
                    "width": task.width,
                    "height": task.height,
                    "format": task.fmt,
                    "role": "primary",
                }
            ],
            "metadata": {"image_count": 1, "request_id": f"req-{task.token[:12]}"},
            "extensions": {
                "submit_time": int(backend.epoch(task.accepted_at)),
                "end_time": int(backend.epoch(task.finish_at)),
            },
        }
        data["usage"] = {"credits": 1}  # a field no document mentions: must be ignored
    backend.stats.add("statuses_sent", data["status"])
    h.send_json(200, {"code": 0, "message": "success", "data": data})


# --------------------------------------------------------------------------- CDN host


def _serve_cdn(backend: _Backend, h: _Handler) -> None:
    o = backend.options
    now = backend.now()
    if h.headers.get("Authorization"):
        backend.stats.add("cdn_requests_with_authorization")
        if o.cdn_rejects_authorization:
            h.send_bytes(
                400,
                b"<Error><Code>InvalidArgument</Code><Message>Only one auth mechanism "
                b"allowed</Message></Error>",
                "application/xml",
            )
            return
    if h.command not in ("GET", "HEAD"):
        h.send_bytes(405, b"method not allowed\n", "text/plain")
        return
    parts = urlsplit(h.path)
    match = _CDN_RE.match(parts.path)
    task = backend.by_token.get(match.group(1)) if match else None
    query = parse_qs(parts.query)
    if task is None or match is None or match.group(2) != task.task_id:
        h.send_bytes(404, b"<Error><Code>NoSuchKey</Code></Error>", "application/xml")
        return
    if query.get("Signature") != [task.signature] or "Expires" not in query:
        h.send_bytes(
            403,
            b"<Error><Code>SignatureDoesNotMatch</Code></Error>",
            "application/xml",
        )
        return
    with backend.lock:
        n = backend.downloads_seen[task.token]
        backend.downloads_seen[task.token] += 1
    rng = _rng(o.seed, "download", task.token, n)
    if now < task.finish_at or task.outcome != "success":
        h.send_bytes(404, b"<Error><Code>NoSuchKey</Code></Error>", "application/xml")
        return
    if now >= task.expires_at:
        with backend.lock:
            task.expired_hits += 1
        backend.stats.add("expired_downloads")
        status = _rng(o.seed, "expired-status", task.token).choice((403, 404, 410))
        if status == 403:
            body = b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
            h.send_bytes(403, body, "application/xml")
        elif status == 404:
            h.send_bytes(404, b"Not Found\n", "text/plain")
        else:
            h.send_bytes(410, b'{"error":"gone","reason":"url expired"}', "application/json")
        return
    fault = _pick_band(rng, o.download_fault_bands())
    if fault is not None:
        backend.stats.add("faults", fault)
    if fault == "download_drop":
        h.drop(rng)
        return
    if fault == "download_503":
        h.send_bytes(503, b"Slow Down\n", "text/plain", {"Retry-After": "0"})
        return
    data, content_type = backend.image(task)
    if fault == "download_truncated":
        h.server.count_status(200)
        h.send_response(200)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data[: len(data) // 2])
        h.wfile.flush()
        h.drop(rng)
        return
    with backend.lock:
        task.downloads += 1
    backend.stats.add("downloads")
    backend.stats.add("downloads_per_task", task.task_id)
    headers = {"Cache-Control": "private, max-age=60", "ETag": f'"{task.token}"'}
    if h.command == "GET" and rng.random() < o.chunked_downloads:
        h.server.count_status(200)
        h.send_response(200)
        h.send_header("Content-Type", content_type)
        h.send_header("Transfer-Encoding", "chunked")
        for name, value in headers.items():
            h.send_header(name, value)
        h.end_headers()
        step = 16384
        for start in range(0, len(data), step):
            piece = data[start : start + step]
            h.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        h.wfile.write(b"0\r\n\r\n")
        return
    h.send_bytes(200, data, content_type, headers)


# --------------------------------------------------------------------------- lifecycle


class ServerHandle:
    """A running pair of servers (API host and CDN host) and their statistics."""

    def __init__(self, backend: _Backend, api: _Server, cdn: _Server) -> None:
        self._backend = backend
        self._servers = (api, cdn)
        self._threads: list[threading.Thread] = []
        self._stopped = False
        api_port = api.server_address[1]
        cdn_port = cdn.server_address[1]
        self.base_url = f"http://127.0.0.1:{api_port}"
        self.cdn_base_url = f"http://127.0.0.1:{cdn_port}"
        backend.api_base = self.base_url
        backend.cdn_base = self.cdn_base_url
        self.options = backend.options
        self.api_key = backend.options.api_key
        self.stats = backend.stats

    def start(self) -> None:
        """Serve both hosts from background threads."""
        for server in self._servers:
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.01},
                name=f"independent-api-{server.name}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop both servers and close their connections; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        for server in self._servers:
            server.shutdown()
            server.close_open_connections()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    def tasks(self) -> list[TaskRecord]:
        """A copy of every accepted task, in acceptance order."""
        with self._backend.lock:
            return [dataclasses.replace(t) for t in self._backend.tasks.values()]

    def image_bytes(self, task_id: str) -> bytes:
        """The exact bytes the CDN serves for a task's result."""
        with self._backend.lock:
            task = self._backend.tasks[task_id]
        return self._backend.image(task)[0]

    def poll_url(self, task_id: str) -> str:
        """The documented poll URL of a task."""
        return f"{self.base_url}/api/v1/tasks/{task_id}"

    def submit_url(self, model: str = "openai/gpt-image-1.5") -> str:
        """The documented submit URL of a model."""
        return f"{self.base_url}/api/v1/{model}/async"


@contextlib.contextmanager
def running_server(**options: Any) -> Iterator[ServerHandle]:
    """Run the API host and the CDN host on loopback ephemeral ports until the block ends."""
    opts = ServerOptions(**options)
    backend = _Backend(opts, ServerStats())
    api = _Server(backend, "api")
    try:
        cdn = _Server(backend, "cdn")
    except BaseException:
        api.server_close()
        raise
    handle = ServerHandle(backend, api, cdn)
    handle.start()
    try:
        yield handle
    finally:
        handle.stop()
