"""``run``'s key check, before anything is created on disk.

:func:`check_key_before_run` asks the provider whether the key is valid
(``GET /api/v1/apikey/validate``, judged by :func:`batchgen.api.doctor.key_check`) before the
run directory or its state file exist. A refused or invalid key, a server that cannot be
reached for a configuration reason (refused connection, unresolvable name, certificate that
fails verification) or an unusable TLS set-up raises :class:`PreflightError` (exit 3, one line
naming ``host:port`` or the file); a provider without the endpoint (404) and any other failure
(5xx, timeouts) are left to the run, which retries them as usual.
"""

from __future__ import annotations

import logging

from batchgen.api import ApiError, ConfigError, ModellixClient
from batchgen.api.doctor import key_check
from batchgen.errors import BatchgenError

__all__ = ["PreflightError", "check_key_before_run"]

logger = logging.getLogger("batchgen.run")


class PreflightError(BatchgenError):
    """The run cannot work with this key, base URL or TLS set-up; nothing was written."""


async def check_key_before_run(base_url: str, key: str, *, timeout: float = 30.0) -> None:
    """Check the key on ``base_url`` (see the module doc); raise :class:`PreflightError`."""
    outcome: bool | BaseException
    try:
        async with ModellixClient(
            base_url, key, operation_timeout=timeout, connect_timeout=min(timeout, 10.0)
        ) as client:
            outcome = await client.validate_key()
    except (ApiError, ConfigError) as exc:
        outcome = exc
    check = key_check(outcome)
    if check.status == "FAIL":
        raise PreflightError(f"{check.detail}; nothing was sent or written")
    if check.status == "WARN":
        logger.warning("key check: %s", check.detail)
