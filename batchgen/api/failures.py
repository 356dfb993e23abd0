"""The failures of one network operation: its overall deadline, and what httpx raises turned
into :class:`TransportFailure` or :class:`ProtocolError`.

Guarantees: nothing sent (refused, connect or pool timeout) is never ``ambiguous`` and has
``sent`` false; a refused connection, a name that does not resolve and a certificate that fails
verification are :class:`Unreachable` (naming ``host:port`` and the cause); anything
that may have reached the server (a read timeout, a dropped connection, an unreadable answer,
the deadline) is ``ambiguous`` on submit; an answer head past the transport's cap is a
:class:`ProtocolError`. Messages are sanitised and bounded.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import sys
from collections.abc import Callable
from types import TracebackType
from typing import Any

import anyio
import httpx

from batchgen.api.answers import Operation
from batchgen.api.errors import ProtocolError, TransportFailure, Unreachable
from batchgen.api.text import sanitize

__all__ = [
    "ConnectionUse",
    "NetworkErrors",
    "address_of",
    "tls_environment_problem",
    "unreachable_cause",
]


class NetworkErrors:
    """The context of one network operation: its overall deadline (a timer that cancels the
    block), and the httpx/timeout exceptions raised inside it turned into
    :class:`TransportFailure`/:class:`ProtocolError` (a class, not a generator-based context
    manager: it is entered once per exchange)."""

    __slots__ = ("_deadline", "_op", "_timeout", "_what")

    def __init__(self, op: Operation, what: Callable[[], str], timeout: float) -> None:
        self._op = op
        self._what = what
        self._timeout = timeout
        self._deadline: Any = None

    async def __aenter__(self) -> None:
        if sys.version_info >= (3, 11):
            # asyncio's own deadline: much cheaper than anyio's cancel scopes.
            self._deadline = asyncio.timeout(self._timeout)
            await self._deadline.__aenter__()
        else:  # pragma: no cover - Python 3.10
            self._deadline = anyio.fail_after(self._timeout)
            self._deadline.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
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
        if isinstance(exc, httpx.ConnectError):
            cause = unreachable_cause(exc)
            if cause is not None:
                address = address_of(exc)
                raise Unreachable(
                    f"{op}: {what}: cannot reach {address}: {cause} ({_describe(exc)})",
                    address=address,
                    cause=cause,
                    operation=op,
                ) from exc
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
            # Nothing was sent: never ambiguous.
            raise TransportFailure(
                f"{op}: {what}: could not connect to {address_of(exc)} ({_describe(exc)})",
                operation=op,
                sent=False,
            ) from exc
        if isinstance(exc, httpx.LocalProtocolError):
            raise TransportFailure(
                f"{op}: {what}: request could not be sent ({_describe(exc)})",
                operation=op,
                retryable=False,
                sent=False,
            ) from exc
        if isinstance(exc, httpx.RemoteProtocolError) and _head_too_large(exc):
            raise ProtocolError(
                f"{op}: {what}: answer head (status line, headers or trailers) larger than"
                f" the transport's cap ({_describe(exc)})",
                operation=op,
                ambiguous=submit,
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


#: httpcore's trace events after which nothing of the answer has arrived.
_BEFORE_ANSWER = frozenset(
    {
        "http11.send_request_headers.failed",
        "http11.send_request_body.failed",
        "http11.receive_response_headers.failed",
    }
)


class ConnectionUse:
    """httpcore's ``trace`` extension for one request: whether it opened a new connection and
    where it failed. :meth:`closed_unread` is the one case a submit is sent again: on a
    *reused* connection, a reset (``ECONNRESET``/``EPIPE``) while the request was written or
    before any byte of the answer. A kernel resets a connection closed with unread data in
    it: the server never read the request, so it created no task. A clean close without an
    answer (``Server disconnected without sending a response``) is *not* that case: a server
    or proxy may have processed the request and lost its answer; it stays ambiguous."""

    __slots__ = ("failed_at", "fresh")

    def __init__(self) -> None:
        self.fresh = False
        self.failed_at: str | None = None

    async def __call__(self, name: str, info: Any) -> None:
        if name.startswith("connection.connect_tcp."):
            self.fresh = True
        elif name.endswith(".failed"):
            self.failed_at = name

    def closed_unread(self, failure: BaseException) -> bool:
        """Whether ``failure`` (a :class:`TransportFailure`) is that case."""
        if self.fresh or self.failed_at not in _BEFORE_ANSWER:
            return False
        chain = _chain(failure)
        return any(isinstance(e, (httpx.WriteError, httpx.ReadError)) for e in chain) and any(
            isinstance(e, (ConnectionResetError, BrokenPipeError)) for e in chain
        )


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes (httpx -> httpcore -> anyio/OSError: a short chain)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(seen) < 8 and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def unreachable_cause(exc: BaseException) -> str | None:
    """Why a connection failed when the reason is one configuration explains (the name does
    not resolve, nothing listens on the port, the certificate fails verification); ``None``
    for the rest (timeouts, resets, other TLS failures)."""
    for err in _chain(exc):
        if isinstance(err, ssl.SSLCertVerificationError):
            detail = sanitize(err.verify_message or str(err), 120)
            return f"TLS certificate verification failed ({detail})"
        if isinstance(err, socket.gaierror):
            return "the host name does not resolve (DNS)"
        if isinstance(err, ConnectionRefusedError):
            return "connection refused (nothing listens on that port)"
    return None


def address_of(exc: BaseException) -> str:
    """``host:port`` of the request that failed (the scheme's port when the URL has none)."""
    try:
        url = exc.request.url  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):
        return "the server"
    port = url.port or (443 if url.scheme == "https" else 80)
    host = f"[{url.host}]" if ":" in url.host else url.host
    return sanitize(f"{host}:{port}", 300)


def tls_environment_problem(exc: BaseException) -> str:
    """One line for a TLS context that cannot be built from ``SSL_CERT_FILE``/``SSL_CERT_DIR``
    (a missing or unreadable CA file): the variable, the file and the cause."""
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR"):
        value = os.environ.get(name)
        if value:
            return (
                f"{name}={sanitize(value, 200)} cannot be used as the CA certificates for TLS:"
                f" {_describe(exc)}; fix or unset {name}"
            )
    return f"cannot set up TLS: {_describe(exc)}"


def _describe(exc: BaseException) -> str:
    text = sanitize(str(exc), 160)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _head_too_large(exc: BaseException) -> bool:
    """Whether a transport error comes from a transport's cap on an answer head or trailer
    section that never ends: h11 (httpx's transport) marks it with the hint 431, and so does
    :class:`batchgen.api.transport.AnswerHeadTooLarge` (aiohttp's)."""
    seen: BaseException | None = exc
    for _ in range(8):  # httpx -> httpcore -> h11: a short chain
        if seen is None:
            return False
        if getattr(seen, "error_status_hint", None) == 431:
            return True
        seen = seen.__cause__ or seen.__context__
    return False
