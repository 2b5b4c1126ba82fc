"""tar-split JSON lines (vbatts/tar-split), the tar metadata stream embedded in zstd:chunked.

Each record is one JSON object and a newline, keys in Go struct order: ``type`` (1 = file,
2 = segment), ``name`` (or ``name_raw``, base64, when the name is not UTF-8), ``size`` (omitted
when 0), ``payload`` (base64; a segment's raw bytes, a file's big-endian CRC-64/ISO, ``null`` for
an empty file) and ``position`` (the record's index).

A tar is recorded as, per entry, one segment with the raw bytes before its content (previous
padding and every header block) and one file record; then one segment with the end-of-archive
bytes the tar reader consumed, then the remaining input. Go splits that remainder wherever its
reads returned, so it is not reproducible; :class:`TarSplitWriter` cuts it canonically into
segments of :data:`MAX_TRAILING_SEGMENT` bytes (the last one shorter).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import anycrc

from .errors import FormatError, LimitError, UnsupportedInputError, VerificationError
from .gojson import decode_value, quote

__all__ = [
    "FILE_TYPE", "SEGMENT_TYPE", "MAX_TRAILING_SEGMENT", "TarSplitEntry", "crc64_iso",
    "encode_entry", "decode_entries", "iter_records", "iter_tar", "rebuild_tar", "TarSplitWriter", "go_clean",
]

FILE_TYPE = 1
SEGMENT_TYPE = 2
#: Size of the pieces :class:`TarSplitWriter` cuts the bytes after the end-of-archive into.
MAX_TRAILING_SEGMENT = 1 << 20

Buffer = bytes | bytearray | memoryview
Content = Buffer | Iterable[Buffer]

_CRC64_ISO = anycrc.Model("CRC64-GO-ISO")
_INT64_MAX = (1 << 63) - 1
_SURROGATE = re.compile("[\ud800-\udfff]")


def crc64_iso(data: Buffer, crc: int = 0) -> int:
    """Go ``crc64.Update(crc, crc64.MakeTable(crc64.ISO), data)``: pass the previous result to continue."""
    view = memoryview(data)
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    return int(_CRC64_ISO.calc(view, crc))


@dataclass(frozen=True, slots=True)
class TarSplitEntry:
    """One tar-split record. ``name``/``size`` are for file records only; ``position`` is the index."""

    type: int
    payload: bytes | None = None
    """Segment: the raw bytes. File: the 8-byte big-endian CRC-64, or None for an empty file."""
    name: bytes = b""
    size: int = 0
    position: int = 0

    @property
    def crc(self) -> int | None:
        """A file record's CRC-64/ISO, or None."""
        if self.type != FILE_TYPE or not self.payload:
            return None
        return int.from_bytes(self.payload, "big")


def encode_entry(entry: TarSplitEntry, *, short_bf: bool = True) -> bytes:
    """One record exactly as Go's ``json.Encoder`` writes it, newline included.

    ``short_bf`` (default) writes backspace/form feed in names as Go >= 1.22 does (``\\b``,
    ``\\f``); False gives Go <= 1.21's ``\\u0008``/``\\u000c``.
    """
    return _record_line(entry.type, entry.payload, entry.name, entry.size, entry.position, short_bf)


def _record_line(kind: int, payload: bytes | None, name: bytes, size: int, position: int,
                 short_bf: bool) -> bytes:
    """The JSON line of a record given by its fields (see :func:`encode_entry`)."""
    parts = [b'{"type":', b"%d" % kind]
    if name:
        try:
            text = name.decode("utf-8")
        except UnicodeDecodeError:
            parts += [b',"name_raw":"', binascii.b2a_base64(name, newline=False), b'"']
        else:
            parts += [b',"name":', quote(text, short_bf=short_bf).encode("utf-8")]
    if size:
        parts += [b',"size":', b"%d" % size]
    if payload is None:
        parts.append(b',"payload":null')
    else:
        parts += [b',"payload":"', binascii.b2a_base64(payload, newline=False), b'"']
    parts += [b',"position":', b"%d" % position, b"}\n"]
    return b"".join(parts)


#: A path :func:`go_clean` leaves as it is: components other than ``.`` and ``..``, single slashes,
#: no slash at the end.
_CLEAN_COMPONENT = rb"(?!\.\.?(?:/|\Z))[^/]+"
_CLEAN_PATH = re.compile(rb"/?" + _CLEAN_COMPONENT + rb"(?:/" + _CLEAN_COMPONENT + rb")*")


def go_clean(path: bytes) -> bytes:
    """Go ``filepath.Clean`` (Unix), on bytes."""
    if _CLEAN_PATH.fullmatch(path):
        return path
    rooted = path.startswith(b"/")
    out: list[bytes] = []
    for part in path.split(b"/"):
        if part in (b"", b"."):
            continue
        if part == b"..":
            if out and out[-1] != b"..":
                out.pop()
            elif not rooted:
                out.append(b"..")
            continue
        out.append(part)
    cleaned = b"/".join(out)
    if rooted:
        return b"/" + cleaned
    return cleaned or b"."


