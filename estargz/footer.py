"""Footers that close a blob and say where its TOC is: build and parse, no I/O."""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from .errors import FormatError

__all__ = [
    "Footer", "ESTARGZ", "ESTARGZ_LEGACY", "ESTARGZ_EXTERNAL_TOC", "ZSTD_CHUNKED_40",
    "ZSTD_CHUNKED_56", "ZSTD_CHUNKED_64", "gzip_footer", "legacy_gzip_footer",
    "external_toc_footer", "skippable_frame", "zstd_chunked_footer_40", "zstd_chunked_footer_64",
    "parse_footer", "FOOTER_SIZES", "MAX_FOOTER_SIZE", "SKIPPABLE_HEADER_SIZE", "MANIFEST_TYPE_CRFS",
]

ESTARGZ = "estargz"
ESTARGZ_LEGACY = "estargz-legacy"
ESTARGZ_EXTERNAL_TOC = "estargz-external-toc"
#: 40-byte zstd:chunked footer (``GnUlInUx``): stargz-snapshotter, containers/storage <= 1.46.
ZSTD_CHUNKED_40 = "zstd:chunked-40"
#: 56-byte footer of containers/storage 1.47-1.49 (its tar-split fields were never filled in).
ZSTD_CHUNKED_56 = "zstd:chunked-56"
#: 64-byte zstd:chunked footer (``GNUlInUx``) with the tar-split position: containers/storage >= 1.50.
ZSTD_CHUNKED_64 = "zstd:chunked-64"

_SKIPPABLE_MAGIC = b"\x50\x2a\x4d\x18"
#: A skippable frame's magic and payload size, before the payload.
SKIPPABLE_HEADER_SIZE = len(_SKIPPABLE_MAGIC) + 4
_MAGIC_40 = b"GnUlInUx"
_MAGIC_64 = b"GNUlInUx"
#: The zstd:chunked footer's manifest type: a TOC of the CRFS (eStargz) kind, the only one defined.
MANIFEST_TYPE_CRFS = 1

_GZIP_FEXTRA_HEADER = b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff"
_EMPTY_STORED_BLOCK = b"\x01\x00\x00\xff\xff"
_EMPTY_TRAILER = bytes(8)
_MAGIC = b"STARGZ"
_EXTERNAL_MAGIC = b"STARGZEXTERNALTOC"
_HEX16 = re.compile(rb"[0-9a-fA-F]{16}")


@dataclass(frozen=True)
class Footer:
    """A parsed footer: its kind, its size in bytes, and where the TOC (and tar-split) lie.

    ``toc_offset`` is None when the TOC is not in the blob. zstd footers also give the TOC's
    compressed and uncompressed lengths, and the 64-byte one the tar-split's position as
    (offset, compressed length, uncompressed length).
    """

    kind: str
    size: int
    toc_offset: int | None
    toc_length: int | None = None
    toc_uncompressed_length: int | None = None
    tar_split: tuple[int, int, int] | None = None


def _gzip_with_extra(extra: bytes) -> bytes:
    return _GZIP_FEXTRA_HEADER + struct.pack("<H", len(extra)) + extra + _EMPTY_STORED_BLOCK + _EMPTY_TRAILER


def gzip_footer(toc_offset: int) -> bytes:
    """The 51-byte eStargz footer: an empty gzip member whose ``SG`` extra field holds the TOC offset."""
    payload = b"%016x" % toc_offset + _MAGIC
    return _gzip_with_extra(b"SG" + struct.pack("<H", len(payload)) + payload)


def legacy_gzip_footer(toc_offset: int) -> bytes:
    """The 47-byte stargz (CRFS) footer, which readers still accept."""
    return _gzip_with_extra(b"%016x" % toc_offset + _MAGIC)


def external_toc_footer() -> bytes:
    """The 46-byte footer of a blob whose TOC is kept outside it."""
    return _gzip_with_extra(b"SG" + struct.pack("<H", len(_EXTERNAL_MAGIC)) + _EXTERNAL_MAGIC)


def skippable_frame(payload: bytes) -> bytes:
    """A zstd skippable frame (magic ``0x184D2A50``) around ``payload``; decoders skip it."""
    return _SKIPPABLE_MAGIC + struct.pack("<I", len(payload)) + payload


def zstd_chunked_footer_40(toc_offset: int, toc_length: int, toc_uncompressed_length: int) -> bytes:
    """The 48-byte skippable frame holding the 40-byte footer (``GnUlInUx``)."""
    return skippable_frame(struct.pack("<4Q", toc_offset, toc_length, toc_uncompressed_length,
                                       MANIFEST_TYPE_CRFS) + _MAGIC_40)


def zstd_chunked_footer_64(toc_offset: int, toc_length: int, toc_uncompressed_length: int,
                           tar_split: tuple[int, int, int]) -> bytes:
    """The 72-byte skippable frame holding the 64-byte footer (``GNUlInUx``) of containers/storage."""
    return skippable_frame(struct.pack("<7Q", toc_offset, toc_length, toc_uncompressed_length,
                                       MANIFEST_TYPE_CRFS, *tar_split) + _MAGIC_64)


