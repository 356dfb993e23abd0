"""The Modellix HTTP client: submit, poll and download, with every answer classified.

One :class:`ModellixClient` owns one :class:`httpx.AsyncClient` (connection pooling) and turns
every answer of the API into either a typed result (:class:`Submitted`, :class:`TaskStatus`,
:class:`DownloadResult`) or an :class:`ApiError` subclass whose attributes tell the runner what
to do next (``retryable``, ``ambiguous``, ``retry_after``, ``stops_run``).

Security rules kept here:

- The API key is only ever sent in the ``Authorization`` header, and only to the origin
  (scheme, host, port) of the configured base URL. Result files usually live on a CDN: they are
  downloaded without the key. The key never appears in an exception message, a ``repr`` or a log
  line written by this module; every error message is scrubbed of it before it leaves the client.
- The base URL must be https, except for loopback hosts (127.0.0.0/8, ::1, localhost).
- Tasks are always polled on the configured base URL: a ``get_result.url`` that points to another
  origin is ignored, so a hostile or misconfigured answer cannot make the client send the key to
  another host or poll a look-alike server.
- Answers are read with a size cap (JSON answers: 1 MiB, downloads: 50 MiB by default, checked
  against both ``Content-Length`` and the bytes actually received), every call has an overall
  deadline, and downloads follow at most three redirects, each https or loopback only.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import hashlib
import ipaddress
import json
import logging
import math
import os
import re
import sys
import time
import unicodedata
import urllib.request
from collections.abc import AsyncIterator, Callable, Generator, Mapping
from dataclasses import dataclass, field
from datetime import timezone
from types import TracebackType
from typing import Any, Literal, Protocol
from urllib.parse import quote, urlsplit

import anyio
import httpx

from batchgen import __version__
from batchgen.api.http11 import Http11Body, Http11Transport
from batchgen.api.http11 import origin_of as _origin

__all__ = [
    "DEFAULT_BASE_URL",
    "MAX_RETRY_AFTER",
    "ApiError",
    "AuthError",
    "ConfigError",
    "DownloadResult",
    "ModellixClient",
    "NotFound",
    "PaymentRequired",
    "ProtocolError",
    "RateLimited",
    "Rejected",
    "Resource",
    "ResultExpired",
    "ServerError",
    "Submitted",
    "TaskState",
    "TaskStatus",
    "TransportFailure",
    "Writable",
    "api_key_from_env",
    "parse_retry_after",
    "resolve_base_url",
    "validate_base_url",
]

logger = logging.getLogger(__name__)
_httpx_logger = logging.getLogger("httpx")

DEFAULT_BASE_URL = "https://api.modellix.ai"
ENV_API_KEY = "MODELLIX_API_KEY"
ENV_BASE_URL = "MODELLIX_BASE_URL"
#: Longest wait honoured from ``Retry-After`` / ``X-RateLimit-Reset`` (seconds); a larger value
#: (or a hostile one) is clamped so that a single answer cannot stall a run for days.
MAX_RETRY_AFTER = 3600.0
MAX_TASK_ID_LENGTH = 200
MAX_REDIRECTS = 3

_TASK_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:=+~-]*")
_SUBMIT_PATH_RE = re.compile(r"/[A-Za-z0-9._~/@+-]*")
_FORMAT_RE = re.compile(r"[a-z0-9]{1,10}")
_TAG_RE = re.compile(r"<[^>]{0,500}>")
_SUCCESS_STATUSES = frozenset({"success", "completed", "succeeded"})
_FAILED_STATUSES = frozenset({"failed", "error", "canceled", "cancelled"})
_SNIPPET_CHARS = 200
_MESSAGE_CHARS = 500

_NO_PROXY_FOR_LOOPBACK: dict[str, httpx.AsyncBaseTransport | None] = {
    "all://127.0.0.1": None,
    "all://localhost": None,
    "all://[::1]": None,
}

TaskState = Literal["running", "success", "failed"]
Operation = Literal["submit", "poll", "download"]


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class ApiError(Exception):
    """Base class of every error raised by the client; never contains the API key.

    Attributes:
        message: human-readable reason (also ``str(exc)``).
        status: the effective status: the HTTP status, or the ``code`` of an HTTP 200 answer
            whose body carries an HTTP-like error code; ``None`` for network failures.
        http_status: the HTTP status actually received (``None`` if no answer was received).
        operation: ``"submit"``, ``"poll"``, ``"download"`` or ``None`` (configuration).
        retryable: trying the same call again later may succeed.
        ambiguous: a submit whose outcome is unknown: the request may have reached the provider
            and created a (billed) task. Only ever true for submits.
        retry_after: seconds the server asked to wait (``Retry-After`` / ``X-RateLimit-Reset``).
        stops_run: the whole run must stop submitting (401, 402, unknown model, bad config).
    """

    default_retryable = False
    default_stops_run = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        http_status: int | None = None,
        operation: str | None = None,
        retryable: bool | None = None,
        ambiguous: bool = False,
        retry_after: float | None = None,
        stops_run: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.http_status = http_status if http_status is not None else status
        self.operation = operation
        self.retryable = self.default_retryable if retryable is None else retryable
        self.ambiguous = ambiguous
        self.retry_after = retry_after
        self.stops_run = self.default_stops_run if stops_run is None else stops_run

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, status={self.status}, "
            f"retryable={self.retryable}, ambiguous={self.ambiguous}, "
            f"retry_after={self.retry_after}, stops_run={self.stops_run})"
        )

    def _scrub(self, secret: str | None) -> None:
        """Remove *secret* from the message (defence in depth: a server may echo it)."""
        if secret and secret in self.message:
            self.message = self.message.replace(secret, "[redacted]")
            self.args = (self.message,)


class Rejected(ApiError):
    """400 (or another 4xx without a special meaning): the request itself is invalid."""


class AuthError(ApiError):
    """401/403: missing, invalid or unauthorised API key. Stops the run."""

    default_stops_run = True


class PaymentRequired(ApiError):
    """402: insufficient balance. Stops the run."""

    default_stops_run = True


class NotFound(ApiError):
    """404: unknown model (on submit: stops the run) or unknown task (on poll)."""


class RateLimited(ApiError):
    """429: request-rate or concurrent-task limit; ``retry_after`` when the server said."""

    default_retryable = True


class ServerError(ApiError):
    """5xx (and 408/425): the provider failed; retryable; ambiguous on submit."""

    default_retryable = True


class TransportFailure(ApiError):
    """No usable answer: timeout, refused or dropped connection, short download."""

    default_retryable = True


class ProtocolError(ApiError):
    """An answer that breaks the API's contract: non-JSON, wrong shape, unknown code, too big."""

    default_retryable = True


