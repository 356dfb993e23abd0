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
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Iterator

import aiohttp
import httpx
from aiohttp import http_exceptions
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
        # The OS's or TLS's own error (refused, DNS, certificate) stays in the chain, where
        # batchgen.api.failures tells a configuration fault from bad luck.
        cause = getattr(exc, "certificate_error", None) or getattr(exc, "os_error", None)
        raise mapped from (cause if isinstance(cause, BaseException) else exc)


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


class _Transport(AiohttpTransport):
    """``AiohttpTransport`` whose errors are httpx's own (see the module's guarantees)."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        with _httpx_errors(request):
            try:
                response = await super().handle_async_request(request)
            except httpx.TransportError as exc:
                if isinstance(exc.__cause__, aiohttp.ClientError):
                    raise exc.__cause__ from None
                raise
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
        connector = aiohttp.TCPConnector(
            ssl=ssl_context,
            limit=limits.max_connections or 0,
            keepalive_timeout=limits.keepalive_expiry,
        )
        return aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,  # proxies are httpx's transports' business
            max_line_size=MAX_HEAD_LINE,
            max_field_size=MAX_HEAD_LINE,
            max_headers=MAX_HEAD_LINES,
        )

    return _Transport(client=session, limits=limits)
