"""The client against real servers started on loopback: uvicorn (over TLS with a private CA
from trustme), hypercorn, gunicorn with uvicorn workers, ``python -m http.server``, and tiny
servers that answer with exact bytes (gzip, chunked, ``100 Continue``, a cross-port 302).
Only loopback addresses are contacted (127.0.0.1 and ``[::1]``)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from nethelpers import (
    SUBMIT_PATH,
    SUBMITTED,
    answer,
    free_port,
    read_request,
    serve,
    stop,
    wait_listening,
)
from tlshelpers import tls_simulator, write_ca

from batchgen.api import ModellixClient, TransportFailure, Unreachable
from batchgen.simulator.app import Simulator, SimulatorConfig, serve_in_thread

pytestmark = pytest.mark.anyio

KEY = "servers-test-key-0123"
SIM_KEY = "sim-key"


class _Sink:
    def __init__(self) -> None:
        self.size = 0
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.size += len(data)
        self.digest.update(data)
        return len(data)


@contextmanager
def _process(cmd: list[str], port: int, **env: str) -> Iterator[None]:
    proc = subprocess.Popen(
        cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_listening(port, proc, cmd[2])
        yield
    finally:
        stop(proc)


async def _submit_poll_download(url: str) -> int:
    async with ModellixClient(url, SIM_KEY) as client:
        task = await client.submit(SUBMIT_PATH, {"prompt": "a fox"})
        for _ in range(400):
            status = await client.poll(task.task_id, task.poll_url)
            if status.state == "success":
                break
            await asyncio.sleep(0.01)
        sink = _Sink()
        await client.download(status.resources[0].url, sink)
    return sink.size


# ---------------------------------------------------------------- TLS


async def test_a_private_ca_in_ssl_cert_file_is_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca_file, cert = write_ca(tmp_path, "127.0.0.1", "localhost")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    sim = Simulator(SimulatorConfig(time_scale=0.001))
    with tls_simulator(sim, cert, tmp_path) as port:
        assert await _submit_poll_download(f"https://127.0.0.1:{port}") > 0
        async with ModellixClient(f"https://localhost:{port}", SIM_KEY) as client:
            assert await client.validate_key()


async def test_a_certificate_for_another_name_or_ip_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca_file, cert = write_ca(tmp_path, "api.example.test", "127.0.0.9")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    with tls_simulator(Simulator(), cert, tmp_path) as port:
        for host in ("127.0.0.1", "localhost"):
            async with ModellixClient(f"https://{host}:{port}", SIM_KEY) as client:
                with pytest.raises(Unreachable, match="certificate verification failed") as info:
                    await client.submit(SUBMIT_PATH, {"prompt": "x"})
            assert not info.value.ambiguous
            assert not info.value.sent


# ---------------------------------------------------------------- addresses


async def test_the_simulator_on_ipv6_loopback_runs_a_task() -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    with serve_in_thread(Simulator(SimulatorConfig(time_scale=0.001)), host="::1") as url:
        assert url.startswith("http://[::1]:")
        assert await _submit_poll_download(url) > 0


# ---------------------------------------------------------------- answer framing


async def test_gzip_chunked_and_100_continue_answers_are_read() -> None:
    zipped = gzip.compress(SUBMITTED)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = 0
        while True:
            await read_request(reader)
            n += 1
            if n == 1:  # gzip JSON answer
                writer.write(answer(zipped, b"Content-Encoding: gzip"))
            elif n == 2:  # chunked answer
                half = len(SUBMITTED) // 2
                parts = (SUBMITTED[:half], SUBMITTED[half:])
                chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts)
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                writer.write(chunks + b"0\r\n\r\n")
            else:  # an interim 100 Continue before the answer
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + answer(SUBMITTED))

    async with serve(handler) as (url, accepted), ModellixClient(url, KEY) as client:
        for _ in range(3):
            assert (await client.submit(SUBMIT_PATH, {"prompt": "x"})).task_id == "t-1"
    assert len(accepted) == 1  # every answer framed right: one kept-alive connection


# ---------------------------------------------------------------- downloads


async def test_a_20_mb_body_from_python_http_server_arrives_whole(
    tmp_path: Path,
) -> None:
    data = os.urandom(20 * 2**20)
    (tmp_path / "big.png").write_bytes(data)
    port = free_port()
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    with _process([*cmd, "--directory", str(tmp_path)], port):
        async with ModellixClient(f"http://127.0.0.1:{port}", KEY) as client:
            sink = _Sink()
            result = await client.download(f"http://127.0.0.1:{port}/big.png", sink)
    assert result.bytes == sink.size == len(data)
    assert result.sha256 == hashlib.sha256(data).hexdigest()


async def test_a_cross_port_302_is_followed_without_the_key() -> None:
    heads: list[bytes] = []

    async def cdn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append((await read_request(reader)).split(b"\r\n\r\n")[0].lower())
        writer.write(answer(b"\x89PNG-bytes"))

    async with serve(cdn) as (cdn_url, _):

        async def api(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            heads.append((await read_request(reader)).split(b"\r\n\r\n")[0].lower())
            location = f"Location: {cdn_url}/files/t-1.png".encode()
            writer.write(answer(b"", location, status=b"302 Found"))

        async with serve(api) as (api_url, _), ModellixClient(api_url, KEY) as client:
            sink = _Sink()
            await client.download(api_url + "/files/t-1.png", sink)
    assert sink.size == len(b"\x89PNG-bytes")
    api_get, cdn_get = heads
    assert f"authorization: bearer {KEY}".encode() in api_get  # the API's own origin
    assert b"authorization" not in cdn_get  # another port is another origin


# ---------------------------------------------------------------- third-party ASGI servers


@pytest.mark.parametrize("server", ["hypercorn", "gunicorn"])
async def test_the_simulator_under_a_third_party_server_runs_a_task(server: str) -> None:
    port = free_port()
    app = "batchgen.simulator.asgi:app"
    cmd = {
        "hypercorn": [sys.executable, "-m", "hypercorn", app, "-b", f"127.0.0.1:{port}"],
        "gunicorn": [
            *(sys.executable, "-m", "gunicorn", app, "-k", "uvicorn.workers.UvicornWorker"),
            *("-w", "1", "-b", f"127.0.0.1:{port}"),
        ],
    }[server]
    config = json.dumps({"time_scale": 0.001})
    with _process(cmd, port, BATCHGEN_SIMULATOR=config):
        assert await _submit_poll_download(f"http://127.0.0.1:{port}") > 0


def _recycler(closing: str) -> Any:
    """Answers the first request of each connection, then closes the connection under the
    second one without reading it: with a reset (``SO_LINGER`` 0) or a clean close."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(SUBMITTED))
        await writer.drain()
        await reader.read(1)  # the next request has started to arrive: close under it
        sock = writer.get_extra_info("socket")
        if closing == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        else:
            writer.close()

    return handler


