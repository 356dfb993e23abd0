"""A lean HTTP/1.1 httpx transport: asyncio protocols, httptools' parser, a keep-alive pool.

The runner's CPU per HTTP exchange is mostly the HTTP stack's (benchmarks/README.md).
httpx's default transport (httpcore) walks its whole pool on every request; aiohttp's
request path (this project's transport before) builds timers, traces and several objects
per request.  This transport does the least an API client needs: one
:class:`asyncio.Protocol` per connection whose bytes go straight to httptools' C parser
(llhttp), idle connections kept in a per-origin stack (the most recently used first, so a
few connections stay warm and the rest expire), and httpx's own request and response objects
at the edges, so callers keep httpx's API.

Only what :class:`batchgen.api.client.ModellixClient` uses is supported: HTTP/1.1 (and 1.0
answers), byte request bodies, bodies delimited by ``Content-Length``, chunked encoding
or the end of the connection, httpx's ``timeout`` extension (``connect``, ``read``,
``pool``) and an optional deadline for a whole exchange, TLS with httpx's default
context.  Errors are the httpx exceptions that say what happened, because the client
classifies on them: nothing was sent (``ConnectError``, ``ConnectTimeout``,
``PoolTimeout``), or the request may have been processed (``ReadError``, ``ReadTimeout``,
``RemoteProtocolError``); past the deadline, :class:`TimeoutError`.  Read timeouts and
deadlines share one timer per transport (:class:`_Expiries`), not one per wait.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, cast

import httptools
import httpx

__all__ = ["Http11Body", "Http11Transport", "origin_of"]

_HIGH_WATER = 512 * 1024  # buffered body bytes above which the socket stops being read
_NO_BODY_STATUSES = (204, 304)


def origin_of(url: httpx.URL) -> tuple[str, str, int]:
    """(scheme, lower-case host, port) of ``url``: the key of the connection pool, and the
    client's test of whether a URL is on the API's origin."""
    scheme = url.scheme
    port = url.port if url.port is not None else (443 if scheme == "https" else 80)
    return (scheme, url.host.lower(), port)


def _timeout(timeouts: Mapping[str, Any], key: str) -> float | None:
    value = timeouts.get(key)
    return float(value) if value is not None else None


def _left(loop: asyncio.AbstractEventLoop, *ends: float | None) -> float | None:
    """Seconds to the earliest of ``ends`` (loop times; ``None`` is no end), at least 0."""
    bounded = [end for end in ends if end is not None]
    return max(min(bounded) - loop.time(), 0.0) if bounded else None


# Loop timers may fire up to this much before their time: a deadline that close is passed.
_EARLY = 0.001


def _deadline_passed() -> TimeoutError:
    return TimeoutError("the operation's deadline passed")


def _raise_if_past(loop: asyncio.AbstractEventLoop, deadline: float | None) -> None:
    if deadline is not None and loop.time() + _EARLY >= deadline:
        raise _deadline_passed()


class _Expiries:
    """When the waits of a transport's connections end unanswered, checked by one timer set
    for the earliest of them, instead of a timer per wait (those cost about 5% of the runner's
    CPU, benchmarks/README.md).  With one read timeout for every wait, each new expiry is later
    than the earliest, so the timer seldom moves: it fires about once per read timeout."""

    def __init__(self) -> None:
        self._waits: dict[_Connection, tuple[float, bool]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(
        self, loop: asyncio.AbstractEventLoop, conn: _Connection, expiry: float, deadline: bool
    ) -> None:
        """Fail ``conn``'s wait at ``expiry`` (loop time): with :class:`TimeoutError` when it
        is the operation's ``deadline``, else with ``httpx.ReadTimeout``."""
        self._waits[conn] = (expiry, deadline)
        timer = self._timer
        if loop is not self._loop:  # a timer of another (closed) loop never fires
            self._loop, timer = loop, None
        if timer is None or expiry < timer.when():
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(expiry, self._check, loop)

    def discard(self, conn: _Connection) -> None:
        """``conn``'s wait ended."""
        self._waits.pop(conn, None)

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time() + _EARLY
        earliest: float | None = None
        for conn, (expiry, deadline) in list(self._waits.items()):
            if expiry <= now:
                del self._waits[conn]
                conn.expire(
                    _deadline_passed()
                    if deadline
                    else httpx.ReadTimeout("no answer within the read timeout")
                )
            elif earliest is None or expiry < earliest:
                earliest = expiry
        if earliest is not None:
            self._timer = loop.call_at(earliest, self._check, loop)


