"""Compressed units: one chunk into one gzip member or zstd frame, and a run of them back.

Each chunk is a complete gzip member (eStargz) or zstd frame (zstd:chunked), so compression is
one-shot per unit and units can be compressed on several threads at once. Deflate is libdeflate at an
engine level chosen per level (see :data:`GZIP_ENGINES`), inflation is ISA-L's; zstd uses libzstd
through ``zstandard``.
"""

from __future__ import annotations

import io
import struct
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Protocol, cast, runtime_checkable

import deflate
import zstandard
from isal import isal_zlib

from .errors import FormatError

__all__ = [
    "Compressor", "ZerosCompressor", "GzipCompressor", "ZstdCompressor", "GZIP_ENGINES", "DEFAULT_GZIP_LEVEL",
    "DEFAULT_ZSTD_LEVEL", "DEFAULT_CONTAINERS_STORAGE_ZSTD_LEVEL", "inflate_members", "inflate_frames",
]

#: Level -> (engine, engine level). Each level is at least as dense as the Go reference at the same
#: level on a real layer, at the lowest libdeflate level that achieves it (docs/benchmarks.md).
#: ISA-L, faster at level 1, is not used to compress: its output for the same input can differ
#: from one process to the next.
GZIP_ENGINES: dict[int, tuple[str, int]] = {
    0: ("stored", 0),
    1: ("libdeflate", 1),
    2: ("libdeflate", 1),
    3: ("libdeflate", 2),
    4: ("libdeflate", 4),
    5: ("libdeflate", 5),
    6: ("libdeflate", 5),
    7: ("libdeflate", 6),
    8: ("libdeflate", 7),
    9: ("libdeflate", 8),
}
#: The default level: within a few percent of the Go reference's default (level 9) in size, and
#: 10-19 times faster. Level 9 (libdeflate 8: libdeflate 9 is 0.1% denser for a third more CPU)
#: is denser than Go's level 9.
DEFAULT_GZIP_LEVEL = 4

_OUTPUT_BLOCK = 1 << 20
#: The exception isal raises on corrupt deflate data (its stub declares an instance, not a class).
ISAL_ERROR = cast("type[Exception]", isal_zlib.error)
_MEMBER_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00%c\xff"


def _raw_deflate(engine: str, level: int) -> Callable[[bytes], bytes | bytearray]:
    if engine == "libdeflate":
        return lambda data: deflate.deflate_compress(data, level)
    return _stored_deflate


