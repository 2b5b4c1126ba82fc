"""Recognizing how an input layer is compressed, and reading it decompressed."""

from __future__ import annotations

from typing import Any, BinaryIO

import zstandard
from isal import igzip

__all__ = [
    "GZIP_MAGIC", "ZSTD_MAGIC", "MAGIC_SIZE", "GZIP", "ZSTD", "layer_compression", "is_compressed_archive",
    "decompressed", "DECOMPRESS_ERRORS",
]

#: A gzip member with deflate, the only method gzip defines.
GZIP_MAGIC = b"\x1f\x8b\x08"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
#: Bytes of the head of a stream the functions here need to see.
MAGIC_SIZE = 6
GZIP = "gzip"
ZSTD = "zstd"
#: Magic numbers of compressions a tar archive may come in, beyond those of layers.
_ARCHIVE_MAGICS = (GZIP_MAGIC[:2], ZSTD_MAGIC, b"BZh", b"\xfd7zXZ\x00")
#: What reading a corrupt compressed stream raises.
DECOMPRESS_ERRORS: tuple[type[Exception], ...] = (OSError, EOFError, zstandard.ZstdError)


def layer_compression(head: bytes) -> str | None:
    """:data:`GZIP` or :data:`ZSTD` when ``head`` starts such a stream; None for anything else."""
    if head.startswith(GZIP_MAGIC):
        return GZIP
    if head.startswith(ZSTD_MAGIC):
        return ZSTD
    return None


def is_compressed_archive(head: bytes) -> bool:
    """Whether ``head`` starts a gzip, zstd, bzip2 or xz stream."""
    return head.startswith(_ARCHIVE_MAGICS)


def decompressed(stream: BinaryIO, head: bytes) -> Any:
    """A reader of ``stream`` decompressed per :func:`layer_compression` of ``head`` (``stream``
    itself when it is not compressed); reading raises one of :data:`DECOMPRESS_ERRORS` on damage."""
    kind = layer_compression(head)
    if kind == GZIP:
        return igzip.IGzipFile(fileobj=stream, mode="rb")  # type: ignore[no-untyped-call]
    if kind == ZSTD:
        return zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True)
    return stream