class ResultExpired(ApiError):
    """Download got 403/404/410: the temporary result URL is gone; generate the task again."""


class ConfigError(ApiError):
    """Bad configuration (base URL, key, submit path). Stops the run."""

    default_stops_run = True


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Submitted:
    """A task the provider accepted.

    ``poll_url`` is the answer's ``get_result.url`` when it is on the base URL's origin,
    else ``None`` (the client then polls ``/api/v1/tasks/{task_id}``).
    """

    task_id: str
    poll_url: str | None = None


@dataclass(frozen=True)
class Resource:
    """One result file of a finished task.

    ``format`` is lower-case alphanumeric (at most 10 chars) or ``None``: it is safe to use as a
    file extension. ``width``/``height`` are positive ints or ``None``.
    """

    url: str
    type: str | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    role: str | None = None


@dataclass(frozen=True)
class TaskStatus:
    """One poll answer.

    ``state`` is the normalised state; ``raw_status`` what the provider said. On ``"success"``
    ``resources`` holds at least one resource (in the provider's order). On ``"failed"``
    ``error`` holds the most specific message found in the answer. ``raw`` is the parsed JSON.
    """

    state: TaskState
    raw_status: str
    resources: list[Resource] = field(default_factory=list)
    error: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    duration_ms: int | None = None


class Writable(Protocol):
    """Where :meth:`ModellixClient.download` writes a body: anything with ``write(bytes)``."""

    def write(self, data: bytes, /) -> object:
        """Take the next chunk of the body (all of it)."""


@dataclass(frozen=True)
class DownloadResult:
    """A completed download: byte count, hex sha256 and the declared content type."""

    bytes: int
    sha256: str
    content_type: str | None = None


# --------------------------------------------------------------------------------------------
# Configuration helpers
# --------------------------------------------------------------------------------------------


def api_key_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """Return ``MODELLIX_API_KEY`` (stripped) or ``None`` when unset or empty."""
    env = os.environ if environ is None else environ
    value = env.get(ENV_API_KEY, "").strip()
    return value or None


def resolve_base_url(cli_value: str | None, environ: Mapping[str, str] | None = None) -> str:
    """Pick the base URL: the CLI value, else ``MODELLIX_BASE_URL``, else the default.

    The result is validated and normalised (see :func:`validate_base_url`).
    Raises :class:`ConfigError`.
    """
    env = os.environ if environ is None else environ
    value = cli_value if cli_value else (env.get(ENV_BASE_URL, "").strip() or DEFAULT_BASE_URL)
    return validate_base_url(value)


def _proxies_configured() -> bool:
    """Whether the environment names an HTTP(S) proxy (``HTTPS_PROXY``, ``ALL_PROXY``...)."""
    proxies = urllib.request.getproxies()
    return any(proxies.get(scheme) for scheme in ("http", "https", "all"))


@functools.lru_cache(maxsize=256)
def is_loopback_host(host: str) -> bool:
    """Whether ``host`` names a loopback address (127.0.0.0/8, ::1, localhost).

    Case and a trailing dot are ignored. The simulator's bind check uses this too.
    """
    host = host.lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _safe_url_for_message(url: str) -> str:
    """A URL shortened for messages: no user info, query or fragment, at most 120 chars."""
    try:
        parsed = _parsed_url(url)
        shown = f"{parsed.scheme}://{parsed.host}" if parsed.host else "(no host)"
        if parsed.port is not None:
            shown += f":{parsed.port}"
        shown += parsed.path
    except Exception:  # an unparsable URL: show a sanitised head only
        shown = url.split("?", 1)[0].split("#", 1)[0]
        if "@" in shown:
            shown = shown.rsplit("@", 1)[-1]
    return _sanitize(shown, 120)


def validate_base_url(url: str) -> str:
    """Check that *url* is an absolute https URL (http only for loopback) and normalise it.

    Refused: other schemes, plain http to a non-loopback host, user info, query, fragment.
    Returns the URL without a trailing slash. Raises :class:`ConfigError`.
    """
    text = url.strip()
    try:
        parsed = httpx.URL(text)
    except Exception as exc:
        raise ConfigError(f"invalid base URL {_safe_url_for_message(text)!r}") from exc
    shown = _safe_url_for_message(text)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError(f"base URL {shown!r} must be an absolute https:// URL")
    if parsed.userinfo:
        raise ConfigError(f"base URL {shown!r} must not contain user info (user:password@)")
    if parsed.query or parsed.fragment:
        raise ConfigError(f"base URL {shown!r} must not contain a query or fragment")
    if parsed.scheme == "http" and not is_loopback_host(parsed.host):
        raise ConfigError(
            f"base URL {shown!r} must use https (plain http is allowed for loopback hosts only:"
            " the API key would travel in clear text)"
        )
    return str(parsed).rstrip("/")


def _secure_url(url: httpx.URL) -> bool:
    return url.scheme == "https" or (url.scheme == "http" and is_loopback_host(url.host))


_Origin = tuple[str, str, int]


@functools.lru_cache(maxsize=4096)
def _origin_of(url: str) -> _Origin | None:
    """The origin of a URL string (``None`` if it does not parse); cached: every poll of a
    task checks the same poll URL, and httpx's URL parser is slow."""
    try:
        return _origin(_parsed_url(url))
    except Exception:
        return None


