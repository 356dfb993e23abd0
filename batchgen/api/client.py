"""The Modellix HTTP client: submit, poll and download, every request through one seam.

One :class:`ModellixClient` owns one :class:`httpx.AsyncClient` and sends every request through
:meth:`ModellixClient._send`, which hands it to the transport that client picks for its URL
(``handle_async_request``; the client's redirect, cookie, auth and hook layers are not used).
In production the transport of direct requests is aiohttp's under httpx's API
(:mod:`batchgen.api.transport`: connection pool, TLS honouring ``SSL_CERT_FILE``/
``SSL_CERT_DIR``, address racing, answer-head caps), and requests through a proxy from the
environment (``HTTP(S)_PROXY``, ``ALL_PROXY``, ``NO_PROXY``; SOCKS with the ``socks`` extra) use
httpx's own transport; loopback hosts are always reached directly. Tests and the in-process
simulator plug another transport in (``httpx.MockTransport``, ``httpx.ASGITransport``) under
the same seam, so what they test is the code production runs.

Every answer becomes either a typed result (:mod:`batchgen.api.answers`) or an
:class:`~batchgen.api.errors.ApiError` subclass whose attributes tell the runner what to do
next. Security rules kept here:

- The API key is only ever sent in the ``Authorization`` header, and only to the origin of the
  configured base URL (:func:`batchgen.api.urls.key_goes_to`); result files on a CDN are
  downloaded without it. Every error message is scrubbed of the key before it leaves.
- Tasks are always polled on the configured base URL: a ``get_result.url`` on another origin is
  ignored.
- Answers are read with a size cap (JSON answers: 1 MiB, downloads: 50 MiB by default, checked
  against both ``Content-Length`` and the bytes received); an answer head past the
  transport's cap is a :class:`ProtocolError`; every call has an overall deadline;
  downloads follow at most three redirects, each https or loopback only.
"""

from __future__ import annotations

import json
import logging
import re
import ssl
from collections.abc import AsyncIterable, Callable, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from batchgen import __version__
from batchgen.api.answers import (
    DownloadResult,
    Operation,
    Submitted,
    TaskStatus,
    Writable,
    balance_from,
    error_for_status,
    loads,
    parse_retry_after,
    provider_message,
    submitted_from,
    task_status_from,
    valid_task_id,
)
from batchgen.api.bodies import download_error, read_capped, stream_to_file
from batchgen.api.errors import (
    ApiError,
    ConfigError,
    ProtocolError,
    Rejected,
    TransportFailure,
)
from batchgen.api.failures import ConnectionUse, NetworkErrors, tls_environment_problem
from batchgen.api.http_client import SeamClient
from batchgen.api.text import body_snippet, sanitize
from batchgen.api.urls import (
    check_proxy_environment,
    key_goes_to,
    origin_of,
    origin_of_text,
    parsed_url,
    safe_url_for_message,
    secure_url,
    validate_api_key,
    validate_base_url,
)

__all__ = ["BALANCE_PATH", "MAX_REDIRECTS", "VALIDATE_PATH", "ModellixClient"]

logger = logging.getLogger(__name__)
# httpx.AsyncClient logs each exchange on this logger at INFO; the seam keeps that line.
_httpx_logger = logging.getLogger("httpx")

MAX_REDIRECTS = 3

#: The account endpoints the provider's official CLI calls (docs/api.md).
VALIDATE_PATH = "/api/v1/apikey/validate"
BALANCE_PATH = "/api/v1/team/balance"

_SUBMIT_PATH_RE = re.compile(r"/[A-Za-z0-9._~/@+-]*")

# Idle connections are dropped after this many seconds: below the 5 s idle timeout of common
# servers (uvicorn's default), so that a request never goes out on a connection the server is
# closing at that instant (for a submit, an ambiguous outcome and maybe a task paid twice).
_KEEPALIVE_EXPIRY = 4.0

# What may follow the base URL's "/" in a result URL taken as on the base without parsing it:
# RFC 3986 path and query characters without "%" and without "#".
_PLAIN_REST = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/?]*")

#: The methods the seam sends (HEAD answers have no body, whatever their Content-Length).
_METHODS = frozenset({"GET", "HEAD", "POST"})

Content = bytes | AsyncIterable[bytes] | None