def _int_field(record: dict[str, Any], key: str, where: str) -> int:
    value = record.get(key)
    if value is None:
        return 0
    if type(value) is not int:
        raise FormatError(f"{where}: {key} must be an integer")
    if not -_INT64_MAX - 1 <= value <= _INT64_MAX:
        raise LimitError(f"{where}: {key} out of range")
    return value


def _bytes_field(record: dict[str, Any], key: str, where: str) -> bytes | None:
    value = record.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise FormatError(f"{where}: {key} must be a base64 string")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise FormatError(f"{where}: {key} is not valid base64") from None


def _decode_line(line: bytes, index: int) -> TarSplitEntry:
    where = f"tar-split record {index}"
    try:
        record, rest = decode_value(line.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"{where} is not valid JSON: {exc}") from None
    if rest:
        raise FormatError(f"{where}: data after the JSON object")
    if not isinstance(record, dict):
        raise FormatError(f"{where} is not a JSON object")
    fields = {key.lower(): value for key, value in record.items()}  # Go matches keys case-insensitively
    kind = fields.get("type")
    if type(kind) is not int or kind not in (FILE_TYPE, SEGMENT_TYPE):
        raise FormatError(f"{where}: type must be {FILE_TYPE} or {SEGMENT_TYPE}, not {kind!r}")
    position = _int_field(fields, "position", where)
    if position != index:
        raise FormatError(f"{where}: position is {position}")
    payload = _bytes_field(fields, "payload", where)
    if kind == SEGMENT_TYPE:
        return TarSplitEntry(SEGMENT_TYPE, payload or b"", position=position)
    size = _int_field(fields, "size", where)
    if size < 0:
        raise FormatError(f"{where}: negative size")
    if (payload is not None and len(payload) not in (0, 8)) or (size and not payload):
        raise FormatError(f"{where}: a file's payload must be its 8-byte CRC-64")
    return TarSplitEntry(FILE_TYPE, payload or None, name=_file_name(fields, where), size=size, position=position)


def _file_name(fields: dict[str, Any], where: str) -> bytes:
    """A file record's name: ``name_raw`` (base64) if set, else ``name`` as UTF-8."""
    name = _bytes_field(fields, "name_raw", where)
    if name:
        return name
    name_text = fields.get("name")
    if name_text is not None and not isinstance(name_text, str):
        raise FormatError(f"{where}: name must be a string")
    return _SURROGATE.sub("\ufffd", name_text or "").encode("utf-8")


def _lines(data: bytes) -> Iterator[bytes]:
    """The newline-terminated lines of ``data`` one by one (a last line may lack its newline)."""
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        if end < 0:
            end = len(data)
        yield data[start:end]
        start = end + 1


def decode_entries(data: bytes, max_records: int | None = None) -> list[TarSplitEntry]:
    """Parse and validate tar-split JSON lines.

    Checks every record's JSON, field types, base64, type, ``position`` (must be the index) and
    CRC length, and rejects two file records whose names clean to the same path (as tar-split
    does). A final record without its newline is accepted, as Go does. More than ``max_records``
    records raise :class:`LimitError`.
    """
    return list(iter_records(data, max_records))


def iter_records(data: bytes, max_records: int | None = None) -> Iterator[TarSplitEntry]:
    """The records :func:`decode_entries` gives, parsed and checked one at a time as read."""
    seen: set[bytes] = set()
    for index, line in enumerate(_lines(data)):
        if max_records is not None and index >= max_records:
            raise LimitError(f"tar-split has more than {max_records} records")
        entry = _decode_line(line, index)
        if entry.type == FILE_TYPE:
            cleaned = go_clean(entry.name)
            if cleaned in seen:
                raise FormatError(f"tar-split record {index}: duplicate path {entry.name!r}")
            seen.add(cleaned)
        yield entry


def iter_tar(entries: Iterable[TarSplitEntry],
             content: Callable[[TarSplitEntry], Content]) -> Iterator[bytes | Buffer]:
    """Rebuild the tar stream: segments verbatim, each non-empty file from ``content(entry)``.

    ``content`` returns the file's bytes, or an iterable of pieces. Their total length and CRC-64
    are checked against the record: :class:`VerificationError` is raised after the file's bytes
    were yielded, so a consumer must discard the output on error.
    """
    for entry in entries:
        if entry.type == SEGMENT_TYPE:
            if entry.payload:
                yield entry.payload
            continue
        if entry.type != FILE_TYPE:
            raise FormatError(f"tar-split record {entry.position}: unknown type {entry.type!r}")
        if entry.size <= 0:
            continue
        yield from _checked_content(entry, content)


