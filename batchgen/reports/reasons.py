"""Failure reasons grouped by cause: one normalisation for ``batchgen status`` and a run's summary.

A job's last error names one task, URL or raw answer; :func:`failure_reason` leaves those out so
every job that failed the same way gets the same short key.
"""

from __future__ import annotations

import re

__all__ = ["failure_reason", "short_reason"]

_AFTER_ATTEMPTS = re.compile(r"\s*\(after \d+ attempts?\)\s*$")
_RAW_ANSWER = re.compile(r";?\s*answer:\s*[\[{].*$", re.DOTALL)
_METHOD_URL = re.compile(r"\b(?:GET|POST|PUT|HEAD|DELETE) \S+?:\s+")
_URL = re.compile(r"\bhttps?://\S+")
_OPERATION = re.compile(r"^(?:(?P<head>[^:]{1,60}): )?(?:submit|poll|download): ")
_ID_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:=+~/-]{11,}")
_TIMES = re.compile(r"\b\d+ times\b")
# An address is not an id: "could not connect to 127.0.0.1:9" keeps where it could not connect.
_ADDRESS = re.compile(r"(?:\d{1,3}\.){3}\d{1,3}(?::\d{1,5})?|\[[0-9A-Fa-f:.]+\](?::\d{1,5})?")


def _is_id(token: str) -> bool:
    """A token that names one task/request (many digits, long), not a value like 1024x1024."""
    core = token.strip("(),.;")
    if _ADDRESS.fullmatch(core):
        return False
    return bool(_ID_TOKEN.fullmatch(core)) and sum(ch.isdigit() for ch in core) >= 6


def short_reason(error: str, *, limit: int | None = 120) -> str:
    """``error`` in at most ``limit`` characters (``None``: any) for one log line: retry
    counts, task IDs, URLs, request lines and raw answers left out (the state file keeps
    them), the provider's message and addresses (``host:port``) kept."""
    text = " ".join(error.split())
    text = _AFTER_ATTEMPTS.sub("", text)
    text = _RAW_ANSWER.sub("", text)
    text = _METHOD_URL.sub("", text)
    text = _URL.sub("<url>", text)
    text = _OPERATION.sub(lambda m: f"{m['head']}: " if m["head"] else "", text)
    text = _TIMES.sub("too many times", text)
    text = " ".join(t for t in text.split(" ") if not _is_id(t))
    text = text.replace(" (result URL expired or gone)", "")
    return text if limit is None else _cut(text, limit)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def failure_reason(state: str, last_error: str | None) -> str:
    """A short category of a job's last error, the same for every job that failed the same way:
    retry counts, task IDs, URLs and raw answers are left out (:func:`short_reason`)."""
    text = (last_error or "").strip()
    if not text:
        return f"{state} (no error recorded)"
    text = short_reason(text, limit=None)
    if state == "rejected" and not text.lower().startswith("rejected"):
        text = f"rejected: {text}"
    return _cut(text, 120)
