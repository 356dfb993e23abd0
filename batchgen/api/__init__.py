"""The provider's HTTP API: errors, answer parsing, URL and key policy, the request seam.

Modules: :mod:`~batchgen.api.errors` (the :class:`ApiError` family),
:mod:`~batchgen.api.answers` (typed answers and their classification),
:mod:`~batchgen.api.urls` (base URL, loopback, key and proxy policy),
:mod:`~batchgen.api.failures` (network failures and the deadline of one operation),
:mod:`~batchgen.api.client` (:class:`ModellixClient`, the one request path). The names below
are the package's public face.
"""

from batchgen.api.answers import (
    MAX_RETRY_AFTER,
    DownloadResult,
    Resource,
    Submitted,
    TaskState,
    TaskStatus,
    Writable,
    parse_retry_after,
)
from batchgen.api.client import ModellixClient
from batchgen.api.errors import (
    ApiError,
    AuthError,
    ConfigError,
    NotFound,
    PaymentRequired,
    ProtocolError,
    RateLimited,
    Rejected,
    ResultExpired,
    ServerError,
    TransportFailure,
    Unreachable,
)
from batchgen.api.urls import (
    DEFAULT_BASE_URL,
    ENV_API_KEY,
    ENV_BASE_URL,
    api_key_from_env,
    is_loopback_host,
    resolve_base_url,
    validate_base_url,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "ENV_API_KEY",
    "ENV_BASE_URL",
    "MAX_RETRY_AFTER",
    "ApiError",
    "AuthError",
    "ConfigError",
    "DownloadResult",
    "ModellixClient",
    "NotFound",
    "PaymentRequired",
    "ProtocolError",
    "RateLimited",
    "Rejected",
    "Resource",
    "ResultExpired",
    "ServerError",
    "Submitted",
    "TaskState",
    "TaskStatus",
    "TransportFailure",
    "Unreachable",
    "Writable",
    "api_key_from_env",
    "is_loopback_host",
    "parse_retry_after",
    "resolve_base_url",
    "validate_base_url",
]
