"""Whole-blob verification: every byte of a blob accounted for and tied to its TOC.

The data area is read as a sequence of compressed units (gzip members or zstd frames) whose
headers must be the canonical ones writers emit and whose checksums must hold. Their inflated
output is walked as a tar stream: each tar entry must match the TOC entry at the same place,
each chunk must start where the TOC says and match its digest, padding must be zeros, and
nothing may follow that belongs to no entry. The TOC unit and the footer close the blob.
"""

from __future__ import annotations

import re
import struct
import tempfile
import threading
from collections import deque
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from queue import Full, Queue
from typing import BinaryIO, TypeVar

import zstandard
from isal import isal_zlib

from .cstoc import parse_rfc3339
from .digests import Hasher, hash_digest, new_hash
from .errors import FormatError, VerificationError
from .framing import ISAL_ERROR
from .footer import (
    ESTARGZ,
    ESTARGZ_EXTERNAL_TOC,
    ESTARGZ_LEGACY,
    MAX_FOOTER_SIZE,
    ZSTD_CHUNKED_56,
    ZSTD_CHUNKED_64,
    Footer,
    external_toc_footer,
    gzip_footer,
    legacy_gzip_footer,
    parse_footer,
    skippable_frame,
    zstd_chunked_footer_40,
    zstd_chunked_footer_64,
)
from .source import Source
from .tarsplit import FILE_TYPE, TarSplitEntry, crc64_iso
from .tarstream import BLOCK, TarEntry, iter_entries
from .toc import EMPTY_DIGEST, TOCEntry, clean_name

__all__ = ["Coverage", "check_blob_structure"]

_PIECE = 1 << 20
_GZIP_HEADER = re.compile(rb"\x1f\x8b\x08\x00\x00\x00\x00\x00[\x00\x02\x04]\xff", re.DOTALL)
_GZIP_HEADER_SIZE = 10
_GZIP_TRAILER_SIZE = 8
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ZSTD_MAX_HEADER = 18
_ZSTD_NONCANONICAL_BITS = 0x1B
"""Frame header descriptor bits writers leave clear: unused, reserved, dictionary ID."""
_ZSTD_CHECKSUM_FLAG = 0x04
_ZSTD_WINDOW_MANTISSA = 0x07
_ZSTD_BLOCK_HEADER = 3
_ZSTD_RLE_BLOCK = 1
_ZSTD_CHECKSUM_SIZE = 4
_SKIPPABLE_HEADER = 8
_TAR_CHECKSUM_FIELD = re.compile(rb"[0-7]{6}\x00 ")
_EXTENSION_FLAGS = frozenset(b"xgLK")
_HALF_SECOND_NS = 500_000_000
_AHEAD_BLOCKS = 8
_HOLD_IN_MEMORY = 8 << 20
_POLL_SECONDS = 0.05
_T = TypeVar("_T")
_FOOTER_56_PADDING = 16
_ANNOTATIONS = "annotations"


@dataclass(frozen=True)
class Coverage:
    """What a whole-blob check covered."""

    blob_bytes: int
    """Bytes of the blob accounted for (the blob's size when the check passes)."""
    units: int
    """Compressed units of the data area (gzip members or zstd frames)."""
    tar_entries: int
    """Tar entries of the stream, each matched to its TOC entry."""
    uncompressed_bytes: int
    """Bytes of the inflated data area."""
    blob_digest: str
    """sha256 of the whole blob (its layer digest), computed while checking."""
    stream_digest: str | None
    """sha256 of the inflated data area, when a tar-split describes it (its diffID)."""
    has_end_marker: bool
    """Whether the tar stream of the data area ends with an end-of-archive marker."""
    written: int
    """Bytes written to ``out``."""


