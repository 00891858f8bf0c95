"""Make libsndfile's Ogg output byte-reproducible: it draws a random stream serial number per file.

Rewriting the serial (and each page's CRC) to a constant keeps the committed eval split stable in git
when it is regenerated; the decoded audio is unaffected.
"""
from __future__ import annotations

import struct


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else (r << 1)
        table.append(r & 0xFFFFFFFF)
    return table


_TABLE = _crc_table()


def _crc(data: bytes) -> int:
    crc = 0
    for b in data:
        crc = ((crc << 8) ^ _TABLE[((crc >> 24) & 0xFF) ^ b]) & 0xFFFFFFFF
    return crc


def fix_serial(data: bytes, serial: int = 0x57A11E) -> bytes:
    out, pos = bytearray(), 0
    while pos < len(data):
        assert data[pos: pos + 4] == b"OggS", "not an Ogg page"
        nseg = data[pos + 26]
        size = 27 + nseg + sum(data[pos + 27: pos + 27 + nseg])
        page = bytearray(data[pos: pos + size])
        page[14:18] = struct.pack("<I", serial)
        page[22:26] = b"\0\0\0\0"
        page[22:26] = struct.pack("<I", _crc(bytes(page)))
        out += page
        pos += size
    return bytes(out)