def _checked_content(entry: TarSplitEntry, content: Callable[[TarSplitEntry], Content]) -> Iterator[Buffer]:
    """The pieces of a file's content, checked against its record's size and CRC-64."""
    expected = entry.crc
    if expected is None:
        raise FormatError(f"tar-split record {entry.position}: file without a CRC-64")
    got = content(entry)
    pieces = [got] if isinstance(got, (bytes, bytearray, memoryview)) else got
    crc = total = 0
    for piece in pieces:
        total += memoryview(piece).nbytes
        if total > entry.size:
            raise VerificationError(f"{entry.name!r}: more than the {entry.size} bytes recorded")
        crc = crc64_iso(piece, crc)
        yield piece
    if total != entry.size:
        raise VerificationError(f"{entry.name!r}: {total} bytes, tar-split records {entry.size}")
    if crc != expected:
        raise VerificationError(f"{entry.name!r}: CRC-64 {crc:016x}, tar-split records {expected:016x}")


def rebuild_tar(entries: Iterable[TarSplitEntry],
                content: Callable[[TarSplitEntry], Content]) -> bytes:
    """The whole tar stream of :func:`iter_tar` as bytes."""
    return b"".join(iter_tar(entries, content))


class TarSplitWriter:
    """Builds the tar-split records of a tar while it is streamed, entry by entry.

    Per entry call :meth:`segment` with the raw bytes before its content, then :meth:`file`;
    then :meth:`segment` with the end-of-archive bytes, :meth:`trailing` with anything after them,
    and :meth:`close`. Lines go to ``write`` as they are made, or are kept for :meth:`getvalue`.
    """

    def __init__(self, write: Callable[[bytes], object] | None = None, *, short_bf: bool = True) -> None:
        self._lines: list[bytes] = []
        self._write = write if write is not None else self._lines.append
        self._short_bf = short_bf
        self._seen: set[bytes] = set()
        self._pending = bytearray()
        self._trailing = False
        self._closed = False
        self.position = 0
        """Number of records written."""
        self.size = 0
        """Bytes of JSON written (the uncompressed tar-split length)."""
        self.tar_size = 0
        """Length of the tar described so far (segments and file contents)."""

    def _emit(self, kind: int, payload: bytes | None, name: bytes = b"", size: int = 0) -> None:
        line = _record_line(kind, payload, name, size, self.position, self._short_bf)
        self._write(line)
        self.position += 1
        self.size += len(line)

    def _check_open(self, trailing_ok: bool = False) -> None:
        if self._closed:
            raise ValueError("TarSplitWriter is closed")
        if self._trailing and not trailing_ok:
            raise ValueError("no records can follow the trailing bytes")

    def segment(self, raw: Buffer) -> None:
        """One segment of raw tar bytes (a header group, or the end-of-archive); empty is skipped."""
        self._check_open()
        if raw:
            data = bytes(raw)
            self.tar_size += len(data)
            self._emit(SEGMENT_TYPE, data)

    def file(self, name: bytes, size: int, crc: int | None = None) -> None:
        """The record of one entry (any type): raw name bytes, content size, CRC-64 if size > 0."""
        self._check_open()
        if size < 0 or size > _INT64_MAX:
            raise LimitError(f"{name!r}: size {size} out of range")
        payload = None
        if size:
            if crc is None or not 0 <= crc < 1 << 64:
                raise ValueError(f"{name!r}: a non-empty file needs its CRC-64")
            payload = crc.to_bytes(8, "big")
        cleaned = go_clean(bytes(name))
        if cleaned in self._seen:
            raise UnsupportedInputError(f"duplicates of file paths not supported: {bytes(name)!r}")
        self._seen.add(cleaned)
        self.tar_size += size
        self._emit(FILE_TYPE, payload, bytes(name), size)

    def trailing(self, raw: Buffer) -> None:
        """Bytes after the end-of-archive; may be fed in any pieces, the split stays the same."""
        self._check_open(trailing_ok=True)
        self._trailing = True
        self._pending += raw
        while len(self._pending) >= MAX_TRAILING_SEGMENT:
            self._flush_pending(MAX_TRAILING_SEGMENT)

    def _flush_pending(self, count: int) -> None:
        data = bytes(self._pending[:count])
        del self._pending[:count]
        self.tar_size += len(data)
        self._emit(SEGMENT_TYPE, data)

    def close(self) -> None:
        """Write the last trailing segment; no records can be added afterwards."""
        if not self._closed:
            if self._pending:
                self._flush_pending(len(self._pending))
            self._closed = True

    def getvalue(self) -> bytes:
        """Close, and return every line (when no ``write`` callable was given)."""
        self.close()
        return b"".join(self._lines)
