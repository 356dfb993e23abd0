"""Which limit a 429 answer reports: too many running tasks, too many requests, or unsaid.

The provider answers both of its limits with HTTP 429 (``{"code":429,"message":"Too Many
Requests: ..."}``); the message (and ``X-RateLimit-*`` headers when present) tells them apart:

* ``"concurrency"``: the account's cap on running tasks binds (the message names concurrent
  or running tasks); a new task may go as soon as one of ours ends;
* ``"rate"``: a request-rate limit binds (the message names a request rate, or
  ``X-RateLimit-Remaining: 0``); nothing may go before ``Retry-After``;
* ``"unknown"``: anything else (a busy server, a proxy).

:func:`rate_per_second` reads ``X-RateLimit-Limit``, taken as requests per minute (the unit
the provider documents its limits in).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

__all__ = ["ThrottleKind", "rate_per_second", "throttle_kind"]

ThrottleKind = Literal["concurrency", "rate", "unknown"]

_CATEGORY = re.compile(r"^\s*too many requests\s*:\s*", re.IGNORECASE)
_CONCURRENCY = re.compile(r"concurren|running tasks?|tasks? (?:running|in progress)", re.I)
_RATE = re.compile(
    r"request rate|rate limit|requests? per|per (?:second|minute)|/\s*(?:s|min)\b", re.I
)


def throttle_kind(message: str, headers: Mapping[str, str] | None = None) -> ThrottleKind:
    """The limit a 429 with ``message`` (and ``headers``, lower-case keys) reports."""
    detail = _CATEGORY.sub("", message)
    if _CONCURRENCY.search(detail):
        return "concurrency"
    if _RATE.search(detail):
        return "rate"
    if headers is not None and headers.get("x-ratelimit-remaining", "").strip() == "0":
        return "rate"
    return "unknown"


def rate_per_second(headers: Mapping[str, str] | None) -> float | None:
    """Requests per second allowed by ``X-RateLimit-Limit`` (per minute), if present."""
    if headers is None:
        return None
    value = headers.get("x-ratelimit-limit")
    if value is None:
        return None
    try:
        per_minute = float(value.split(",")[0].split(";")[0].strip())
    except ValueError:
        return None
    return per_minute / 60.0 if per_minute > 0 else None
