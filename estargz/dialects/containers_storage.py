"""containers/storage's zstd:chunked (podman, buildah, skopeo, CRI-O): the tar kept byte for byte
in input order, each content-defined chunk in a zstd frame of its own, headers and padding in frames
between them; the compact TOC and the tar-split in skippable frames, then a 64-byte footer."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import mmap
import os
import re
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from typing import BinaryIO, cast

from ..annotations import (
    LEGACY_MANIFEST_CHECKSUM_ANNOTATION,
    MANIFEST_CHECKSUM_ANNOTATION,
    MANIFEST_POSITION_ANNOTATION,
    TARSPLIT_POSITION_ANNOTATION,
)
from ..chunking import (
    MemberGrouping,
    Span,
    content_defined_chunks_of_files,
    content_defined_chunks_streamed,
)
from ..cstoc import CSTOCEncoder, CSTOCEntry, iter_cs_toc, iter_cs_toc_as_toc_entries
from ..errors import FormatError, UnsupportedInputError
from ..footer import ZSTD_CHUNKED_56, ZSTD_CHUNKED_64, skippable_frame, zstd_chunked_footer_64
from ..formats import FORMAT_ZSTD_CHUNKED, ZSTD_LAYER_MEDIA_TYPE
from ..framing import DEFAULT_CONTAINERS_STORAGE_ZSTD_LEVEL, ZstdCompressor
from ..ordering import check_readable
from ..pipeline import OrderedSink, Pipeline
from ..tarsplit import TarSplitWriter, crc64_iso
from ..tarstream import BLOCK, TarEntry, iter_entries, padding
from ..toc import MAX_TAR_SPLIT_SIZE, MAX_TOC_SIZE, check_encoded_size, scan_toc_object
from .base import DecodedTOC, LayerOptions, Tail, TarInput
from .stargz_zstd import ESTARGZ_ONLY

__all__ = ["CONTAINERS_STORAGE", "has_containers_storage_schema"]

_COPY_BLOCK = 1 << 20
_KEEPS_THE_TAR = "which keeps the tar as it is"
#: Entry keys (lower case) only a containers/storage TOC has.
_CONTAINERS_STORAGE_KEYS = frozenset({"endoffset", "chunktype", "accesstime", "changetime"})
#: Surrogate escapes of bytes that are not UTF-8, as names decoded from the tar hold them.
_UNDECODABLE = re.compile("[\udc80-\udcff]")
#: A layer of at most this many entries is parsed once and its entries kept for every pass.
_KEPT_ENTRIES = 1 << 16
#: The tar-split spool is written in blocks of this size.
_SPOOL_BUFFER = 1 << 20

#: Pages of the memory map behind the readers are given back every this many bytes.
_RELEASE_STEP = 8 << 20
_PAGE_MASK = ~(mmap.PAGESIZE - 1)


def _release(view: mmap.mmap, start: int, end: int) -> None:
    """Unmap the pages wholly inside [start, end) from this process (the page cache keeps them):
    what was read stays out of the resident set, which then does not grow with the tar."""
    first, last = (start + mmap.PAGESIZE - 1) & _PAGE_MASK, end & _PAGE_MASK
    if last > first:
        view.madvise(mmap.MADV_DONTNEED, first, last - first)


class _MappedFile:
    """The reads :func:`~estargz.tarstream.iter_entries` makes (``seek``, ``read``, ``tell``),
    as copies from a memory map: no system call, so no wait to get the GIL back after one. Pages
    behind a forward pass are released as it goes."""

    def __init__(self, view: mmap.mmap) -> None:
        self._view = view
        self._position = self._released = 0

    def seek(self, position: int, whence: int = os.SEEK_SET) -> int:
        if whence != os.SEEK_SET or position < 0:
            raise ValueError("only absolute, non-negative positions")
        if position - self._released >= _RELEASE_STEP:
            _release(self._view, self._released, position)
            self._released = position
        self._position = position
        return position

    def tell(self) -> int:
        return self._position

    def read(self, size: int = -1) -> bytes:
        end = len(self._view) if size < 0 else self._position + size
        data = self._view[self._position:end]
        self._position += len(data)
        return data


class _TarReader:
    """The input tar: read through a read-only memory map of its file when it has one, else
    through the pipeline (one reader at a time). Use as a context manager."""

    def __init__(self, pipeline: Pipeline, tar: TarInput) -> None:
        self.tar = tar
        self._pipeline = pipeline
        self._view: mmap.mmap | None = None
        try:
            fd = tar.file.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):
            return
        if tar.end > 0:
            try:
                self._view = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError):
                return
            self.tar = TarInput(tar.file, tar.start, min(tar.end, len(self._view)))

    def __enter__(self) -> _TarReader:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._view is not None:
            self._view.close()

    @property
    def mapped(self) -> bool:
        """Whether reads are slices of the memory map, which any thread may make."""
        return self._view is not None

    def entries(self) -> Iterator[TarEntry]:
        """The entries, parsed afresh."""
        if self._view is None:
            return self.tar.entries()
        return iter_entries(cast(BinaryIO, _MappedFile(self._view)), self.tar.start)

    def read(self, offset: int, size: int) -> bytes:
        """Exactly ``size`` bytes at ``offset``."""
        if self._view is None:
            return self._pipeline.read(offset, size)
        data = self._view[offset:offset + size]
        if len(data) != size:
            raise FormatError(f"tar: unexpected end of archive at offset {offset + len(data)}")
        return data

    def release(self, start: int, end: int) -> None:
        """Bytes [start, end) were read and are not needed again."""
        if self._view is not None:
            _release(self._view, start, end)


class _Entries:
    """The entries of a tar for several passes: the first pass parses the headers and keeps the
    entries of a layer of at most :data:`_KEPT_ENTRIES` entries for the next ones; a larger layer
    is parsed again on each pass (memory does not grow with it)."""

    def __init__(self, source: _TarReader) -> None:
        self._source = source
        self._kept: list[TarEntry] | None = None

    def __call__(self) -> Iterator[TarEntry]:
        if self._kept is not None:
            return iter(self._kept)
        return self._parse()

    def _parse(self) -> Iterator[TarEntry]:
        kept: list[TarEntry] | None = []
        for entry in self._source.entries():
            if kept is not None:
                kept.append(entry)
                if len(kept) > _KEPT_ENTRIES:
                    kept = None
            yield entry
        if kept is not None:
            self._kept = kept


@dataclass(slots=True)
class _Cut:
    """One file as the planner found it: its chunks, its contents if it is small, its CRC-64 and,
    when it has several chunks, its digest (else "")."""

    spans: list[Span]
    contents: bytes | None
    crc: int
    digest: str


def _summed(spans: list[Span], contents: bytes) -> _Cut:
    digest = "sha256:" + hashlib.sha256(contents).hexdigest() if len(spans) > 1 else ""
    return _Cut(spans, contents, crc64_iso(contents), digest)
#: One of those keys, or ``tarSplitDigest``, in lower case as a JSON key (spelled without escapes).
_CONTAINERS_STORAGE_KEY = re.compile(r'"(?:endoffset|chunktype|accesstime|changetime|tarsplitdigest)"[ \t\n\r]*:')


class _SpanPlanner:
    """The content-defined chunks of the next files, their CRC-64 and digests, found ahead on a
    thread of their own.

    Small files are cut in batches (one vectorized pass for many files), large ones in windows,
    each window's pages released once cut and summed. A tar that is not memory-mapped is cut in line instead
    (its reads move the file position). :meth:`close` stops the thread; call it whatever happens.
    """

    _LOOKAHEAD = 4  # batches in flight
    _SMALL_FILE = 256 << 10
    _BATCH_BYTES = 4 << 20

    def __init__(self, source: _TarReader, files: Iterable[TarEntry]) -> None:
        self._source = source
        self._batches = self._batched(files)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="estargz-chunker") if source.mapped else None
        self._ahead: deque[tuple[list[TarEntry], Future[list[_Cut]]]] = deque()
        self._ready: deque[tuple[TarEntry, _Cut]] = deque()
        self._fill()

    def _batched(self, files: Iterable[TarEntry]) -> Iterator[list[TarEntry]]:
        batch: list[TarEntry] = []
        size = 0
        for entry in files:
            if entry.size > self._SMALL_FILE:
                if batch:
                    yield batch
                    batch, size = [], 0
                yield [entry]
                continue
            batch.append(entry)
            size += entry.size
            if size >= self._BATCH_BYTES:
                yield batch
                batch, size = [], 0
        if batch:
            yield batch

    def _cut(self, batch: list[TarEntry]) -> list[_Cut]:
        """Each file of ``batch``, with the contents of small files (read once, used twice)."""
        if len(batch) == 1 and batch[0].size > self._SMALL_FILE:
            return [self._cut_streamed(batch[0])]
        contents = [self._source.read(entry.data_offset, entry.size) for entry in batch]
        return list(map(_summed, content_defined_chunks_of_files(contents), contents))

    def _cut_streamed(self, entry: TarEntry) -> _Cut:
        """A large file, read once in order in windows, each summed and released."""
        file_hash = hashlib.sha256()
        crc = 0

        def window(at: int, length: int) -> bytes:
            nonlocal crc
            start = entry.data_offset + at
            data = self._source.read(start, length)
            self._source.release(start, start + length)
            crc = crc64_iso(data, crc)
            file_hash.update(data)
            return data
        spans = list(content_defined_chunks_streamed(window, entry.size))
        return _Cut(spans, None, crc, "sha256:" + file_hash.hexdigest() if len(spans) > 1 else "")

    def _fill(self) -> None:
        if self._pool is None:
            return
        while len(self._ahead) < self._LOOKAHEAD and (batch := next(self._batches, None)) is not None:
            self._ahead.append((batch, self._pool.submit(self._cut, batch)))

    def cut(self, entry: TarEntry) -> _Cut:
        """The chunks of ``entry`` and the rest; files must be asked for in input order."""
        if not self._ready:
            if self._pool is None:
                batch = next(self._batches)
                results = self._cut(batch)
            else:
                batch, future = self._ahead.popleft()
                self._fill()
                results = future.result()
            self._ready.extend(zip(batch, results, strict=True))
        planned, cut = self._ready.popleft()
        if planned.header_offset != entry.header_offset:
            raise RuntimeError("files must be asked for in input order")
        return cut

    def close(self) -> None:
        """Stop the chunking thread, dropping what it has not started."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)