async def test_a_submit_reset_on_a_reused_connection_is_sent_again_not_ambiguous() -> None:
    async with serve(_recycler("reset")) as (url, accepted), ModellixClient(url, KEY) as client:
        await client.submit(SUBMIT_PATH, {"prompt": "first"})
        second = await client.submit(SUBMIT_PATH, {"prompt": "second"})
    assert second.task_id == "t-1"
    assert client.stale_connection_retries == 1
    assert len(accepted) == 2  # the second send went on a new connection


async def test_a_submit_never_goes_out_on_a_kept_alive_connection_the_server_closed() -> None:
    async def answer_once_then_close(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(reader)
        writer.write(answer(SUBMITTED))  # then the connection closes, as a recycled worker's
        await writer.drain()

    server = serve(answer_once_then_close)
    async with server as (url, accepted), ModellixClient(url, KEY) as client:
        await client.submit(SUBMIT_PATH, {"prompt": "first"})
        second = await client.submit(SUBMIT_PATH, {"prompt": "second"})
    assert second.task_id == "t-1"  # accepted: not written onto the closed connection
    assert client.stale_connection_retries == 0
    assert len(accepted) == 2


async def test_a_clean_close_without_an_answer_on_a_reused_connection_stays_ambiguous() -> None:
    async with serve(_recycler("close")) as (url, _), ModellixClient(url, KEY) as client:
        await client.submit(SUBMIT_PATH, {"prompt": "first"})
        with pytest.raises(TransportFailure) as info:
            await client.submit(SUBMIT_PATH, {"prompt": "second"})
    assert info.value.ambiguous  # the server may have processed it
    assert client.stale_connection_retries == 0


@pytest.mark.slow
@pytest.mark.parametrize("server", ["hypercorn", "gunicorn"])
async def test_submits_on_recycled_connections_are_accepted_or_ambiguous_never_lost(
    server: str,
) -> None:
    """Workers restarted every 5 requests close kept-alive connections under the client: a
    submit is accepted, sent again after a reset, or reported ambiguous; nothing else."""
    port = free_port()
    app = "batchgen.simulator.asgi:app"
    common = ("-b", f"127.0.0.1:{port}", "-w", "2", "--max-requests", "5")
    cmd = {
        "hypercorn": [sys.executable, "-m", "hypercorn", app, *common],
        "gunicorn": [
            *(sys.executable, "-m", "gunicorn", app, "-k", "uvicorn.workers.UvicornWorker"),
            *common,
        ],
    }[server]
    outcomes = {"accepted": 0, "ambiguous": 0, "other": 0}
    with _process(cmd, port):
        async with ModellixClient(f"http://127.0.0.1:{port}", SIM_KEY) as client:
            for i in range(150):
                try:
                    await client.submit(SUBMIT_PATH, {"prompt": f"a fox {i}"})
                    outcomes["accepted"] += 1
                except TransportFailure as exc:
                    outcomes["ambiguous" if exc.ambiguous else "other"] += 1
    assert outcomes["other"] == 0
    assert outcomes["accepted"] >= 140
