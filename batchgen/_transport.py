"""An httpx transport on aiohttp's connection pool: httpx's API, a pool that stays cheap at scale.

httpcore's pool (httpx's default transport) walks every pooled connection, and
asks each one whether it expired, on every request and every response close:
its CPU cost per request grows with the pool size, which is ~2x the run's
concurrency here.  aiohttp keeps idle connections per host in a queue, so a
request costs the same at 10 or 1,000 tasks in flight.  See benchmarks/README.md
for the figures that chose it.

Only what :class:`batchgen.client.ModellixClient` uses is supported: HTTP/1.1,
byte request bodies, streamed responses, httpx's timeout extension.  Errors are
mapped to the httpx exception that says the same thing, so the client's
classification stays exact: a connection that could not be made (refused, DNS,
TLS handshake, pool or connect timeout) is a ``ConnectError``/``ConnectTimeout``
(nothing was sent: never ambiguous); anything after that (reset, disconnect,
read timeout, malformed answer) is a ``ReadError``/``ReadTimeout``/
``RemoteProtocolError`` (the request may have been processed).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import aiohttp
import httpx
from yarl import URL

__all__ = ["AiohttpTransport"]

_CHUNK = 64 * 1024


@contextlib.contextmanager
def _mapped_errors() -> Iterator[None]:
    """Re-raise aiohttp's exceptions as the httpx exceptions of the same meaning."""
    try:
        yield
    except httpx.HTTPError:
        raise
    except aiohttp.ConnectionTimeoutError as exc:  # connect or pool wait: nothing sent
        raise httpx.ConnectTimeout(str(exc) or "connect timeout") from exc
    except aiohttp.ClientConnectorError as exc:  # refused, DNS, TLS handshake: nothing sent
        raise httpx.ConnectError(str(exc) or "cannot connect") from exc
    except aiohttp.ServerTimeoutError as exc:  # read timeout (SocketTimeoutError and others)
        raise httpx.ReadTimeout(str(exc) or "read timeout") from exc
    except aiohttp.ServerDisconnectedError as exc:
        raise httpx.RemoteProtocolError(str(exc) or "server disconnected") from exc
    except aiohttp.ClientPayloadError as exc:
        raise httpx.RemoteProtocolError(str(exc) or "incomplete body") from exc
    except aiohttp.ClientResponseError as exc:  # malformed answer (bad status line, headers)
        raise httpx.RemoteProtocolError(str(exc) or "malformed answer") from exc
    except aiohttp.InvalidURL as exc:
        raise httpx.UnsupportedProtocol(str(exc) or "invalid URL") from exc
    except (aiohttp.ClientError, OSError) as exc:  # reset while sending/reading, ...
        raise httpx.ReadError(str(exc) or type(exc).__name__) from exc
    except asyncio.TimeoutError as exc:  # a timeout not wrapped by aiohttp
        raise httpx.ReadTimeout("timeout") from exc


class _Body(httpx.AsyncByteStream):
    """The response body, streamed from aiohttp; closing it returns or drops the connection."""

    __slots__ = ("_response",)

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _mapped_errors():
            async for chunk in self._response.content.iter_chunked(_CHUNK):
                yield chunk

    async def aclose(self) -> None:
        # release() returns the connection to the pool when the body was read to its end,
        # and closes it otherwise (aiohttp checks), so an unread answer cannot poison the pool.
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An :class:`httpx.AsyncBaseTransport` that sends requests with one aiohttp session.

    Args:
        max_connections: pool size (every host together).
        keepalive_expiry: seconds an idle connection is kept (httpx's ``Limits`` meaning).
        ssl_context: TLS settings (default: httpx's, which honours ``SSL_CERT_FILE``).
    """

    def __init__(
        self,
        *,
        max_connections: int = 100,
        keepalive_expiry: float | None = 5.0,
        ssl_context: object | None = None,
    ) -> None:
        self._limit = max_connections
        self._keepalive = keepalive_expiry
        self._ssl = ssl_context if ssl_context is not None else httpx.create_ssl_context()
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        # Made on first use, inside the running event loop (aiohttp binds to it).
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._limit,
                limit_per_host=0,
                keepalive_timeout=self._keepalive if self._keepalive is not None else 5.0,
                ssl=self._ssl,  # type: ignore[arg-type]
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,  # httpx decodes Content-Encoding itself
                trust_env=False,  # proxies: the client uses httpx's own transport then
                timeout=aiohttp.ClientTimeout(total=None),
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request``; the answer's body is streamed (read it, then close it)."""
        session = self._get_session()
        timeouts = request.extensions.get("timeout", {})
        try:
            data: bytes | None = request.content
        except httpx.RequestNotRead:
            data = await request.aread()
        with _mapped_errors():
            response = await session.request(
                request.method,
                URL(str(request.url), encoded=True),
                headers=request.headers.multi_items(),
                data=data or None,
                allow_redirects=False,
                compress=None,
                chunked=None,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=timeouts.get("pool"),
                    sock_connect=timeouts.get("connect"),
                    sock_read=timeouts.get("read"),
                ),
            )
        return httpx.Response(
            response.status,
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.raw_headers],
            stream=_Body(response),
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": (response.reason or "").encode("latin-1", "replace"),
            },
        )

    async def aclose(self) -> None:
        """Close every pooled connection."""
        if self._session is not None:
            await self._session.close()
            self._session = None
