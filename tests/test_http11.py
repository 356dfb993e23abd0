"""The lean HTTP/1.1 transport over real loopback sockets, against servers that misbehave.

Each test starts a tiny asyncio server on 127.0.0.1 that answers with exact bytes, so
framing (Content-Length, chunked, end of connection), keep-alive reuse, timeouts, dropped
connections and garbage are checked byte for byte, and each failure is the httpx
exception the client classifies on (nothing sent vs. maybe processed).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from batchgen.api.client import ModellixClient, TransportFailure
from batchgen.api.http11 import Http11Transport

pytestmark = pytest.mark.anyio

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request's head and body (Content-Length bodies only)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + (await reader.readexactly(length) if length else b"")


@asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """A loopback server; yields its base URL and the list of connections it accepted."""
    accepted: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", accepted
    finally:
        server.close()


def answer(body: bytes, *extra: bytes, status: bytes = b"200 OK") -> bytes:
    head = b"HTTP/1.1 " + status + b"\r\nContent-Length: " + str(len(body)).encode()
    return head + b"".join(b"\r\n" + h for h in extra) + b"\r\n\r\n" + body


async def fetch(
    transport: Http11Transport,
    url: str,
    *,
    method: str = "GET",
    content: bytes | None = None,
    timeout: float = 5.0,
) -> tuple[int, bytes]:
    request = httpx.Request(
        method,
        url,
        content=content,
        extensions={"timeout": httpx.Timeout(timeout).as_dict()},
    )
    response = await transport.handle_async_request(request)
    try:
        body = b"".join([chunk async for chunk in response.aiter_raw()])
    finally:
        await response.aclose()
    return response.status_code, body


async def test_keep_alive_reuses_one_connection_for_many_requests() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await read_request(reader)
            writer.write(answer(request.split(b" ")[1]))

    async with serve(handler) as (url, accepted):
        transport = Http11Transport()
        for i in range(5):
            assert await fetch(transport, f"{url}/n/{i}") == (200, f"/n/{i}".encode())
        await transport.aclose()
    assert len(accepted) == 1


async def test_request_bytes_carry_method_path_query_headers_and_body() -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(answer(b"{}"))

    async with serve(handler) as (url, _):
        transport = Http11Transport()
        await fetch(transport, f"{url}/a/b?x=1", method="POST", content=b'{"k": 1}')
        await transport.aclose()
    head, body = seen[0].split(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /a/b?x=1 HTTP/1.1"
    assert b"Content-Length: 8" in lines
    assert any(line.lower().startswith(b"host: 127.0.0.1:") for line in lines)
    assert body == b'{"k": 1}'


async def test_chunked_answer_is_decoded() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )

    async with serve(handler) as (url, _):
        transport = Http11Transport()
        assert await fetch(transport, url + "/") == (200, b"hello world")
        await transport.aclose()


async def test_answer_delimited_by_closing_the_connection_is_complete_and_not_reused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.0 200 OK\r\n\r\nuntil the end")
        await writer.drain()

    async with serve(handler) as (url, accepted):
        transport = Http11Transport()
        assert await fetch(transport, url + "/") == (200, b"until the end")
        assert await fetch(transport, url + "/") == (200, b"until the end")
        await transport.aclose()
    assert len(accepted) == 2


async def test_connection_close_answer_is_not_reused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(b"ok", b"Connection: close"))
        await writer.drain()
        await asyncio.sleep(0.5)  # the client must not wait for this close

    async with serve(handler) as (url, accepted):
        transport = Http11Transport()
        for _ in range(2):
            assert await fetch(transport, url + "/") == (200, b"ok")
        await transport.aclose()
    assert len(accepted) == 2


async def test_large_body_arrives_whole_with_flow_control() -> None:
    payload = bytes(range(256)) * (12 * 1024)  # 3 MiB, above the high-water mark

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(payload))
        await writer.drain()

    async with serve(handler) as (url, _):
        transport = Http11Transport()
        request = httpx.Request("GET", url + "/big")
        response = await transport.handle_async_request(request)
        received = bytearray()
        async for chunk in response.aiter_raw():
            received += chunk
            await asyncio.sleep(0)  # a slow reader
        await response.aclose()
        await transport.aclose()
    assert bytes(received) == payload


async def test_refused_connection_is_a_connect_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        transport = Http11Transport()
        with pytest.raises(httpx.ConnectError):
            await fetch(transport, f"http://127.0.0.1:{port}/")
        await transport.aclose()


async def test_drop_before_any_answer_is_a_remote_protocol_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)  # then close without a byte

    async with serve(handler) as (url, _):
        transport = Http11Transport()
        with pytest.raises(httpx.RemoteProtocolError, match="disconnected"):
            await fetch(transport, url + "/", method="POST", content=b"{}")
        await transport.aclose()


async def test_drop_in_the_middle_of_a_body_is_a_remote_protocol_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()

    async with serve(handler) as (url, _):
        transport = Http11Transport()
        with pytest.raises(httpx.RemoteProtocolError, match="incomplete"):
            await fetch(transport, url + "/")
        await transport.aclose()


async def test_garbage_instead_of_a_status_line_is_a_remote_protocol_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    async with serve(handler) as (url, _):
        transport = Http11Transport()
        with pytest.raises(httpx.RemoteProtocolError, match="malformed"):
            await fetch(transport, url + "/")
        await transport.aclose()


async def test_silent_server_is_a_read_timeout_and_the_connection_is_dropped() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async with serve(handler) as (url, accepted):
        transport = Http11Transport()
        with pytest.raises(httpx.ReadTimeout):
            await fetch(transport, url + "/", timeout=0.2)
        with pytest.raises(httpx.ReadTimeout):
            await fetch(transport, url + "/", timeout=0.2)
        await transport.aclose()
    assert len(accepted) == 2  # a timed-out connection is never reused


async def test_interim_100_continue_is_skipped() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + answer(b"final"))

    async with serve(handler) as (url, _):
        transport = Http11Transport()
        assert await fetch(transport, url + "/") == (200, b"final")
        await transport.aclose()


async def test_idle_connection_closed_by_the_server_is_not_reused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(b"once"))
        await writer.drain()  # then close: an idle keep-alive connection the server ended

    async with serve(handler) as (url, accepted):
        transport = Http11Transport()
        assert await fetch(transport, url + "/") == (200, b"once")
        for _ in range(100):  # until the client has seen the close (bounded)
            if not transport._idle.get(("http", "127.0.0.1", int(url.rsplit(":", 1)[1]))):
                break
            if all(c.closed for stack in transport._idle.values() for c in stack):
                break
            await asyncio.sleep(0.01)
        assert await fetch(transport, url + "/") == (200, b"once")
        await transport.aclose()
    assert len(accepted) == 2


async def test_pool_limit_makes_requests_wait_then_times_out() -> None:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await release.wait()
        writer.write(answer(b"late"))
        await writer.drain()

    async with serve(handler) as (url, accepted):
        transport = Http11Transport(max_connections=1)
        first = asyncio.ensure_future(fetch(transport, url + "/"))
        await asyncio.sleep(0.1)
        request = httpx.Request(
            "GET", url + "/", extensions={"timeout": httpx.Timeout(5, pool=0.1).as_dict()}
        )
        with pytest.raises(httpx.PoolTimeout):
            await transport.handle_async_request(request)
        release.set()
        assert await first == (200, b"late")
        await transport.aclose()
    assert len(accepted) == 1


async def test_client_reports_a_dropped_submit_as_ambiguous_over_the_lean_transport() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)  # the submit arrived; the answer never does

    async with serve(handler) as (url, _), ModellixClient(url, "lean-transport-key-0123") as client:
        assert isinstance(client._direct, Http11Transport)  # not httpx's own transport
        with pytest.raises(TransportFailure) as info:
            await client.submit("/api/v1/openai/gpt-image-1.5/async", {"prompt": "x"})
    assert info.value.ambiguous
    assert "lean-transport-key-0123" not in str(info.value)


async def test_client_reports_a_refused_submit_as_not_sent() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        async with ModellixClient(url, "lean-transport-key-0123") as client:
            with pytest.raises(TransportFailure) as info:
                await client.submit("/api/v1/openai/gpt-image-1.5/async", {"prompt": "x"})
    assert not info.value.ambiguous


async def test_client_fast_path_sends_the_key_to_the_api_origin_only() -> None:
    heads: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await read_request(reader)
            heads.append(request.split(b"\r\n\r\n")[0])
            if request.startswith(b"POST"):
                body = b'{"code": 0, "data": {"task_id": "t-1"}}'
            else:
                body = b"\x89PNG not really"
            writer.write(answer(body))

    async with (
        serve(handler) as (api, _),
        serve(handler) as (cdn, _),
        ModellixClient(api, "lean-transport-key-0123") as client,
    ):
        submitted = await client.submit("/api/v1/openai/gpt-image-1.5/async", {"prompt": "x"})
        with open(os.devnull, "wb") as sink:
            await client.download(cdn + "/files/t-1.png", sink)
            await client.download(api + "/files/t-1.png", sink)
    assert submitted.task_id == "t-1"
    submit, cdn_get, api_get = (h.split(b"\r\n") for h in heads)
    assert submit[0] == b"POST /api/v1/openai/gpt-image-1.5/async HTTP/1.1"
    assert b"Authorization: Bearer lean-transport-key-0123" in submit
    assert b"Content-Type: application/json" in submit
    assert any(line.startswith(b"Host: 127.0.0.1:") for line in submit)
    assert any(line.startswith(b"User-Agent: batchgen/") for line in submit)
    assert cdn_get[0] == b"GET /files/t-1.png HTTP/1.1"
    assert not any(line.lower().startswith(b"authorization") for line in cdn_get)
    assert b"Authorization: Bearer lean-transport-key-0123" in api_get


async def test_client_sends_urls_on_the_base_as_httpx_would_encode_them() -> None:
    targets: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await read_request(reader)
            targets.append(request.split(b" ")[1])
            writer.write(answer(b"x"))

    async with serve(handler) as (api, _), ModellixClient(api, "k-0123456789") as client:
        with open(os.devnull, "wb") as sink:
            for path in ("/f/plain-1.png?x=1", "/f/a%20b.png", "/f/a b.png", "/f/caf\u00e9.png"):
                await client.download(api + path, sink)
    assert targets == [b"/f/plain-1.png?x=1", b"/f/a%20b.png", b"/f/a%20b.png", b"/f/caf%C3%A9.png"]


async def test_a_connection_idle_past_the_keep_alive_expiry_is_not_reused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(answer(b"ok"))

    async with serve(handler) as (url, accepted):
        transport = Http11Transport(keepalive_expiry=1.0)
        assert await fetch(transport, url + "/") == (200, b"ok")
        assert await fetch(transport, url + "/") == (200, b"ok")  # reused: idle < 1 s
        await asyncio.sleep(1.2)
        assert await fetch(transport, url + "/") == (200, b"ok")  # a new connection
        await transport.aclose()
    assert len(accepted) == 2


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    await asyncio.sleep(10)


async def _dribble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers a 1,000-byte body one byte every 20 ms: always progressing, never done."""
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    for _ in range(500):
        writer.write(b"x")
        await writer.drain()
        await asyncio.sleep(0.02)


