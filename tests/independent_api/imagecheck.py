"""Strict, dependency-free checks that bytes are a complete PNG or baseline JPEG.

Independent of the project's own image checks, so tests can judge its output.
"""

from __future__ import annotations

import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


class ImageError(ValueError):
    """The bytes are not a complete, valid image."""


def check_png(data: bytes) -> tuple[int, int]:
    """Validate every chunk's CRC, IHDR..IEND order and the pixel data size; (w, h)."""
    if not data.startswith(PNG_SIGNATURE):
        raise ImageError("no PNG signature")
    pos = len(PNG_SIGNATURE)
    kinds: list[bytes] = []
    idat = b""
    width = height = depth = colour = 0
    while pos < len(data):
        if pos + 8 > len(data):
            raise ImageError("truncated chunk header")
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        crc_bytes = data[pos + 8 + length : pos + 12 + length]
        if len(body) != length or len(crc_bytes) != 4:
            raise ImageError(f"truncated {kind!r} chunk")
        if zlib.crc32(kind + body) & 0xFFFFFFFF != struct.unpack(">I", crc_bytes)[0]:
            raise ImageError(f"bad CRC in {kind!r} chunk")
        kinds.append(kind)
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
        if kind == b"IEND":
            break
    if not kinds or kinds[0] != b"IHDR" or kinds[-1] != b"IEND":
        raise ImageError(f"chunks out of order: {kinds[:3]}...{kinds[-1:]}")
    if pos != len(data):
        raise ImageError("bytes after IEND")
    if depth != 8 or colour not in _PNG_CHANNELS:
        raise ImageError(f"unexpected bit depth {depth} / colour type {colour}")
    try:
        raw = zlib.decompress(idat)
    except zlib.error as exc:
        raise ImageError(f"IDAT does not inflate: {exc}") from exc
    if len(raw) != height * (1 + width * _PNG_CHANNELS[colour]):
        raise ImageError("pixel data size does not match IHDR")
    stride = 1 + width * _PNG_CHANNELS[colour]
    if max(raw[::stride]) > 4:
        raise ImageError("unknown scanline filter type")
    return width, height


class _Bits:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.bit = 0

    def read(self) -> int:
        if self.pos >= len(self.data):
            raise ImageError("entropy-coded data ended early")
        value = (self.data[self.pos] >> (7 - self.bit)) & 1
        self.bit += 1
        if self.bit == 8:
            self.bit = 0
            self.pos += 1
        return value

    def read_n(self, n: int) -> int:
        value = 0
        for _ in range(n):
            value = (value << 1) | self.read()
        return value


def _huffman(counts: bytes, symbols: bytes) -> dict[tuple[int, int], int]:
    table: dict[tuple[int, int], int] = {}
    code = 0
    k = 0
    for length in range(1, 17):
        for _ in range(counts[length - 1]):
            table[(length, code)] = symbols[k]
            k += 1
            code += 1
        code <<= 1
    return table


def _decode_symbol(bits: _Bits, table: dict[tuple[int, int], int]) -> int:
    code = 0
    for length in range(1, 17):
        code = (code << 1) | bits.read()
        if (length, code) in table:
            return table[(length, code)]
    raise ImageError("invalid Huffman code")


def check_jpeg(data: bytes) -> tuple[int, int]:
    """Walk a single-component baseline JPEG: segments, tables, every block; (w, h)."""
    if not data.startswith(b"\xff\xd8"):
        raise ImageError("no SOI marker")
    if not data.endswith(b"\xff\xd9"):
        raise ImageError("no EOI marker at the end")
    pos = 2
    tables: dict[int, dict[tuple[int, int], int]] = {}
    width = height = components = 0
    while True:
        if data[pos] != 0xFF:
            raise ImageError("expected a marker")
        marker = data[pos + 1]
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        payload = data[pos + 4 : pos + 2 + length]
        if len(payload) != length - 2:
            raise ImageError("truncated segment")
        pos += 2 + length
        if marker == 0xC0:
            height, width = struct.unpack(">HH", payload[1:5])
            components = payload[5]
        elif marker in (0xC1, 0xC2, 0xC3):
            raise ImageError("only baseline JPEG is checked")
        elif marker == 0xC4:
            at = 0
            while at < len(payload):
                ident = payload[at]
                counts = payload[at + 1 : at + 17]
                n = sum(counts)
                tables[ident] = _huffman(counts, payload[at + 17 : at + 17 + n])
                at += 17 + n
        elif marker == 0xDA:
            break
    if components != 1 or not width or not height:
        raise ImageError("expected one component and a frame header")
    scan = data[pos:-2]
    if b"\xff" in scan.replace(b"\xff\x00", b""):
        raise ImageError("unstuffed 0xFF or a marker inside the scan")
    bits = _Bits(scan.replace(b"\xff\x00", b"\xff"))
    dc_table, ac_table = tables.get(0x00), tables.get(0x10)
    if dc_table is None or ac_table is None:
        raise ImageError("missing Huffman tables")
    blocks = ((width + 7) // 8) * ((height + 7) // 8)
    for _ in range(blocks):
        bits.read_n(_decode_symbol(bits, dc_table))
        k = 1
        while k < 64:
            symbol = _decode_symbol(bits, ac_table)
            if symbol == 0x00:
                break
            k += (symbol >> 4) + 1
            bits.read_n(symbol & 0x0F)
    rest = bits.data[bits.pos :]
    if bits.bit:
        tail = bits.data[bits.pos] & ((1 << (8 - bits.bit)) - 1)
        if tail != (1 << (8 - bits.bit)) - 1:
            raise ImageError("padding bits are not ones")
        rest = rest[1:]
    if rest:
        raise ImageError("bytes left over after the last block")
    return width, height


def check_image(data: bytes) -> tuple[str, int, int]:
    """("png"|"jpeg", width, height) for a complete image, else ImageError."""
    if data.startswith(PNG_SIGNATURE):
        return ("png", *check_png(data))
    if data.startswith(b"\xff\xd8"):
        return ("jpeg", *check_jpeg(data))
    raise ImageError("neither PNG nor JPEG")
