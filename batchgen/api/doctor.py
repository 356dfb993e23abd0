"""Checks of a machine's set-up before the first night: ``batchgen doctor`` and ``run``'s key check.

:func:`run_checks` returns one :class:`Check` per concern, in a fixed order: the key is set,
the base URL is valid, the proxy that applies (from the environment; credentials never shown),
DNS, reachability with TLS, the key is valid (``GET /api/v1/apikey/validate``), the balance
(``GET /api/v1/team/balance``), the clock against the server's ``Date``, free disk space in the
output folder. Each is ``OK``, ``WARN`` or ``FAIL``; nothing costs money, nothing is written.
:func:`key_check` is the one judgement of the key-check answer, shared with ``run``
(:mod:`batchgen.run.preflight`). No check's detail holds the API key.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import email.utils
import os
import shutil
import socket
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import httpx

from batchgen.api.client import VALIDATE_PATH, ModellixClient, key_valid_in
from batchgen.api.errors import (
    ApiError,
    AuthError,
    ConfigError,
    NotFound,
    ProtocolError,
    Unreachable,
)
from batchgen.api.text import sanitize
from batchgen.api.urls import (
    ENV_API_KEY,
    api_key_from_env,
    never_proxied,
    resolve_base_url,
    safe_url_for_message,
)

__all__ = ["Check", "Status", "key_check", "proxy_for", "run_checks"]

Status = Literal["OK", "WARN", "FAIL"]

#: Free space under which the output folder is a FAIL / a WARN.
DISK_FAIL_BYTES = 200 * 2**20
DISK_WARN_BYTES = 2 * 2**30
#: Clock skew (seconds) past which the check warns.
SKEW_WARN_SECONDS = 60.0


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report."""

    name: str
    status: Status
    detail: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def key_check(outcome: bool | BaseException) -> Check:
    """Judge the key check: ``outcome`` is what :meth:`ModellixClient.validate_key` returned
    or raised. FAIL: the key was refused or said invalid, the server cannot be reached for a
    configuration reason, a configuration error. WARN: a provider without the endpoint (404),
    any other error (the run finds out on its own). OK: valid."""
    if outcome is True:
        return Check("key", "OK", "the provider says the key is valid")
    if outcome is False:
        return Check("key", "FAIL", "the provider says the key is not valid")
    if isinstance(outcome, AuthError):
        return Check("key", "FAIL", f"the key was refused: {outcome}")
    if isinstance(outcome, NotFound):
        return Check("key", "WARN", "the provider has no key-check endpoint (404); not checked")
    if isinstance(outcome, Unreachable):
        return Check("key", "FAIL", f"cannot reach {outcome.address}: {outcome.cause}")
    if isinstance(outcome, ConfigError):
        return Check("key", "FAIL", str(outcome))
    return Check("key", "WARN", f"not checked: {sanitize(str(outcome), 300)}")


def proxy_for(url: httpx.URL, environ: Mapping[str, str]) -> str | None:
    """The proxy the environment applies to ``url`` (credentials removed), or ``None``."""
    if never_proxied(url):
        return None
    env = {k.lower(): v for k, v in environ.items() if v}
    no_proxy = env.get("no_proxy", "")
    if no_proxy and _bypassed(url.host, no_proxy):
        return None
    for name in (f"{url.scheme}_proxy", "all_proxy"):
        value = env.get(name)
        if value:
            try:
                proxy = httpx.URL(value).copy_with(username=None, password=None)
            except Exception:
                return f"{name.upper()} (unparsable)"
            return f"{name.upper()}={safe_url_for_message(str(proxy))}"
    return None


def _bypassed(host: str, no_proxy: str) -> bool:
    """``NO_PROXY`` as curl and httpx read it: ``*``, or host names matched with their
    subdomains (a leading dot is ignored)."""
    host = host.lower().rstrip(".")
    for item in no_proxy.split(","):
        entry = item.strip().lower().lstrip(".").split(":")[0]
        if entry == "*" or (entry and (host == entry or host.endswith("." + entry))):
            return True
    return False


