"""The failures of one network operation: its overall deadline, and what httpx raises turned
into :class:`TransportFailure` or :class:`ProtocolError`.

Guarantees: nothing sent (refused, connect or pool timeout) is never ``ambiguous``; anything
that may have reached the server (a read timeout, a dropped connection, an unreadable answer,
the deadline) is ``ambiguous`` on submit; an answer head past the transport's cap is a
:class:`ProtocolError`. Messages are sanitised and bounded.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from types import TracebackType
from typing import Any

import anyio
import httpx

from batchgen.api.answers import Operation
from batchgen.api.errors import ProtocolError, TransportFailure
from batchgen.api.text import sanitize

__all__ = ["NetworkErrors"]


class NetworkErrors:
    """The context of one network operation: its overall deadline (a timer that cancels the
    block), and the httpx/timeout exceptions raised inside it turned into
    :class:`TransportFailure`/:class:`ProtocolError` (a class, not a generator-based context
    manager: it is entered once per exchange)."""

    __slots__ = ("_deadline", "_op", "_timeout", "_what")

    def __init__(self, op: Operation, what: Callable[[], str], timeout: float) -> None:
        self._op = op
        self._what = what
        self._timeout = timeout
        self._deadline: Any = None

    async def __aenter__(self) -> None:
        if sys.version_info >= (3, 11):
            # asyncio's own deadline: much cheaper than anyio's cancel scopes.
            self._deadline = asyncio.timeout(self._timeout)
            await self._deadline.__aenter__()
        else:  # pragma: no cover - Python 3.10
            self._deadline = anyio.fail_after(self._timeout)
            self._deadline.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if sys.version_info >= (3, 11):
                await self._deadline.__aexit__(exc_type, exc, tb)
            else:  # pragma: no cover - Python 3.10
                self._deadline.__exit__(exc_type, exc, tb)
        except TimeoutError as timeout:
            exc = timeout
        if exc is None or not isinstance(exc, (TimeoutError, httpx.HTTPError)):
            return  # no error, or not one of ours: propagates unchanged
        op = self._op
        submit = op == "submit"
        what = self._what()
        if isinstance(exc, TimeoutError):
            raise TransportFailure(
                f"{op}: {what}: no complete answer within {self._timeout:g} s",
                operation=op,
                ambiguous=submit,
            ) from exc
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
            # Nothing was sent: never ambiguous.
            raise TransportFailure(
                f"{op}: {what}: could not connect ({_describe(exc)})", operation=op
            ) from exc
        if isinstance(exc, httpx.LocalProtocolError):
            raise TransportFailure(
                f"{op}: {what}: request could not be sent ({_describe(exc)})",
                operation=op,
                retryable=False,
            ) from exc
        if isinstance(exc, httpx.RemoteProtocolError) and _head_too_large(exc):
            raise ProtocolError(
                f"{op}: {what}: answer head (status line, headers or trailers) larger than"
                f" the transport's cap ({_describe(exc)})",
                operation=op,
                ambiguous=submit,
            ) from exc
        if isinstance(exc, httpx.TransportError):
            # Read/write timeouts, dropped connections, protocol violations by the peer: the
            # request may have been received and processed.
            raise TransportFailure(
                f"{op}: {what}: connection failed ({_describe(exc)})",
                operation=op,
                ambiguous=submit,
            ) from exc
        # DecodingError, StreamError, ...
        raise ProtocolError(
            f"{op}: {what}: unreadable answer ({_describe(exc)})",
            operation=op,
            ambiguous=submit,
        ) from exc


def _describe(exc: BaseException) -> str:
    text = sanitize(str(exc), 160)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _head_too_large(exc: BaseException) -> bool:
    """Whether a transport error comes from a transport's cap on an answer head or trailer
    section that never ends: h11 (httpx's transport) marks it with the hint 431, and so does
    :class:`batchgen.api.transport.AnswerHeadTooLarge` (aiohttp's)."""
    seen: BaseException | None = exc
    for _ in range(8):  # httpx -> httpcore -> h11: a short chain
        if seen is None:
            return False
        if getattr(seen, "error_status_hint", None) == 431:
            return True
        seen = seen.__cause__ or seen.__context__
    return False
