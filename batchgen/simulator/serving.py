"""Serving a :class:`~batchgen.simulator.app.Simulator` on a real socket: uvicorn on a
loopback port (a non-loopback host only with ``allow_remote``), in the foreground
(:func:`run_server`, ``batchgen simulate``) or in a thread for tests and benchmarks
(:func:`serve_in_thread`)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

from batchgen.api import is_loopback_host

if TYPE_CHECKING:
    from batchgen.simulator.app import Simulator

__all__ = ["bind_socket", "run_server", "serve_in_thread", "url_of"]


def bind_socket(host: str, port: int, allow_remote: bool) -> socket.socket:
    if not allow_remote and not is_loopback_host(host):
        raise ValueError(f"refusing to serve on non-loopback host {host!r} (allow_remote=False)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets that say they are
    # TCP, and without it Nagle + delayed ACKs add ~40 ms to every answer.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)  # accept (queue) connections from now on, before uvicorn starts
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _uvicorn_server(sim: Simulator, http: str, *, own_logging: bool) -> Any:
    import uvicorn  # noqa: PLC0415  (only the served modes need it)

    # log_config=None: a server inside someone else's process leaves their logging alone
    # (uvicorn's default config re-enables every logger another configuration disabled).
    extra: dict[str, Any] = {} if own_logging else {"log_config": None}
    config = uvicorn.Config(
        cast(Any, sim),
        http=http,
        ws="none",
        lifespan="off",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=3,
        **extra,
    )
    return uvicorn.Server(config)


def run_server(
    sim: Simulator,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    allow_remote: bool = False,
    http: str = "auto",
    ready: Callable[[str], None] | None = None,
) -> None:
    """Serve ``sim`` with uvicorn until interrupted (SIGINT returns; SIGTERM ends the process).

    Refuses a non-loopback ``host`` unless ``allow_remote``. ``ready`` is called
    with the base URL (real port, when ``port`` is 0) once the socket is bound.
    """
    sock = bind_socket(host, port, allow_remote)
    if ready is not None:
        ready(url_of(sock))
    server = _uvicorn_server(sim, http, own_logging=True)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        # uvicorn shuts down gracefully on SIGINT, then re-raises it: that is a normal stop.
        pass
    finally:
        sock.close()


@contextlib.contextmanager
def serve_in_thread(
    sim: Simulator,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    allow_remote: bool = False,
    http: str = "auto",
    startup_timeout: float = 10.0,
) -> Iterator[str]:
    """Serve ``sim`` with a real uvicorn server in a thread; yield its base URL.

    For tests and benchmarks over real sockets: ``with serve_in_thread(sim) as
    url: ...``. ``port=0`` picks a free port. The server stops when the block
    exits (waiting at most a few seconds for open requests).
    """
    sock = bind_socket(host, port, allow_remote)
    server = _uvicorn_server(sim, http, own_logging=False)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="batchgen-simulator", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the simulator server stopped during startup")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the simulator server did not start in {startup_timeout} s")
            time.sleep(0.005)
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(timeout=startup_timeout)
        sock.close()