def _has_undecodable(name: str) -> bool:
    """Whether ``name`` came from bytes that are not UTF-8 (kept as surrogate escapes)."""
    return not name.isascii() and _UNDECODABLE.search(name) is not None


def _record(entry: TarEntry) -> CSTOCEntry:
    record = CSTOCEntry(
        type=entry.kind, name=entry.name, mode=entry.mode, size=entry.size, uid=entry.uid,
        gid=entry.gid, modtime=entry.mtime, accesstime=entry.atime, changetime=entry.ctime,
        xattrs=entry.xattrs,
    )
    if entry.kind in ("symlink", "hardlink"):
        record.link_name = entry.linkname
    elif entry.kind in ("char", "block"):
        record.dev_major, record.dev_minor = entry.devmajor, entry.devminor
    return record


class _ContainersStorageWriter:
    grouping: MemberGrouping | None = None
    metadata_apart = True

    def __init__(self, stack: ExitStack) -> None:
        self._encoder = CSTOCEncoder()
        self._spool = cast(BinaryIO, stack.enter_context(
            tempfile.TemporaryFile(prefix="estargz-tar-split-", buffering=_SPOOL_BUFFER)))
        self._tar_split = TarSplitWriter(self._spool.write)

    def on_record(self, record: CSTOCEntry) -> None:
        if record.type == "reg" and not record.chunk_size:
            record.chunk_digest = ""  # single-chunk files carry only their digest
        self._encoder.add(record)
        check_encoded_size("TOC", len(self._encoder.buffer), MAX_TOC_SIZE)

    def walk(self, pipeline: Pipeline, tar: TarInput) -> list[str]:
        """Every input byte kept in order; headers and padding in frames between the chunks'."""
        with _TarReader(pipeline, tar) as source:
            entries = _Entries(source)
            check_readable(entries)
            planner = _SpanPlanner(source, (e for e in entries() if e.kind == "reg" and e.size))
            try:
                position, last_size = self._entries(pipeline, source, entries(), planner)
            finally:
                planner.close()
            self._ending(pipeline, source, position, last_size)
        return []

    def _entries(self, pipeline: Pipeline, source: _TarReader, entries: Iterable[TarEntry],
                 planner: _SpanPlanner) -> tuple[int, int]:
        """Each entry's header bytes and chunks; pages behind are released every few MB."""
        position = released = source.tar.start
        last_size = 0
        for entry in entries:
            if position - released >= _RELEASE_STEP:
                source.release(released, position)
                released = position
            if _has_undecodable(entry.name) or _has_undecodable(entry.linkname):
                raise UnsupportedInputError(
                    f"name {entry.name!r} is not valid UTF-8: the zstd:chunked TOC cannot hold it "
                    "(containers/storage would fail to pull the layer)")
            header = source.read(position, entry.data_offset - position)
            pipeline.append(header)
            self._tar_split.segment(header)
            records = [_record(entry)]
            crc = None
            if entry.kind == "reg" and entry.size:
                cut = planner.cut(entry)
                _add_content(pipeline, source, entry, records, cut)
                crc = cut.crc
            pipeline.complete(records)
            self._tar_split.file(entry.name.encode("utf-8", "surrogateescape"), entry.size, crc)
            position, last_size = entry.data_offset + entry.size, entry.size
        return position, last_size

    def _ending(self, pipeline: Pipeline, source: _TarReader, position: int, last_size: int) -> None:
        """The end of the archive as a tar reader consumes it (last padding, two zero blocks), then
        whatever follows, every byte kept."""
        end = source.tar.end
        archive_end = min(end, position + padding(last_size) + 2 * BLOCK)
        ending = source.read(position, archive_end - position)
        pipeline.append(ending)
        self._tar_split.segment(ending)
        for offset in range(archive_end, end, _COPY_BLOCK):
            rest = source.read(offset, min(_COPY_BLOCK, end - offset))
            source.release(offset, offset + len(rest))
            pipeline.append(rest)
            self._tar_split.trailing(rest)
        self._tar_split.close()

    def tail(self, pipeline: Pipeline, sink: OrderedSink) -> Tail:
        """The TOC and tar-split frames and the 64-byte footer."""
        tar_split = self._tar_split
        check_encoded_size("tar-split", tar_split.size, MAX_TAR_SPLIT_SIZE)
        self._spool.flush()
        if tar_split.size:
            with mmap.mmap(self._spool.fileno(), 0, access=mmap.ACCESS_READ) as view:
                tar_split_frame = pipeline.compress_now(view)
        else:
            tar_split_frame = pipeline.compress_now(b"")
        self._encoder.finish("sha256:" + hashlib.sha256(tar_split_frame).hexdigest())
        toc_json = self._encoder.buffer
        check_encoded_size("TOC", len(toc_json), MAX_TOC_SIZE)
        toc_frame = pipeline.compress_now(toc_json)
        toc_offset = sink.offset + 8
        sink.write_raw(skippable_frame(toc_frame))
        tar_split_position = (sink.offset + 8, len(tar_split_frame), tar_split.size)
        sink.write_raw(skippable_frame(tar_split_frame))
        sink.write_raw(zstd_chunked_footer_64(toc_offset, len(toc_frame), len(toc_json), tar_split_position))
        digest = "sha256:" + hashlib.sha256(toc_frame).hexdigest()
        return Tail(digest, {
            MANIFEST_CHECKSUM_ANNOTATION: digest,
            MANIFEST_POSITION_ANNOTATION: f"{toc_offset}:{len(toc_frame)}:{len(toc_json)}:1",
            TARSPLIT_POSITION_ANNOTATION: "{}:{}:{}".format(*tar_split_position),
        })


