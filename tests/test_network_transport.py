"""The default transport over real loopback sockets: what the seam promises on the direct
path (aiohttp's transport) and which requests keep httpx's own (through a proxy).

Each test starts a tiny server on loopback that answers with exact bytes, so what is checked
is what goes on the wire and how what comes back is classified.
"""

from __future__ import annotations

import asyncio
import io

import httpx
import pytest
from nethelpers import SUBMIT_PATH, SUBMITTED, answer, read_request, serve

from batchgen.api import ModellixClient, TransportFailure
from batchgen.api.transport import MAX_HEAD_LINE

pytestmark = pytest.mark.anyio

KEY = "transport-test-key-0123"
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


async def test_a_cookie_the_server_sets_is_never_sent_back() -> None:
    heads: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            heads.append((await read_request(reader)).split(b"\r\n\r\n")[0].lower())
            writer.write(answer(SUBMITTED, b"Set-Cookie: session=abc; Path=/"))

    async with serve(handler) as (url, _), ModellixClient(url, KEY) as client:
        await client.submit(SUBMIT_PATH, {"prompt": "x"})
        await client.submit(SUBMIT_PATH, {"prompt": "y"})
    assert len(heads) == 2
    assert not any(line.startswith(b"cookie") for line in heads[1].split(b"\r\n"))


async def test_a_body_cut_short_is_a_retryable_transport_failure() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n\x89PNG")
        await writer.drain()  # then the connection closes, 996 bytes short

    async with serve(handler) as (url, _), ModellixClient(url, KEY) as client:
        with pytest.raises(TransportFailure) as info:
            await client.download(url + "/files/t-1.png", io.BytesIO())
    assert info.value.retryable
    assert KEY not in str(info.value)


async def test_an_unparsable_answer_to_a_submit_is_ambiguous() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"this is not HTTP\r\n\r\n")
        await writer.drain()

    async with serve(handler) as (url, _), ModellixClient(url, KEY) as client:
        with pytest.raises(TransportFailure) as info:
            await client.submit(SUBMIT_PATH, {"prompt": "x"})
    assert info.value.ambiguous
    assert KEY not in str(info.value)


async def test_a_long_header_line_within_the_cap_is_accepted() -> None:
    long_header = b"X-Long: " + b"a" * (MAX_HEAD_LINE // 2)  # past aiohttp's default 8 KiB

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(SUBMITTED, long_header))

    async with serve(handler) as (url, _), ModellixClient(url, KEY) as client:
        submitted = await client.submit(SUBMIT_PATH, {"prompt": "x"})
    assert submitted.task_id == "t-1"


async def test_requests_through_a_proxy_keep_httpx_transport_and_loopback_stays_direct(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    async with ModellixClient("http://127.0.0.1:9", KEY) as client:
        route = client._http._transport_for_url  # decided without sending anything
        direct = route(httpx.URL("http://127.0.0.1:9/x"))
        proxied = route(httpx.URL("https://cdn.example.com/f.png"))
        assert route(httpx.URL("http://[::1]:9/x")) is direct
        assert route(httpx.URL("http://LOCALHOST.:9/x")) is direct
    assert proxied is not direct
    assert isinstance(proxied, httpx.AsyncHTTPTransport)
    assert not isinstance(direct, httpx.AsyncHTTPTransport)
