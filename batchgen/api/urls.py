"""URL, key and proxy policy: where requests may go and where the API key may travel.

Guarantees:

- The base URL is an absolute https URL, or http on a loopback host (127.0.0.0/8, ::1,
  ``localhost``, any case, with or without a trailing dot); no user info, query or fragment.
- :func:`key_goes_to` is the one rule for the key: it is sent only to the base URL's origin
  (scheme, host, port).
- :func:`never_proxied` is the one rule for proxies: a loopback host is never reached through
  a proxy, whatever ``HTTP_PROXY``/``ALL_PROXY`` say (plain http carrying the key must not leave
  the machine). The same loopback test decides where plain http is allowed.
- :func:`check_proxy_environment` refuses, with one line, a SOCKS proxy that cannot be used.
"""

from __future__ import annotations

import functools
import importlib.util
import ipaddress
import os
import re
from collections.abc import Mapping

import httpx

from batchgen.api.errors import ConfigError
from batchgen.api.text import sanitize

__all__ = [
    "DEFAULT_BASE_URL",
    "ENV_API_KEY",
    "ENV_BASE_URL",
    "Origin",
    "Secret",
    "api_key_from_env",
    "check_proxy_environment",
    "is_loopback_host",
    "key_goes_to",
    "never_proxied",
    "origin_of",
    "origin_of_text",
    "parsed_url",
    "resolve_base_url",
    "safe_url_for_message",
    "secure_url",
    "validate_api_key",
    "validate_base_url",
]

DEFAULT_BASE_URL = "https://api.modellix.ai"
ENV_API_KEY = "MODELLIX_API_KEY"
ENV_BASE_URL = "MODELLIX_BASE_URL"

Origin = tuple[str, str, int]


def api_key_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """Return ``MODELLIX_API_KEY`` (stripped) or ``None`` when unset or empty."""
    env = os.environ if environ is None else environ
    value = env.get(ENV_API_KEY, "").strip()
    return value or None


def resolve_base_url(cli_value: str | None, environ: Mapping[str, str] | None = None) -> str:
    """Pick the base URL: the CLI value, else ``MODELLIX_BASE_URL``, else the default.

    The result is validated and normalised (see :func:`validate_base_url`).
    Raises :class:`ConfigError`.
    """
    env = os.environ if environ is None else environ
    value = cli_value if cli_value else (env.get(ENV_BASE_URL, "").strip() or DEFAULT_BASE_URL)
    return validate_base_url(value)


@functools.lru_cache(maxsize=256)
def is_loopback_host(host: str) -> bool:
    """Whether ``host`` names a loopback address (127.0.0.0/8, ::1, localhost).

    Case, brackets and a trailing dot are ignored. The simulator's bind check uses this too.
    """
    host = host.lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@functools.lru_cache(maxsize=4096)
def parsed_url(url: str) -> httpx.URL:
    """``httpx.URL(url)``, cached: a task's poll URL is parsed once, not on every poll
    (httpx checks URLs character by character). ``httpx.URL`` is immutable."""
    return httpx.URL(url)


def origin_of(url: httpx.URL) -> Origin:
    """(scheme, lower-case host, port) of ``url``, the default port filled in."""
    scheme = url.scheme
    port = url.port if url.port is not None else (443 if scheme == "https" else 80)
    return (scheme, url.host.lower(), port)


@functools.lru_cache(maxsize=4096)
def origin_of_text(url: str) -> Origin | None:
    """The origin of a URL string (``None`` if it does not parse); cached."""
    try:
        return origin_of(parsed_url(url))
    except Exception:
        return None


def key_goes_to(url: httpx.URL, api_origin: Origin) -> bool:
    """Whether a request to ``url`` may carry the API key: only on the API's own origin."""
    return origin_of(url) == api_origin


def never_proxied(url: httpx.URL) -> bool:
    """Whether a request to ``url`` must go direct whatever the proxy environment says."""
    return is_loopback_host(url.host)


def secure_url(url: httpx.URL) -> bool:
    """https, or plain http to a loopback host."""
    return url.scheme == "https" or (url.scheme == "http" and is_loopback_host(url.host))