class _Cursor:
    """Forward reads of the blob's bytes in ``[start, end)``; what a unit leaves over can be unread."""

    def __init__(self, source: Source, start: int, end: int) -> None:
        self._source = source
        self.position = start
        self._fetched = start
        self._end = end
        self._buffer = b""
        self._index = 0
        self.units = 0
        self.hash = new_hash()
        """sha256 of every byte fetched so far."""

    def _fetch(self) -> bytes:
        length = min(_PIECE, self._end - self._fetched)
        data = self._source.read_at(self._fetched, length) if length > 0 else b""
        self._fetched += len(data)
        self.hash.update(data)
        return data

    def piece(self) -> bytes:
        """The next bytes (empty at the end)."""
        if self._index == len(self._buffer):
            self._buffer, self._index = self._fetch(), 0
        data = self._buffer[self._index:] if self._index else self._buffer
        self._index = len(self._buffer)
        self.position += len(data)
        return data

    def unread(self, data: bytes) -> None:
        """Give back the last ``len(data)`` bytes read (a suffix of the last piece or take)."""
        self._index -= len(data)
        self.position -= len(data)

    def take(self, size: int, what: str) -> bytes:
        """Exactly ``size`` bytes; FormatError if the range ends first."""
        end = self._index + size
        if end > len(self._buffer):
            parts = [self._buffer[self._index:]]
            have = len(parts[0])
            while have < size and (data := self._fetch()):
                parts.append(data)
                have += len(data)
            self._buffer, self._index, end = b"".join(parts), 0, size
            if have < size:
                raise FormatError(f"blob ends inside {what} at offset {self.position + have}")
        data = self._buffer[self._index:end]
        self._index = end
        self.position += size
        return data

    @property
    def at_end(self) -> bool:
        return self._index == len(self._buffer) and self._fetched >= self._end


def _inflate_unit(cursor: _Cursor, inflater: object, what: str) -> Iterator[bytes]:
    """Feed ``cursor`` to ``inflater`` until its unit ends; leave what follows unread."""
    while not inflater.eof:  # type: ignore[attr-defined]
        piece = cursor.piece()
        if not piece:
            raise FormatError(f"{what} is truncated")
        while True:
            out = inflater.decompress(piece, _PIECE)  # type: ignore[attr-defined]
            if out:
                yield out
            if inflater.eof:  # type: ignore[attr-defined]
                cursor.unread(inflater.unused_data)  # type: ignore[attr-defined]
                break
            piece = inflater.unconsumed_tail  # type: ignore[attr-defined]
            if not piece and len(out) < _PIECE:
                break


def _gzip_member(cursor: _Cursor, xfl: set[int]) -> Iterator[bytes]:
    """One gzip member with the header Go and estargz write, its CRC-32 and ISIZE checked."""
    start = cursor.position
    header = cursor.take(_GZIP_HEADER_SIZE, "a gzip header")
    if not _GZIP_HEADER.fullmatch(header):
        raise FormatError(f"gzip member at offset {start}: header {header.hex()} is not one estargz writers emit")
    xfl.add(header[8])
    crc, size = 0, 0
    try:
        for out in _inflate_unit(cursor, isal_zlib.decompressobj(wbits=-15), f"gzip member at offset {start}"):
            crc = isal_zlib.crc32(out, crc)
            size += len(out)
            yield out
    except ISAL_ERROR as exc:
        raise FormatError(f"gzip member at offset {start}: corrupt data: {exc}") from None
    stored_crc, stored_size = struct.unpack("<II", cursor.take(_GZIP_TRAILER_SIZE, "a gzip trailer"))
    if stored_crc != crc & 0xFFFFFFFF or stored_size != size & 0xFFFFFFFF:
        raise VerificationError(f"gzip member at offset {start}: CRC-32 or ISIZE does not match its data")


def _zstd_header_size(descriptor: int) -> int:
    single_segment = bool(descriptor & 0x20)
    content_size_field = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
    return len(_ZSTD_MAGIC) + 1 + (0 if single_segment else 1) + content_size_field