class _Connection(asyncio.Protocol):
    """One keep-alive connection; carries one exchange at a time."""

    def __init__(self, origin: tuple[str, str, int], expiries: _Expiries) -> None:
        self.origin = origin
        self._expiries = expiries
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        # The exchange in progress (reset by begin()).
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.until_eof = False
        self.error: Exception | None = None
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._in_exchange = False

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self._in_exchange:
            # Bytes nobody asked for (a late answer, garbage): the connection cannot be reused.
            self._fail(httpx.RemoteProtocolError("unexpected data on an idle connection"))
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httpx.RemoteProtocolError("unexpected protocol upgrade"))
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed answer: {exc}"))

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._in_exchange and not self.complete:
            if self.until_eof and self.headers_done and exc is None:
                self.complete = True  # a body delimited by the end of the connection
            elif self.error is None:
                detail = f": {exc}" if exc else ""
                if self.headers_done:
                    self.error = httpx.RemoteProtocolError(f"incomplete body{detail}")
                else:
                    self.error = httpx.RemoteProtocolError(f"server disconnected{detail}")
        self._wake()

    # -- httptools callbacks -------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            self.headers = []  # an interim answer (100 Continue...): the real one follows
            return
        self.status = status
        self.headers_done = True
        framed = False
        for name, value in self.headers:
            lowered = name.lower()
            if lowered == b"content-length" or (
                lowered == b"transfer-encoding" and b"chunked" in value.lower()
            ):
                framed = True
                break
        self.until_eof = not framed and status not in _NO_BODY_STATUSES
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if not self.headers_done:
            return  # end of an interim answer
        self.complete = True
        self.keep_alive = bool(self._parser.should_keep_alive()) and not self.until_eof
        self._wake()

    # -- the exchange ----------------------------------------------------------------------------

    def begin(self) -> None:
        """Reset the per-exchange state for a new request on this connection."""
        self.status = 0
        self.headers = []
        self.headers_done = self.complete = self.keep_alive = self.until_eof = False
        self.error = None
        self.chunks.clear()
        self.buffered = 0
        self._in_exchange = True

    def end(self) -> None:
        self._in_exchange = False

    def _fail(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
        self.close()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float | None, deadline: float | None = None) -> None:
        """Until the parser made progress (or the connection ended): at most ``timeout`` s
        (then ``httpx.ReadTimeout``) and not past ``deadline``, a loop time (then
        :class:`TimeoutError`)."""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        expiry = None if timeout is None else loop.time() + timeout
        by_deadline = deadline is not None and (expiry is None or deadline < expiry)
        if by_deadline:
            expiry = deadline
        if expiry is not None:
            self._expiries.add(loop, self, expiry, by_deadline)
        try:
            await waiter
        finally:
            self._waiter = None
            if expiry is not None:
                self._expiries.discard(self)

    def expire(self, error: Exception) -> None:
        """End the current wait with ``error`` (a timeout)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def take(self) -> bytes:
        """The body bytes received so far (reading resumes if it was paused: all is taken)."""
        data = self.chunks.popleft() if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks.clear()
        self.buffered = 0
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()
        return data

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True

    def reusable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()


class Http11Body(httpx.AsyncByteStream):
    """An answer's body; closing it returns the connection to the pool or closes it."""

    __slots__ = ("_conn", "_deadline", "_pool", "_read_timeout", "_released")

    def __init__(
        self,
        conn: _Connection,
        pool: Http11Transport,
        read_timeout: float | None,
        deadline: float | None = None,
    ):
        self._conn = conn
        self._pool = pool
        self._read_timeout = read_timeout
        self._deadline = deadline
        self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while True:
            if conn.chunks:
                yield conn.take()
                continue
            if conn.complete:
                return
            if conn.error is not None:
                raise conn.error
            await conn.wait(self._read_timeout, self._deadline)

    async def aclose(self) -> None:
        if not self._released:
            self._released = True
            self._pool.release(self._conn)


