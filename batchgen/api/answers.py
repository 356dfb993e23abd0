"""Reading the provider's answers: typed results, or the classified :class:`ApiError`.

Guarantees: every answer becomes either a typed value (:class:`Submitted`, :class:`TaskStatus`,
:class:`Resource`) or an :class:`ApiError` subclass; every string taken from an answer and kept
in a result or message is sanitised (printable, single-line, bounded); waits asked by the
server (``Retry-After``, ``X-RateLimit-Reset``) are clamped to ``[0, MAX_RETRY_AFTER]``.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timezone
from typing import Any, Literal, Protocol

from batchgen.api.errors import (
    ApiError,
    AuthError,
    NotFound,
    PaymentRequired,
    ProtocolError,
    RateLimited,
    Rejected,
    ServerError,
)
from batchgen.api.text import sanitize
from batchgen.api.throttle import rate_per_second, throttle_kind
from batchgen.api.urls import parsed_url

__all__ = [
    "MAX_RETRY_AFTER",
    "MAX_TASK_ID_LENGTH",
    "DownloadResult",
    "Operation",
    "Resource",
    "Submitted",
    "TaskState",
    "TaskStatus",
    "Writable",
    "balance_from",
    "checked_data",
    "error_for_status",
    "loads",
    "parse_retry_after",
    "provider_message",
    "submitted_from",
    "task_status_from",
    "valid_task_id",
]

#: Longest wait honoured from ``Retry-After`` / ``X-RateLimit-Reset`` (seconds); a larger value
#: (or a hostile one) is clamped so that a single answer cannot stall a run for days.
MAX_RETRY_AFTER = 3600.0
MAX_TASK_ID_LENGTH = 200

_TASK_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:=+~-]*")
_FORMAT_RE = re.compile(r"[a-z0-9]{1,10}")
_SUCCESS_STATUSES = frozenset({"success", "completed", "succeeded"})
_FAILED_STATUSES = frozenset({"failed", "error", "canceled", "cancelled"})
_MESSAGE_CHARS = 500

TaskState = Literal["running", "success", "failed"]
Operation = Literal["submit", "poll", "download", "account"]


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
# Parsing
# --------------------------------------------------------------------------------------------


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
def loads(body: bytes) -> Any:
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


def valid_task_id(value: Any) -> bool:
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


def provider_message(payload: Any) -> str | None:
    if isinstance(payload, Mapping):
        message = _message_of(payload.get("message")) or _message_of(payload.get("error"))
        data = payload.get("data")
        if not message and isinstance(data, Mapping):
            message = _message_of(data.get("message")) or _message_of(data.get("error"))
        if message:
            return sanitize(message, _MESSAGE_CHARS)
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
            return sanitize(message, _MESSAGE_CHARS)
    raw = json.dumps(payload, ensure_ascii=False, default=str)
    return "task failed without a message; answer: " + sanitize(raw, _MESSAGE_CHARS)


def _result_items(data: Mapping[str, Any]) -> list[Any]:
    """The result list of a success answer, in the documented variants: ``data.result.resources``
    (the how-to page), ``data.resources`` (the official CLI's fallback) or ``data.results``
    (a synchronous model page, items with ``image_url``)."""
    result = data.get("result")
    candidates = [
        result.get("resources") if isinstance(result, Mapping) else None,
        data.get("resources"),
        data.get("results"),
    ]
    for items in candidates:
        if isinstance(items, list) and items:
            return items
    return []


def _parse_resources(
    data: Mapping[str, Any], on_base: Callable[[str], bool] | None = None
) -> list[Resource]:
    """The usable result resources of a success answer, in order; an item is an object with
    ``url`` (or ``image_url``) or a plain URL string.  A URL for which ``on_base`` is true (on
    the API's base URL, plain characters) is usable without parsing it."""
    resources: list[Resource] = []
    for entry in _result_items(data)[:100]:
        item: Mapping[str, Any]
        if isinstance(entry, str):
            item = {"url": entry}
        elif isinstance(entry, Mapping):
            item = entry
        else:
            continue
        url = item.get("url")
        if not isinstance(url, str):
            url = item.get("image_url")
        if not isinstance(url, str) or len(url) > 8192:
            continue
        if on_base is None or not on_base(url):
            try:
                parsed = parsed_url(url)
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
                type=sanitize(item["type"], 40) if isinstance(item.get("type"), str) else None,
                width=width if width and width > 0 else None,
                height=height if height and height > 0 else None,
                format=fmt_clean if fmt_clean and _FORMAT_RE.fullmatch(fmt_clean) else None,
                role=sanitize(item["role"], 40) if isinstance(item.get("role"), str) else None,
            )
        )
    return resources


