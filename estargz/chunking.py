"""Where chunk and member boundaries fall: pure functions over sizes and bytes, no files.

- :func:`fixed_chunks`: eStargz chunks of a file, every ``chunk_size`` bytes;
- :class:`MemberGrouping`: min-chunk-size, small chunks sharing a member until it holds about that
  many compressed bytes;
- :data:`HEADER_RUN_LIMIT`: the longest run of header bytes kept in one member;
- :func:`content_defined_chunks` and friends: containers/storage chunks (rolling checksum and zero
  runs, see :mod:`estargz.rollsum`; numpy is imported only when they are used).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import zstandard

if TYPE_CHECKING:
    from .rollsum import Buffer

__all__ = [
    "DEFAULT_CHUNK_SIZE", "HEADER_RUN_LIMIT", "Span", "fixed_chunks", "MemberGrouping", "content_defined_chunks",
    "content_defined_chunks_of_files", "content_defined_chunks_streamed",
]

#: eStargz chunk size when none is given.
DEFAULT_CHUNK_SIZE = 4 << 20
#: A run of header bytes longer than this is split into several members, bounding member size.
HEADER_RUN_LIMIT = 4 << 20
#: Level of the fast zstd that estimates how many compressed bytes a member holds.
_ESTIMATE_LEVEL = 1
#: The estimate compresses a member's bytes in blocks of at most this size, stopping once it is full.
_ESTIMATE_BLOCK = 64 << 10
#: Bytes of a gzip member header, counted in a member's size as the Go reference counts them.
_GZIP_HEADER_SIZE = 10


Span = tuple[int, int, bool]
"""A content-defined chunk: (offset in the file, length, is a run of zeros)."""


def fixed_chunks(size: int, chunk_size: int) -> Iterator[tuple[int, int]]:
    """The (offset, length) of each chunk of a ``size``-byte file cut every ``chunk_size`` bytes."""
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    for offset in range(0, size, chunk_size):
        yield offset, min(chunk_size, size - offset)


class MemberGrouping:
    """Decides when an open member is full under min-chunk-size.

    The rule is the Go reference's: a chunk starts a new member once the open one holds at least
    ``min_chunk_size`` compressed bytes, counting its gzip header and a flush before each chunk, the
    member's bytes being one compressed stream. The size is estimated with one fast stream (zstd
    level 1, whose output depends on its input alone) whatever the member's codec, and only as far
    as :meth:`full` needs: bytes that could not fill the member even stored wait for the next chunk,
    and estimating stops once the minimum is reached.
    """

    def __init__(self, min_chunk_size: int) -> None:
        if min_chunk_size <= 0:
            raise ValueError("min_chunk_size must be positive")
        self.min_chunk_size = min_chunk_size
        self._compressor = zstandard.ZstdCompressor(level=_ESTIMATE_LEVEL)
        self._stream = self._compressor.compressobj()
        self._estimated = _GZIP_HEADER_SIZE
        self._pending: list[bytes] = []
        self._pending_size = 0

    def add(self, data: bytes) -> None:
        """Bytes that went into the open member."""
        if data:
            self._pending.append(data)
            self._pending_size += len(data)

    def full(self) -> bool:
        """Whether the open member holds at least ``min_chunk_size`` estimated compressed bytes."""
        if self._pending and self._estimated + _stored_size(self._pending_size) >= self.min_chunk_size:
            data = memoryview(self._pending[0] if len(self._pending) == 1 else b"".join(self._pending))
            self._pending, self._pending_size = [], 0
            for start in range(0, len(data), _ESTIMATE_BLOCK):
                self._estimated += len(self._stream.compress(data[start:start + _ESTIMATE_BLOCK]))
                self._estimated += len(self._stream.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))
                if self._estimated >= self.min_chunk_size:
                    break
        return self._estimated >= self.min_chunk_size

    def reset(self) -> None:
        """A new member was opened."""
        self._stream = self._compressor.compressobj()
        self._estimated = _GZIP_HEADER_SIZE
        self._pending = []
        self._pending_size = 0


def _stored_size(size: int) -> int:
    """The most bytes ``size`` bytes can take compressed: stored, with a few bytes per block."""
    return size + 5 * (size // 65535 + 1)


def content_defined_chunks(data: Buffer) -> list[Span]:
    """The containers/storage chunks of one file's content."""
    from . import rollsum

    return rollsum.chunk_file(data)


def content_defined_chunks_of_files(files: Sequence[Buffer]) -> list[list[Span]]:
    """:func:`content_defined_chunks` of many small files in one vectorized pass."""
    from . import rollsum

    return rollsum.chunk_files(files)


def content_defined_chunks_streamed(read: Callable[[int, int], Buffer], size: int) -> Iterator[Span]:
    """:func:`content_defined_chunks` of a file read piecewise with ``read(offset, length)``."""
    from . import rollsum

    return rollsum.chunk_stream(read, size)