def _zstd_frame(cursor: _Cursor) -> Iterator[bytes]:
    """One zstd frame with a canonical header and a content checksum, decoded and checked.

    The frame is fed to the decoder one block at a time, so each step inflates at most one
    block (128 KiB) whatever the frame holds.
    """
    start = cursor.position
    head = cursor.take(5, "a zstd frame header")
    if head[:4] != _ZSTD_MAGIC:
        raise FormatError(f"no zstd frame at offset {start}")
    descriptor = head[4]
    if descriptor & _ZSTD_NONCANONICAL_BITS or not descriptor & _ZSTD_CHECKSUM_FLAG:
        raise FormatError(f"zstd frame at offset {start}: header descriptor {descriptor:#04x} "
                          "is not one estargz writers emit")
    header = head + cursor.take(_zstd_header_size(descriptor) - len(head), "a zstd frame header")
    if not descriptor & 0x20 and header[5] & _ZSTD_WINDOW_MANTISSA:
        raise FormatError(f"zstd frame at offset {start}: window descriptor {header[5]:#04x} is not canonical")
    decoder = zstandard.ZstdDecompressor().decompressobj()
    try:
        decoder.decompress(header)
        last = False
        while not last:
            block_header = cursor.take(_ZSTD_BLOCK_HEADER, "a zstd block header")
            value = int.from_bytes(block_header, "little")
            last, kind, size = bool(value & 1), (value >> 1) & 3, value >> 3
            payload = cursor.take(1 if kind == _ZSTD_RLE_BLOCK else size, "a zstd block")
            if out := decoder.decompress(block_header + payload):
                yield out
        decoder.decompress(cursor.take(_ZSTD_CHECKSUM_SIZE, "a zstd frame checksum"))
    except zstandard.ZstdError as exc:
        raise FormatError(f"zstd frame at offset {start}: corrupt data: {exc}") from None
    if not decoder.eof:
        raise FormatError(f"zstd frame at offset {start} does not end where its blocks end")


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_DONE = object()


