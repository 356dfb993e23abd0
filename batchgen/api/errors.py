"""The errors of the provider client: one :class:`ApiError` family under :class:`BatchgenError`.

Every error the client raises is an :class:`ApiError` whose attributes tell the caller what to
do next (``retryable``, ``ambiguous``, ``retry_after``, ``stops_run``) and whose ``exit_code``
tells a command how to end when the error stops it. No message, ``repr`` or attribute of these
errors holds the API key (the client scrubs every message before it leaves).
"""

from __future__ import annotations

from typing import Any

from batchgen.api.throttle import ThrottleKind
from batchgen.errors import BatchgenError, ExitCode

__all__ = [
    "ApiError",
    "AuthError",
    "ConfigError",
    "NotFound",
    "PaymentRequired",
    "ProtocolError",
    "RateLimited",
    "Rejected",
    "ResultExpired",
    "ServerError",
    "TransportFailure",
    "Unreachable",
]


class ApiError(BatchgenError):
    """Base class of every error raised by the client; never contains the API key.

    ``exit_code`` is :attr:`ExitCode.STOPPED` when the error stops a command (configuration,
    key, payment, network, any error with ``stops_run``) and :attr:`ExitCode.JOBS_FAILED` when
    it is the fault of one job's request or result.

    Attributes:
        message: human-readable reason (also ``str(exc)``).
        status: the effective status: the HTTP status, or the ``code`` of an HTTP 200 answer
            whose body carries an HTTP-like error code; ``None`` for network failures.
        http_status: the HTTP status actually received (``None`` if no answer was received).
        operation: ``"submit"``, ``"poll"``, ``"download"`` or ``None`` (configuration).
        retryable: trying the same call again later may succeed.
        ambiguous: a submit whose outcome is unknown: the request may have reached the provider
            and created a (billed) task. Only ever true for submits.
        retry_after: seconds the server asked to wait (``Retry-After`` / ``X-RateLimit-Reset``).
        stops_run: the whole run must stop submitting (401, 402, unknown model, bad config).
        sent: the request may have been written to a server; false when it certainly was not
            (the connection or its TLS handshake failed first, or it could not be built).
    """

    default_retryable = False
    default_stops_run = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        http_status: int | None = None,
        operation: str | None = None,
        retryable: bool | None = None,
        ambiguous: bool = False,
        retry_after: float | None = None,
        stops_run: bool | None = None,
        sent: bool = True,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.http_status = http_status if http_status is not None else status
        self.operation = operation
        self.retryable = self.default_retryable if retryable is None else retryable
        self.ambiguous = ambiguous
        self.retry_after = retry_after
        self.stops_run = self.default_stops_run if stops_run is None else stops_run
        self.sent = sent
        if self.stops_run:  # e.g. a 404 on submit: the model is unknown, nothing can run
            self.exit_code = ExitCode.STOPPED

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, status={self.status}, "
            f"retryable={self.retryable}, ambiguous={self.ambiguous}, "
            f"retry_after={self.retry_after}, stops_run={self.stops_run})"
        )

    def _scrub(self, secret: str | None) -> None:
        """Remove *secret* from the message (defence in depth: a server may echo it)."""
        if secret and secret in self.message:
            self.message = self.message.replace(secret, "[redacted]")
            self.args = (self.message,)


class Rejected(ApiError):
    """400 (or another 4xx without a special meaning): the request itself is invalid."""

    exit_code = ExitCode.JOBS_FAILED


class AuthError(ApiError):
    """401/403: missing, invalid or unauthorised API key. Stops the run."""

    default_stops_run = True


class PaymentRequired(ApiError):
    """402: insufficient balance. Stops the run."""

    default_stops_run = True


class NotFound(ApiError):
    """404: unknown model (on submit: stops the run) or unknown task (on poll)."""

    exit_code = ExitCode.JOBS_FAILED


class RateLimited(ApiError):
    """429: request-rate or concurrent-task limit; ``retry_after`` when the server said.

    ``kind``: which limit the answer reports (:func:`batchgen.api.throttle.throttle_kind`);
    ``rate``: requests per second from ``X-RateLimit-Limit``, when present."""

    default_retryable = True

    def __init__(
        self,
        message: str,
        *,
        kind: ThrottleKind = "unknown",
        rate: float | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(message, **kw)
        self.kind: ThrottleKind = kind
        self.rate = rate


class ServerError(ApiError):
    """5xx (and 408/425): the provider failed; retryable; ambiguous on submit."""

    default_retryable = True


class TransportFailure(ApiError):
    """No usable answer: timeout, refused or dropped connection, short download."""

    default_retryable = True


class Unreachable(TransportFailure):
    """The server could not be reached for a reason that looks like configuration, not luck:
    the connection was refused, the host name does not resolve, or the certificate failed
    verification. Nothing was sent (``sent`` is false). ``address`` is ``host:port``; ``cause``
    says which of the three. Retryable (a server may come back), but a run whose submissions
    never reached the server stops at once on it (exit 3)."""

    def __init__(
        self, message: str, *, address: str, cause: str, operation: str | None = None
    ) -> None:
        super().__init__(message, operation=operation, sent=False)
        self.address = address
        self.cause = cause


class ProtocolError(ApiError):
    """An answer that breaks the API's contract: non-JSON, wrong shape, unknown code, too big."""

    default_retryable = True


class ResultExpired(ApiError):
    """Download got 403/404/410: the temporary result URL is gone; generate the task again."""

    exit_code = ExitCode.JOBS_FAILED


class ConfigError(ApiError):
    """Bad configuration (base URL, key, submit path). Stops the run."""

    default_stops_run = True
