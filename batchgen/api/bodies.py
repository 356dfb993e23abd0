"""Reading answer bodies under caps: JSON answers (:func:`read_capped`) and result files
(:func:`stream_to_file`, with :func:`download_error` for the answers that carry none)."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import httpx

from batchgen.api.answers import (
    DownloadResult,
    Writable,
    loads,
    parse_retry_after,
    provider_message,
)
from batchgen.api.errors import (
    ApiError,
    ProtocolError,
    RateLimited,
    ResultExpired,
    ServerError,
    TransportFailure,
)
from batchgen.api.text import body_snippet, sanitize

__all__ = ["content_length", "download_error", "read_capped", "stream_to_file"]

logger = logging.getLogger("batchgen.api.client")


def download_error(status: int, what: object, body: bytes, headers: httpx.Headers) -> ApiError:
    """The error of a download answered ``status`` (not 2xx): an expired result URL,
    a throttle, a server error, or a protocol error."""
    detail = provider_message(loads(body)) or body_snippet(body)
    common: dict[str, Any] = {"status": status, "operation": "download"}
    message = f"download: {what}: HTTP {status}: {detail}"
    if status in (403, 404, 410):
        return ResultExpired(message + " (result URL expired or gone)", **common)
    if status == 429:
        return RateLimited(message, retry_after=parse_retry_after(headers), **common)
    if status in (408, 425) or 500 <= status <= 599:
        return ServerError(message, retry_after=parse_retry_after(headers), **common)
    return ProtocolError(message, retryable=False, **common)


async def stream_to_file(
    response: httpx.Response, file: Writable, what: object, cap: int
) -> DownloadResult:
    """Write the body of ``response`` to ``file``: at most ``cap`` bytes, as long as its
    ``Content-Length`` says (when not compressed); return its size and sha256."""
    declared = content_length(response.headers)
    if declared is not None and declared > cap:
        raise ProtocolError(
            f"download: {what}: Content-Length {declared} exceeds the {cap}-byte limit",
            status=200,
            operation="download",
            retryable=False,
        )
    digest = hashlib.sha256()
    count = 0
    async for chunk in response.aiter_bytes():
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
        content_type=sanitize(content_type, 100) if content_type else None,
    )


def content_length(headers: httpx.Headers) -> int | None:
    """The answer's ``Content-Length`` when it is a plain number, else ``None``."""
    value = headers.get("content-length")
    if value is None:
        return None
    value = value.strip()
    return int(value) if value.isdigit() and len(value) < 20 else None


async def read_capped(response: httpx.Response, cap: int) -> tuple[bytes, bool]:
    """Read at most *cap* bytes of *response*; return (body, exceeded)."""
    declared = content_length(response.headers)
    if declared is not None and declared > cap:
        return b"", True
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > cap:
            return b"".join(chunks), True
        chunks.append(chunk)
    return b"".join(chunks), False
