"""The httpx client under :class:`batchgen.api.client.ModellixClient`'s seam: it keeps no
cookies, never sends a loopback request through a proxy, and builds aiohttp's transport
(:mod:`batchgen.api.transport`) for direct requests; the seam asks it which transport serves a
URL and sends through that transport itself."""

from __future__ import annotations

import ssl
from typing import Any

import httpx

from batchgen.api.transport import direct_transport
from batchgen.api.urls import never_proxied

__all__ = ["SeamClient"]

_NO_LIMITS = httpx.Limits()


class _NoCookies(httpx.Cookies):
    """A cookie jar that stays empty: the API authenticates with a bearer key, so a
    ``Set-Cookie`` (from the API or a CDN) is never stored nor sent back."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None

    def set_cookie_header(self, request: httpx.Request) -> None:
        return None


class SeamClient(httpx.AsyncClient):
    """``httpx.AsyncClient`` without cookies, whose loopback requests never use a proxy
    (:func:`batchgen.api.urls.never_proxied`, whatever the host's spelling), and whose default
    (direct) transport is :func:`batchgen.api.transport.direct_transport`. It picks the
    transport for each URL and owns the transports' lifetime; the seam sends through them."""

    _no_cookies = _NoCookies()

    @property
    def cookies(self) -> httpx.Cookies:
        return self._no_cookies

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        if cookies:
            raise ValueError("batchgen's client keeps no cookies")

    def _transport_for_url(self, url: httpx.URL) -> httpx.AsyncBaseTransport:
        if never_proxied(url):
            return self._transport
        return super()._transport_for_url(url)

    def _init_transport(  # noqa: PLR0917 - httpx's own signature
        self,
        verify: ssl.SSLContext | str | bool = True,
        cert: Any = None,
        trust_env: bool = True,
        http1: bool = True,
        http2: bool = False,
        limits: httpx.Limits = _NO_LIMITS,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> httpx.AsyncBaseTransport:
        # The direct path (no proxy, loopback always) is aiohttp's transport; the proxy
        # transports httpx builds from the environment stay httpx's own.
        if transport is not None:
            return transport
        return direct_transport(verify=verify, trust_env=trust_env, limits=limits)
