"""Real servers on loopback for the network tests: the simulator served by uvicorn over TLS
(a private CA made by trustme), and a TLS listener that only completes handshakes."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import trustme
import uvicorn

from batchgen.simulator.app import Simulator


def write_ca(tmp: Path, *names: str) -> tuple[Path, trustme.LeafCert]:
    """A private CA (its PEM file in ``tmp``) and a server certificate for ``names``."""
    ca = trustme.CA()
    ca_file = tmp / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return ca_file, ca.issue_cert(*names)


@contextmanager
def tls_simulator(sim: Simulator, cert: trustme.LeafCert, tmp: Path) -> Iterator[int]:
    """``sim`` served by uvicorn over TLS on 127.0.0.1 with ``cert``; yields the port."""
    cert_file, key_file = tmp / "server.pem", tmp / "server.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        cast(Any, sim),
        lifespan="off",
        log_config=None,
        log_level="warning",
        ssl_certfile=str(cert_file),
        ssl_keyfile=str(key_file),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(2000):
            if server.started:
                break
            threading.Event().wait(0.005)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@contextmanager
def handshake_only(cert: trustme.LeafCert) -> Iterator[int]:
    """A TLS listener on 127.0.0.1 that completes handshakes (or not) and closes; the port."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.2)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            try:
                conn.settimeout(5)
                ctx.wrap_socket(conn, server_side=True).close()
            except OSError:
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield srv.getsockname()[1]
    finally:
        done.set()
        thread.join(5)
        srv.close()