def _ahead(items: Iterator[_T], depth: int) -> Iterator[_T]:
    """``items`` produced on a worker thread up to ``depth`` ahead (inflation overlaps the
    consumer's hashing); the producer's errors are raised here, and stopping early stops it."""
    queue: Queue[object] = Queue(depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                queue.put(item, timeout=_POLL_SECONDS)
                return True
            except Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # noqa: BLE001 (handed to the consumer)
            put(_Failed(exc))

    worker = threading.Thread(target=produce, name="estargz-verify-inflate", daemon=True)
    worker.start()
    try:
        while (item := queue.get()) is not _DONE:
            if isinstance(item, _Failed):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        worker.join()


def _units(cursor: _Cursor, end: int, gzip: bool, xfl: set[int]) -> Iterator[tuple[int, bytes]]:
    """(compressed offset of its unit, inflated block) for every unit in the data area."""
    while cursor.position < end:
        start = cursor.position
        cursor.units += 1
        for block in (_gzip_member(cursor, xfl) if gzip else _zstd_frame(cursor)):
            yield start, block


class _Segments:
    """The tar-split as the byte stream it describes: literal segments, and file payloads whose
    CRC-64 must match their records."""

    def __init__(self, records: list[TarSplitEntry]) -> None:
        self._records = deque(r for r in records if (r.payload if r.type != FILE_TYPE else r.size))
        self._offset = 0
        self._crc = 0

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if not self._records:
                raise VerificationError("the data holds bytes the tar-split does not describe")
            record = self._records[0]
            is_file = record.type == FILE_TYPE
            length = record.size if is_file else len(record.payload)  # type: ignore[arg-type]
            take = min(len(view), length - self._offset)
            if is_file:
                self._crc = crc64_iso(view[:take], self._crc)
            elif view[:take] != record.payload[self._offset:self._offset + take]:  # type: ignore[index]
                raise VerificationError("the data differs from the tar-split's bytes")
            view = view[take:]
            self._offset += take
            if self._offset == length:
                if is_file and record.crc is not None and record.crc != self._crc:
                    raise VerificationError(f"CRC-64 mismatch for {record.name.decode('utf-8', 'replace')!r}")
                self._records.popleft()
                self._offset = self._crc = 0

    def finish(self) -> None:
        if self._records:
            raise VerificationError("the data ends before the tar-split does")


class _Held:
    """Inflated bytes held back until what they belong to is checked, then written to ``out``;
    large runs go to a temporary file instead of memory."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._spool = tempfile.SpooledTemporaryFile(max_size=_HOLD_IN_MEMORY)  # noqa: SIM115 (closed by close)
        self.written = 0

    def hold(self, data: bytes) -> None:
        self._spool.write(data)

    def release(self) -> None:
        if not self._spool.tell():
            return
        self._spool.seek(0)
        while data := self._spool.read(_PIECE):
            self._out.write(data)
            self.written += len(data)
        self._spool.seek(0)
        self._spool.truncate()

    def close(self) -> None:
        self._spool.close()


class _UnitStream:
    """The inflated data area as a forward-only file that knows which unit each byte came from.

    Every byte passing through is hashed, compared with the tar-split if there is one, and kept
    until :meth:`take_recorded` so the tar headers the parser read can be checked.
    """

    def __init__(self, units: Iterator[tuple[int, bytes]], segments: _Segments | None,
                 held: _Held | None = None) -> None:
        self._units = units
        self.held = held
        self.short_read = False
        self._segments = segments
        self._block = b""
        self._index = 0
        self._unit = (0, 0)
        self.position = 0
        self.hash = new_hash() if segments is not None else None
        self._recorded: list[bytes] = []

    def _next_block(self) -> bool:
        for offset, block in self._units:
            if offset != self._unit[0]:
                self._unit = (offset, self.position)
            if block:
                self._block, self._index = block, 0
                return True
        return False

    def locate(self) -> tuple[int, int] | None:
        """(unit offset, offset inside the unit's inflated data) of the next byte, None at the end."""
        if self._index == len(self._block) and not self._next_block():
            return None
        return self._unit[0], self.position - self._unit[1]

    def read(self, size: int, record: bool = True) -> bytes:
        parts, have = [], 0
        while have < size:
            if self._index == len(self._block) and not self._next_block():
                break
            piece = self._block[self._index:self._index + size - have]
            self._index += len(piece)
            self.position += len(piece)
            parts.append(piece)
            have += len(piece)
        data = b"".join(parts)
        self.short_read = have < size
        if self.held is not None:
            self.held.hold(data)
        if self._segments is not None:
            self.hash.update(data)  # type: ignore[union-attr]
            self._segments.feed(data)
        if record:
            self._recorded.append(data)
        return data

    def seek(self, position: int) -> int:
        """Move forward over bytes that must be zeros (padding); the tar parser's only seeks."""
        while self.position < position:
            data = self.read(min(_PIECE, position - self.position), record=False)
            if not data:
                break
            if data.count(0) != len(data):
                raise VerificationError(f"non-zero padding in the tar stream before offset {self.position}")
        return self.position

    def release(self) -> None:
        """Everything read so far is checked: let it out."""
        if self.held is not None:
            self.held.release()

    def take_recorded(self) -> bytes:
        data = b"".join(self._recorded)
        self._recorded = []
        return data


def _check_header_blocks(raw: bytes, where: str) -> None:
    """Each header block of one entry must carry its checksum in the form writers use."""
    position = 0
    while position + BLOCK <= len(raw):
        block = raw[position:position + BLOCK]
        if block == bytes(BLOCK):
            return
        if not _TAR_CHECKSUM_FIELD.fullmatch(block[148:156]):
            raise VerificationError(f"tar header of {where}: checksum field {block[148:156]!r} is not canonical")
        position += BLOCK
        if block[156] in _EXTENSION_FLAGS:
            size = int(block[124:136].split(b"\0", 1)[0].strip(b" ") or b"0", 8)
            position += size


def _toc_groups(toc_entries: Iterable[TOCEntry]) -> Iterator[tuple[TOCEntry, list[TOCEntry]]]:
    """Each non-chunk TOC entry with its chunks (a regular file's first chunk is the entry)."""
    current: tuple[TOCEntry, list[TOCEntry]] | None = None
    for entry in toc_entries:
        if entry.type == "chunk":
            if current is None:
                raise FormatError("TOC: chunk without a preceding regular file")
            current[1].append(entry)
            continue
        if current is not None:
            yield current
        current = (entry, [entry] if entry.type == "reg" and entry.size > 0 else [])
    if current is not None:
        yield current


def _same_time(toc_modtime: str, mtime: tuple[int, int]) -> bool:
    if not toc_modtime:
        return True
    try:
        seconds, nanos = parse_rfc3339(toc_modtime)
    except FormatError:
        return False
    difference = (seconds - mtime[0]) * 1_000_000_000 + nanos - mtime[1]
    return abs(difference) <= _HALF_SECOND_NS


def _non_empty(xattrs: dict[str, bytes]) -> dict[str, bytes]:
    """Extended attributes without empty values (containers/storage leaves those out of its TOC)."""
    return {key: value for key, value in xattrs.items() if value}


def _match_entry(toc: TOCEntry, tar: TarEntry) -> None:
    """The tar header must say what the TOC says about the entry."""
    name = clean_name(tar.name)
    link = clean_name(tar.linkname) if tar.kind == "hardlink" else tar.linkname if tar.kind == "symlink" else ""
    toc_link = clean_name(toc.link_name) if toc.type == "hardlink" else toc.link_name
    mismatches = [what for what, same in (
        ("name", clean_name(toc.name) == name),
        ("type", toc.type == tar.kind),
        ("size", toc.size == tar.size),
        ("mode", toc.mode == tar.mode),
        ("owner", (toc.uid, toc.gid) == (tar.uid, tar.gid)),
        ("owner name", toc.user_name in ("", tar.uname) and toc.group_name in ("", tar.gname)),
        ("link target", toc_link == link),
        ("device", (toc.dev_major, toc.dev_minor) == (tar.devmajor, tar.devminor)
         or tar.kind not in ("char", "block")),
        ("xattrs", _non_empty(toc.xattrs) == _non_empty(tar.xattrs)),
        ("modification time", _same_time(toc.modtime, tar.mtime)),
    ) if not same]
    if mismatches:
        raise VerificationError(f"tar entry {tar.name!r} differs from its TOC entry in: {', '.join(mismatches)}")


def _check_file_data(stream: _UnitStream, entry: TOCEntry, chunks: list[TOCEntry]) -> None:
    """Read a regular file's payload chunk by chunk: each where the TOC says, each digest matching."""
    where = repr(entry.name)
    if not entry.digest and not all(c.chunk_digest for c in chunks):
        raise VerificationError(f"{where} has no digest to verify its contents")
    file_hash = new_hash()
    position = 0
    for chunk in chunks:
        size = chunk.chunk_size or entry.size - chunk.chunk_offset
        if chunk.chunk_offset != position or not 0 < size <= entry.size - position:
            raise FormatError(f"TOC: chunks of {where} do not cover the file contiguously")
        found = stream.locate()
        if found != (chunk.offset, chunk.inner_offset):
            raise VerificationError(f"chunk of {where} at file offset {position} lies at {found} "
                                    f"(unit offset, inner offset), the TOC says {(chunk.offset, chunk.inner_offset)}")
        chunk_hash = new_hash() if len(chunks) > 1 else file_hash
        _hash_payload(stream, size, where, {chunk_hash, file_hash})
        if chunk.chunk_digest and hash_digest(chunk_hash) != chunk.chunk_digest:
            raise VerificationError(f"chunk digest mismatch in {where} at file offset {position}")
        position += size
    if position != entry.size:
        raise FormatError(f"TOC: chunks of {where} add up to {position}, not {entry.size}")
    if entry.digest and hash_digest(file_hash) != entry.digest:
        raise VerificationError(f"digest mismatch for {where}")


def _hash_payload(stream: _UnitStream, size: int, where: str, hashes: Collection[Hasher]) -> None:
    """Read ``size`` bytes of file payload into each of ``hashes``."""
    remaining = size
    while remaining:
        data = stream.read(min(_PIECE, remaining), record=False)
        if not data:
            raise FormatError(f"the data ends inside {where}")
        for each in hashes:
            each.update(data)
        remaining -= len(data)


def _walk_tar(stream: _UnitStream, toc_entries: Iterable[TOCEntry], lossless: bool) -> tuple[int, bool]:
    """Match the tar stream entry by entry to the TOC; return the number of entries and whether
    the stream has an end-of-archive marker."""
    groups = _toc_groups(toc_entries)
    count = 0
    stream.take_recorded()
    for tar in iter_entries(stream):  # type: ignore[arg-type]
        toc, chunks = next(groups, (None, []))
        if toc is None:
            raise VerificationError(f"tar entry {tar.name!r} is not in the TOC")
        _check_header_blocks(stream.take_recorded(), repr(tar.name))
        _match_entry(toc, tar)
        if chunks:
            _check_file_data(stream, toc, chunks)
        elif toc.type == "reg" and toc.digest and toc.digest != EMPTY_DIGEST:
            raise VerificationError(f"digest mismatch for empty file {toc.name!r}")
        stream.seek(tar.end_offset)
        stream.release()
        count += 1
    has_marker = not stream.short_read
    _check_header_blocks(stream.take_recorded(), "the end of the archive")
    missing = next(groups, None)
    if missing is not None:
        raise VerificationError(f"TOC entry {missing[0].name!r} is not in the tar stream")
    if not lossless:
        # The parser stopped at the end of the data or at the first block of an end-of-archive
        # marker, whose second block must be zeros too. What follows is the input tar's own
        # tail, kept byte for byte (keep-diff-id), which the data's checksums cover.
        second = stream.read(BLOCK, record=False)
        if second.count(0) != len(second):
            raise VerificationError("tar entries hidden after an end-of-archive block")
    while stream.read(_PIECE, record=False):
        pass
    return count, has_marker


def _expected_footer(footer: Footer) -> bytes:
    """The footer bytes a writer emits for what ``footer`` says."""
    if footer.kind == ESTARGZ:
        return gzip_footer(footer.toc_offset)  # type: ignore[arg-type]
    if footer.kind == ESTARGZ_LEGACY:
        return legacy_gzip_footer(footer.toc_offset)  # type: ignore[arg-type]
    if footer.kind == ESTARGZ_EXTERNAL_TOC:
        return external_toc_footer()
    toc = (footer.toc_offset, footer.toc_length, footer.toc_uncompressed_length)
    if footer.kind == ZSTD_CHUNKED_64:
        return zstd_chunked_footer_64(*toc, footer.tar_split)  # type: ignore[arg-type]
    frame = zstd_chunked_footer_40(*toc)  # type: ignore[arg-type]
    if footer.kind == ZSTD_CHUNKED_56:
        return skippable_frame(frame[_SKIPPABLE_HEADER:] + bytes(_FOOTER_56_PADDING))
    return frame


def _blob_footer(source: Source, footer: Footer) -> Footer | None:
    """The footer at the blob's end; when the TOC was located by annotations, the blob may end
    right after the metadata without one, else its footer must agree with them."""
    size = source.size
    if footer.kind != _ANNOTATIONS:
        return footer
    offset, length = footer.tar_split[:2] if footer.tar_split else (footer.toc_offset, footer.toc_length)
    if offset + length == size:  # type: ignore[operator]
        return None
    found = parse_footer(source.read_at(size - min(MAX_FOOTER_SIZE, size), min(MAX_FOOTER_SIZE, size)), size)
    if (found.toc_offset, found.toc_length, found.tar_split or footer.tar_split) != (
            footer.toc_offset, footer.toc_length, footer.tar_split):
        raise VerificationError("the blob's footer and the layer annotations disagree on where the TOC is")
    return found


def _skippable(source: Source, offset: int, payload_length: int, what: str) -> int:
    """Check the skippable-frame header at ``offset``; return where its payload starts."""
    expected = skippable_frame(b"")[:4] + struct.pack("<I", payload_length)
    if source.read_at(offset, _SKIPPABLE_HEADER) != expected:
        raise FormatError(f"no skippable frame of {payload_length} bytes for the {what} at offset {offset}")
    return offset + _SKIPPABLE_HEADER


def _check_zstd_tail(source: Source, footer: Footer, data_end: int, end: int) -> None:
    """Skippable TOC frame, tar-split frame (if any) and footer: contiguous, canonical, to the end."""
    position = _skippable(source, data_end, footer.toc_length, "TOC")  # type: ignore[arg-type]
    regions = [(footer.toc_offset, footer.toc_length, "TOC")]
    if footer.tar_split is not None:
        regions.append((footer.tar_split[0], footer.tar_split[1], "tar-split"))
    for index, (offset, length, what) in enumerate(regions):
        if index:
            position = _skippable(source, position, length, what)  # type: ignore[arg-type]
        if offset != position:
            raise FormatError(f"the {what} lies at offset {offset}, expected {position}")
        cursor = _Cursor(source, position, position + length)  # type: ignore[operator]
        for _ in _zstd_frame(cursor):
            pass
        if not cursor.at_end:
            raise FormatError(f"the {what} frame does not fill its skippable frame")
        position += length  # type: ignore[operator]
    if position != end:
        raise FormatError(f"{end - position} bytes between the metadata and the footer")


def _check_gzip_toc(source: Source, start: int, end: int, xfl: set[int]) -> None:
    cursor = _Cursor(source, start, end)
    for _ in _gzip_member(cursor, xfl):
        pass
    if not cursor.at_end:
        raise FormatError(f"{end - cursor.position} bytes between the TOC member and the footer")


def check_blob_structure(source: Source, footer: Footer, data_end: int, toc_entries: Iterable[TOCEntry],
                         tar_split: list[TarSplitEntry] | None, *, threaded: bool = True,
                         out: BinaryIO | None = None) -> Coverage:
    """Check every byte of the blob: data units, tar stream against the TOC, TOC unit, footer.

    ``footer`` and ``data_end`` are what the reader found; ``tar_split`` are the checked
    tar-split records of a containers/storage blob, which must describe the data byte for byte.
    With ``threaded``, the data is read and inflated on a worker thread ahead of the checks.
    With ``out``, the inflated data is written there, each part only once it is checked.
    """
    found = _blob_footer(source, footer)
    gzip = footer.toc_length is None
    size = source.size
    footer_size = 0 if found is None else found.size
    if found is not None and source.read_at(size - footer_size, footer_size) != _expected_footer(found):
        raise FormatError(f"the {found.kind} footer is not the one a writer emits for its TOC offset")
    xfl: set[int] = set()
    cursor = _Cursor(source, 0, data_end)
    segments = None if tar_split is None else _Segments(tar_split)
    units = _units(cursor, data_end, gzip, xfl)
    held = None if out is None else _Held(out)
    try:
        stream = _UnitStream(_ahead(units, _AHEAD_BLOCKS) if threaded else units, segments, held)
        entries, has_marker = _walk_tar(stream, toc_entries, lossless=segments is not None)
        if segments is not None:
            segments.finish()
        stream.release()
    finally:
        if held is not None:
            held.close()
    if gzip:
        if footer.toc_offset is not None:
            _check_gzip_toc(source, data_end, size - footer_size, xfl)
        if len(xfl) > 1:
            raise FormatError("gzip members of the blob disagree on their XFL header byte")
    else:
        _check_zstd_tail(source, footer, data_end, size - footer_size)
    if not cursor.at_end:
        raise FormatError(f"the data area has {data_end - cursor.position} bytes that belong to no unit")
    tail = _Cursor(source, data_end, size)
    tail.hash = cursor.hash
    while tail.piece():
        pass
    digest = None if stream.hash is None else hash_digest(stream.hash)
    return Coverage(size, cursor.units, entries, stream.position, hash_digest(cursor.hash), digest,
                    has_marker, 0 if held is None else held.written)
