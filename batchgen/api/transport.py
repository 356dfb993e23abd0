"""The default transport under the client's seam: aiohttp's, through ``httpx-aiohttp``.

:func:`direct_transport` builds the transport for requests that go straight to their host
(every request without a proxy, and loopback always): ``httpx_aiohttp.AiohttpTransport``
over one ``aiohttp.ClientSession`` (C HTTP parser, a connection pool that finds an idle
connection without scanning the others, address racing by ``aiohappyeyeballs``, TLS from
httpx's SSL context, so ``SSL_CERT_FILE``/``SSL_CERT_DIR`` are honoured). Requests through a
proxy keep httpx's own transport (``HTTP(S)_PROXY``, ``ALL_PROXY``, SOCKS): the proxy rules
stay httpx's, only the direct path changes.

Guarantees, so that both transports look the same to the seam and to
:class:`batchgen.api.failures.NetworkErrors`:

- aiohttp's exceptions, raised while sending or while the body streams, become the httpx
  exceptions of the same meaning: nothing sent (refused, DNS, TLS, connect timeout) is
  ``httpx.ConnectError``/``ConnectTimeout``; a dropped connection, a short body or an
  unparsable answer is ``httpx.RemoteProtocolError``/``ReadError``/``ReadTimeout`` (may have
  reached the server); an answer head past the caps below is :class:`AnswerHeadTooLarge`.
- The answer head is capped: lines of at most 64 KiB, at most 128 header or trailer lines.
- No cookie is stored or sent (a dummy jar); answers are never decompressed by aiohttp
  (httpx decodes them as with its own transport); redirects are never followed.
- httpcore's ``trace`` request extension is honoured for what
  :class:`batchgen.api.failures.ConnectionUse` reads, under httpcore's event names: when a new
  connection is opened for the request (``connection.connect_tcp.started``), and when the
  request fails before its answer head was parsed (``http11.receive_response_headers.failed``);
  no event means the request went out on a reused connection. A reset (``ECONNRESET``/``EPIPE``)
  keeps the OS's ``ConnectionResetError``/``BrokenPipeError`` in the exception chain; a
  request aiohttp could not write because the connection was already closing is an
  ``httpx.WriteError`` with aiohttp's ``ClientConnectionResetError`` in its chain.
- Like httpcore's pool, a POST never goes out on a kept-alive connection whose socket is
  readable (the server closed it, or wrote to it, while it sat idle): it is dropped and the
  next one taken (aiohttp itself sends GET and HEAD again in that case).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import select
import ssl
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from types import SimpleNamespace
from typing import Any

import aiohttp
import httpx
from aiohttp import http_exceptions
from aiohttp.connector import Connection
from httpx_aiohttp import AiohttpTransport

__all__ = ["MAX_HEAD_LINE", "MAX_HEAD_LINES", "AnswerHeadTooLarge", "direct_transport"]

#: The longest status, header or trailer line accepted, bytes.
MAX_HEAD_LINE = 64 * 1024
#: The most header (or trailer) lines accepted in one answer.
MAX_HEAD_LINES = 128


class AnswerHeadTooLarge(httpx.RemoteProtocolError):
    """An answer head or trailer section past the caps. Carries the same hint (431) as h11's
    own cap, so that one rule recognises both transports' caps."""

    error_status_hint = 431


def _translated(exc: BaseException) -> httpx.TransportError | None:
    """The httpx exception meaning what aiohttp's ``exc`` means, or ``None`` (not aiohttp's)."""
    text = str(exc)
    # Order matters: aiohttp's classes inherit from one another (a connector error is an
    # OSError, a timeout is a connection error).
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(text)
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return httpx.ReadTimeout(text)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(text)
    if isinstance(exc, (aiohttp.ClientResponseError, aiohttp.ClientPayloadError)):
        if _past_a_cap(exc):  # a head, or a trailer section after the body, past a cap
            return AnswerHeadTooLarge(text)
        return httpx.RemoteProtocolError(text)  # an unparsable or cut-short answer
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return httpx.RemoteProtocolError(text)
    if isinstance(exc, aiohttp.InvalidURL):
        return httpx.UnsupportedProtocol(text)
    if _unwritten(exc):
        return httpx.WriteError(text)  # the kept-alive connection was closing before the write
    if isinstance(exc, aiohttp.ClientError):
        return httpx.ReadError(text)  # reset or other socket error once sent
    return None