async def run_checks(
    base_url: str | None = None,
    *,
    output: Path = Path("output"),
    environ: Mapping[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    timeout: float = 20.0,
) -> list[Check]:
    """Every check, in order (see the module doc). ``transport``: for the in-process
    simulator; then DNS is not looked up."""
    env = os.environ if environ is None else environ
    checks: list[Check] = []
    key = api_key_from_env(env)
    checks.append(
        Check("key set", "OK", f"{ENV_API_KEY} is set")
        if key
        else Check("key set", "FAIL", f"{ENV_API_KEY} is not set")
    )
    try:
        url = resolve_base_url(base_url, env)
    except ConfigError as exc:
        checks.append(Check("base URL", "FAIL", str(exc)))
        checks.append(_disk(output))
        return checks
    checks.append(Check("base URL", "OK", url))
    parsed = httpx.URL(url)
    proxy = proxy_for(parsed, env) if transport is None else None
    checks.append(Check("proxy", "OK", f"via {proxy}" if proxy else "none applies (direct)"))
    if transport is None:
        checks.append(await _dns(parsed, proxy))
    if key is None:
        checks.append(_disk(output))
        return checks
    try:
        client = ModellixClient(
            url, key, transport=transport, operation_timeout=timeout, connect_timeout=timeout
        )
    except ConfigError as exc:
        checks.append(Check("TLS", "FAIL", str(exc)))
        checks.append(_disk(output))
        return checks
    async with client:
        checks.extend(await _account_checks(client, parsed, env, proxy))
    checks.append(_disk(output))
    return checks


async def _account_checks(
    client: ModellixClient, url: httpx.URL, env: Mapping[str, str], proxy: str | None
) -> list[Check]:
    checks: list[Check] = []
    sent = time.time()
    headers: httpx.Headers | None = None
    outcome: bool | BaseException
    try:
        headers, payload = await client._account(VALIDATE_PATH)
        outcome = key_valid_in(payload)
    except ApiError as exc:
        outcome = exc
    received = time.time()
    reached = not isinstance(outcome, (Unreachable, ConfigError)) and not (
        isinstance(outcome, ApiError) and not outcome.sent
    )
    where = f"{url.host}:{url.port or (443 if url.scheme == 'https' else 80)}"
    if proxy is not None:
        where += f" through {proxy}"
    if reached:
        tls = ""
        if url.scheme == "https":
            ca = env.get("SSL_CERT_FILE") or env.get("SSL_CERT_DIR")
            tls = f"; TLS verified ({'CA from ' + sanitize(ca, 100) if ca else 'default CAs'})"
        checks.append(Check("reachable", "OK", f"{where} answered{tls}"))
    elif isinstance(outcome, BaseException):
        detail = outcome.cause if isinstance(outcome, Unreachable) else str(outcome)
        checks.append(Check("reachable", "FAIL", f"{where}: {sanitize(detail, 300)}"))
        return checks
    checks.append(key_check(outcome))
    checks.append(await _balance(client))
    checks.append(_clock(headers, sent, received))
    return checks


async def _dns(url: httpx.URL, proxy: str | None) -> Check:
    if proxy is not None:
        return Check("DNS", "OK", f"{url.host} is resolved by the proxy")
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            url.host, url.port or 443, type=socket.SOCK_STREAM
        )
    except OSError as exc:
        return Check("DNS", "FAIL", f"{url.host} does not resolve: {sanitize(str(exc), 120)}")
    addresses = sorted({str(info[4][0]) for info in infos})
    return Check("DNS", "OK", f"{url.host} -> {', '.join(addresses[:4])}")


async def _balance(client: ModellixClient) -> Check:
    try:
        value = await client.balance()
    except NotFound:
        return Check("balance", "WARN", "the provider has no balance endpoint (404)")
    except ProtocolError:
        return Check("balance", "WARN", "the answer carries no balance")
    except ApiError as exc:
        return Check("balance", "WARN", f"not checked: {exc}")
    if value <= 0:
        return Check("balance", "FAIL", f"balance {value:g}: submissions will be refused (402)")
    return Check("balance", "OK", f"{value:g}")


def _clock(headers: httpx.Headers | None, sent: float, received: float) -> Check:
    date = headers.get("date") if headers is not None else None
    if not date:
        return Check("clock", "WARN", "the server sent no Date header; skew not measured")
    try:
        server = email.utils.parsedate_to_datetime(date)
    except (TypeError, ValueError):
        return Check("clock", "WARN", "unparsable Date header; skew not measured")
    if server.tzinfo is None:
        server = server.replace(tzinfo=_dt.timezone.utc)
    local = (sent + received) / 2
    skew = server.timestamp() - local
    # Date has a one-second resolution: half the round trip plus one second is noise.
    noise = (received - sent) / 2 + 1.0
    shown = f"{skew:+.0f} s (server minus this machine)"
    if abs(skew) <= max(SKEW_WARN_SECONDS, noise):
        return Check("clock", "OK", shown)
    return Check("clock", "WARN", f"{shown}: fix the clock ({{date}} names run directories)")


def _disk(output: Path) -> Check:
    folder = Path(output).resolve()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        return Check("disk", "FAIL", f"cannot read free space of {output}: {exc}")
    shown = f"{free / 2**30:.1f} GiB free for {output}"
    if free < DISK_FAIL_BYTES:
        return Check("disk", "FAIL", shown)
    if free < DISK_WARN_BYTES:
        return Check("disk", "WARN", shown)
    return Check("disk", "OK", shown)
