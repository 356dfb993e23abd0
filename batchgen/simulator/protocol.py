"""The simulator's wire vocabulary: ASGI types, the routes' paths, one answer
(:class:`Answer`) and the provider's error format
(``{"code": <status>, "message": "<Category>: <detail>"}``)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BALANCE_PATH",
    "FILES_PREFIX",
    "JSON_HEADERS",
    "MAX_BODY_BYTES",
    "STATS_PATH",
    "TASKS_PREFIX",
    "VALIDATE_PATH",
    "Answer",
    "Headers",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "dumps",
    "error_answer",
    "error_body",
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
JSON_HEADERS: Headers = [(b"content-type", b"application/json")]

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


@dataclass
class Answer:
    """One HTTP answer: status, body and extra headers."""

    status: int
    body: bytes
    headers: Headers


def dumps(value: object) -> bytes:
    """Compact JSON bytes."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def error_body(status: int, detail: str) -> bytes:
    """The provider's error format: ``{"code": <status>, "message": "<Category>: <detail>"}``."""
    message = f"{_REASONS.get(status, 'Error')}: {detail}"
    return dumps({"code": status, "message": message})


def error_answer(status: int, detail: str, headers: Headers | None = None) -> Answer:
    """An error :class:`Answer` in the provider's format."""
    return Answer(status, error_body(status, detail), headers or [])
