"""Gzip members: compress one chunk into a self-contained member, and inflate a run of members.

Each eStargz chunk is a complete gzip member, so compression is one-shot per member and members
can be compressed on several threads at once. The deflate engine is chosen per level (see
:data:`GZIP_ENGINES`): ISA-L for speed, libdeflate where density matters.
"""

from __future__ import annotations

import struct
import zlib
from typing import Callable, Iterable, Iterator

import deflate
from isal import isal_zlib

from .errors import FormatError

__all__ = ["GzipCompressor", "GZIP_ENGINES", "DEFAULT_GZIP_LEVEL", "inflate_members"]

#: Level -> (engine, engine level). Each level is at least as dense as the Go reference at the same
#: level on a real layer, using the fastest engine that achieves it (docs/benchmarks.md).
GZIP_ENGINES: dict[int, tuple[str, int]] = {
    0: ("stored", 0),
    1: ("isal", 1),
    2: ("libdeflate", 1),
    3: ("libdeflate", 2),
    4: ("libdeflate", 4),
    5: ("libdeflate", 5),
    6: ("libdeflate", 5),
    7: ("libdeflate", 6),
    8: ("libdeflate", 7),
    9: ("libdeflate", 9),
}
#: The default level: as dense as the Go reference's default (level 9) within a percent, many
#: times faster. Level 9 is denser than Go's level 9.
DEFAULT_GZIP_LEVEL = 6

_OUTPUT_BLOCK = 1 << 20
_MEMBER_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00%c\xff"


def _raw_deflate(engine: str, level: int) -> Callable[[bytes], bytes]:
    if engine == "isal":
        return lambda data: isal_zlib.compress(data, level, wbits=-15)
    if engine == "libdeflate":
        return lambda data: deflate.deflate_compress(data, level)
    return lambda data: zlib.compress(data, 0, wbits=-15)


class GzipCompressor:
    """Compresses one chunk into one gzip member (header, raw deflate, CRC-32, size)."""

    def __init__(self, level: int = DEFAULT_GZIP_LEVEL) -> None:
        if level not in GZIP_ENGINES:
            raise ValueError(f"gzip compression level must be 0-9, not {level}")
        self.level = level
        engine, engine_level = GZIP_ENGINES[level]
        self._deflate = _raw_deflate(engine, engine_level)
        # XFL as Go writes it: 2 for the best level, 4 for the fastest, 0 otherwise.
        self._header = _MEMBER_HEADER % {9: 2, 1: 4}.get(level, 0)

    def compress(self, data: bytes) -> bytes:
        """One complete gzip member holding ``data``."""
        return b"".join((
            self._header,
            self._deflate(data),
            struct.pack("<II", isal_zlib.crc32(data) & 0xFFFFFFFF, len(data) & 0xFFFFFFFF),
        ))


def inflate_members(pieces: Iterable[bytes], max_output: int | None = None) -> Iterator[bytes]:
    """Inflate consecutive gzip members fed as ``pieces``; stop after ``max_output`` bytes if given.

    Output comes in blocks of at most 1 MiB, so memory does not depend on the data.
    Raises FormatError on corrupt data or when the input ends inside a member.
    """
    remaining = max_output
    inflater = None
    for piece in pieces:
        while True:
            if inflater is None:
                if not piece:
                    break
                inflater = isal_zlib.decompressobj(wbits=31)
            limit = _OUTPUT_BLOCK if remaining is None else min(_OUTPUT_BLOCK, remaining)
            try:
                out = inflater.decompress(piece, limit)
            except isal_zlib.error as exc:
                raise FormatError(f"corrupt gzip data: {exc}") from None
            if out:
                yield out
                if remaining is not None:
                    remaining -= len(out)
                    if remaining == 0:
                        return
            if inflater.eof:
                piece, inflater = inflater.unused_data, None
                continue
            piece = inflater.unconsumed_tail
            if not piece and len(out) < limit:
                break
    if inflater is not None:
        raise FormatError("gzip data ends in the middle of a member")
