"""Footers that close a blob and say where its TOC is: build and parse, no I/O."""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from .errors import FormatError

__all__ = [
    "Footer", "ESTARGZ", "ESTARGZ_LEGACY", "ESTARGZ_EXTERNAL_TOC",
    "gzip_footer", "legacy_gzip_footer", "external_toc_footer", "parse_footer", "FOOTER_SIZES",
]

ESTARGZ = "estargz"
ESTARGZ_LEGACY = "estargz-legacy"
ESTARGZ_EXTERNAL_TOC = "estargz-external-toc"

_GZIP_FEXTRA_HEADER = b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff"
_EMPTY_STORED_BLOCK = b"\x01\x00\x00\xff\xff"
_EMPTY_TRAILER = bytes(8)
_MAGIC = b"STARGZ"
_EXTERNAL_MAGIC = b"STARGZEXTERNALTOC"
_HEX16 = re.compile(rb"[0-9a-fA-F]{16}")


@dataclass(frozen=True)
class Footer:
    """A parsed footer: its kind, its size in bytes, and the TOC offset (None: TOC not in the blob)."""

    kind: str
    size: int
    toc_offset: int | None


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


_GZIP_FOOTER_SIZE = len(gzip_footer(0))
_LEGACY_FOOTER_SIZE = len(legacy_gzip_footer(0))
_EXTERNAL_FOOTER_SIZE = len(external_toc_footer())
FOOTER_SIZES = (_GZIP_FOOTER_SIZE, _LEGACY_FOOTER_SIZE, _EXTERNAL_FOOTER_SIZE)


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


def parse_footer(tail: bytes, blob_size: int) -> Footer:
    """Find the footer at the end of ``tail`` (the last bytes of a blob of ``blob_size`` bytes).

    Tries the 51-byte footer, then the legacy 47-byte one, then the external-TOC one, and checks
    that the TOC offset lies inside the blob, before the footer.
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
    raise FormatError("no eStargz footer found at the end of the blob")
