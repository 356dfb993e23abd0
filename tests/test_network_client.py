"""The client over real loopback sockets, through httpx's own transport (production's path).

Each test starts a tiny server on loopback that answers with exact bytes (or misbehaves), so
what is checked is the request production sends and the classification of what comes back:
nothing sent vs. maybe processed, the key only on the API's origin, answer heads that never
end, a name that resolves to a dead IPv6 address first.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from nethelpers import SUBMIT_PATH, SUBMITTED, answer, read_request, serve

from batchgen.api import ModellixClient, ProtocolError, TransportFailure
from batchgen.simulator.app import Simulator, SimulatorConfig, serve_in_thread

pytestmark = pytest.mark.anyio

KEY = "network-test-key-0123"


async def test_a_dropped_submit_is_ambiguous() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)  # the submit arrived; the answer never does

    async with serve(handler) as (url, _), ModellixClient(url, KEY) as client:
        with pytest.raises(TransportFailure) as info:
            await client.submit(SUBMIT_PATH, {"prompt": "x"})
    assert info.value.ambiguous
    assert KEY not in str(info.value)


async def test_a_refused_submit_is_not_sent_hence_not_ambiguous() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        async with ModellixClient(url, KEY) as client:
            with pytest.raises(TransportFailure) as info:
                await client.submit(SUBMIT_PATH, {"prompt": "x"})
    assert not info.value.ambiguous


async def test_the_key_goes_to_the_api_origin_only_and_connections_are_reused() -> None:
    heads: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await read_request(reader)
            heads.append(request.split(b"\r\n\r\n")[0])
            writer.write(answer(SUBMITTED if request.startswith(b"POST") else b"\x89PNG"))

    async with (
        serve(handler) as (api, api_conns),
        serve(handler) as (cdn, _),
        ModellixClient(api, KEY) as client,
    ):
        submitted = await client.submit(SUBMIT_PATH, {"prompt": "x"})
        with open(os.devnull, "wb") as sink:
            await client.download(cdn + "/files/t-1.png", sink)
            await client.download(api + "/files/t-1.png", sink)
    assert submitted.task_id == "t-1"
    assert len(api_conns) == 1  # keep-alive: the download reused the submit's connection
    submit, cdn_get, api_get = (h.lower().split(b"\r\n") for h in heads)
    assert submit[0] == b"post /api/v1/openai/gpt-image-1.5/async http/1.1"
    assert f"authorization: bearer {KEY}".encode() in submit
    assert b"content-type: application/json" in submit
    assert any(line.startswith(b"user-agent: batchgen/") for line in submit)
    assert not any(line.startswith(b"authorization") for line in cdn_get)
    assert f"authorization: bearer {KEY}".encode() in api_get


async def test_urls_are_sent_percent_encoded() -> None:
    targets: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await read_request(reader)
            targets.append(request.split(b" ")[1])
            writer.write(answer(b"x"))

    async with serve(handler) as (api, _), ModellixClient(api, KEY) as client:
        with open(os.devnull, "wb") as sink:
            for path in ("/f/plain-1.png?x=1", "/f/a%20b.png", "/f/a b.png", "/f/caf\u00e9.png"):
                await client.download(api + path, sink)
    assert targets == [b"/f/plain-1.png?x=1", b"/f/a%20b.png", b"/f/a%20b.png", b"/f/caf%C3%A9.png"]


async def test_an_answer_that_keeps_dribbling_ends_at_the_operation_deadline() -> None:
    async def dribble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(500):  # one byte every 20 ms: always progressing, never done
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.02)

    async with serve(dribble) as (url, _), ModellixClient(url, KEY, operation_timeout=0.3) as c:
        with pytest.raises(TransportFailure, match=r"no complete answer within 0\.3 s") as info:
            await c.poll("task-1")
    assert not info.value.ambiguous  # a poll creates nothing


async def test_head_answers_have_no_body_and_streamed_bodies_go_chunked() -> None:
    """The seam sends HEAD and streamed (chunked) bodies; other methods are refused."""
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await read_request(reader)
            seen.append(request)
            if request.startswith(b"HEAD"):  # a Content-Length but, rightly, no body
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n")
            else:
                writer.write(answer(SUBMITTED))

    async def body() -> AsyncIterator[bytes]:
        for part in (b'{"prompt": ', b'"streamed"}'):
            yield part

    async with serve(handler) as (url, accepted), ModellixClient(url, KEY) as client:
        head = await client._send("HEAD", url + "/files/a.png", {})
        assert head.status_code == 200
        assert await head.aread() == b""
        await head.aclose()
        posted = await client._send("POST", url + SUBMIT_PATH, {}, body())
        assert await posted.aread() == SUBMITTED
        await posted.aclose()
        with pytest.raises(ValueError, match="unsupported method"):
            await client._send("DELETE", url + "/x", {})
    assert len(accepted) == 1  # the HEAD answer was framed right: its connection was reused
    assert b"transfer-encoding: chunked" in seen[1].lower()
    assert seen[1].endswith(b'\r\n\r\n{"prompt": "streamed"}')


# -- answer heads that never end ---------------------------------------------------------------


class EndlessServer:
    """A raw-socket server whose answers never finish their head (or trailers): it sends
    until the client hangs up or ``limit`` bytes went out, and counts what it sent."""

    def __init__(self, prefix: bytes, filler: bytes, limit: int = 64 * 2**20) -> None:
        self.prefix, self.filler, self.limit = prefix, filler, limit
        self.sent = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        self.sock.settimeout(30)
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(10)
            try:
                conn.recv(65536)
                conn.sendall(self.prefix)
                while self.sent < self.limit:
                    conn.sendall(self.filler)
                    self.sent += len(self.filler)
            except OSError:
                pass  # the client hung up: what we want

    def __enter__(self) -> EndlessServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
        self.thread.join(timeout=15)


ENDLESS = {
    "many headers": (b"HTTP/1.1 200 OK\r\n", b"X-Filler: " + b"a" * 100 + b"\r\n"),
    "one endless header value": (b"HTTP/1.1 200 OK\r\nX-Endless: ", b"a" * 4096),
    "endless trailers": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n",
        b"X-Trailer: " + b"b" * 100 + b"\r\n",
    ),
}


@pytest.mark.parametrize("name", list(ENDLESS))
async def test_an_answer_head_that_never_ends_fails_fast_with_bounded_memory(name: str) -> None:
    prefix, filler = ENDLESS[name]
    with EndlessServer(prefix, filler) as server:
        tracemalloc.start()
        try:
            async with ModellixClient(server.url, KEY) as client:
                with pytest.raises(ProtocolError, match="larger than the transport's cap") as info:
                    await client.poll("task-1")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert server.sent < server.limit  # the client hung up long before the end
    assert peak < 8 * 2**20
    assert info.value.retryable
    assert KEY not in str(info.value)


# -- a name that resolves to a dead IPv6 address first ---------------------------------------


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def _dead_ipv6_listener(port: int) -> list[socket.socket] | None:
    """Sockets making ``[::1]:port`` a listener whose full accept queue leaves new connects
    pending, or ``None`` when the port is taken there."""
    dead = socket.socket(socket.AF_INET6)
    try:
        dead.bind(("::1", port))
    except OSError:
        dead.close()
        return None
    dead.listen(0)
    held = [dead]
    for _ in range(4):  # fill the accept queue: later SYNs are dropped
        filler = socket.socket(socket.AF_INET6)
        filler.setblocking(False)
        filler.connect_ex(("::1", port))
        held.append(filler)
    return held


def _connect_hangs(port: int) -> bool:
    with socket.socket(socket.AF_INET6) as probe:
        probe.settimeout(0.5)
        try:
            probe.connect(("::1", port))
        except OSError:  # TimeoutError included: the SYN went unanswered
            return True
    return False


def _localhost_v6_first(calls: list[object]) -> Callable[..., object]:
    """``socket.getaddrinfo`` where ``localhost`` resolves to ::1 first, then 127.0.0.1."""
    real = socket.getaddrinfo

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
        calls.append(host)
        if host in ("localhost", b"localhost"):  # anyio passes bytes
            return [*real("::1", *args, **kwargs), *real("127.0.0.1", *args, **kwargs)]  # type: ignore[arg-type]
        return real(host, *args, **kwargs)  # type: ignore[arg-type]

    return getaddrinfo


@pytest.fixture
def dead_ipv6_and_live_ipv4(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``localhost`` resolving to ::1 first, then 127.0.0.1 (as on many machines), on a port
    where ::1 never completes a connection (its accept queue is full) and 127.0.0.1 serves."""
    if not _ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    sim = Simulator(SimulatorConfig(api_key=KEY))
    for _ in range(20):
        with serve_in_thread(sim) as url:
            port = int(url.rsplit(":", 1)[1])
            held = _dead_ipv6_listener(port)
            if held is None:
                continue
            try:
                if not _connect_hangs(port):
                    pytest.skip("this kernel does not leave connects to a full queue pending")
                calls: list[object] = []
                monkeypatch.setattr(socket, "getaddrinfo", _localhost_v6_first(calls))
                yield f"http://localhost:{port}"
                monkeypatch.undo()
                assert calls  # the name was resolved through the patched resolver
            finally:
                monkeypatch.undo()
                for sock in held:
                    sock.close()
            return
    pytest.skip("no port free on both ::1 and 127.0.0.1")


@pytest.mark.timeout(25)
async def test_a_dead_ipv6_address_falls_back_to_ipv4_long_before_the_connect_timeout(
    dead_ipv6_and_live_ipv4: str,
) -> None:
    async with ModellixClient(dead_ipv6_and_live_ipv4, KEY, connect_timeout=30.0) as client:
        submitted = await client.submit(SUBMIT_PATH, {"prompt": "a red fox"})
    assert submitted.task_id