class ModellixClient:
    """Async client of the Modellix task API (one pooled :class:`httpx.AsyncClient`).

    Use as ``async with ModellixClient(base_url, key) as client: ...`` or call :meth:`aclose`.

    Args:
        base_url: API base URL; https, or http on a loopback host (else :class:`ConfigError`).
        api_key: the key, or ``None`` to send no ``Authorization`` header.
        transport: an httpx transport in place of httpx's own (tests: ``httpx.MockTransport``;
            the in-process simulator: ``httpx.ASGITransport``); it is used as is, without
            proxies. ``max_connections`` applies to the default transport only.
        max_connections: connection pool size.
        timeout: read/write/pool timeout of one network operation, seconds.
        connect_timeout: TCP+TLS connect timeout, seconds.
        operation_timeout: overall deadline of one submit, poll or download, seconds.
        max_download_bytes: downloads larger than this are refused.
        max_response_bytes: JSON answers larger than this are a :class:`ProtocolError`.
        max_keepalive_connections: idle connections kept (default: ``max_connections``).
        resend_on_recycled: send a submit once more when a kept-alive connection was reset
            by the server before it read the submit (docs/network.md); ``False`` makes that
            case an ambiguous failure like any other dropped connection.

    Raises :class:`ConfigError` for a bad base URL, key or limit, or a SOCKS proxy in the
    environment without the ``socks`` extra.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 100,
        timeout: float = 60.0,
        connect_timeout: float = 10.0,
        operation_timeout: float = 900.0,
        max_download_bytes: int = 50 * 2**20,
        max_response_bytes: int = 2**20,
        max_keepalive_connections: int | None = None,
        resend_on_recycled: bool = True,
    ) -> None:
        self._base_url = validate_base_url(base_url)
        self._api_origin = origin_of(httpx.URL(self._base_url))
        self._base_prefix = self._base_url + "/"
        self._key = validate_api_key(api_key)
        if max_connections < 1 or max_download_bytes < 1 or max_response_bytes < 1:
            raise ConfigError("connection and size limits must be positive")
        self.max_download_bytes = max_download_bytes
        self.max_response_bytes = max_response_bytes
        self.operation_timeout = operation_timeout
        #: Submits sent again because a kept-alive connection was reset before the server
        #: read them (see :class:`batchgen.api.failures.ConnectionUse`).
        self.stale_connection_retries = 0
        self._resend_on_recycled = resend_on_recycled
        limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=(
                max_connections if max_keepalive_connections is None else max_keepalive_connections
            ),
            keepalive_expiry=_KEEPALIVE_EXPIRY,
        )
        default = transport is None
        if default:
            check_proxy_environment()
        try:
            self._http = SeamClient(
                headers={"User-Agent": f"batchgen/{__version__}"},
                timeout=httpx.Timeout(timeout, connect=connect_timeout),
                limits=limits,
                transport=transport,
                follow_redirects=False,
                # httpx's own transport honours the proxy and TLS environment (cron hosts behind
                # a proxy); a given transport (tests, in-process simulator) is used as is.
                trust_env=default,
            )
        except (OSError, ssl.SSLError) as exc:  # SSL_CERT_FILE/SSL_CERT_DIR unreadable
            raise ConfigError(tls_environment_problem(exc)) from None
        # What ``AsyncClient.build_request`` would add to every request, computed once: the
        # client's default headers (User-Agent, Accept, Accept-Encoding, Connection) and the
        # timeouts every transport reads from the request's extensions.
        self._default_headers = httpx.Headers(self._http.headers)
        self._extensions = {"timeout": self._http.timeout.as_dict()}

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The validated base URL, without a trailing slash."""
        return self._base_url

    @property
    def has_key(self) -> bool:
        """Whether an API key is configured (the key itself is never exposed)."""
        return self._key is not None

    def __repr__(self) -> str:
        key = "set" if self._key else "unset"
        return f"ModellixClient(base_url={self._base_url!r}, api_key=<{key}>)"

    async def __aenter__(self) -> ModellixClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pooled connections. Idempotent."""
        await self._http.aclose()

    # -- URLs ------------------------------------------------------------------------------

    def _api_url(self, path: str) -> str:
        return self._base_url + path

    def poll_url_for(self, task_id: str) -> str:
        """The canonical poll URL of *task_id* on the base URL (the id is URL-quoted)."""
        return self._api_url("/api/v1/tasks/" + quote(task_id, safe=""))

    def _same_origin(self, url: str) -> bool:
        # A URL that starts with the (normalised) base URL and a slash has the base URL's
        # authority, whatever follows: no parse needed for the usual poll URL.
        if url.startswith(self._base_prefix):
            return True
        return origin_of_text(url) == self._api_origin

    def _is_on_base(self, url: str) -> bool:
        """Whether ``url`` is on the base URL and made of plain characters only (usable as a
        result URL without parsing it)."""
        return url.startswith(self._base_prefix) and (
            _PLAIN_REST.fullmatch(url, len(self._base_url)) is not None
        )

    # -- public operations ------------------------------------------------------------------------

    async def submit(self, submit_path: str, body: Mapping[str, Any]) -> Submitted:
        """POST *body* to *submit_path* (e.g. ``/api/v1/openai/gpt-image-1.5/async``).

        Returns the accepted task. Raises an :class:`ApiError`; ``ambiguous`` is true when the
        request may have created a task (5xx, read timeout, dropped or unreadable answer).
        """
        try:
            return await self._submit(submit_path, body)
        except ApiError as exc:
            exc._scrub(self._key.reveal() if self._key else None)
            raise

    async def poll(self, task_id: str, poll_url: str | None = None) -> TaskStatus:
        """GET the task's status. *poll_url* is used only on the base URL's origin.

        Raises :class:`NotFound` (unknown task, not retryable) and the other :class:`ApiError`\\ s.
        """
        try:
            return await self._poll(task_id, poll_url)
        except ApiError as exc:
            exc._scrub(self._key.reveal() if self._key else None)
            raise

    async def validate_key(self) -> bool:
        """``GET /api/v1/apikey/validate``: whether the provider says the key is valid.

        Raises :class:`AuthError` (401/403), :class:`NotFound` (404: a provider without that
        endpoint), :class:`Unreachable` and the other :class:`ApiError`\\ s. Costs nothing.
        """
        _, payload = await self._account(VALIDATE_PATH)
        return key_valid_in(payload)

    async def _account(self, path: str) -> tuple[httpx.Headers, Any]:
        """GET one of the account endpoints; (answer headers, parsed JSON) of a 2xx answer."""
        try:
            _, headers, payload = await self._call_json("account", "GET", self._api_url(path))
        except ApiError as exc:
            exc._scrub(self._key.reveal() if self._key else None)
            raise
        return headers, payload

    async def download(self, url: str, file: Writable) -> DownloadResult:
        """Stream the file at *url* into *file* (an open binary file or any :class:`Writable`);
        count bytes and sha256.

        The key is sent only when *url* is on the API's origin (never to a CDN). Redirects:
        at most three, each to https or loopback. Raises :class:`ResultExpired` (403/404/410),
        :class:`ProtocolError` (too large, insecure URL or redirect, other 4xx),
        :class:`ServerError` (5xx), :class:`RateLimited`, :class:`TransportFailure` (network,
        short body). On error the file holds a partial body: the caller discards it. Errors
        writing *file* (``OSError``) propagate unchanged.
        """
        try:
            return await self._download(url, file)
        except ApiError as exc:
            exc._scrub(self._key.reveal() if self._key else None)
            raise

    async def balance(self) -> float:
        """GET the account balance (USD) from ``/api/v1/team/balance``.

        Raises :class:`NotFound` when the provider has no such endpoint, and the other
        :class:`ApiError`\\ s (the caller decides whether a missing balance matters).
        """
        try:
            http_status, headers, payload = await self._call_json(
                "account", "GET", self._api_url(BALANCE_PATH)
            )
            return balance_from(http_status, headers, payload)
        except ApiError as exc:
            exc._scrub(self._key.reveal() if self._key else None)
            raise

    # -- implementation -------------------------------------------------------------------------

    async def _submit(self, submit_path: str, body: Mapping[str, Any]) -> Submitted:
        if not _SUBMIT_PATH_RE.fullmatch(submit_path) or "//" in submit_path or ".." in submit_path:
            raise ConfigError(f"invalid submit path {sanitize(submit_path, 120)!r}")
        try:
            content = json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise Rejected(
                f"submit: request body is not valid JSON ({type(exc).__name__})",
                operation="submit",
            ) from exc
        url = self._api_url(submit_path)
        use = ConnectionUse()
        try:
            http_status, headers, payload = await self._call_json(
                "submit", "POST", url, content=content, trace=use
            )
        except TransportFailure as exc:
            if not (self._resend_on_recycled and use.closed_unread(exc)):
                raise
            # A kept-alive connection reset by the server before it read the submit: it cannot
            # have created a task. Once more, on a connection the pool checks anew.
            self.stale_connection_retries += 1
            logger.info("submit: kept-alive connection reset before it was read; sending again")
            http_status, headers, payload = await self._call_json(
                "submit", "POST", url, content=content
            )
        submitted = submitted_from(http_status, headers, payload, self._same_origin)
        logger.debug("submit: accepted task %s", submitted.task_id)
        return submitted

    async def _poll(self, task_id: str, poll_url: str | None) -> TaskStatus:
        if not valid_task_id(task_id):
            raise ProtocolError(
                f"poll: invalid task id {sanitize(str(task_id), 60)!r}",
                operation="poll",
                retryable=False,
            )
        url = poll_url if poll_url and self._same_origin(poll_url) else self.poll_url_for(task_id)
        http_status, headers, payload = await self._call_json("poll", "GET", url)
        return task_status_from(task_id, http_status, headers, payload, self._is_on_base)

    def _network_errors(self, op: Operation, what: Callable[[], str]) -> NetworkErrors:
        """Turn httpx/timeout exceptions into :class:`TransportFailure`/:class:`ProtocolError`
        (``what()`` names the request in the message; called only on error)."""
        return NetworkErrors(op, what, self.operation_timeout)

    async def _send(
        self,
        method: str,
        url: str | httpx.URL,
        headers: Mapping[str, str],
        content: Content = None,
        trace: ConnectionUse | None = None,
    ) -> httpx.Response:
        """The one seam every request goes through: hand it to the transport chosen for its
        URL and return the answer with its body unread (stream it, then ``aclose`` it).

        The transport is the one ``httpx.AsyncClient`` would pick (proxies from the
        environment, loopback always direct: :func:`batchgen.api.urls.never_proxied`), called
        directly: the client's other layers (auth flows, redirects, cookies, event hooks) are
        ones batchgen never uses, and cost more CPU than the rest of an exchange on loopback.
        ``Authorization`` is added here, for the API's origin only; redirects are never
        followed; no cookie is stored or sent. ``method`` is GET, HEAD or POST (else
        ``ValueError``); ``content`` is bytes (sent with a ``Content-Length``) or an async
        iterable of bytes (sent chunked).
        ``trace`` (httpcore's trace extension) learns whether the connection was new; only
        httpx's own transport calls it.
        """
        if method not in _METHODS:
            raise ValueError(f"unsupported method {method!r}")
        parsed = url if isinstance(url, httpx.URL) else parsed_url(url)
        merged = self._default_headers.copy()
        merged.update(headers)
        if self._key is not None and key_goes_to(parsed, self._api_origin):
            merged["Authorization"] = f"Bearer {self._key.reveal()}"
        extensions = self._extensions if trace is None else {**self._extensions, "trace": trace}
        request = httpx.Request(
            method, parsed, headers=merged, content=content, extensions=extensions
        )
        transport = self._http._transport_for_url(parsed)
        try:
            response = await transport.handle_async_request(request)
        except httpx.RequestError as exc:
            exc.request = request  # as httpx.AsyncClient.send does
            raise
        response.request = request
        if _httpx_logger.isEnabledFor(logging.INFO):
            _httpx_logger.info(
                'HTTP Request: %s %s "%s %d %s"',
                method,
                safe_url_for_message(str(parsed)),
                response.http_version,
                response.status_code,
                response.reason_phrase,
            )
        return response

    async def _call_json(
        self,
        op: Operation,
        method: str,
        url: str,
        *,
        content: bytes | None = None,
        trace: ConnectionUse | None = None,
    ) -> tuple[int, httpx.Headers, Any]:
        """Send one API request; return (status, headers, parsed JSON) for 2xx answers.

        Non-2xx answers raise the classified :class:`ApiError`.
        """
        headers = {"Accept": "application/json"}
        if content is not None:
            headers["Content-Type"] = "application/json"
        too_big = False
        async with self._network_errors(op, lambda: f"{method} {urlsplit(url).path}"):
            response = await self._send(method, url, headers, content, trace)
            try:
                body, too_big = await read_capped(response, self.max_response_bytes)
            finally:
                await response.aclose()
        status = response.status_code
        if logger.isEnabledFor(logging.DEBUG):
            what = f"{method} {urlsplit(url).path}"
            logger.debug("%s: %s -> HTTP %d (%d bytes read)", op, what, status, len(body))
        payload = None if too_big else loads(body)
        if 200 <= status <= 299:
            if too_big:
                raise ProtocolError(
                    f"{op}: HTTP {status}: answer larger than {self.max_response_bytes} bytes",
                    http_status=status,
                    operation=op,
                    ambiguous=op == "submit",
                )
            if payload is None:
                raise ProtocolError(
                    f"{op}: HTTP {status}: answer is not JSON: {body_snippet(body)}",
                    http_status=status,
                    operation=op,
                    ambiguous=op == "submit",
                )
            return status, response.headers, payload
        if 300 <= status <= 399:
            raise ProtocolError(
                f"{op}: HTTP {status}: unexpected redirect (not followed for API calls)",
                http_status=status,
                operation=op,
                retryable=False,
                ambiguous=op == "submit",
            )
        detail = provider_message(payload)
        if detail is None:
            detail = (
                f"answer larger than {self.max_response_bytes} bytes"
                if too_big
                else f"non-JSON answer: {body_snippet(body)}"
            )
        raise error_for_status(
            status,
            op=op,
            http_status=status,
            detail=detail,
            retry_after=parse_retry_after(response.headers),
            headers=response.headers,
        )

    async def _download(self, url: str, file: Writable) -> DownloadResult:
        try:
            current = parsed_url(url)
        except Exception as exc:
            raise ProtocolError(
                "download: invalid result URL", operation="download", retryable=False
            ) from exc
        for hop in range(MAX_REDIRECTS + 1):
            if isinstance(current, httpx.URL) and (not current.host or not secure_url(current)):
                reason = "redirected to" if hop else "result URL is"
                raise ProtocolError(
                    f"download: {reason} an insecure URL {safe_url_for_message(str(current))!r}"
                    " (https required except for loopback)",
                    operation="download",
                    retryable=False,
                )
            what = _LazyGet(current)
            async with self._network_errors("download", what.__str__):
                response = await self._send(
                    "GET", current, {"Accept": "*/*", "Accept-Encoding": "identity"}
                )
                try:
                    status = response.status_code
                    if 300 <= status <= 399 and status != 304:
                        location = response.headers.get("location")
                        if not location:
                            raise ProtocolError(
                                f"download: {what}: HTTP {status} without a Location",
                                status=status,
                                operation="download",
                                retryable=False,
                            )
                        try:
                            parsed = (
                                current if isinstance(current, httpx.URL) else parsed_url(current)
                            )
                            current = parsed.join(location.strip())
                        except Exception as exc:
                            raise ProtocolError(
                                f"download: {what}: HTTP {status} to an invalid Location",
                                status=status,
                                operation="download",
                                retryable=False,
                            ) from exc
                        logger.debug("download: %s -> HTTP %d redirect", what, status)
                        continue
                    if status != 200:
                        body, _ = await read_capped(response, 4096)
                        raise download_error(status, what, body, response.headers)
                    return await stream_to_file(response, file, what, self.max_download_bytes)
                finally:
                    await response.aclose()
        raise ProtocolError(
            f"download: more than {MAX_REDIRECTS} redirects",
            operation="download",
            retryable=False,
        )


def key_valid_in(payload: Any) -> bool:
    """Whether an ``apikey/validate`` answer says ``data.is_valid: true``."""
    data = payload.get("data") if isinstance(payload, dict) else None
    return isinstance(data, dict) and data.get("is_valid") is True


class _LazyGet:
    """``GET <url>`` for messages, made only when shown (an error, a debug line): shortening
    a URL for a message parses it, which costs more than the rest of a download."""

    __slots__ = ("_text", "_url")

    def __init__(self, url: str | httpx.URL) -> None:
        self._url = url
        self._text: str | None = None

    def __str__(self) -> str:
        if self._text is None:
            self._text = f"GET {safe_url_for_message(str(self._url))}"
        return self._text
