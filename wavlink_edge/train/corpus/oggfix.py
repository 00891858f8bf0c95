"""Make libsndfile's Ogg output byte-reproducible: it draws a random stream serial number per file.

Rewriting the serial (and each page's CRC) to a constant keeps the committed eval split stable in git
when it is regenerated; the decoded audio is unaffected.
"""
from __future__ import annotations

import struct
import zlib

_REV8 = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def _crc(data: bytes) -> int:
    """Ogg's CRC-32 (poly 0x04C11DB7, not reflected, init 0, no final xor) via zlib's C implementation.

    zlib computes the reflected CRC with init/xorout 0xFFFFFFFF: bit-reversing the input bytes and the
    result gives the non-reflected CRC, and XOR with the CRC of as many zero bytes cancels init/xorout.
    """
    r = zlib.crc32(data.translate(_REV8)) ^ zlib.crc32(bytes(len(data)))
    return int(f"{r:032b}"[::-1], 2)


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
