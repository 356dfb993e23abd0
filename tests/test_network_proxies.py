"""Proxies from the environment, with real proxy servers on loopback (proxy.py, pproxy).

Loopback targets, however spelt, are never sent through ``HTTP_PROXY``/``ALL_PROXY`` (plain
http carrying the key must not leave the machine); ``NO_PROXY`` is honoured; a SOCKS proxy
works with the ``socks`` extra and is refused with one line without it. Only loopback
addresses are ever contacted.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
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

from batchgen.api import ConfigError, ModellixClient

pytestmark = pytest.mark.anyio

KEY = "proxy-test-key-0123"
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


class Log:
    """A proxy's log file: counts the requests it forwarded."""

    def __init__(self, path: Path, marker: str) -> None:
        self.path, self.marker = path, marker

    def count(self) -> int:
        text = self.path.read_text(errors="replace") if self.path.exists() else ""
        return text.count(self.marker)

    def wait_for(self, n: int) -> int:
        deadline = time.monotonic() + 10
        while self.count() < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.count()


@pytest.fixture(scope="module")
def http_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Log]]:
    """proxy.py, a forward HTTP proxy, on a loopback port; its access log counts requests."""
    folder = tmp_path_factory.mktemp("proxy")
    port = free_port()
    log = folder / "access.log"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "proxy", "--hostname", "127.0.0.1", "--port", str(port)),
            *("--num-workers", "1", "--num-acceptors", "1", "--log-file", str(log)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port, proc, "proxy.py")
        yield f"http://127.0.0.1:{port}", Log(log, "access_log")
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def socks_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Log]]:
    """pproxy as a SOCKS5 server on a loopback port; its verbose output counts tunnels.
    (pproxy picks uvloop when importable and then fails on Python >= 3.10: hidden here.)"""
    pytest.importorskip("socksio")
    folder = tmp_path_factory.mktemp("socks")
    port = free_port()
    out = folder / "pproxy.out"
    code = (
        "import sys; sys.modules['uvloop'] = None; from pproxy.server import main; "
        f"sys.argv = ['pproxy', '-l', 'socks5://127.0.0.1:{port}', '-v']; main()"
    )
    with out.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-u", "-c", code], stdout=sink, stderr=sink)
    try:
        wait_listening(port, proc, "pproxy")
        yield f"socks5://127.0.0.1:{port}", Log(out, "socks5 127.0.0.1:")
    finally:
        stop(proc)


@pytest.fixture
def clean_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