def _add_content(pipeline: Pipeline, source: _TarReader, entry: TarEntry, records: list[CSTOCEntry],
                 cut: _Cut) -> None:
    """Frame each content-defined chunk of one file (its contents, or read from the tar and then
    released), adding its chunk records after the file's own (``records[0]``)."""
    record, spans, contents = records[0], cut.spans, cut.contents
    several = len(spans) > 1
    for index, (offset, length, zeros) in enumerate(spans):
        if index == 0:
            chunk = record
        else:
            chunk = CSTOCEntry(type="chunk", name=entry.name, chunk_offset=offset)
            records.append(chunk)
        last = record if index == len(spans) - 1 else None
        if several:
            chunk.chunk_size = length
            chunk.chunk_type = "zeros" if zeros else ""
        if zeros:
            pipeline.add_zeros(chunk, length, whole_file=not several, ends_file=last)
            continue
        if contents is None:
            start = entry.data_offset + offset
            payload = source.read(start, length)
            source.release(start, start + length)
        elif length == len(contents):
            payload = contents
        else:
            payload = contents[offset:offset + length]
        pipeline.add_chunk(chunk, payload, whole_file=not several, alone=True, ends_file=last)
    if several:
        record.digest = cut.digest


def _iter_native_entries(toc_json: bytes) -> Iterator[CSTOCEntry]:
    """The entries of :func:`~estargz.cstoc.iter_cs_toc`, without what its generator returns."""
    yield from iter_cs_toc(toc_json)