def _past_a_cap(exc: BaseException) -> bool:
    """Whether aiohttp's parser stopped at a cap: a line too long, or too many headers."""
    seen: BaseException | None = exc
    for _ in range(8):  # ClientResponseError <- HttpProcessingError <- LineTooLong: short
        if seen is None:
            return False
        if isinstance(seen, http_exceptions.LineTooLong) or "Too many headers" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextlib.contextmanager
def _httpx_errors(request: httpx.Request) -> Iterator[None]:
    try:
        yield
    except aiohttp.ClientError as exc:
        mapped = _translated(exc)
        if mapped is None:  # pragma: no cover - every ClientError is mapped above
            raise
        mapped.request = request
        # The OS's or TLS's own error (refused, DNS, certificate, reset) stays in the chain,
        # where batchgen.api.failures tells a configuration fault from bad luck and a reset
        # from a clean close.
        cause = getattr(exc, "certificate_error", None) or getattr(exc, "os_error", None)
        if cause is None and isinstance(exc, aiohttp.ClientOSError):
            cause = _with_reset_cause(exc)
        raise mapped from (cause if isinstance(cause, BaseException) else exc)


#: How aiohttp words a request it could not write (``ClientRequest.write_bytes``).
_UNWRITTEN = "Can not write request body"


def _unwritten(exc: BaseException) -> bool:
    """Whether aiohttp could not write the request because the connection was already closing:
    its ``ClientConnectionResetError`` (``Cannot write to closing transport``, raised before
    the write, so nothing of that write left), wrapped in a ``ClientOSError``."""
    return isinstance(exc, aiohttp.ClientOSError) and (
        isinstance(exc.__cause__, aiohttp.ClientConnectionResetError)
        or (exc.errno is None and str(exc.strerror or "").startswith(_UNWRITTEN))
    )


def _with_reset_cause(exc: aiohttp.ClientOSError) -> BaseException:
    """``exc``, with the reset under it put back in its chain. aiohttp chains the OS's error
    (or its own ``ClientConnectionResetError``) only when a reader was already waiting for the
    answer, and drops it otherwise: rebuilt from ``errno`` (``ECONNRESET`` gives
    ``ConnectionResetError``, ``EPIPE`` ``BrokenPipeError``), or for a request aiohttp could
    not write, its own exception."""
    if exc.__cause__ is None:
        if exc.errno in (errno.ECONNRESET, errno.EPIPE):
            exc.__cause__ = OSError(exc.errno, exc.strerror)
        elif _unwritten(exc):
            exc.__cause__ = aiohttp.ClientConnectionResetError("Cannot write to closing transport")
    return exc


class _Body(httpx.AsyncByteStream):
    """An answer body streamed from aiohttp, its errors translated."""

    def __init__(self, request: httpx.Request, stream: httpx.AsyncByteStream) -> None:
        self._request = request
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors(self._request):
            # httpx-aiohttp's stream re-raises some errors as its own guesses: unwrap them.
            try:
                async for chunk in self._stream:
                    yield chunk
            except httpx.TransportError as exc:
                if isinstance(exc.__cause__, aiohttp.ClientError):
                    raise exc.__cause__ from None
                raise

    async def aclose(self) -> None:
        with _httpx_errors(self._request):
            await self._stream.aclose()


_Trace = Callable[[str, dict[str, Any]], Awaitable[None]]

#: The ``trace`` extension of the request aiohttp is handling in this task. httpx-aiohttp
#: passes no ``trace_request_ctx`` to aiohttp, so the session's trace handler finds the
#: request's trace here (each request runs in its caller's task, or in a copy of its context).
_REQUEST_TRACE: contextvars.ContextVar[_Trace | None] = contextvars.ContextVar(
    "batchgen_request_trace", default=None
)


async def _on_connection_create_start(
    session: aiohttp.ClientSession, context: SimpleNamespace, params: object
) -> None:
    trace = _REQUEST_TRACE.get()
    if trace is not None:  # a new connection, not a pooled one: httpcore's name for it
        await trace("connection.connect_tcp.started", {})