class Http11Transport(httpx.AsyncBaseTransport):
    """An :class:`httpx.AsyncBaseTransport` for HTTP/1.1 with a keep-alive connection pool.

    Args:
        max_connections: open connections at most (every origin together); requests wait
            for one up to the ``pool`` timeout.
        keepalive_expiry: seconds an idle connection is kept (httpx's ``Limits`` meaning).
        ssl_context: TLS settings (default: httpx's, which honours ``SSL_CERT_FILE``).
    """

    def __init__(
        self,
        *,
        max_connections: int = 100,
        keepalive_expiry: float | None = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be positive")
        self._limit = max_connections
        self._expiry = keepalive_expiry if keepalive_expiry is not None else 5.0
        self._ssl = ssl_context
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._open = 0  # connections open or being opened
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False
        self._expiries = _Expiries()

    # -- pool ------------------------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()
        return self._ssl

    def _take_idle(self, origin: tuple[str, str, int]) -> _Connection | None:
        stack = self._idle.get(origin)
        if not stack:
            return None
        now = time.monotonic()
        while stack:
            conn = stack.pop()  # the most recently used one
            if conn.reusable() and now - conn.idle_since < self._expiry:
                return conn
            self._drop(conn)
        return None

    def _drop(self, conn: _Connection) -> None:
        conn.close()
        self._open -= 1
        self._notify()

    def _notify(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _close_an_idle_connection(self) -> bool:
        """Close the longest-idle connection of any origin (to open one elsewhere)."""
        oldest: list[_Connection] | None = None
        for stack in self._idle.values():
            if stack and (oldest is None or stack[0].idle_since < oldest[0].idle_since):
                oldest = stack
        if oldest is None:
            return False
        conn = oldest.pop(0)
        conn.close()
        self._open -= 1
        return True

    async def _acquire(
        self, origin: tuple[str, str, int], timeouts: Mapping[str, Any], deadline: float | None
    ) -> _Connection:
        loop = asyncio.get_running_loop()
        pool_deadline: float | None = None
        while True:
            conn = self._take_idle(origin)
            if conn is not None:
                return conn
            if self._open < self._limit or self._close_an_idle_connection():
                self._open += 1
                try:
                    return await self._connect(origin, timeouts, deadline)
                except BaseException:
                    self._open -= 1
                    self._notify()
                    raise
            pool_timeout = _timeout(timeouts, "pool")
            if pool_timeout is not None and pool_deadline is None:
                pool_deadline = loop.time() + pool_timeout
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, _left(loop, pool_deadline, deadline))
            except asyncio.TimeoutError as exc:
                _raise_if_past(loop, deadline)
                raise httpx.PoolTimeout("no free connection within the pool timeout") from exc
            finally:
                if not waiter.done():
                    waiter.cancel()

    async def _connect(
        self, origin: tuple[str, str, int], timeouts: Mapping[str, Any], deadline: float | None
    ) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        conn = _Connection(origin, self._expiries)
        tls = self._ssl_context() if scheme == "https" else None
        connect_timeout = _timeout(timeouts, "connect")
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(
                    lambda: conn, host, port, ssl=tls, server_hostname=host if tls else None
                ),
                _left(
                    loop,
                    None if connect_timeout is None else loop.time() + connect_timeout,
                    deadline,
                ),
            )
        except asyncio.TimeoutError as exc:
            conn.close()
            _raise_if_past(loop, deadline)
            raise httpx.ConnectTimeout(f"cannot connect to {host}:{port}: timeout") from exc
        except (OSError, ssl.SSLError, ValueError) as exc:
            conn.close()
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        conn.transport = transport  # uvloop calls connection_made only after this returns
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Requests are one write each: never let Nagle hold one for an ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def release(self, conn: _Connection) -> None:
        """Back to the pool when its answer was read to the end on a reusable connection."""
        conn.end()
        finished = conn.complete and conn.keep_alive and conn.error is None
        if self._closed or not finished or not conn.reusable():
            self._drop(conn)
            return
        conn.idle_since = time.monotonic()
        self._idle.setdefault(conn.origin, []).append(conn)
        self._notify()

    # -- httpx -----------------------------------------------------------------------------------

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request``; the answer's body is streamed (read it, then close it)."""
        url = request.url
        try:
            body = request.content
        except httpx.RequestNotRead:
            body = await request.aread()
        head = [request.method.encode("ascii"), b" ", url.raw_path, b" HTTP/1.1\r\n"]
        for name, value in request.headers.raw:
            head += (name, b": ", value, b"\r\n")
        head.append(b"\r\n")
        return await self.send_message(
            origin_of(url), b"".join(head) + body, request.extensions.get("timeout", {})
        )

    async def send_message(
        self,
        origin: tuple[str, str, int],
        message: bytes,
        timeouts: Mapping[str, Any],
        deadline: float | None = None,
    ) -> httpx.Response:
        """Send one complete HTTP/1.1 request ``message`` (head and body, ``Host`` included)
        to ``origin`` (scheme, host, port); the answer's body is streamed (read it, then
        close it).  ``timeouts`` has httpx's ``timeout`` extension keys.  Callers that build
        the same head many times (:class:`batchgen.api.client.ModellixClient`) skip building an
        :class:`httpx.Request` this way.  ``deadline`` (a loop time) bounds the whole
        exchange, body included: past it, waits end with :class:`TimeoutError`."""
        if self._closed:
            raise RuntimeError("the transport is closed")
        if origin[0] not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {origin[0]!r}")
        read_timeout = _timeout(timeouts, "read")
        conn = await self._acquire(origin, timeouts, deadline)
        released = False
        try:
            conn.begin()
            if not conn.reusable():
                raise httpx.ReadError("connection closed before the request was sent")
            assert conn.transport is not None
            conn.transport.write(message)
            while not conn.headers_done:
                if conn.error is not None:
                    raise conn.error
                await conn.wait(read_timeout, deadline)
            response = httpx.Response(
                conn.status,
                headers=conn.headers,
                stream=Http11Body(conn, self, read_timeout, deadline),
                extensions={"http_version": b"HTTP/1.1"},
            )
            released = True
            return response
        finally:
            if not released:
                conn.end()
                self._drop(conn)

    async def aclose(self) -> None:
        """Close every idle connection; connections in use close when their answer is closed."""
        self._closed = True
        for stack in self._idle.values():
            for conn in stack:
                conn.close()
                self._open -= 1
        self._idle.clear()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.cancel()
        self._waiters.clear()