def has_containers_storage_schema(toc_json: bytes) -> bool:
    """Whether the TOC JSON holds keys only containers/storage writes (``tarSplitDigest``; entries
    with ``endOffset``, ``chunkType``, ``accesstime`` or ``changetime``; matched case-insensitively,
    as Go does). JSON that does not parse says no: the stargz decoder then reports what is wrong.

    Only a TOC that may hold such a key (one of those names followed by a colon, or an escape
    that could spell one) is parsed, one entry at a time."""
    text = bytes(toc_json).decode("utf-8", "surrogateescape")
    folded = text.lower()
    if "\\u" not in folded and not _CONTAINERS_STORAGE_KEY.search(folded):
        return False
    scan = scan_toc_object(text, json.JSONDecoder(), "", _has_containers_storage_keys)
    try:
        while True:
            if next(scan):
                return True
    except StopIteration as stop:
        members, _ = stop.value
        return "tarsplitdigest" in members
    except FormatError:
        return False
    finally:
        scan.close()


def _has_containers_storage_keys(index: int, entry: object) -> bool:
    return isinstance(entry, dict) and any(key.lower() in _CONTAINERS_STORAGE_KEYS for key in entry)


class ContainersStorage:
    """The containers/storage zstd:chunked dialect."""

    name = FORMAT_ZSTD_CHUNKED
    compression = "zstd"
    media_type = ZSTD_LAYER_MEDIA_TYPE
    default_level = DEFAULT_CONTAINERS_STORAGE_ZSTD_LEVEL
    accepts: frozenset[str] = frozenset()
    identifying_annotations: tuple[str, ...] = (MANIFEST_CHECKSUM_ANNOTATION, LEGACY_MANIFEST_CHECKSUM_ANNOTATION)
    footer_kinds = frozenset({ZSTD_CHUNKED_56, ZSTD_CHUNKED_64})

    def codec(self, level: int) -> ZstdCompressor:
        return ZstdCompressor(level)

    def check(self, options: LayerOptions) -> None:
        refused = options.given()
        if refused & {"external_toc", "keep_diff_id"}:
            raise ValueError(ESTARGZ_ONLY)
        if refused:
            raise ValueError("containers/storage zstd:chunked keeps the tar as it is: no prioritized files, "
                             "no min-chunk-size")

    def refusal(self, option: str) -> str:
        if option in ("external_toc", "keep_diff_id"):
            return "applies to --format estargz only"
        return f"does not apply to --format {self.name}, {_KEEPS_THE_TAR}"

    def lossless(self, options: LayerOptions) -> bool:
        return True

    def writer(self, options: LayerOptions, stack: ExitStack) -> _ContainersStorageWriter:
        return _ContainersStorageWriter(stack)

    def inflate(self, pieces: Iterable[bytes], max_output: int | None = None) -> Iterator[bytes]:
        return ZstdCompressor.inflate(pieces, max_output)

    def read_toc(self, toc_json: bytes) -> DecodedTOC:
        return DecodedTOC(functools.partial(iter_cs_toc_as_toc_entries, toc_json),
                          functools.partial(_iter_native_entries, toc_json))

    def toc_digest(self, toc_json: bytes, compressed_toc: bytes | None) -> str:
        """sha256 of the compressed TOC (the manifest-checksum annotation)."""
        if compressed_toc is None:
            raise ValueError("a containers/storage TOC is always compressed")
        return "sha256:" + hashlib.sha256(compressed_toc).hexdigest()


CONTAINERS_STORAGE = ContainersStorage()
