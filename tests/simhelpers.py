"""Helpers shared by the simulator's tests: a hand-moved clock, a client, a PNG checker."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import httpx

from batchgen.simulator.app import Simulator, SimulatorConfig

KEY = "sim-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
SUBMIT = "/api/v1/openai/gpt-image-1.5/async"


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_sim(clock: FakeClock | None = None, **knobs: Any) -> Simulator:
    """A simulator with a fake clock (so no test depends on wall-clock time)."""
    return Simulator(SimulatorConfig(**knobs), clock=clock or FakeClock())


def client_for(sim: Simulator) -> httpx.AsyncClient:
    """An in-process client: no socket, the ASGI app is called directly."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url="http://127.0.0.1")


def check_png(data: bytes) -> tuple[int, int, int]:
    """Decode a PNG's structure fully; return (width, height, color type).

    Checks the signature, every chunk's CRC, IHDR, that IDAT inflates to exactly
    the expected scanline bytes and that IEND is last.
    """
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos = 8
    chunks: list[tuple[bytes, bytes]] = []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc, kind
        chunks.append((kind, body))
        pos += 12 + length
    assert pos == len(data)
    assert chunks[0][0] == b"IHDR"
    assert chunks[-1] == (b"IEND", b"")
    width, height, depth, color, _, _, _ = struct.unpack(">IIBBBBB", chunks[0][1])
    assert depth == 8
    channels = {2: 3, 6: 4}[color]
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    assert len(raw) == height * (1 + width * channels)
    return width, height, color