async def test_every_waiting_connection_times_out_on_its_own_read_timeout() -> None:
    """One timer serves every wait: a short wait registered after a long one still ends
    first, and each of several equal waits ends."""
    async with serve(_silent) as (url, accepted):
        transport = Http11Transport()
        long_wait = asyncio.ensure_future(fetch(transport, url + "/long", timeout=30))
        while not accepted:
            await asyncio.sleep(0.01)
        short = [fetch(transport, url + f"/short{i}", timeout=0.2) for i in range(4)]
        outcomes = await asyncio.gather(*short, return_exceptions=True)
        assert [type(o) for o in outcomes] == [httpx.ReadTimeout] * 4
        assert not long_wait.done()
        long_wait.cancel()
        with pytest.raises(asyncio.CancelledError):
            await long_wait
        await transport.aclose()


async def test_a_body_that_keeps_dribbling_ends_at_the_deadline() -> None:
    async with serve(_dribble) as (url, _):
        transport = Http11Transport()
        loop = asyncio.get_running_loop()
        timeouts = httpx.Timeout(5.0).as_dict()
        message = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        origin = ("http", "127.0.0.1", int(url.rsplit(":", 1)[1]))
        response = await transport.send_message(origin, message, timeouts, loop.time() + 0.3)
        received: list[bytes] = []

        async def read_all() -> None:
            async for chunk in response.aiter_raw():
                received.append(chunk)

        with pytest.raises(TimeoutError, match="deadline"):
            await read_all()
        await response.aclose()
        assert 0 < len(b"".join(received)) < 1000  # it was arriving: only the deadline ended it
        await transport.aclose()


async def test_client_operation_timeout_holds_on_the_lean_transport() -> None:
    async with (
        serve(_dribble) as (url, _),
        ModellixClient(url, "lean-transport-key-0123", operation_timeout=0.3) as client,
    ):
        assert isinstance(client._direct, Http11Transport)
        with pytest.raises(TransportFailure, match=r"no complete answer within 0\.3 s") as info:
            await client.poll("task-1")
    assert not info.value.ambiguous  # a poll creates nothing