def safe_url_for_message(url: str) -> str:
    """A URL shortened for messages: no user info, query or fragment, at most 120 chars."""
    try:
        parsed = parsed_url(url)
        shown = f"{parsed.scheme}://{parsed.host}" if parsed.host else "(no host)"
        if parsed.port is not None:
            shown += f":{parsed.port}"
        shown += parsed.path
    except Exception:  # an unparsable URL: show a sanitised head only
        shown = url.split("?", 1)[0].split("#", 1)[0]
        if "@" in shown:
            shown = shown.rsplit("@", 1)[-1]
    return sanitize(shown, 120)


_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z_-]{0,19}")


def _extra_shape(parsed: httpx.URL) -> str:
    """The query string and fragment of ``parsed`` with every value hidden: ``?key=…&x=…``,
    ``#…``.  A parameter name is shown only when it looks like a name (letters, ``_``, ``-``;
    no digits), so a key pasted as a bare parameter is never echoed."""
    shape = ""
    if parsed.query:
        items = []
        for item in parsed.query.decode("ascii", "replace").split("&"):
            name, eq, _ = item.partition("=")
            shown = name if eq and _PARAM_NAME.fullmatch(name) else "…"
            items.append(f"{shown}=…" if eq else shown)
        shape = "?" + "&".join(items)
    if parsed.fragment:
        shape += "#…"
    return shape


def validate_base_url(url: str) -> str:
    """Check that *url* is an absolute https URL (http only for loopback) and normalise it.

    Refused: other schemes, plain http to a non-loopback host, user info, query, fragment.
    Returns the URL without a trailing slash. Raises :class:`ConfigError`.
    """
    text = url.strip()
    try:
        parsed = httpx.URL(text)
    except Exception as exc:
        raise ConfigError(f"invalid base URL {safe_url_for_message(text)!r}") from exc
    shown = safe_url_for_message(text)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError(
            f"base URL {shown!r} must be an absolute https:// URL (http:// for a loopback host)"
        )
    if parsed.userinfo:
        raise ConfigError(f"base URL {shown!r} must not contain user info (user:password@)")
    if parsed.query or parsed.fragment:
        raise ConfigError(
            f"base URL {shown!r} must not contain a query string or fragment, but it ends in "
            f"{_extra_shape(parsed)!r} (values not shown): give the bare URL; the API key "
            "goes in MODELLIX_API_KEY"
        )
    if parsed.scheme == "http" and not is_loopback_host(parsed.host):
        raise ConfigError(
            f"base URL {shown!r} must use https (plain http is allowed for loopback hosts only:"
            " the API key would travel in clear text)"
        )
    return str(parsed).rstrip("/")


def check_proxy_environment(environ: Mapping[str, str] | None = None) -> None:
    """Refuse a proxy environment the transport cannot honour, with one line.

    A ``socks5://``/``socks4://`` proxy needs the ``socksio`` package (the optional extra
    ``batchgen[socks]``); without it httpx would fail with an ImportError. Raises
    :class:`ConfigError` (exit code 3). Other proxies are left to httpx.
    """
    env = os.environ if environ is None else environ
    for name, value in env.items():
        if name.lower() not in ("http_proxy", "https_proxy", "all_proxy"):
            continue
        socks = value.strip().lower().startswith("socks")
        if socks and importlib.util.find_spec("socksio") is None:
            raise ConfigError(
                f"{name} names a SOCKS proxy but the 'socksio' package is not installed"
                " (pip install 'batchgen[socks]')"
            )


class Secret:
    """A string that does not show itself in ``repr``/``str`` (so not in ``vars()`` dumps)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__


def validate_api_key(api_key: str | None) -> Secret | None:
    """The key wrapped in a :class:`Secret`, ``None`` when absent or blank.

    Raises :class:`ConfigError` (never echoing the key) when it cannot be sent in a header.
    """
    if api_key is None:
        return None
    key = api_key.strip()
    if not key:
        return None
    if any(not ("!" <= ch <= "~") for ch in key):
        # Never echo the key, nor the offending character's position.
        raise ConfigError("the API key contains characters that cannot be sent in an HTTP header")
    return Secret(key)