class _Secret:
    """A string that does not show itself in ``repr``/``str`` (so not in ``vars()`` dumps)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__


def _validate_api_key(api_key: str | None) -> _Secret | None:
    if api_key is None:
        return None
    key = api_key.strip()
    if not key:
        return None
    if any(not ("!" <= ch <= "~") for ch in key):
        # Never echo the key, nor the offending character's position.
        raise ConfigError("the API key contains characters that cannot be sent in an HTTP header")
    return _Secret(key)


class _NoCookies(httpx.Cookies):
    """A cookie jar that stays empty: the API authenticates with a bearer key, so a
    ``Set-Cookie`` (from the API or a CDN) is never stored nor sent back, and no response
    pays for httpx's per-answer cookie parsing (a urllib request built from every answer)."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None

    def set_cookie_header(self, request: httpx.Request) -> None:
        return None


class _AsyncClient(httpx.AsyncClient):
    """``httpx.AsyncClient`` without cookie handling (see :class:`_NoCookies`)."""

    _no_cookies = _NoCookies()

    @property
    def cookies(self) -> httpx.Cookies:
        return self._no_cookies

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        if cookies:
            raise ValueError("batchgen's client keeps no cookies")


@functools.lru_cache(maxsize=4096)
def _parsed_url(url: str) -> httpx.URL:
    """``httpx.URL(url)``, cached: a task's poll URL is parsed once, not on every poll
    (httpx checks URLs character by character). ``httpx.URL`` is immutable."""
    return httpx.URL(url)


class _BearerAuth(httpx.Auth):
    """Adds ``Authorization: Bearer`` to requests for the API's origin only."""

    __slots__ = ("_key", "_origin")

    def __init__(self, key: _Secret, origin: _Origin) -> None:
        self._key = key
        self._origin = origin

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if _origin(request.url) == self._origin:
            request.headers["Authorization"] = f"Bearer {self._key.reveal()}"
        yield request

    def __repr__(self) -> str:
        return "<_BearerAuth [redacted]>"


# --------------------------------------------------------------------------------------------
# Parsing helpers
# --------------------------------------------------------------------------------------------


def _sanitize(text: str, limit: int) -> str:
    """Printable, single-line, at most *limit* chars: safe to print to a terminal or log."""
    if len(text) <= limit and text.isascii() and text.isprintable() and " " not in text:
        return text  # the common case (a status word, a content type): nothing to clean
    cleaned = "".join(
        ch if not unicodedata.category(ch).startswith(("C", "Z")) else " "
        for ch in text[: limit * 4]
    )
    cleaned = " ".join(cleaned.split())
    if len(cleaned) > limit:
        cleaned = cleaned[: limit - 1] + "…"
    return cleaned


def _body_snippet(body: bytes) -> str:
    text = body[: _SNIPPET_CHARS * 8].decode("utf-8", errors="replace")
    text = _TAG_RE.sub(" ", text)
    return _sanitize(text, _SNIPPET_CHARS) or "(empty body)"