def _stored_deflate(data: bytes) -> bytes:
    """Raw deflate of ``data`` in stored blocks (level 0)."""
    compressor = zlib.compressobj(0, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


#: zstd level of stargz-snapshotter's zstd:chunked.
DEFAULT_ZSTD_LEVEL = 3
#: zstd level of containers/storage's zstd:chunked (podman and skopeo ask for 10).
DEFAULT_CONTAINERS_STORAGE_ZSTD_LEVEL = 10


class Compressor(Protocol):
    """Compresses one chunk into one independently decompressible unit; thread-safe."""

    def compress(self, data: bytes) -> bytes: ...

    def inflate(self, pieces: Iterable[bytes], max_output: int | None = None) -> Iterator[bytes]: ...


@runtime_checkable
class ZerosCompressor(Compressor, Protocol):
    """A compressor that makes a unit of ``size`` zero bytes without holding them in memory."""

    def compress_zeros(self, size: int) -> bytes: ...


class GzipCompressor:
    """Compresses one chunk into one gzip member (header, raw deflate, CRC-32, size)."""

    def __init__(self, level: int = DEFAULT_GZIP_LEVEL, *, header_level: int | None = None,
                 engine: tuple[str, int] | None = None) -> None:
        """``engine`` (engine, engine level) replaces the level's (:data:`GZIP_ENGINES`)."""
        if level not in GZIP_ENGINES:
            raise ValueError(f"gzip compression level must be 0-9, not {level}")
        self.level = level
        self._deflate = _raw_deflate(*(GZIP_ENGINES[level] if engine is None else engine))
        # XFL as Go writes it for ``header_level`` (default ``level``): 2 for the best level, 4 for
        # the fastest, 0 otherwise; members of one blob carry the same.
        self._header = _MEMBER_HEADER % {9: 2, 1: 4}.get(level if header_level is None else header_level, 0)

    def compress(self, data: bytes) -> bytes:
        """One complete gzip member holding ``data``."""
        return b"".join((
            self._header,
            self._deflate(data),
            struct.pack("<II", isal_zlib.crc32(data) & 0xFFFFFFFF, len(data) & 0xFFFFFFFF),
        ))

    @staticmethod
    def inflate(pieces: Iterable[bytes], max_output: int | None = None) -> Iterator[bytes]:
        return inflate_members(pieces, max_output)


class ZstdCompressor:
    """Compresses one chunk into one zstd frame (with content size and checksum)."""

    def __init__(self, level: int = DEFAULT_ZSTD_LEVEL) -> None:
        if not 1 <= level <= 22:
            raise ValueError(f"zstd compression level must be 1-22, not {level}")
        self.level = level
        self._local = threading.local()  # a ZstdCompressor object must not be shared by threads

    def compress(self, data: bytes) -> bytes:
        """One complete zstd frame holding ``data``."""
        compressor = getattr(self._local, "compressor", None)
        if compressor is None:
            compressor = zstandard.ZstdCompressor(level=self.level, write_checksum=True, write_content_size=True)
            self._local.compressor = compressor
        return compressor.compress(data)

    def compress_zeros(self, size: int) -> bytes:
        """One zstd frame of ``size`` zero bytes, made without holding them in memory."""
        encoder = zstandard.ZstdCompressor(level=self.level, write_checksum=True,
                                           write_content_size=True).compressobj(size=size)
        block = bytes(min(size, _OUTPUT_BLOCK))
        parts = []
        for start in range(0, size, len(block) or 1):
            parts.append(encoder.compress(block[:min(len(block), size - start)]))
        parts.append(encoder.flush())
        return b"".join(parts)

    @staticmethod
    def inflate(pieces: Iterable[bytes], max_output: int | None = None) -> Iterator[bytes]:
        return inflate_frames(pieces, max_output)


def inflate_members(pieces: Iterable[bytes], max_output: int | None = None) -> Iterator[bytes]:
    """Inflate consecutive gzip members fed as ``pieces``; stop after ``max_output`` bytes if given.

    Output comes in blocks of at most 1 MiB, so memory does not depend on the data.
    Raises FormatError on corrupt data or when the input ends inside a member.
    """
    inflation = _MemberInflation(max_output)
    for piece in pieces:
        yield from inflation.feed(piece)
        if inflation.remaining == 0:
            return
    if inflation.inflater is not None:
        raise FormatError("gzip data ends in the middle of a member")


class _MemberInflation:
    """The state of inflating consecutive gzip members: the open member's inflater, the output left."""

    def __init__(self, max_output: int | None) -> None:
        self.inflater: isal_zlib.Decompress | None = None
        self.remaining = max_output

    def feed(self, piece: bytes) -> Iterator[bytes]:
        """The output of ``piece``, in blocks of at most 1 MiB, stopping when no output is left."""
        while True:
            if self.inflater is None:
                if not piece:
                    return
                self.inflater = isal_zlib.decompressobj(wbits=31)
            limit = _OUTPUT_BLOCK if self.remaining is None else min(_OUTPUT_BLOCK, self.remaining)
            out = self._decompress(self.inflater, piece, limit)
            if out:
                yield out
                if self._spend(len(out)):
                    return
            if self.inflater.eof:
                piece, self.inflater = self.inflater.unused_data, None
                continue
            piece = self.inflater.unconsumed_tail
            if not piece and len(out) < limit:
                return

    def _spend(self, size: int) -> bool:
        """Count ``size`` bytes of output; True once no output is left."""
        if self.remaining is None:
            return False
        self.remaining -= size
        return self.remaining == 0

    @staticmethod
    def _decompress(inflater: isal_zlib.Decompress, piece: bytes, limit: int) -> bytes:
        try:
            return inflater.decompress(piece, limit)
        except ISAL_ERROR as exc:
            raise FormatError(f"corrupt gzip data: {exc}") from None


class _PiecesReader(io.RawIOBase):
    """A readable stream over an iterable of byte strings."""

    def __init__(self, pieces: Iterable[bytes]) -> None:
        super().__init__()
        self._pieces = iter(pieces)
        self._current = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._current:
            self._current = next(self._pieces, b"")
            if not self._current:
                return 0
        n = min(len(buffer), len(self._current))
        buffer[:n] = self._current[:n]
        self._current = self._current[n:]
        return n


def inflate_frames(pieces: Iterable[bytes], max_output: int | None = None) -> Iterator[bytes]:
    """Decompress consecutive zstd frames (skippable frames are skipped) fed as ``pieces``.

    Output comes in blocks of at most 1 MiB and stops after ``max_output`` bytes if given.
    Raises FormatError on corrupt data.
    """
    remaining = max_output
    # zstandard reads from any object with read(); its stub asks for IO[bytes].
    source = cast("IO[bytes]", _PiecesReader(pieces))
    reader = zstandard.ZstdDecompressor().stream_reader(
        source, read_size=_OUTPUT_BLOCK // 8, read_across_frames=True)
    try:
        while True:
            limit = _OUTPUT_BLOCK if remaining is None else min(_OUTPUT_BLOCK, remaining)
            block = reader.read(limit)
            if not block:
                return
            yield block
            if remaining is not None:
                remaining -= len(block)
                if remaining == 0:
                    return
    except zstandard.ZstdError as exc:
        raise FormatError(f"corrupt zstd data: {exc}") from None