_GZIP_FOOTER_SIZE = len(gzip_footer(0))
_LEGACY_FOOTER_SIZE = len(legacy_gzip_footer(0))
_EXTERNAL_FOOTER_SIZE = len(external_toc_footer())
FOOTER_SIZES = (_GZIP_FOOTER_SIZE, _LEGACY_FOOTER_SIZE, _EXTERNAL_FOOTER_SIZE)
#: Enough trailing bytes to find any footer.
MAX_FOOTER_SIZE = SKIPPABLE_HEADER_SIZE + 64


def _extra_field(buf: bytes) -> bytes | None:
    """The FEXTRA payload of a footer-shaped empty gzip member, or None if ``buf`` is not one."""
    if len(buf) < 12 + 13 or buf[:4] != _GZIP_FEXTRA_HEADER[:4]:
        return None
    (xlen,) = struct.unpack_from("<H", buf, 10)
    if 12 + xlen + 13 != len(buf):
        return None
    return buf[12:12 + xlen]


def _offset(hex16: bytes) -> int | None:
    return int(hex16, 16) if _HEX16.fullmatch(hex16) else None


def _parse_one(size: int, buf: bytes) -> Footer | None:
    extra = _extra_field(buf)
    if extra is None:
        return None
    if size == _GZIP_FOOTER_SIZE and extra[:4] == b"SG\x16\x00" and extra[20:] == _MAGIC:
        offset = _offset(extra[4:20])
        return None if offset is None else Footer(ESTARGZ, size, offset)
    if size == _LEGACY_FOOTER_SIZE and extra[16:] == _MAGIC:
        offset = _offset(extra[:16])
        return None if offset is None else Footer(ESTARGZ_LEGACY, size, offset)
    if size == _EXTERNAL_FOOTER_SIZE and extra == b"SG\x11\x00" + _EXTERNAL_MAGIC:
        return Footer(ESTARGZ_EXTERNAL_TOC, size, None)
    return None


def _parse_zstd(tail: bytes) -> Footer | None:
    for kind, payload_size, magic_at in ((ZSTD_CHUNKED_64, 64, 56), (ZSTD_CHUNKED_40, 40, 32),
                                         (ZSTD_CHUNKED_56, 56, 32)):
        frame = tail[-(SKIPPABLE_HEADER_SIZE + payload_size):]
        if len(frame) != SKIPPABLE_HEADER_SIZE + payload_size \
                or frame[:SKIPPABLE_HEADER_SIZE] != _SKIPPABLE_MAGIC + struct.pack("<I", payload_size):
            continue
        payload = frame[SKIPPABLE_HEADER_SIZE:]
        if payload[magic_at:magic_at + 8] != (_MAGIC_64 if kind == ZSTD_CHUNKED_64 else _MAGIC_40):
            continue
        offset, length, uncompressed, manifest_type = struct.unpack_from("<4Q", payload)
        if manifest_type != MANIFEST_TYPE_CRFS:
            raise FormatError(f"zstd:chunked footer has manifest type {manifest_type}, expected {MANIFEST_TYPE_CRFS}")
        tar_split = struct.unpack_from("<3Q", payload, 32) if kind == ZSTD_CHUNKED_64 else None
        return Footer(kind, SKIPPABLE_HEADER_SIZE + payload_size, offset, length, uncompressed, tar_split)
    return None


def parse_footer(tail: bytes, blob_size: int) -> Footer:
    """Find the footer at the end of ``tail`` (the last bytes of a blob of ``blob_size`` bytes).

    Tries the 51-byte eStargz footer, the legacy 47-byte one and the external-TOC one, then the
    zstd:chunked footers (64, 40 and 56 bytes), and checks that what they point at lies inside
    the blob, before the footer.
    """
    for size in FOOTER_SIZES:
        if size > len(tail) or size > blob_size:
            continue
        footer = _parse_one(size, tail[-size:])
        if footer is None:
            continue
        if footer.toc_offset is not None and footer.toc_offset > blob_size - size:
            raise FormatError(
                f"footer TOC offset {footer.toc_offset} lies outside the blob ({blob_size} bytes)")
        return footer
    footer = _parse_zstd(tail[-min(len(tail), blob_size):])
    if footer is None:
        raise FormatError("no eStargz or zstd:chunked footer found at the end of the blob")
    limit = blob_size - footer.size
    ranges = [(footer.toc_offset, footer.toc_length)]
    if footer.tar_split is not None:
        ranges.append(footer.tar_split[:2])
    for offset, length in ranges:
        if offset is None or length is None or offset + length > limit:
            raise FormatError(f"footer points at [{offset}, {offset}+{length}) outside the blob ({blob_size} bytes)")
    return footer