# --------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------


def error_for_status(
    status: int,
    *,
    op: Operation,
    http_status: int,
    detail: str,
    retry_after: float | None,
    headers: Mapping[str, str] | None = None,
) -> ApiError:
    """Map an HTTP(-like) error status to an ApiError (API calls, not downloads); ``headers``
    tell which limit a 429 reports (:mod:`batchgen.api.throttle`)."""
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
        if op == "account":
            return NotFound(f"{where}: no such endpoint: {detail}", **common)
        return NotFound(f"{where}: unknown task: {detail}", **common)
    if status == 429:
        return RateLimited(
            f"{where}: rate limited: {detail}",
            retry_after=retry_after,
            kind=throttle_kind(detail, headers),
            rate=rate_per_second(headers),
            **common,
        )
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
# Answers of the API calls
# --------------------------------------------------------------------------------------------


def checked_data(
    op: Operation, http_status: int, headers: Mapping[str, str], payload: Any
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
        detail = provider_message(payload) or "(no message)"
        if code is not None and 400 <= code <= 599:
            raise error_for_status(
                code,
                op=op,
                http_status=http_status,
                detail=detail,
                retry_after=parse_retry_after(headers),
                headers=headers,
            )
        shown = sanitize(str(code_value), 40)
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


def balance_from(http_status: int, headers: Mapping[str, str], payload: Any) -> float:
    """The account balance (USD) of a 2xx ``GET /api/v1/team/balance`` answer
    (``{"code": 0, "data": {"balance": 12.3456}}``); a number given as text is accepted."""
    data = checked_data("account", http_status, headers, payload)
    value = data.get("balance")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            value = None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        shown = sanitize(str(data.get("balance")), 40)
        raise ProtocolError(
            f"balance: HTTP {http_status}: answer has no usable data.balance ({shown!r})",
            http_status=http_status,
            operation="account",
            retryable=False,
        )
    return float(value)


def submitted_from(
    http_status: int,
    headers: Mapping[str, str],
    payload: Any,
    same_origin: Callable[[str], bool],
) -> Submitted:
    """The task of a 2xx submit answer; ``get_result.url`` is kept only when ``same_origin``."""
    data = checked_data("submit", http_status, headers, payload)
    task_id = data.get("task_id")
    if not isinstance(task_id, str) or not valid_task_id(task_id):
        shown = sanitize(str(task_id), 60) if task_id is not None else "missing"
        raise ProtocolError(
            f"submit: HTTP {http_status}: answer has no usable data.task_id ({shown!r}); the"
            " task may exist",
            http_status=http_status,
            operation="submit",
            ambiguous=True,
        )
    get_result = data.get("get_result")
    poll_url: str | None = None
    if isinstance(get_result, Mapping):
        candidate = get_result.get("url")
        if isinstance(candidate, str) and len(candidate) <= 2048 and same_origin(candidate):
            poll_url = candidate
    return Submitted(task_id=task_id, poll_url=poll_url)


def task_status_from(
    task_id: str,
    http_status: int,
    headers: Mapping[str, str],
    payload: Any,
    on_base: Callable[[str], bool] | None = None,
) -> TaskStatus:
    """The state of *task_id* from a 2xx poll answer (see :class:`TaskStatus`)."""
    data = checked_data("poll", http_status, headers, payload)
    assert isinstance(payload, dict)
    answered_id = data.get("task_id")
    if isinstance(answered_id, str) and answered_id and answered_id != task_id:
        raise ProtocolError(
            f"poll: answer is about another task ({sanitize(answered_id, 60)!r})",
            http_status=http_status,
            operation="poll",
        )
    raw_value = data.get("status")
    raw_status = sanitize(raw_value if isinstance(raw_value, str) else str(raw_value), 60)
    normalized = raw_status.strip().lower()
    duration = _as_int(data.get("duration"))
    duration_ms = duration if duration is not None and duration >= 0 else None
    if normalized in _SUCCESS_STATUSES:
        resources = _parse_resources(data, on_base)
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
    return TaskStatus(state="running", raw_status=raw_status, raw=payload, duration_ms=duration_ms)
