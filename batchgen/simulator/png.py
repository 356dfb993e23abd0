"""Real, valid PNG bytes of a given size, for the simulator's result files.

Only ``zlib`` and ``struct``: no imaging library. The pixel data of each
(width, height, alpha) is compressed once and cached; each file then gets its
own small ``tEXt`` chunk (e.g. the task id), so files of different tasks have
different bytes and hashes while costing almost nothing to build.
"""

from __future__ import annotations

import functools
import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Larger images than this are refused: the simulator must never be asked to
# allocate gigabytes because of a body field.
MAX_SIDE = 8192


def _chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC of type + data."""
    crc = zlib.crc32(data, zlib.crc32(kind)) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


@functools.lru_cache(maxsize=32)
def _head_and_body(width: int, height: int, alpha: bool) -> tuple[bytes, bytes]:
    """The signature + IHDR, and IDAT + IEND, of a (cached) gradient image."""
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise ValueError(f"image side out of range 1..{MAX_SIDE}: {width}x{height}")
    channels = 4 if alpha else 3
    color_type = 6 if alpha else 2
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    # A horizontal gradient in red, a vertical one in green, constant blue (and
    # a constant alpha). Rows use filter 0, so any decoder sees plain pixels.
    row = bytearray(width * channels)
    row[0::channels] = bytes((x * 255) // max(1, width - 1) for x in range(width))
    row[2::channels] = b"\xa0" * width
    if alpha:
        row[3::channels] = b"\xe0" * width
    rows = []
    for y in range(height):
        row[1::channels] = bytes(((y * 255) // max(1, height - 1),)) * width
        rows.append(b"\x00" + bytes(row))
    raw = b"".join(rows)
    compressor = zlib.compressobj(6)
    idat = compressor.compress(raw) + compressor.flush()
    head = PNG_SIGNATURE + _chunk(b"IHDR", ihdr)
    body = _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    return head, body


def png_bytes(width: int, height: int, *, alpha: bool = False, text: str | None = None) -> bytes:
    """Return a complete, valid PNG file of ``width`` x ``height`` pixels.

    ``alpha`` makes an RGBA image (for transparent backgrounds). ``text``, if
    given, goes into a ``tEXt`` chunk with the keyword ``Comment`` so that every
    file can be told apart; the pixel data is shared and cached per size.
    """
    head, body = _head_and_body(width, height, alpha)
    if text is None:
        return head + body
    comment = _chunk(b"tEXt", b"Comment\x00" + text.encode("latin-1", "replace"))
    return head + comment + body