def _parse_delay(value: str, now: float, *, epoch_ok: bool) -> float | None:
    text = value.strip()
    if not text:
        return None
    seconds: float | None
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None:
        if not math.isfinite(number):
            return None
        if epoch_ok and number > 1e12:  # epoch milliseconds
            seconds = number / 1000.0 - now
        elif epoch_ok and number > 1e9:  # epoch seconds
            seconds = number - now
        else:
            seconds = number
    else:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        try:
            seconds = when.timestamp() - now
        except (OverflowError, OSError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait from ``Retry-After`` (delta seconds or HTTP date), else from
    ``X-RateLimit-Reset`` (delta seconds, epoch seconds or epoch milliseconds).

    Returns ``None`` when neither header is present and valid. The result is clamped to
    ``[0, MAX_RETRY_AFTER]``. Header lookup is case-insensitive for :class:`httpx.Headers`;
    for plain mappings use lower-case keys.
    """
    current = time.time() if now is None else now
    retry_after = headers.get("retry-after")
    if retry_after is not None:
        delay = _parse_delay(retry_after, current, epoch_ok=False)
        if delay is not None:
            return delay
    reset = headers.get("x-ratelimit-reset")
    if reset is not None:
        return _parse_delay(reset, current, epoch_ok=True)
    return None


# Idle connections are dropped after this many seconds: below the 5 s idle timeout of common
# servers (uvicorn's default), so that a request never goes out on a connection the server is
# closing at that instant (for a submit, an ambiguous outcome and maybe a task paid twice).
_KEEPALIVE_EXPIRY = 4.0

# What may follow the base URL's "/" in a URL sent as is: RFC 3986 path and query characters
# without "%" (so no escape can be re-encoded differently) and without "#".
_PLAIN_REST = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/?]*")


def _loads(body: bytes) -> Any:
    """Parse JSON; ``None`` on any failure (bad UTF-8, syntax, absurd nesting or numbers)."""
    if not body.strip():
        return None
    try:
        # UTF-8 (with or without a BOM), decoded here: json.loads(bytes) first sniffs the
        # encoding of every answer.
        return json.loads(body.decode("utf-8-sig"))
    except (ValueError, RecursionError):
        return None


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def _valid_task_id(value: Any) -> bool:
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_TASK_ID_LENGTH
        and _TASK_ID_RE.fullmatch(value) is not None
    )


def _message_of(value: Any) -> str | None:
    """A non-empty message from a string, or from a dict's message/detail/error fields."""
    if isinstance(value, str):
        text = value.strip()
        return text or None
    if isinstance(value, Mapping):
        for key in ("message", "msg", "detail", "error", "reason", "code"):
            found = _message_of(value.get(key))
            if found:
                return found
    return None


def _provider_message(payload: Any) -> str | None:
    if isinstance(payload, Mapping):
        message = _message_of(payload.get("message")) or _message_of(payload.get("error"))
        data = payload.get("data")
        if not message and isinstance(data, Mapping):
            message = _message_of(data.get("message")) or _message_of(data.get("error"))
        if message:
            return _sanitize(message, _MESSAGE_CHARS)
    return None


def _failure_message(payload: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    """The most specific failure reason in a failed task's answer, else its raw JSON."""
    result = data.get("result")
    candidates: list[Any] = [data.get("error")]
    if isinstance(result, Mapping):
        candidates += [result.get("error"), result.get("message"), result.get("reason")]
    candidates += [
        data.get("error_message"),
        data.get("fail_reason"),
        data.get("failure_reason"),
        data.get("reason"),
        data.get("message"),
    ]
    top = payload.get("message")
    if isinstance(top, str) and top.strip().lower() not in ("", "success", "ok"):
        candidates.append(top)
    for candidate in candidates:
        message = _message_of(candidate)
        if message:
            return _sanitize(message, _MESSAGE_CHARS)
    raw = json.dumps(payload, ensure_ascii=False, default=str)
    return "task failed without a message; answer: " + _sanitize(raw, _MESSAGE_CHARS)


def _parse_resources(
    data: Mapping[str, Any], on_base: Callable[[str], bool] | None = None
) -> list[Resource]:
    """The usable result resources of a success answer; a URL for which ``on_base`` is true
    (on the API's base URL, plain characters) is usable without parsing it."""
    result = data.get("result")
    items = result.get("resources") if isinstance(result, Mapping) else None
    if not isinstance(items, list):
        return []
    resources: list[Resource] = []
    for item in items[:100]:
        if not isinstance(item, Mapping):
            continue
        url = item.get("url")
        if not isinstance(url, str) or len(url) > 8192:
            continue
        if on_base is None or not on_base(url):
            try:
                parsed = _parsed_url(url)
            except Exception:
                continue
            if parsed.scheme not in ("http", "https") or not parsed.host:
                continue
        fmt = item.get("format")
        fmt_clean = fmt.strip().lower() if isinstance(fmt, str) else None
        width = _as_int(item.get("width"))
        height = _as_int(item.get("height"))
        resources.append(
            Resource(
                url=url,
                type=_sanitize(item["type"], 40) if isinstance(item.get("type"), str) else None,
                width=width if width and width > 0 else None,
                height=height if height and height > 0 else None,
                format=fmt_clean if fmt_clean and _FORMAT_RE.fullmatch(fmt_clean) else None,
                role=_sanitize(item["role"], 40) if isinstance(item.get("role"), str) else None,
            )
        )
    return resources


# --------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------


def _error_for_status(
    status: int,
    *,
    op: Operation,
    http_status: int,
    detail: str,
    retry_after: float | None,
) -> ApiError:
    """Map an HTTP(-like) error status to an ApiError (API calls, not downloads)."""
    submit = op == "submit"
    where = f"{op}: HTTP {http_status}" + (f" (code {status})" if status != http_status else "")
    common: dict[str, Any] = {"status": status, "http_status": http_status, "operation": op}
    if status == 400:
        return Rejected(f"{where}: request rejected: {detail}", **common)
    if status in (401, 403):
        return AuthError(f"{where}: API key missing, invalid or not allowed: {detail}", **common)
    if status == 402:
        return PaymentRequired(f"{where}: insufficient balance: {detail}", **common)
    if status == 404:
        if submit:
            return NotFound(
                f"{where}: unknown model or submit path: {detail}", stops_run=True, **common
            )
        return NotFound(f"{where}: unknown task: {detail}", **common)
    if status == 429:
        return RateLimited(f"{where}: rate limited: {detail}", retry_after=retry_after, **common)
    if status in (408, 425):
        # The server gave up before processing the request: not ambiguous.
        return ServerError(f"{where}: {detail}", retry_after=retry_after, **common)
    if 500 <= status <= 599:
        return ServerError(
            f"{where}: server error: {detail}",
            retry_after=retry_after,
            ambiguous=submit,
            **common,
        )
    if 400 <= status <= 499:
        return Rejected(f"{where}: {detail}", **common)
    return ProtocolError(
        f"{where}: unexpected answer: {detail}", ambiguous=submit, retryable=True, **common
    )


# --------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------


class ModellixClient:
    """Async client of the Modellix task API (one pooled :class:`httpx.AsyncClient`).

    Use as ``async with ModellixClient(base_url, key) as client: ...`` or call :meth:`aclose`.

    Args:
        base_url: API base URL; https, or http on a loopback host (else :class:`ConfigError`).
        api_key: the key, or ``None`` to send no ``Authorization`` header.
        transport: an httpx transport (tests: ``httpx.MockTransport``; the in-process simulator:
            ``httpx.ASGITransport``). ``max_connections`` applies to the default transport only.
        max_connections: connection pool size.
        timeout: read/write/pool timeout of one network operation, seconds.
        connect_timeout: TCP+TLS connect timeout, seconds.
        operation_timeout: overall deadline of one submit, poll or download, seconds.
        max_download_bytes: downloads larger than this are refused.
        max_response_bytes: JSON answers larger than this are a :class:`ProtocolError`.
        max_keepalive_connections: idle connections kept (default: ``max_connections``).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 100,
        timeout: float = 60.0,
        connect_timeout: float = 10.0,
        operation_timeout: float = 900.0,
        max_download_bytes: int = 50 * 2**20,
        max_response_bytes: int = 2**20,
        max_keepalive_connections: int | None = None,
    ) -> None:
        self._base_url = validate_base_url(base_url)
        self._base = httpx.URL(self._base_url)
        self._api_origin = _origin(self._base)
        self._base_prefix = self._base_url + "/"
        after_scheme = self._base_url.split("://", 1)[1]
        self._base_path = after_scheme[after_scheme.find("/") :] if "/" in after_scheme else ""
        self._key = _validate_api_key(api_key)
        if max_connections < 1 or max_download_bytes < 1 or max_response_bytes < 1:
            raise ConfigError("connection and size limits must be positive")
        self.max_download_bytes = max_download_bytes
        self.max_response_bytes = max_response_bytes
        self.operation_timeout = operation_timeout
        limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=(
                max_connections if max_keepalive_connections is None else max_keepalive_connections
            ),
        )
        default = transport is None
        # The lean transport (no proxy, no test transport) is called directly, without
        # httpx.AsyncClient.send's layers (auth flow, redirect and cookie handling, hooks):
        # the same request (:meth:`_send`), less CPU per exchange (benchmarks/README.md).
        self._direct: Http11Transport | None = None
        self._timeouts = httpx.Timeout(timeout, connect=connect_timeout)
        self._timeout_dict = self._timeouts.as_dict()
        # Header lines per (origin, netloc, extra headers): built once, not per request.
        self._head_blocks: dict[tuple[_Origin, bytes, tuple[tuple[str, str], ...]], bytes] = {}
        if default and not _proxies_configured():
            # No proxy to honour: the lean HTTP/1.1 transport (batchgen.api.http11), whose cost
            # per request is small and does not grow with the pool. TLS still honours
            # SSL_CERT_FILE/SSL_CERT_DIR.
            self._direct = Http11Transport(
                max_connections=max_connections, keepalive_expiry=_KEEPALIVE_EXPIRY
            )
            transport = self._direct
        self._http = _AsyncClient(
            auth=_BearerAuth(self._key, self._api_origin) if self._key else None,
            headers={"User-Agent": f"batchgen/{__version__}"},
            timeout=self._timeouts,
            limits=limits,
            transport=transport,
            follow_redirects=False,
            # Behind a proxy, httpx's own transport honours HTTPS_PROXY/NO_PROXY/SSL_CERT_FILE
            # (cron hosts behind a proxy), but never proxies loopback: a plain-http request
            # carrying the key must not leave the machine. A given transport (tests,
            # in-process simulator) is used as is, whatever the environment says.
            trust_env=default,
            mounts=_NO_PROXY_FOR_LOOPBACK if default else None,
        )

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The validated base URL, without a trailing slash."""
        return self._base_url

    @property
    def has_key(self) -> bool:
        """Whether an API key is configured (the key itself is never exposed)."""
        return self._key is not None

    def __repr__(self) -> str:
        key = "set" if self._key else "unset"
        return f"ModellixClient(base_url={self._base_url!r}, api_key=<{key}>)"

    async def __aenter__(self) -> ModellixClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pooled connections. Idempotent."""
        await self._http.aclose()

    # -- URLs ------------------------------------------------------------------------------

    def _api_url(self, path: str) -> str:
        return self._base_url + path

    def poll_url_for(self, task_id: str) -> str:
        """The canonical poll URL of *task_id* on the base URL (the id is URL-quoted)."""
        return self._api_url("/api/v1/tasks/" + quote(task_id, safe=""))

    def _same_origin(self, url: str) -> bool:
        # A URL that starts with the (normalised) base URL and a slash has the base URL's
        # authority, whatever follows: no parse needed for the usual poll URL.
        if url.startswith(self._base_prefix):
            return True
        return _origin_of(url) == self._api_origin

    # -- public operations ------------------------------------------------------------------------

    async def submit(self, submit_path: str, body: Mapping[str, Any]) -> Submitted:
        """POST *body* to *submit_path* (e.g. ``/api/v1/openai/gpt-image-1.5/async``).

        Returns the accepted task. Raises an :class:`ApiError`; ``ambiguous`` is true when the
        request may have created a task (5xx, read timeout, dropped or unreadable answer).
        """
        try:
            return await self._submit(submit_path, body)
        except ApiError as exc:
            exc._scrub(self._key.reveal() if self._key else None)
            raise

    async def poll(self, task_id: str, poll_url: str | None = None) -> TaskStatus:
        """GET the task's status. *poll_url* is used only on the base URL's origin.

        Raises :class:`NotFound` (unknown task, not retryable) and the other :class:`ApiError`\\ s.
        """
        try:
            return await self._poll(task_id, poll_url)
        except ApiError as exc:
            exc._scrub(self._key.reveal() if self._key else None)
            raise

    async def download(self, url: str, file: Writable) -> DownloadResult:
        """Stream the file at *url* into *file* (an open binary file or any :class:`Writable`);
        count bytes and sha256.

        The key is sent only when *url* is on the API's origin (never to a CDN). Redirects:
        at most three, each to https or loopback. Raises :class:`ResultExpired` (403/404/410),
        :class:`ProtocolError` (too large, insecure URL or redirect, other 4xx),
        :class:`ServerError` (5xx), :class:`RateLimited`, :class:`TransportFailure` (network,
        short body). On error the file holds a partial body: the caller discards it. Errors
        writing *file* (``OSError``) propagate unchanged.
        """
        try:
            return await self._download(url, file)
        except ApiError as exc:
            exc._scrub(self._key.reveal() if self._key else None)
            raise

    # -- implementation -------------------------------------------------------------------------

    async def _submit(self, submit_path: str, body: Mapping[str, Any]) -> Submitted:
        if not _SUBMIT_PATH_RE.fullmatch(submit_path) or "//" in submit_path or ".." in submit_path:
            raise ConfigError(f"invalid submit path {_sanitize(submit_path, 120)!r}")
        try:
            content = json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise Rejected(
                f"submit: request body is not valid JSON ({type(exc).__name__})",
                operation="submit",
            ) from exc
        http_status, headers, payload = await self._call_json(
            "submit",
            "POST",
            self._api_url(submit_path),
            content=content,
        )
        data = self._checked_data("submit", http_status, headers, payload)
        task_id = data.get("task_id")
        if not _valid_task_id(task_id):
            shown = _sanitize(str(task_id), 60) if task_id is not None else "missing"
            raise ProtocolError(
                f"submit: HTTP {http_status}: answer has no usable data.task_id ({shown!r}); the"
                " task may exist",
                http_status=http_status,
                operation="submit",
                ambiguous=True,
            )
        assert isinstance(task_id, str)
        get_result = data.get("get_result")
        poll_url: str | None = None
        if isinstance(get_result, Mapping):
            candidate = get_result.get("url")
            if (
                isinstance(candidate, str)
                and len(candidate) <= 2048
                and self._same_origin(candidate)
            ):
                poll_url = candidate
            elif candidate is not None:
                logger.debug("submit: ignoring get_result.url on another origin")
        logger.debug("submit: accepted task %s", task_id)
        return Submitted(task_id=task_id, poll_url=poll_url)

    async def _poll(self, task_id: str, poll_url: str | None) -> TaskStatus:
        if not _valid_task_id(task_id):
            raise ProtocolError(
                f"poll: invalid task id {_sanitize(str(task_id), 60)!r}",
                operation="poll",
                retryable=False,
            )
        url = poll_url if poll_url and self._same_origin(poll_url) else self.poll_url_for(task_id)
        http_status, headers, payload = await self._call_json("poll", "GET", url)
        data = self._checked_data("poll", http_status, headers, payload)
        assert isinstance(payload, dict)
        answered_id = data.get("task_id")
        if isinstance(answered_id, str) and answered_id and answered_id != task_id:
            raise ProtocolError(
                f"poll: answer is about another task ({_sanitize(answered_id, 60)!r})",
                http_status=http_status,
                operation="poll",
            )
        raw_value = data.get("status")
        raw_status = _sanitize(raw_value if isinstance(raw_value, str) else str(raw_value), 60)
        normalized = raw_status.strip().lower()
        duration = _as_int(data.get("duration"))
        duration_ms = duration if duration is not None and duration >= 0 else None
        if normalized in _SUCCESS_STATUSES:
            resources = _parse_resources(data, self._is_on_base)
            if not resources:
                raise ProtocolError(
                    f"poll: task {task_id} reported {raw_status!r} without a usable result URL",
                    http_status=http_status,
                    operation="poll",
                )
            return TaskStatus(
                state="success",
                raw_status=raw_status,
                resources=resources,
                raw=payload,
                duration_ms=duration_ms,
            )
        if normalized in _FAILED_STATUSES:
            return TaskStatus(
                state="failed",
                raw_status=raw_status,
                error=_failure_message(payload, data),
                raw=payload,
                duration_ms=duration_ms,
            )
        return TaskStatus(
            state="running", raw_status=raw_status, raw=payload, duration_ms=duration_ms
        )

    def _checked_data(
        self, op: Operation, http_status: int, headers: httpx.Headers, payload: Any
    ) -> dict[str, Any]:
        """Check a 2xx answer: ``code`` must be 0 and ``data`` an object; return ``data``."""
        if not isinstance(payload, dict):
            raise ProtocolError(
                f"{op}: HTTP {http_status}: answer is not a JSON object",
                http_status=http_status,
                operation=op,
                ambiguous=op == "submit",
            )
        code_value = payload.get("code", 0)
        code = _as_int(code_value)
        if code not in (0, 200):
            detail = _provider_message(payload) or "(no message)"
            if code is not None and 400 <= code <= 599:
                raise _error_for_status(
                    code,
                    op=op,
                    http_status=http_status,
                    detail=detail,
                    retry_after=parse_retry_after(headers),
                )
            shown = _sanitize(str(code_value), 40)
            raise ProtocolError(
                f"{op}: HTTP {http_status} with error code {shown}: {detail}",
                http_status=http_status,
                operation=op,
            )
        data = payload.get("data")
        if not isinstance(data, dict):
            raise ProtocolError(
                f"{op}: HTTP {http_status}: answer has no data object",
                http_status=http_status,
                operation=op,
                ambiguous=op == "submit",
            )
        return data

    def _network_errors(self, op: Operation, what: Callable[[], str]) -> _NetworkErrors:
        """Turn httpx/timeout exceptions into :class:`TransportFailure`/:class:`ProtocolError`
        (``what()`` names the request in the message; called only on error)."""
        return _NetworkErrors(op, what, self.operation_timeout, timer=self._direct is None)

    async def _send(
        self,
        method: str,
        url: str | httpx.URL,
        headers: dict[str, str],
        content: bytes | None = None,
        deadline: float | None = None,
    ) -> httpx.Response:
        """Send one request and return the answer with its body unread (stream it, then
        ``aclose`` it). Redirects are never followed here. ``deadline`` (a loop time, from
        :class:`_NetworkErrors`) bounds the exchange on the lean transport.

        Through the lean transport the request is built as ``httpx.AsyncClient`` builds
        it (its default headers, ``Authorization`` for the API's origin only, the timeout
        extension) and handed to the transport directly; other transports (proxy, tests)
        go through ``httpx.AsyncClient.send``.
        """
        direct = self._direct
        if direct is None:
            parsed = url if isinstance(url, httpx.URL) else _parsed_url(url)
            request = self._http.build_request(method, parsed, content=content, headers=headers)
            return await self._http.send(request, stream=True)
        if self._http.is_closed:
            raise RuntimeError("Cannot send a request, as the client has been closed.")
        target = self._target_on_base(url) if isinstance(url, str) else None
        if target is not None:
            origin, netloc = self._api_origin, self._base.netloc
        else:
            parsed = url if isinstance(url, httpx.URL) else _parsed_url(url)
            origin, netloc, target = _origin(parsed), parsed.netloc, parsed.raw_path
        key = (origin, netloc, tuple(headers.items()))
        block = self._head_blocks.get(key)
        if block is None:
            block = self._head_block(origin, netloc, headers)
            if len(self._head_blocks) >= 64:  # many CDN hosts: keep the cache small
                self._head_blocks.clear()
            self._head_blocks[key] = block
        start = b"%s %s HTTP/1.1\r\n" % (method.encode("ascii"), target)
        if content is None:
            message = start + block + b"\r\n"
        else:
            message = start + block + b"Content-Length: %d\r\n\r\n" % len(content) + content
        response = await direct.send_message(origin, message, self._timeout_dict, deadline)
        if _httpx_logger.isEnabledFor(logging.INFO):  # the line httpx's send logs
            _httpx_logger.info(
                'HTTP Request: %s %s "%s %d %s"',
                method,
                url,
                response.http_version,
                response.status_code,
                response.reason_phrase,
            )
        return response

    def _is_on_base(self, url: str) -> bool:
        return self._target_on_base(url) is not None

    def _target_on_base(self, url: str) -> bytes | None:
        """The request target of ``url`` when it is on the base URL and made of plain
        characters only (no percent-escapes, spaces or non-ASCII: httpx would send it
        unchanged), without parsing it; else ``None``."""
        if url.startswith(self._base_prefix) and _PLAIN_REST.fullmatch(url, len(self._base_url)):
            return (self._base_path + url[len(self._base_url) :]).encode("ascii")
        return None

    def _head_block(self, origin: _Origin, netloc: bytes, headers: dict[str, str]) -> bytes:
        """The header lines of a request to ``url``, as ``httpx.AsyncClient`` would send them:
        ``Host``, the client's default headers, ``headers``, and ``Authorization`` for the
        API's origin only."""
        merged = httpx.Headers(self._http.headers)
        merged.update(headers)
        if self._key is not None and origin == self._api_origin:
            merged["Authorization"] = f"Bearer {self._key.reveal()}"
        lines = [b"Host: " + netloc + b"\r\n"]
        lines += [name + b": " + value + b"\r\n" for name, value in merged.raw]
        return b"".join(lines)

    async def _call_json(
        self, op: Operation, method: str, url: str, *, content: bytes | None = None
    ) -> tuple[int, httpx.Headers, Any]:
        """Send one API request; return (status, headers, parsed JSON) for 2xx answers.

        Non-2xx answers raise the classified :class:`ApiError`.
        """
        headers = {"Accept": "application/json"}
        if content is not None:
            headers["Content-Type"] = "application/json"
        too_big = False
        async with self._network_errors(op, lambda: f"{method} {urlsplit(url).path}") as deadline:
            response = await self._send(method, url, headers, content, deadline)
            try:
                body, too_big = await _read_capped(response, self.max_response_bytes)
            finally:
                await response.aclose()
        status = response.status_code
        if logger.isEnabledFor(logging.DEBUG):
            what = f"{method} {urlsplit(url).path}"
            logger.debug("%s: %s -> HTTP %d (%d bytes read)", op, what, status, len(body))
        payload = None if too_big else _loads(body)
        if 200 <= status <= 299:
            if too_big:
                raise ProtocolError(
                    f"{op}: HTTP {status}: answer larger than {self.max_response_bytes} bytes",
                    http_status=status,
                    operation=op,
                    ambiguous=op == "submit",
                )
            if payload is None:
                raise ProtocolError(
                    f"{op}: HTTP {status}: answer is not JSON: {_body_snippet(body)}",
                    http_status=status,
                    operation=op,
                    ambiguous=op == "submit",
                )
            return status, response.headers, payload
        if 300 <= status <= 399:
            raise ProtocolError(
                f"{op}: HTTP {status}: unexpected redirect (not followed for API calls)",
                http_status=status,
                operation=op,
                retryable=False,
                ambiguous=op == "submit",
            )
        detail = _provider_message(payload)
        if detail is None:
            detail = (
                f"answer larger than {self.max_response_bytes} bytes"
                if too_big
                else f"non-JSON answer: {_body_snippet(body)}"
            )
        raise _error_for_status(
            status,
            op=op,
            http_status=status,
            detail=detail,
            retry_after=parse_retry_after(response.headers),
        )

    async def _download(self, url: str, file: Writable) -> DownloadResult:
        current: str | httpx.URL = url  # a URL on the base URL is sent without parsing it
        if self._target_on_base(url) is None:
            try:
                current = _parsed_url(url)
            except Exception as exc:
                raise ProtocolError(
                    "download: invalid result URL", operation="download", retryable=False
                ) from exc
        for hop in range(MAX_REDIRECTS + 1):
            if isinstance(current, httpx.URL) and (not current.host or not _secure_url(current)):
                reason = "redirected to" if hop else "result URL is"
                raise ProtocolError(
                    f"download: {reason} an insecure URL {_safe_url_for_message(str(current))!r}"
                    " (https required except for loopback)",
                    operation="download",
                    retryable=False,
                )
            what = _LazyGet(current)
            async with self._network_errors("download", what.__str__) as deadline:
                response = await self._send(
                    "GET", current, {"Accept": "*/*", "Accept-Encoding": "identity"}, None, deadline
                )
                try:
                    status = response.status_code
                    if 300 <= status <= 399 and status != 304:
                        location = response.headers.get("location")
                        if not location:
                            raise ProtocolError(
                                f"download: {what}: HTTP {status} without a Location",
                                status=status,
                                operation="download",
                                retryable=False,
                            )
                        try:
                            parsed = (
                                current if isinstance(current, httpx.URL) else _parsed_url(current)
                            )
                            current = parsed.join(location.strip())
                        except Exception as exc:
                            raise ProtocolError(
                                f"download: {what}: HTTP {status} to an invalid Location",
                                status=status,
                                operation="download",
                                retryable=False,
                            ) from exc
                        logger.debug("download: %s -> HTTP %d redirect", what, status)
                        continue
                    if status != 200:
                        body, _ = await _read_capped(response, 4096)
                        raise self._download_error(status, what, body, response.headers)
                    return await self._stream_to_file(response, file, what)
                finally:
                    await response.aclose()
        raise ProtocolError(
            f"download: more than {MAX_REDIRECTS} redirects",
            operation="download",
            retryable=False,
        )

    def _download_error(
        self, status: int, what: object, body: bytes, headers: httpx.Headers
    ) -> ApiError:
        detail = _provider_message(_loads(body)) or _body_snippet(body)
        common: dict[str, Any] = {"status": status, "operation": "download"}
        message = f"download: {what}: HTTP {status}: {detail}"
        if status in (403, 404, 410):
            return ResultExpired(message + " (result URL expired or gone)", **common)
        if status == 429:
            return RateLimited(message, retry_after=parse_retry_after(headers), **common)
        if status in (408, 425) or 500 <= status <= 599:
            return ServerError(message, retry_after=parse_retry_after(headers), **common)
        return ProtocolError(message, retryable=False, **common)

    async def _stream_to_file(
        self, response: httpx.Response, file: Writable, what: object
    ) -> DownloadResult:
        cap = self.max_download_bytes
        declared = _content_length(response.headers)
        if declared is not None and declared > cap:
            raise ProtocolError(
                f"download: {what}: Content-Length {declared} exceeds the {cap}-byte limit",
                status=200,
                operation="download",
                retryable=False,
            )
        digest = hashlib.sha256()
        count = 0
        async for chunk in _body_chunks(response):
            count += len(chunk)
            if count > cap:
                raise ProtocolError(
                    f"download: {what}: body exceeds the {cap}-byte limit",
                    status=200,
                    operation="download",
                    retryable=False,
                )
            digest.update(chunk)
            file.write(chunk)
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if declared is not None and encoding in ("", "identity"):
            if count < declared:
                raise TransportFailure(
                    f"download: {what}: short body ({count} of {declared} bytes)",
                    status=200,
                    operation="download",
                )
            if count > declared:
                raise ProtocolError(
                    f"download: {what}: body longer than its Content-Length"
                    f" ({count} > {declared} bytes)",
                    status=200,
                    operation="download",
                )
        content_type = response.headers.get("content-type")
        logger.debug("download: %s -> %d bytes", what, count)
        return DownloadResult(
            bytes=count,
            sha256=digest.hexdigest(),
            content_type=_sanitize(content_type, 100) if content_type else None,
        )


class _LazyGet:
    """``GET <url>`` for messages, made only when shown (an error, a debug line): shortening
    a URL for a message parses it, which costs more than the rest of a download."""

    __slots__ = ("_text", "_url")

    def __init__(self, url: str | httpx.URL) -> None:
        self._url = url
        self._text: str | None = None

    def __str__(self) -> str:
        if self._text is None:
            self._text = f"GET {_safe_url_for_message(str(self._url))}"
        return self._text


class _NetworkErrors:
    """The context of one network operation: its overall deadline, and the httpx/timeout
    exceptions raised inside it turned into :class:`TransportFailure`/:class:`ProtocolError`
    (a class, not a generator-based context manager: it is entered once per exchange).

    With ``timer`` the deadline is a timer that cancels the block; without it, entering
    returns the deadline as a loop time, for the lean transport, whose waits end with
    :class:`TimeoutError` past it (no timer per exchange).
    """

    __slots__ = ("_deadline", "_op", "_timeout", "_timer", "_what")

    def __init__(
        self, op: Operation, what: Callable[[], str], timeout: float, *, timer: bool = True
    ) -> None:
        self._op = op
        self._what = what
        self._timeout = timeout
        self._timer = timer
        self._deadline: Any = None

    async def __aenter__(self) -> float | None:
        if not self._timer:
            return asyncio.get_running_loop().time() + self._timeout
        if sys.version_info >= (3, 11):
            # asyncio's own deadline: much cheaper than anyio's cancel scopes.
            self._deadline = asyncio.timeout(self._timeout)
            await self._deadline.__aenter__()
        else:  # pragma: no cover - Python 3.10
            self._deadline = anyio.fail_after(self._timeout)
            self._deadline.__enter__()
        return None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._deadline is not None:  # the timer of a timed block (not the lean transport)
            try:
                if sys.version_info >= (3, 11):
                    await self._deadline.__aexit__(exc_type, exc, tb)
                else:  # pragma: no cover - Python 3.10
                    self._deadline.__exit__(exc_type, exc, tb)
            except TimeoutError as timeout:
                exc = timeout
        if exc is None or not isinstance(exc, (TimeoutError, httpx.HTTPError)):
            return  # no error, or not one of ours: propagates unchanged
        op = self._op
        submit = op == "submit"
        what = self._what()
        if isinstance(exc, TimeoutError):
            raise TransportFailure(
                f"{op}: {what}: no complete answer within {self._timeout:g} s",
                operation=op,
                ambiguous=submit,
            ) from exc
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
            # Nothing was sent: never ambiguous.
            raise TransportFailure(
                f"{op}: {what}: could not connect ({_describe(exc)})", operation=op
            ) from exc
        if isinstance(exc, httpx.LocalProtocolError):
            raise TransportFailure(
                f"{op}: {what}: request could not be sent ({_describe(exc)})",
                operation=op,
                retryable=False,
            ) from exc
        if isinstance(exc, httpx.TransportError):
            # Read/write timeouts, dropped connections, protocol violations by the peer: the
            # request may have been received and processed.
            raise TransportFailure(
                f"{op}: {what}: connection failed ({_describe(exc)})",
                operation=op,
                ambiguous=submit,
            ) from exc
        # DecodingError, StreamError, ...
        raise ProtocolError(
            f"{op}: {what}: unreadable answer ({_describe(exc)})",
            operation=op,
            ambiguous=submit,
        ) from exc


def _content_length(headers: httpx.Headers) -> int | None:
    value = headers.get("content-length")
    if value is None:
        return None
    value = value.strip()
    return int(value) if value.isdigit() and len(value) < 20 else None


def _body_chunks(response: httpx.Response) -> AsyncIterator[bytes]:
    """The decoded body of a streamed answer.  An uncompressed answer of the lean transport
    (the usual case) is read straight from its stream, without httpx's decoder and chunker
    layers; anything else (compressed, or from another transport) through ``aiter_bytes``."""
    stream = response.stream
    if isinstance(stream, Http11Body):
        encoding = response.headers.get("content-encoding")
        if encoding is None or encoding.strip().lower() in ("", "identity"):
            return stream.__aiter__()
    return response.aiter_bytes()


async def _read_capped(response: httpx.Response, cap: int) -> tuple[bytes, bool]:
    """Read at most *cap* bytes of *response*; return (body, exceeded)."""
    declared = _content_length(response.headers)
    if declared is not None and declared > cap:
        return b"", True
    chunks: list[bytes] = []
    size = 0
    async for chunk in _body_chunks(response):
        size += len(chunk)
        if size > cap:
            return b"".join(chunks), True
        chunks.append(chunk)
    return b"".join(chunks), False


def _describe(exc: BaseException) -> str:
    text = _sanitize(str(exc), 160)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
