"""The account endpoints the provider's official CLI calls (``GET /api/v1/apikey/validate``,
``GET /api/v1/team/balance``) and the bearer-key check every API route makes."""

from __future__ import annotations

import hmac
from typing import Any

from batchgen.simulator.protocol import VALIDATE_PATH, Answer, Scope, dumps, error_answer

__all__ = ["account_answer", "authorize"]


def authorize(scope: Scope, expected: bytes | None) -> Answer | None:
    """``None`` when the request carries the expected ``Authorization`` value (or any, when
    ``expected`` is ``None``), else the 401 answer."""
    if expected is None:
        return None
    for name, value in scope["headers"]:
        if name == b"authorization":
            if hmac.compare_digest(value, expected):
                return None
            return error_answer(401, "invalid API key")
    return error_answer(401, "missing bearer token")


def account_answer(path: str, balance_usd: float) -> Answer:
    """The key check or the balance (the caller already checked the key)."""
    if path == VALIDATE_PATH:
        data: dict[str, Any] = {"is_valid": True}
    else:
        data = {"balance": round(balance_usd, 4)}
    return Answer(200, dumps({"code": 0, "message": "success", "data": data}), [])
