"""Ranged sources: anything with a size and ``read_at``, from a path, a file object or bytes."""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Sequence
from typing import BinaryIO, Protocol, Union, runtime_checkable

from .errors import FormatError

__all__ = ["Source", "FileSource", "BytesSource", "RangeFile", "as_source", "read_ranges", "SourceLike", "BLOCK_SIZE"]

#: The size of the pieces data is copied, hashed and decompressed in.
BLOCK_SIZE = 1 << 20


@runtime_checkable
class Source(Protocol):
    """A random-access byte source: ``size`` bytes, read by (offset, length).

    A source may also have ``read_ranges(ranges) -> list[bytes]``, the bytes of several
    ``(offset, length)`` ranges at once (a registry blob fetches them in one request); readers
    use it when present, see :func:`read_ranges`. It may also have ``opening_tail``: how many of
    its last bytes a reader fetches in one request when opening it (the footer and, when they fit,
    the TOC); without it the reader picks a share of the blob, trading bytes for a request.
    """

    @property
    def size(self) -> int: ...

    def read_at(self, offset: int, length: int) -> bytes: ...


def read_ranges(source: Source, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
    """The bytes of each ``(offset, length)`` range: by the source's ``read_ranges`` if it has
    one, else by one ``read_at`` per range."""
    many = getattr(source, "read_ranges", None)
    if many is not None:
        return list(many(ranges))
    return [source.read_at(offset, length) for offset, length in ranges]


def _check_range(offset: int, length: int, size: int) -> None:
    if offset < 0 or length < 0 or offset + length > size:
        raise FormatError(f"range [{offset}, {offset + length}) lies outside the blob ({size} bytes)")


class BytesSource:
    """A source over bytes in memory."""

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._data = memoryview(data).toreadonly()

    @property
    def size(self) -> int:
        return len(self._data)

    def read_at(self, offset: int, length: int) -> bytes:
        _check_range(offset, length, len(self._data))
        return bytes(self._data[offset:offset + length])

    def close(self) -> None:
        self._data.release()


class FileSource:
    """A source over a seekable binary file (opened from a path, or given as an object)."""

    def __init__(self, file: BinaryIO, *, owned: bool = False) -> None:
        self._file = file
        self._owned = owned
        self._lock = threading.Lock()
        try:
            self._fd: int | None = file.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):
            self._fd = None
        self._size = file.seek(0, io.SEEK_END)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> FileSource:
        return cls(open(path, "rb"), owned=True)

    @property
    def size(self) -> int:
        return self._size

    def read_at(self, offset: int, length: int) -> bytes:
        _check_range(offset, length, self._size)
        if self._fd is not None:
            data = os.pread(self._fd, length, offset)
            while len(data) < length:
                more = os.pread(self._fd, length - len(data), offset + len(data))
                if not more:
                    break
                data += more
        else:
            with self._lock:
                self._file.seek(offset)
                data = self._file.read(length)
        if len(data) != length:
            raise FormatError(f"short read at offset {offset}: the blob is truncated")
        return data

    def close(self) -> None:
        if self._owned:
            self._file.close()


class RangeFile(io.RawIOBase):
    """A read-only, seekable binary file of ``size`` bytes; subclasses provide :meth:`pread`."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self._length = size
        self._pos = 0

    def pread(self, size: int, offset: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (fewer only at the end), without moving the position."""
        raise NotImplementedError

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = max(self._length - self._pos, 0)
        data = self.pread(min(size, max(self._length - self._pos, 0)), self._pos) if size else b""
        self._pos += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


SourceLike = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, BinaryIO, Source]


def as_source(obj: SourceLike) -> Source:
    """Adapt a path, bytes, a seekable binary file, or an object with ``size``/``read_at``."""
    if isinstance(obj, (str, os.PathLike)):
        return FileSource.open(obj)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return BytesSource(obj)
    if hasattr(obj, "read_at") and hasattr(obj, "size"):
        return obj
    if hasattr(obj, "seek") and hasattr(obj, "read"):
        return FileSource(obj)
    raise TypeError(f"cannot read a blob from {type(obj).__name__}")