async def _api(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        await read_request(reader)
        writer.write(answer(SUBMITTED))


async def test_the_proxy_log_sees_a_request_sent_through_the_proxy(
    http_proxy: tuple[str, Log],
) -> None:
    """The control of the tests below: what goes through proxy.py shows in its log."""
    proxy, log = http_proxy
    before = log.count()
    async with serve(_api) as (url, accepted), httpx.AsyncClient(proxy=proxy) as plain:
        assert (await plain.post(url + SUBMIT_PATH)).status_code == 200
    assert log.wait_for(before + 1) == before + 1
    assert len(accepted) == 1


@pytest.mark.parametrize(
    ("bind", "spelling"),
    [("127.0.0.2", "127.0.0.2"), ("127.0.0.1", "localhost."), ("::1", "[::1]")],
)
async def test_loopback_in_any_spelling_is_never_sent_through_the_proxy(
    http_proxy: tuple[str, Log], clean_proxy_env: pytest.MonkeyPatch, bind: str, spelling: str
) -> None:
    proxy, log = http_proxy
    clean_proxy_env.setenv("HTTP_PROXY", proxy)
    clean_proxy_env.setenv("ALL_PROXY", proxy)
    real = socket.getaddrinfo

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
        # "localhost." resolves as "localhost" (some resolvers would ask DNS: never here).
        name = host.decode() if isinstance(host, bytes) else host  # anyio passes bytes
        return real("localhost" if name == "localhost." else host, *args, **kwargs)  # type: ignore[arg-type]

    clean_proxy_env.setattr(socket, "getaddrinfo", getaddrinfo)
    before = log.count()
    try:
        server = serve(_api, host=bind)
        url, accepted = await server.__aenter__()
    except OSError:
        pytest.skip(f"cannot listen on {bind}")
    try:
        port = url.rsplit(":", 1)[1]
        async with ModellixClient(f"http://{spelling}:{port}", KEY) as client:
            submitted = await client.submit(SUBMIT_PATH, {"prompt": "x"})
    finally:
        await server.__aexit__(None, None, None)
    assert submitted.task_id == "t-1"
    assert len(accepted) == 1  # it reached the server...
    time.sleep(0.2)
    assert log.count() == before  # ...directly


async def test_no_proxy_is_honoured_and_loopback_stays_direct(
    http_proxy: tuple[str, Log], clean_proxy_env: pytest.MonkeyPatch
) -> None:
    proxy, log = http_proxy
    clean_proxy_env.setenv("HTTPS_PROXY", proxy)
    clean_proxy_env.setenv("HTTP_PROXY", proxy)
    clean_proxy_env.setenv("NO_PROXY", "cdn.example.com,127.0.0.1")
    before = log.count()
    async with serve(_api) as (url, accepted), ModellixClient(url, KEY) as client:
        await client.submit(SUBMIT_PATH, {"prompt": "x"})
        # Where non-loopback requests would go (decided without sending anything):
        route = client._http._transport_for_url
        direct = route(httpx.URL(url))
        assert route(httpx.URL("https://cdn.example.com/f.png")) is direct  # NO_PROXY
        assert route(httpx.URL("https://other.example.com/f.png")) is not direct  # proxied
    assert len(accepted) == 1
    time.sleep(0.2)
    assert log.count() == before


async def test_a_socks_proxy_works_with_the_socks_extra_and_loopback_stays_direct(
    socks_proxy: tuple[str, Log], clean_proxy_env: pytest.MonkeyPatch
) -> None:
    proxy, log = socks_proxy
    async with serve(_api) as (url, accepted):
        async with httpx.AsyncClient(proxy=proxy) as plain:  # control: the SOCKS path works
            assert (await plain.post(url + SUBMIT_PATH)).status_code == 200
        assert log.wait_for(1) == 1
        clean_proxy_env.setenv("ALL_PROXY", proxy)
        async with ModellixClient(url, KEY) as client:
            submitted = await client.submit(SUBMIT_PATH, {"prompt": "x"})
            route = client._http._transport_for_url
            assert route(httpx.URL("https://cdn.example.com/f.png")) is not route(httpx.URL(url))
    assert submitted.task_id == "t-1"
    assert len(accepted) == 2
    time.sleep(0.2)
    assert log.count() == 1  # only the control went through pproxy


def test_a_socks_proxy_without_socksio_is_a_one_line_config_error(
    clean_proxy_env: pytest.MonkeyPatch,
) -> None:
    clean_proxy_env.setenv("ALL_PROXY", "socks5://127.0.0.1:1080")
    clean_proxy_env.setitem(sys.modules, "socksio", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"socksio") as info:
        ModellixClient("http://127.0.0.1:9", KEY)
    assert "\n" not in str(info.value)
    assert info.value.exit_code == 3


def test_cli_run_with_an_unusable_socks_proxy_exits_3_without_a_traceback(
    tmp_path: Path,
) -> None:
    manifest = Path(__file__).parents[1] / "manifests" / "example.yaml"
    code = (
        "import sys; sys.modules['socksio'] = None; from batchgen.cli import main; "
        "sys.exit(main(sys.argv[1:]))"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "MODELLIX_API_KEY": KEY,
        "ALL_PROXY": "socks5://127.0.0.1:1080",
    }
    result = subprocess.run(
        [
            *(sys.executable, "-c", code, "run", str(manifest)),
            *("--base-url", "http://127.0.0.1:9", "--output", str(tmp_path / "out")),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert "socksio" in result.stderr
    assert KEY not in result.stderr + result.stdout
