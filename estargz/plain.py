"""Plain (non-lazy) layer outputs: a layer tar as zstd, or uncompressed, as ``nerdctl image convert
--zstd`` and ``--uncompress`` write them.

The tar bytes are those of the input (its diffID does not change); only the compression differs.
zstd output is reproducible: a fixed level, a checksum, no content size, and zstd's multi-threaded
mode even with one worker, whose bytes do not depend on the number of workers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import zstandard

from .compression import DECOMPRESS_ERRORS, MAGIC_SIZE, decompressed
from .digests import hash_digest, new_hash
from .errors import FormatError
from .formats import FORMAT_UNCOMPRESSED, FORMAT_ZSTD
from .oci import OCI_LAYER_MEDIA_TYPE, ZSTD_LAYER_MEDIA_TYPE
from .source import BLOCK_SIZE

__all__ = [
    "FORMAT_ZSTD", "FORMAT_UNCOMPRESSED", "DEFAULT_PLAIN_ZSTD_LEVEL", "MIN_ZSTD_LEVEL",
    "MAX_ZSTD_LEVEL", "PlainFormat", "PlainResult", "plain_format", "check_level", "write_plain",
]

#: nerdctl's ``--zstd-compression-level`` default.
DEFAULT_PLAIN_ZSTD_LEVEL = 3
MIN_ZSTD_LEVEL = 1
MAX_ZSTD_LEVEL = 22

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class PlainFormat:
    """A plain layer format: its name, media type and whether it is zstd-compressed."""

    name: str
    media_type: str
    compressed: bool


_PLAIN_FORMATS: dict[str, PlainFormat] = {
    FORMAT_ZSTD: PlainFormat(FORMAT_ZSTD, ZSTD_LAYER_MEDIA_TYPE, compressed=True),
    FORMAT_UNCOMPRESSED: PlainFormat(FORMAT_UNCOMPRESSED, OCI_LAYER_MEDIA_TYPE, compressed=False),
}


def plain_format(name: object) -> PlainFormat | None:
    """The plain format called ``name``, or None for any other name."""
    return _PLAIN_FORMATS.get(name) if isinstance(name, str) else None


def check_level(chosen: PlainFormat, level: int | None) -> int | None:
    """The zstd level to use (None for uncompressed); ValueError for a level out of range or
    given for uncompressed output."""
    if not chosen.compressed:
        if level is not None:
            raise ValueError("uncompressed output takes no compression level")
        return None
    if level is None:
        return DEFAULT_PLAIN_ZSTD_LEVEL
    if isinstance(level, bool) or not isinstance(level, int) or not MIN_ZSTD_LEVEL <= level <= MAX_ZSTD_LEVEL:
        raise ValueError(f"zstd compression level must be {MIN_ZSTD_LEVEL}-{MAX_ZSTD_LEVEL}, not {level!r}")
    return level


@dataclass(frozen=True)
class PlainResult:
    """A plain layer written: its digests and sizes, and its descriptor's media type."""

    format: str
    diff_id: str
    uncompressed_size: int
    blob_digest: str
    blob_size: int
    media_type: str
    annotations: dict[str, str] = field(default_factory=dict)
    """Always empty: a plain layer has no TOC to announce."""
    external_toc: None = None

    def to_json(self) -> dict[str, object]:
        """A JSON-ready summary, with the layer descriptor as it goes into a manifest."""
        return {
            "format": self.format,
            "diffID": self.diff_id,
            "uncompressedSize": self.uncompressed_size,
            "blobDigest": self.blob_digest,
            "blobSize": self.blob_size,
            "descriptor": {"mediaType": self.media_type, "digest": self.blob_digest, "size": self.blob_size},
        }


class _Counted:
    """A writer that hashes and counts what goes through it to ``out``."""

    def __init__(self, out: BinaryIO) -> None:
        self._out, self.hasher, self.size = out, new_hash(), 0

    def write(self, data: Any) -> int:
        self.hasher.update(data)
        self.size += len(data)
        return self._out.write(data)

    def flush(self) -> None:
        self._out.flush()


def write_plain(src: BinaryIO, out: BinaryIO, *, format: str, compression_level: int | None = None,
                threads: int = 1, progress: Progress | None = None, total: int = 0) -> PlainResult:
    """Write the layer tar read from ``src`` (a buffered stream with ``peek``, such as
    :class:`io.BufferedReader`: plain, gzip or zstd) to ``out`` in
    the plain ``format``, streaming. ``threads`` zstd workers; the bytes are the same for any
    number. ``progress(done, total)`` follows the bytes read from ``src``. A damaged compressed
    input raises :class:`FormatError`."""
    chosen = plain_format(format)
    if chosen is None:
        raise ValueError(f"unknown plain format {format!r}")
    level = check_level(chosen, compression_level)
    if threads < 1:
        raise ValueError("threads must be at least 1")
    if not hasattr(src, "peek"):
        raise TypeError("src must be a buffered stream with peek(), such as io.BufferedReader")
    head = src.peek(MAGIC_SIZE)[:MAGIC_SIZE]
    tar = decompressed(src, head)
    blob = _Counted(out)
    diff_hasher, tar_size = new_hash(), 0
    sink: Any = blob
    if level is not None:
        compressor = zstandard.ZstdCompressor(level=level, threads=threads, write_checksum=True,
                                              write_content_size=False)
        sink = compressor.stream_writer(blob, closefd=False)  # type: ignore[arg-type]
    try:
        while block := tar.read(BLOCK_SIZE):
            diff_hasher.update(block)
            tar_size += len(block)
            sink.write(block)
            if progress is not None:
                progress(min(src.tell(), total), total)
    except DECOMPRESS_ERRORS as exc:
        raise FormatError(f"cannot decompress the layer: {exc}") from None
    if sink is not blob:
        sink.close()
    blob.flush()
    return PlainResult(chosen.name, hash_digest(diff_hasher), tar_size, hash_digest(blob.hasher), blob.size,
                       chosen.media_type)