def _connection_trace() -> aiohttp.TraceConfig:
    """aiohttp's signal that a request opens a new connection, passed on to its ``trace``."""
    config = aiohttp.TraceConfig()
    config.on_connection_create_start.append(_on_connection_create_start)
    config.freeze()
    return config


class _Connector(aiohttp.TCPConnector):
    """aiohttp's connector that, like httpcore's pool, never sends a POST on a kept-alive
    connection the server has already closed (or written to) while it sat in the pool.

    aiohttp checks only what the event loop has processed: a server that closes a connection
    right after its answer (a worker recycled) has its FIN in the socket but not yet seen, so
    the next submit would be written onto a closed connection and end as an ambiguous clean
    close. GET and HEAD need no check: aiohttp itself sends them once more in that case."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._handed_out: weakref.WeakSet[object] = weakref.WeakSet()

    async def connect(
        self, req: aiohttp.ClientRequest, traces: list[Any], timeout: aiohttp.ClientTimeout
    ) -> Connection:
        for _ in range(_MAX_STALE):  # bounded: every pooled connection may be stale
            conn = await super().connect(req, traces, timeout)
            proto = conn.protocol
            reused = proto in self._handed_out
            self._handed_out.add(proto)
            if req.method != "POST" or not reused or not _peer_spoke(conn.transport):
                return conn
            conn.close()  # closed by the server, or with unread bytes in it: never reuse
        return await super().connect(req, traces, timeout)


#: Stale pooled connections dropped in a row before one is used whatever its state.
_MAX_STALE = 8


def _peer_spoke(transport: asyncio.BaseTransport | None) -> bool:
    """Whether an idle connection's socket is readable: the peer closed it (``b""`` waits)
    or sent something unasked. Never blocks (a zero-timeout poll)."""
    sock = None if transport is None else transport.get_extra_info("socket")
    fd = -1 if sock is None else sock.fileno()
    if fd < 0:
        return True
    if not hasattr(select, "poll"):  # pragma: no cover - Windows
        return bool(select.select([fd], [], [], 0)[0])
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class _Transport(AiohttpTransport):
    """``AiohttpTransport`` whose errors are httpx's own and which honours httpcore's
    ``trace`` extension (see the module's guarantees)."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        trace: _Trace | None = request.extensions.get("trace")
        token = _REQUEST_TRACE.set(trace)
        try:
            with _httpx_errors(request):
                try:
                    response = await super().handle_async_request(request)
                except httpx.TransportError as exc:
                    if isinstance(exc.__cause__, aiohttp.ClientError):
                        raise exc.__cause__ from None
                    raise
        except httpx.TransportError as exc:
            if trace is not None:
                # aiohttp does not say whether the request was still being written or waited
                # for its answer; neither had parsed a byte of the answer, so httpcore's name
                # for the later of the two stands for both.
                await trace("http11.receive_response_headers.failed", {"exception": exc})
            raise
        finally:
            _REQUEST_TRACE.reset(token)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _Body(request, response.stream)
        return response

    async def aclose(self) -> None:
        with contextlib.suppress(aiohttp.ClientError):
            await super().aclose()


def direct_transport(
    *, verify: ssl.SSLContext | str | bool, trust_env: bool, limits: httpx.Limits
) -> httpx.AsyncBaseTransport:
    """The transport for requests without a proxy: aiohttp's connection pool, sized by
    ``limits`` (``max_connections``; idle connections closed after ``keepalive_expiry``)."""
    ssl_context = httpx.create_ssl_context(verify=verify, trust_env=trust_env)

    def session() -> aiohttp.ClientSession:
        connector = _Connector(
            ssl=ssl_context,
            limit=limits.max_connections or 0,
            keepalive_timeout=limits.keepalive_expiry,
        )
        return aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            trace_configs=[_connection_trace()],
            trust_env=False,  # proxies are httpx's transports' business
            max_line_size=MAX_HEAD_LINE,
            max_field_size=MAX_HEAD_LINE,
            max_headers=MAX_HEAD_LINES,
        )

    return _Transport(client=session, limits=limits)
