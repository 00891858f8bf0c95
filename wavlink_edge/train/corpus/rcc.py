"""Read files out of Qt binary resource (.rcc) bundles, as gcompris-qt-data ships its sounds.

Layout (Qt's rcc format, versions 1-3): a 'qres' header with offsets of the tree, the data and the names;
tree entries of 14 (v1) or 22 bytes (v2+, with a modification time); a directory entry holds its child
count and first child, a file entry its data offset; data are length-prefixed, zlib-compressed when flag 1.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

COMPRESSED, DIRECTORY, COMPRESSED_ZSTD = 1, 2, 4


def read_rcc(path: str | Path) -> dict[str, bytes]:
    """{'/resource/path': bytes} of every file in the bundle."""
    b = Path(path).read_bytes()
    if b[:4] != b"qres":
        raise ValueError(f"{path} is not a Qt resource bundle")
    version, tree, data, names = struct.unpack(">IIII", b[4:20])
    entry = 14 if version == 1 else 22

    def name(offset: int) -> str:
        (n,) = struct.unpack(">H", b[names + offset : names + offset + 2])
        return b[names + offset + 6 : names + offset + 6 + 2 * n].decode("utf-16-be")

    out: dict[str, bytes] = {}
    stack = [(0, "")]
    while stack:
        i, prefix = stack.pop()
        e = tree + i * entry
        name_offset, flags = struct.unpack(">IH", b[e : e + 6])
        path_here = prefix + "/" + name(name_offset) if i else ""
        if flags & DIRECTORY:
            count, first = struct.unpack(">II", b[e + 6 : e + 14])
            stack += [(c, path_here) for c in range(first, first + count)]
            continue
        (offset,) = struct.unpack(">I", b[e + 10 : e + 14])
        (size,) = struct.unpack(">I", b[data + offset : data + offset + 4])
        raw = b[data + offset + 4 : data + offset + 4 + size]
        if flags & COMPRESSED_ZSTD:
            continue  # not used by the files we take; zstd is not in the standard library
        out[path_here] = zlib.decompress(raw[4:]) if flags & COMPRESSED else raw
    return out
