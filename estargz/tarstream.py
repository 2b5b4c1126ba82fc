"""Tar headers: parse the entries of a layer tar, and write the minimal USTAR headers estargz adds.

The parser keeps what a TOC needs (raw names, numeric fields, PAX xattrs) and where each entry's
raw header bytes and payload lie, so a writer can copy headers byte for byte.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from .errors import FormatError, LimitError, UnsupportedInputError

__all__ = ["BLOCK", "TarEntry", "iter_entries", "ReadAhead", "ustar_header", "padding", "toc_header_fields"]

BLOCK = 512

_REG, _DIR = "reg", "dir"
_KINDS = {
    b"0": _REG, b"\0": _REG, b"7": _REG,
    b"1": "hardlink", b"2": "symlink", b"3": "char", b"4": "block", b"5": _DIR, b"6": "fifo",
}
_PAX_LOCAL, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK = b"x", b"g", b"L", b"K"
_XATTR_PREFIX = "SCHILY.xattr."
#: Extension payloads (PAX records, GNU long names) larger than this are refused.
MAX_EXTENSION_SIZE = 8 << 20
#: Bytes :class:`ReadAhead` reads at once.
READ_AHEAD = 1 << 20
#: Numbers in headers and PAX records are signed 64-bit, as in Go's archive/tar.
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


@dataclass(slots=True)
class TarEntry:
    """One logical tar entry with the location of its raw bytes in the archive."""

    name: str
    kind: str
    size: int = 0
    mode: int = 0
    uid: int = 0
    gid: int = 0
    uname: str = ""
    gname: str = ""
    mtime: tuple[int, int] = (0, 0)
    """Modification time as (seconds, nanoseconds), nanoseconds in [0, 1e9)."""
    atime: tuple[int, int] | None = None
    """Access time (PAX ``atime`` or the GNU header field), if the archive has one."""
    ctime: tuple[int, int] | None = None
    """Change time (PAX ``ctime`` or the GNU header field), if the archive has one."""
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)
    header_offset: int = 0
    """Offset of the first header block of the entry, extension headers included."""
    data_offset: int = 0
    """Offset of the payload (the end of the header blocks)."""

    @property
    def end_offset(self) -> int:
        """Offset just past the payload's padding."""
        return self.data_offset + self.size + padding(self.size)


def padding(size: int) -> int:
    """Number of zero bytes that pad a payload of ``size`` bytes to a block boundary."""
    return -size % BLOCK


class ReadAhead:
    """A seekable binary file read through a window of :data:`READ_AHEAD` bytes read at once.

    The headers and payloads of a layer's small files then cost a slice each rather than a seek
    and a read of the file (system calls, each letting other threads take the interpreter).
    Reads of a window's size or more go to the file directly.
    """

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._window = b""
        self._window_offset = 0
        self._position = file.tell()

    def fileno(self) -> int:
        return self._file.fileno()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._position = offset if whence == os.SEEK_SET else self._file.seek(offset, whence)
        return self._position

    def tell(self) -> int:
        return self._position

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes (fewer only at the end of the file) at the current position."""
        if size < 0:
            raise ValueError("ReadAhead reads a given number of bytes")
        start = self._position - self._window_offset
        if not (0 <= start and start + size <= len(self._window)):
            self._file.seek(self._position)
            if size >= READ_AHEAD:
                data = self._file.read(size)
                self._position += len(data)
                return data
            self._window, self._window_offset, start = self._file.read(READ_AHEAD), self._position, 0
        data = self._window[start:start + size]
        self._position += len(data)
        return data


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _cstring(raw: bytes) -> bytes:
    end = raw.find(b"\0")
    return raw if end < 0 else raw[:end]


def _number(raw: bytes, what: str) -> int:
    """Decode an octal or base-256 numeric header field."""
    if raw and raw[0] & 0x80:  # base-256: the rest of the first byte and the others, big-endian
        negative = bool(raw[0] & 0x40)  # two's complement: invert, read, invert back
        data = bytes(b ^ 0xFF for b in raw) if negative else raw
        value = int.from_bytes(bytes([data[0] & 0x7F]) + data[1:], "big")
        return _checked(~value if negative else value, what)
    digits = raw.split(b"\0", 1)[0].strip(b" ")
    if not digits:
        return 0
    try:
        return int(digits, 8)
    except ValueError:
        raise FormatError(f"tar header: invalid {what} field {raw!r}") from None


def _checked(value: int, what: str) -> int:
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise LimitError(f"tar header: {what} does not fit in 64 bits")
    return value


def _checksum_ok(block: bytes) -> bool:
    stored = _number(block[148:156], "checksum")
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    if stored == unsigned:
        return True
    signed = unsigned - 2 * sum(b for b in block[:148] + block[156:] if b > 127)
    return stored == signed


_PAX_TIME = re.compile(rb"(-?)(\d{1,19})(?:\.(\d*))?")


def _pax_time(value: bytes) -> tuple[int, int]:
    m = _PAX_TIME.fullmatch(value)
    if not m:
        raise FormatError(f"tar PAX header: invalid time {value[:40]!r}")
    sign, secs, frac = m.groups()
    seconds = _checked(-int(secs) if sign else int(secs), "PAX time")
    nanos = int((frac or b"")[:9].ljust(9, b"0"))
    if sign:
        nanos = -nanos
        if nanos:
            seconds, nanos = seconds - 1, nanos + 1_000_000_000
    return seconds, nanos


def _pax_records(data: bytes) -> dict[bytes, bytes]:
    records: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:  # some writers pad the records with NULs
            break
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space]) if space > pos else 0
        except ValueError:
            length = 0
        end = pos + length
        if space < pos or length <= space - pos + 1 or end > len(data) or data[end - 1:end] != b"\n":
            raise FormatError("tar PAX header: malformed record")
        key, eq, value = data[space + 1:end - 1].partition(b"=")
        if not eq:
            raise FormatError("tar PAX header: record without '='")
        records[key] = value
        pos = end
    return records


def _pax_int(value: bytes, key: bytes) -> int:
    if len(value) <= 20:  # 20 characters hold every 64-bit number with its sign
        try:
            number = int(value)
        except ValueError:
            raise FormatError(f"tar PAX header: invalid {key.decode()} {value[:40]!r}") from None
        if _INT64_MIN <= number <= _INT64_MAX:
            return number
    raise LimitError(f"tar PAX header: {key.decode()} does not fit in 64 bits")


def _read_exact(f: BinaryIO, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise FormatError(f"tar: unexpected end of archive in {what}")
    return data


_EXTENSION_FLAGS = (_PAX_LOCAL, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK)


@dataclass
class _Extensions:
    """The extension headers read for the next entry."""

    pax: dict[bytes, bytes] = field(default_factory=dict)
    long_name: bytes | None = None
    long_link: bytes | None = None

    def pending(self) -> bool:
        return bool(self.pax) or self.long_name is not None or self.long_link is not None

    def add(self, flag: bytes, data: bytes) -> bool:
        """Take one extension header; True for a PAX global header, which belongs to no entry."""
        if flag == _PAX_LOCAL:
            self.pax.update(_pax_records(data))
        elif flag == _GNU_LONGNAME:
            self.long_name = _cstring(data)
        elif flag == _GNU_LONGLINK:
            self.long_link = _cstring(data)
        else:
            _check_global(data)
            return True
        return False


def _check_global(data: bytes) -> None:
    unknown = set(_pax_records(data)) - {b"comment"}
    if unknown:
        raise UnsupportedInputError(
            "tar: PAX global header with records "
            + ", ".join(sorted(k.decode("utf-8", "replace") for k in unknown))
            + " is not supported (only 'comment', as written by git archive)")


def _header(f: BinaryIO, pos: int) -> tuple[bytes, int] | None:
    """The header block at ``pos`` and its size field; None at the end of the archive."""
    f.seek(pos)
    block = f.read(BLOCK)
    if not block or block == bytes(BLOCK):
        return None
    if len(block) != BLOCK:
        raise FormatError("tar: truncated header block")
    if not _checksum_ok(block):
        raise FormatError(f"tar: bad header checksum at offset {pos}")
    size = _number(block[124:136], "size")
    if size < 0:
        raise FormatError(f"tar: negative size at offset {pos}")
    return block, size


def iter_entries(f: BinaryIO, start: int = 0) -> Iterator[TarEntry]:
    """Yield the entries of a seekable plain tar, reading headers only and seeking past payloads.

    Iteration ends at the end-of-archive marker (or at the end of the file).
    """
    pos = header_start = start
    extensions = _Extensions()
    while (header := _header(f, pos)) is not None:
        block, size = header
        flag = block[156:157]
        pos += BLOCK
        if flag in _EXTENSION_FLAGS:
            if size > MAX_EXTENSION_SIZE:
                raise FormatError(f"tar: extension header of {size} bytes is too large")
            data = _read_exact(f, size, "an extension header")
            pos += size + padding(size)
            if extensions.add(flag, data):
                header_start = pos
            continue
        entry = _entry(block, flag, size, extensions, header_start)
        entry.data_offset = pos
        pos += entry.size + padding(entry.size)
        yield entry
        extensions = _Extensions()
        header_start = pos
    if extensions.pending():
        raise FormatError("tar: extension header without an entry")


def _header_name(block: bytes, long_name: bytes | None) -> bytes:
    if long_name is not None:
        return long_name
    name = _cstring(block[0:100])
    prefix = _cstring(block[345:500]) if block[257:263] == b"ustar\0" else b""
    return prefix + b"/" + name if prefix else name


def _entry(block: bytes, flag: bytes, size: int, extensions: _Extensions, header_start: int) -> TarEntry:
    """The entry of a header block, with its extension headers applied."""
    kind = _KINDS.get(flag)
    if kind is None:
        what = "GNU sparse file" if flag == b"S" else f"tar entry type {flag.decode('latin-1')!r}"
        raise UnsupportedInputError(f"unsupported input: {what} at offset {header_start}")
    pax = extensions.pax
    if any(k.startswith(b"GNU.sparse.") for k in pax):
        raise UnsupportedInputError(f"unsupported input: PAX sparse file at offset {header_start}")
    name = _header_name(block, extensions.long_name)
    link = extensions.long_link if extensions.long_link is not None else _cstring(block[157:257])
    entry = TarEntry(
        name=_text(pax.get(b"path", name) or name),
        kind=kind,
        size=size,
        mode=_number(block[100:108], "mode"),
        uid=_number(block[108:116], "uid"),
        gid=_number(block[116:124], "gid"),
        uname=_text(_cstring(block[265:297])),
        gname=_text(_cstring(block[297:329])),
        mtime=(_number(block[136:148], "mtime"), 0),
        linkname=_text(pax.get(b"linkpath", link) or link),
        header_offset=header_start,
    )
    _apply_header_extras(entry, block, flag)
    _apply_pax(entry, pax)
    # Only regular files carry a payload; the other kinds are header-only whatever their
    # size field says (as in Go's archive/tar and Python's tarfile).
    if entry.kind != _REG:
        entry.size = 0
    return entry


def _apply_header_extras(entry: TarEntry, block: bytes, flag: bytes) -> None:
    """GNU atime/ctime, old-style directories (a name ending in "/") and device numbers."""
    if block[257:263] == b"ustar ":  # GNU: atime and ctime in the prefix area, when set
        for attr, value in (("atime", block[345:357]), ("ctime", block[357:369])):
            if value[:1] not in (b"", b"\0"):
                setattr(entry, attr, (_number(value, attr), 0))
    if flag == b"\0" and entry.name.endswith("/"):
        entry.kind = _DIR
    if entry.kind in ("char", "block"):
        entry.devmajor = _number(block[329:337], "devmajor")
        entry.devminor = _number(block[337:345], "devminor")


#: PAX records that set an entry field, and how each value is read.
_PAX_FIELDS: dict[bytes, tuple[str, Callable[[bytes, bytes], object]]] = {
    b"size": ("size", _pax_int), b"uid": ("uid", _pax_int), b"gid": ("gid", _pax_int),
    b"uname": ("uname", lambda value, _: _text(value)), b"gname": ("gname", lambda value, _: _text(value)),
    b"mtime": ("mtime", lambda value, _: _pax_time(value)), b"atime": ("atime", lambda value, _: _pax_time(value)),
    b"ctime": ("ctime", lambda value, _: _pax_time(value)),
}


def _apply_pax(entry: TarEntry, pax: dict[bytes, bytes]) -> None:
    for key, value in pax.items():
        known = _PAX_FIELDS.get(key)
        if known is not None:
            setattr(entry, known[0], known[1](value, key))
        elif key.startswith(b"SCHILY.xattr."):
            entry.xattrs[_text(key[len(_XATTR_PREFIX):])] = value
    if entry.size < 0:
        raise FormatError("tar PAX header: negative size")


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def ustar_header(name: str, size: int) -> bytes:
    """A USTAR header for a regular file with only a name and a size set, as Go's tar writer makes it.

    Used for the TOC entry and the landmark files; mode, owner and mtime are zero.
    """
    raw_name = name.encode()
    if len(raw_name) > 100:
        raise ValueError("ustar_header: name longer than 100 bytes")
    block = bytearray(BLOCK)
    block[0:len(raw_name)] = raw_name
    block[100:108] = _octal(0, 8)
    block[108:116] = _octal(0, 8)
    block[116:124] = _octal(0, 8)
    block[124:136] = _octal(size, 12)
    block[136:148] = _octal(0, 12)
    block[148:156] = b" " * 8
    block[156:157] = b"0"
    block[257:265] = b"ustar\x0000"
    block[329:337] = _octal(0, 8)
    block[337:345] = _octal(0, 8)
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def toc_header_fields(block: bytes) -> tuple[str, int]:
    """Name and size of a single tar header block (the TOC entry's), checksum checked."""
    if len(block) != BLOCK or not _checksum_ok(block):
        raise FormatError("TOC tar header is corrupt")
    size = _number(block[124:136], "size")
    if size < 0:
        raise FormatError("TOC tar header has a negative size")
    return _text(_cstring(block[0:100])), size
