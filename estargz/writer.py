"""Convert a layer tar into an eStargz blob: order entries, cut chunks, compress members in parallel.

Data flow: input tar (plain, gzip or zstd) -> seekable plain tar -> entry index -> order
(dedupe, prioritized files, landmark; or input order with every byte kept, for keep-diff-id) ->
members (one per chunk, or grouped up to min-chunk-size; headers in between) -> thread pool
(compress + chunk digests) -> written in order -> TOC member and footer (or external-TOC footer).
Members are compressed independently and written in submission order, so the output bytes do
not depend on the number of threads; at most a few members are in flight, so memory does not
depend on the layer size.
"""

from __future__ import annotations

import hashlib
import io
import json
import mmap
import os
import queue
import shutil
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import BinaryIO, Union

import zstandard
from isal import igzip, isal_zlib

from .annotations import (
    LAYER_DIGEST_ANNOTATION,
    LEGACY_MANIFEST_CHECKSUM_ANNOTATION,
    LEGACY_MANIFEST_POSITION_ANNOTATION,
    MANIFEST_CHECKSUM_ANNOTATION,
    MANIFEST_POSITION_ANNOTATION,
    TARSPLIT_POSITION_ANNOTATION,
    TOC_DIGEST_ANNOTATION,
    UNCOMPRESSED_SIZE_ANNOTATION,
)
from .cstoc import CSTOCEntry, CSTOCEncoder
from .errors import FormatError, UnsupportedInputError
from .footer import (
    external_toc_footer,
    gzip_footer,
    skippable_frame,
    zstd_chunked_footer_40,
    zstd_chunked_footer_64,
)
from .formats import (
    FORMAT_ESTARGZ,
    FORMAT_ZSTD_CHUNKED,
    FORMAT_ZSTD_CHUNKED_STARGZ,
    FORMATS,
    GZIP_LAYER_MEDIA_TYPE,
    ZSTD_LAYER_MEDIA_TYPE,
)
from .framing import (
    DEFAULT_CONTAINERS_STORAGE_ZSTD_LEVEL,
    DEFAULT_GZIP_LEVEL,
    DEFAULT_ZSTD_LEVEL,
    Compressor,
    GzipCompressor,
    ZstdCompressor,
)
from .ordering import LANDMARK_CONTENTS, check_readable, order_entries
from .output import atomic_output
from .tarsplit import TarSplitWriter, crc64_iso
from .tarstream import BLOCK, TarEntry, iter_entries, padding, ustar_header
from .toc import (
    EMPTY_DIGEST,
    MAX_TAR_SPLIT_SIZE,
    MAX_TOC_SIZE,
    TOC_NAME,
    TOCEncoder,
    TOCEntry,
    check_encoded_size,
    clean_name,
    format_modtime,
)

__all__ = ["BuildResult", "convert", "DEFAULT_CHUNK_SIZE", "read_workload_record"]

DEFAULT_CHUNK_SIZE = 4 << 20



#: A run of headers longer than this is split into several members, bounding member size.
_HEADER_RUN_LIMIT = 4 << 20
#: Members are handed to the compression threads in batches of about this many bytes.
_BATCH_BYTES = 1 << 20
_COPY_BLOCK = 1 << 20

PathOrStream = Union[str, "os.PathLike[str]", BinaryIO]
#: Gives the entries of the input tar afresh on each call, so they are never all held at once.
Listing = Callable[[], Iterable[TarEntry]]
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class BuildResult:
    """What a conversion produced: the digests, sizes and annotations a manifest needs."""

    format: str
    toc_digest: str
    """eStargz formats: sha256 of the TOC JSON. zstd:chunked: sha256 of the compressed TOC."""
    diff_id: str
    uncompressed_size: int
    blob_digest: str
    blob_size: int
    media_type: str
    annotations: dict[str, str]
    """The OCI layer-descriptor annotations that identify the format and locate the TOC."""
    missing_prioritized: tuple[str, ...] = ()
    external_toc: bytes | None = field(default=None, repr=False)
    """With ``external_toc``: the TOC blob (a gzip tar holding ``stargz.index.json``)."""

    @property
    def toc_blob_descriptor(self) -> dict[str, object] | None:
        """With ``external_toc``: the layer descriptor of the TOC blob in the TOC image."""
        if self.external_toc is None:
            return None
        return {
            "mediaType": GZIP_LAYER_MEDIA_TYPE,
            "digest": "sha256:" + hashlib.sha256(self.external_toc).hexdigest(),
            "size": len(self.external_toc),
            "annotations": {LAYER_DIGEST_ANNOTATION: self.blob_digest},
        }

    def to_json(self) -> dict[str, object]:
        """A JSON-ready summary, with the layer descriptor as it goes into a manifest."""
        summary: dict[str, object] = {
            "format": self.format,
            "tocDigest": self.toc_digest,
            "diffID": self.diff_id,
            "uncompressedSize": self.uncompressed_size,
            "blobDigest": self.blob_digest,
            "blobSize": self.blob_size,
            "missingPrioritized": list(self.missing_prioritized),
            "descriptor": {
                "mediaType": self.media_type,
                "digest": self.blob_digest,
                "size": self.blob_size,
                "annotations": self.annotations,
            },
        }
        if self.external_toc is not None:
            summary["tocDescriptor"] = self.toc_blob_descriptor
        return summary


@dataclass(slots=True)
class _ChunkRef:
    """A chunk inside a member's plaintext: its TOC entry and where its payload lies."""

    entry: TOCEntry | CSTOCEntry
    start: int
    size: int
    whole_file: bool  # the chunk is the whole file, so its digest is the file digest
    ends_file: CSTOCEntry | None = None  # the file entry whose endOffset is this member's end


@dataclass(slots=True)
class _Member:
    """The plaintext of one member (gzip member or zstd frame) and the chunks starting in it.

    A run of zeros (containers/storage holes) is kept as its length, never materialized.
    """

    data: bytes
    chunks: list[_ChunkRef]
    zeros: int = 0
    finished: list[TOCEntry | CSTOCEntry] = field(default_factory=list)
    """TOC entries whose last chunk is in this member or an earlier one, in TOC order."""

    @property
    def size(self) -> int:
        return self.zeros or len(self.data)

    def blocks(self) -> Iterator[bytes]:
        """The plaintext, in blocks of at most 1 MiB for a run of zeros."""
        if not self.zeros:
            yield self.data
            return
        block = bytes(min(self.zeros, _COPY_BLOCK))
        for start in range(0, self.zeros, len(block)):
            yield block[:min(len(block), self.zeros - start)]


@dataclass(slots=True)
class _Compressed:
    member: _Member
    blob: bytes
    chunk_digests: list[str]


def _compress_batch(compressor: Compressor, batch: list[_Member]) -> list[_Compressed]:
    out = []
    for member in batch:
        if member.zeros:
            digest = hashlib.sha256()
            for block in member.blocks():
                digest.update(block)
            blob = compressor.compress_zeros(member.zeros)  # type: ignore[attr-defined]
            out.append(_Compressed(member, blob, ["sha256:" + digest.hexdigest()]))
            continue
        view = memoryview(member.data)
        digests = ["sha256:" + hashlib.sha256(view[c.start:c.start + c.size]).hexdigest() for c in member.chunks]
        out.append(_Compressed(member, compressor.compress(member.data), digests))
    return out


class _OwnerNames:
    """Go's rule for userName/groupName: written only when it changes for a given uid/gid."""

    def __init__(self) -> None:
        self._last: dict[int, str] = {}

    def __call__(self, ident: int, name: str) -> str:
        if not name or self._last.get(ident) == name:
            return ""
        self._last[ident] = name
        return name


class _OrderedSink(threading.Thread):
    """On its own thread, writes compressed batches in submission order and keeps the digests.

    The queue of pending batches is bounded, which bounds the memory of the whole pipeline. Once a
    member is written, the TOC entries it completes are handed to ``on_entry`` (and dropped).
    """

    def __init__(self, out: BinaryIO, max_pending: int, progress: Progress | None, total: int,
                 on_entry: Callable[[TOCEntry | CSTOCEntry], None]) -> None:
        super().__init__(name="estargz-sink", daemon=True)
        self.out = out
        self.on_entry = on_entry
        self.offset = 0
        self.uncompressed_size = 0
        self.blob_hash = hashlib.sha256()
        self.diff_hash = hashlib.sha256()
        self._queue: queue.Queue[Future[list[_Compressed]] | None] = queue.Queue(max_pending)
        self._error: BaseException | None = None
        self._progress = progress
        self._total = total

    def put(self, batch: Future[list[_Compressed]]) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(batch)

    def run(self) -> None:
        try:
            while (batch := self._queue.get()) is not None:
                for item in batch.result():
                    self.write(item)
                if self._progress is not None:
                    self._progress(min(self.uncompressed_size, self._total), self._total)
        except BaseException as exc:  # handed to the producer by put() and close()
            self._error = exc
            while self._queue.get() is not None:
                pass

    def close(self) -> None:
        """Wait until every batch is written; re-raise what failed on the sink thread."""
        self._queue.put(None)
        self.join()
        if self._error is not None:
            raise self._error

    def write(self, item: _Compressed) -> None:
        member = item.member
        for chunk, digest in zip(member.chunks, item.chunk_digests, strict=True):
            chunk.entry.offset = self.offset
            chunk.entry.chunk_digest = digest
            if chunk.whole_file:
                chunk.entry.digest = digest
            if chunk.ends_file is not None:
                chunk.ends_file.end_offset = self.offset + len(item.blob)
        for block in member.blocks():
            self.diff_hash.update(block)
        self.uncompressed_size += member.size
        self.write_raw(item.blob)
        for entry in member.finished:
            self.on_entry(entry)

    def write_unchunked(self, plain: bytearray, blob: bytes) -> None:
        """A member holding no chunk (the TOC's): its plaintext counts in the diffID and size."""
        self.diff_hash.update(plain)
        self.uncompressed_size += len(plain)
        self.write_raw(blob)

    def write_raw(self, blob: bytes) -> None:
        self.out.write(blob)
        self.blob_hash.update(blob)
        self.offset += len(blob)


class _Pipeline:
    """Cuts the entries into members and runs them through the compression threads.

    A member starts at every chunk, or with ``min_chunk_size`` only once the open member holds
    that many compressed bytes (estimated with a fast deflate of each piece); landmarks always
    start a member. Runs of header bytes are split at :data:`_HEADER_RUN_LIMIT`.
    """

    def __init__(self, source: BinaryIO, sink: _OrderedSink, compressor: Compressor,
                 pool: ThreadPoolExecutor, chunk_size: int, min_chunk_size: int,
                 separate_metadata: bool = False) -> None:
        self.source = source
        self.separate_metadata = separate_metadata
        self.sink = sink
        self.compressor = compressor
        self.pool = pool
        self.chunk_size = chunk_size
        self.min_chunk_size = min_chunk_size
        self.batch: list[_Member] = []
        self.batch_bytes = 0
        self.parts: list[bytes] = []
        self.member_size = 0
        self.header_run = 0
        self.chunks: list[_ChunkRef] = []
        self.estimated = 0
        self.unestimated: list[bytes] = []
        self.finished: list[TOCEntry | CSTOCEntry] = []
        """Complete TOC entries not yet handed to a member."""
        self.names = (_OwnerNames(), _OwnerNames())

    # -- members -------------------------------------------------------------------------
    def _close_member(self) -> None:
        if not self.parts:
            return
        self._queue_member(_Member(b"".join(self.parts), self.chunks, finished=self.finished))
        self.finished = []
        self.parts, self.member_size, self.header_run, self.chunks = [], 0, 0, []
        self.estimated, self.unestimated = 0, []

    def _queue_member(self, member: _Member) -> None:
        self.batch.append(member)
        self.batch_bytes += len(member.data)
        if self.batch_bytes >= _BATCH_BYTES:
            self._submit()

    def _submit(self) -> None:
        if self.batch:
            self.sink.put(self.pool.submit(_compress_batch, self.compressor, self.batch))
            self.batch, self.batch_bytes = [], 0

    def _add_bytes(self, data: bytes) -> None:
        self.parts.append(data)
        self.member_size += len(data)
        if self.min_chunk_size:
            self.unestimated.append(data)

    def append(self, data: bytes) -> None:
        """Bytes between chunks: headers, padding, the archive's end."""
        if self.header_run >= _HEADER_RUN_LIMIT or (self.separate_metadata and self.chunks):
            self._close_member()
        self._add_bytes(data)
        self.header_run += len(data)

    def _member_is_full(self) -> bool:
        if self.unestimated:
            self.estimated += len(isal_zlib.compress(b"".join(self.unestimated), 1, wbits=-15))
            self.unestimated = []
        return self.estimated >= self.min_chunk_size

    def _start_chunk(self, chunk: TOCEntry, payload: bytes, whole_file: bool, landmark: bool) -> None:
        if not self.min_chunk_size or landmark or self._member_is_full():
            self._close_member()
        chunk.inner_offset = self.member_size
        self.chunks.append(_ChunkRef(chunk, self.member_size, len(payload), whole_file))
        self._add_bytes(payload)
        self.header_run = 0

    def add_chunk(self, chunk: CSTOCEntry, payload: bytes, whole_file: bool,
                  ends_file: CSTOCEntry | None) -> None:
        """A chunk in a member of its own (containers/storage)."""
        self._close_member()
        self.chunks.append(_ChunkRef(chunk, 0, len(payload), whole_file, ends_file))
        self._add_bytes(payload)
        self.header_run = 0

    def add_zeros(self, chunk: CSTOCEntry, size: int, whole_file: bool, ends_file: CSTOCEntry | None) -> None:
        """A run of zeros in a frame of its own (a containers/storage hole)."""
        self._close_member()
        self._queue_member(_Member(b"", [_ChunkRef(chunk, 0, size, whole_file, ends_file)], zeros=size))

    # -- entries -------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> bytes:
        self.source.seek(offset)
        data = self.source.read(size)
        if len(data) != size:
            raise FormatError(f"tar: unexpected end of archive at offset {offset + len(data)}")
        return data

    def _toc_entry(self, entry: TarEntry) -> TOCEntry:
        unames, gnames = self.names
        toc = TOCEntry(
            name=entry.name,
            type=entry.kind,
            modtime=format_modtime(*entry.mtime),
            mode=entry.mode,
            uid=entry.uid,
            gid=entry.gid,
            user_name=unames(entry.uid, entry.uname),
            group_name=gnames(entry.gid, entry.gname),
            xattrs=entry.xattrs,
        )
        if entry.kind in ("symlink", "hardlink"):
            toc.link_name = entry.linkname
        elif entry.kind in ("char", "block"):
            toc.dev_major, toc.dev_minor = entry.devmajor, entry.devminor
        elif entry.kind == "reg":
            toc.size = entry.size
        return toc

    def add(self, entry: TarEntry, header: bytes, trailer: bytes) -> None:
        """Add one entry: ``header`` is written before its payload, ``trailer`` after it."""
        toc = self._toc_entry(entry)
        records = [toc]
        self.append(header)
        if entry.kind == "reg" and entry.size == 0:
            toc.digest = EMPTY_DIGEST
        elif entry.kind == "reg":
            self._add_payload(entry, toc, records)
        if trailer:
            self.append(trailer)
        self.finished.extend(records)

    def _add_payload(self, entry: TarEntry, toc: TOCEntry, records: list[TOCEntry]) -> None:
        size, step = entry.size, self.chunk_size
        landmark = entry.header_offset < 0
        file_hash = hashlib.sha256() if size > step else None
        for chunk_offset in range(0, size, step):
            length = min(step, size - chunk_offset)
            payload = LANDMARK_CONTENTS if landmark else self.read(entry.data_offset + chunk_offset, length)
            if chunk_offset == 0:
                chunk = toc
            else:
                chunk = TOCEntry(name=entry.name, type="chunk", chunk_offset=chunk_offset)
                records.append(chunk)
            if size - chunk_offset >= step:
                chunk.chunk_size = step
            if file_hash is not None:
                file_hash.update(payload)
            self._start_chunk(chunk, payload, file_hash is None, landmark)
        if file_hash is not None:
            toc.digest = "sha256:" + file_hash.hexdigest()

    def finish(self) -> None:
        self._close_member()
        self._submit()


def _build_entries(pipeline: _Pipeline, entries: Iterable[TarEntry], prioritized: Sequence[str],
                   allow_missing: bool) -> list[str]:
    """Add the entries in eStargz order, headers copied and payloads re-padded; return missing."""
    ordered, missing = order_entries(entries, prioritized, allow_missing=allow_missing)
    check_readable(lambda: ordered)
    for entry in ordered:
        if entry.header_offset < 0:
            header = ustar_header(entry.name, entry.size)
        else:
            header = pipeline.read(entry.header_offset, entry.data_offset - entry.header_offset)
        pipeline.add(entry, header, bytes(padding(entry.size)))
    return missing


def _lossless_entries(pipeline: _Pipeline, listing: Listing, start: int, end: int) -> None:
    """Add the entries in input order with every input byte kept: the blob inflates to the input."""
    check_readable(listing)
    position = start
    for entry in listing():
        if clean_name(entry.name) == TOC_NAME:
            raise UnsupportedInputError(
                f"the layer already holds {TOC_NAME}: it is an eStargz layer; decompress it first")
        pipeline.add(entry, pipeline.read(position, entry.data_offset - position), b"")
        position = entry.data_offset + entry.size
    while position < end:
        length = min(_COPY_BLOCK, end - position)
        pipeline.append(pipeline.read(position, length))
        position += length


def _plain_tar(src: PathOrStream, stack: ExitStack) -> BinaryIO:
    """A seekable plain tar for ``src``: the file itself, or a temporary file holding its decompression.

    Files it opens are closed by ``stack``.
    """
    if isinstance(src, (str, os.PathLike)):
        f: BinaryIO = stack.enter_context(open(src, "rb"))
    else:
        f = src
    seekable = getattr(f, "seekable", lambda: False)()
    if seekable:
        start = f.tell()
        magic = f.read(4)
        f.seek(start)
    else:
        magic = b""
        while len(magic) < 4 and (more := f.read(4 - len(magic))):
            magic += more
    compressed = magic[:3] == b"\x1f\x8b\x08" or magic == b"\x28\xb5\x2f\xfd"
    if seekable and not compressed:
        return f
    spool = stack.enter_context(tempfile.TemporaryFile(prefix="estargz-"))
    if seekable:
        stream: BinaryIO = f
    else:
        stream = io.BufferedReader(_Prepend(magic, f), _COPY_BLOCK)
    try:
        if magic[:3] == b"\x1f\x8b\x08":
            stream = stack.enter_context(igzip.IGzipFile(fileobj=stream, mode="rb"))
        elif compressed:
            stream = stack.enter_context(zstandard.ZstdDecompressor().stream_reader(stream))
        shutil.copyfileobj(stream, spool, _COPY_BLOCK)
    except (OSError, EOFError, zstandard.ZstdError) as exc:
        raise FormatError(f"cannot decompress the input layer: {exc}") from None
    spool.seek(0)
    return spool


class _Prepend(io.RawIOBase):
    """A read-only stream that returns ``head`` before the rest of ``stream``."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        super().__init__()
        self._head = head
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._stream.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def _containers_storage_entries(pipeline: _Pipeline, listing: Listing, start: int, end: int,
                                tar_split: TarSplitWriter) -> None:
    """Add the entries as containers/storage does: every input byte kept in order, each
    content-defined chunk in a frame of its own, headers and padding in frames between them."""
    check_readable(listing)
    position = start
    last_size = 0
    planner = _SpanPlanner(pipeline, (e for e in listing() if e.kind == "reg" and e.size))
    for entry in listing():
        if _has_undecodable(entry.name) or _has_undecodable(entry.linkname):
            raise UnsupportedInputError(
                f"name {entry.name!r} is not valid UTF-8: the zstd:chunked TOC cannot hold it "
                "(containers/storage would fail to pull the layer)")
        header = pipeline.read(position, entry.data_offset - position)
        pipeline.append(header)
        tar_split.segment(header)
        record = CSTOCEntry(
            type=entry.kind, name=entry.name, mode=entry.mode, size=entry.size, uid=entry.uid,
            gid=entry.gid, modtime=entry.mtime, accesstime=entry.atime, changetime=entry.ctime,
            xattrs=entry.xattrs,
        )
        if entry.kind in ("symlink", "hardlink"):
            record.link_name = entry.linkname
        elif entry.kind in ("char", "block"):
            record.dev_major, record.dev_minor = entry.devmajor, entry.devminor
        records = [record]
        crc = None
        if entry.kind == "reg" and entry.size:
            crc = _containers_storage_content(pipeline, entry, records, *planner.spans(entry))
        pipeline.finished.extend(records)
        tar_split.file(entry.name.encode("utf-8", "surrogateescape"), entry.size, crc)
        position, last_size = entry.data_offset + entry.size, entry.size
    # The end of the archive as a tar reader consumes it (last padding, two zero blocks), then
    # whatever follows, every byte kept.
    archive_end = min(end, position + padding(last_size) + 2 * BLOCK)
    ending = pipeline.read(position, archive_end - position)
    pipeline.append(ending)
    tar_split.segment(ending)
    for offset in range(archive_end, end, _COPY_BLOCK):
        rest = pipeline.read(offset, min(_COPY_BLOCK, end - offset))
        pipeline.append(rest)
        tar_split.trailing(rest)
    tar_split.close()
    planner.close()


Chunk = tuple[int, int, bool]
"""A content-defined chunk: (offset in the file, length, is a run of zeros)."""


class _SpanPlanner:
    """The content-defined chunks of the next files, cut ahead on a thread of their own.

    Small files are cut in batches (one vectorized pass for many files), large ones in windows.
    Reads with ``os.pread`` so the pipeline's reads are undisturbed; a source without a file
    descriptor is cut in line instead.
    """

    _LOOKAHEAD = 4  # batches in flight
    _SMALL_FILE = 256 << 10
    _BATCH_BYTES = 4 << 20

    def __init__(self, pipeline: _Pipeline, files: Iterable[TarEntry]) -> None:
        from . import rollsum  # numpy is loaded only for this format

        self._rollsum = rollsum
        self._pipeline = pipeline
        try:
            self._fd: int | None = pipeline.source.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):
            self._fd = None
        self._batches = self._batched(files)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="estargz-chunker") if self._fd is not None else None
        self._ahead: deque[tuple[list[TarEntry], Future[list[tuple[list[Chunk], bytes | None]]]]] = deque()
        self._ready: deque[tuple[TarEntry, tuple[list[Chunk], bytes | None]]] = deque()
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

    def _read(self, entry: TarEntry, at: int, length: int) -> bytes:
        if self._fd is None:
            return self._pipeline.read(entry.data_offset + at, length)
        data = os.pread(self._fd, length, entry.data_offset + at)
        if len(data) != length:
            raise FormatError(f"tar: unexpected end of archive in {entry.name!r}")
        return data

    def _cut(self, batch: list[TarEntry]) -> list[tuple[list[Chunk], bytes | None]]:
        """The chunks of each file, and the contents of small files (read once, used twice)."""
        if len(batch) == 1 and batch[0].size > self._SMALL_FILE:
            entry = batch[0]
            return [(list(self._rollsum.chunk_stream(lambda at, n: self._read(entry, at, n), entry.size)), None)]
        contents = [self._read(entry, 0, entry.size) for entry in batch]
        return list(zip(self._rollsum.chunk_files(contents), contents, strict=True))

    def _fill(self) -> None:
        if self._pool is None:
            return
        while len(self._ahead) < self._LOOKAHEAD and (batch := next(self._batches, None)) is not None:
            self._ahead.append((batch, self._pool.submit(self._cut, batch)))

    def spans(self, entry: TarEntry) -> tuple[list[Chunk], bytes | None]:
        """The chunks of ``entry`` as (offset, length, is_zeros), and its contents if it is small;
        files come in input order."""
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
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)


def _has_undecodable(name: str) -> bool:
    """Whether ``name`` came from bytes that are not UTF-8 (kept as surrogate escapes)."""
    return any("\udc80" <= c <= "\udcff" for c in name)


def _containers_storage_content(pipeline: _Pipeline, entry: TarEntry, records: list[CSTOCEntry],
                                spans: list[Chunk], contents: bytes | None) -> int:
    """Frame each content-defined chunk of one file (``contents``, or read from the tar), adding
    its chunk records after the file's own (``records[0]``); return the content's CRC-64."""
    record = records[0]
    file_hash = hashlib.sha256() if len(spans) > 1 else None
    crc = 0
    for index, (offset, length, zeros) in enumerate(spans):
        if index == 0:
            chunk = record
        else:
            chunk = CSTOCEntry(type="chunk", name=entry.name, chunk_offset=offset)
            records.append(chunk)
        last = record if index == len(spans) - 1 else None
        if file_hash is not None:
            chunk.chunk_size = length
            chunk.chunk_type = "zeros" if zeros else ""
        if zeros:
            pipeline.add_zeros(chunk, length, file_hash is None, last)
            block = bytes(min(length, _COPY_BLOCK))
            for start in range(0, length, len(block)):
                piece = block[:min(len(block), length - start)]
                crc = crc64_iso(piece, crc)
                if file_hash is not None:
                    file_hash.update(piece)
        else:
            if contents is None:
                payload = pipeline.read(entry.data_offset + offset, length)
            elif length == len(contents):
                payload = contents
            else:
                payload = contents[offset:offset + length]
            crc = crc64_iso(payload, crc)
            if file_hash is not None:
                file_hash.update(payload)
            pipeline.add_chunk(chunk, payload, file_hash is None, last)
    if file_hash is not None:
        record.digest = "sha256:" + file_hash.hexdigest()
    return crc


def _containers_storage_tail(sink: _OrderedSink, compressor: _OnWorker, toc: _TOCSpool,
                             tar_split: TarSplitWriter, spool: BinaryIO) -> dict[str, str]:
    """The TOC and tar-split frames and the 64-byte footer; returns the annotations."""
    check_encoded_size("tar-split", tar_split.size, MAX_TAR_SPLIT_SIZE)
    spool.flush()
    if tar_split.size:
        with mmap.mmap(spool.fileno(), 0, access=mmap.ACCESS_READ) as view:
            tar_split_frame = compressor.compress(view)
    else:
        tar_split_frame = compressor.compress(b"")
    toc_json = toc.finish("sha256:" + hashlib.sha256(tar_split_frame).hexdigest())
    toc_frame = compressor.compress(toc_json)
    toc_offset = sink.offset + 8
    sink.write_raw(skippable_frame(toc_frame))
    tar_split_position = (sink.offset + 8, len(tar_split_frame), tar_split.size)
    sink.write_raw(skippable_frame(tar_split_frame))
    sink.write_raw(zstd_chunked_footer_64(toc_offset, len(toc_frame), len(toc_json), tar_split_position))
    return {
        MANIFEST_CHECKSUM_ANNOTATION: "sha256:" + hashlib.sha256(toc_frame).hexdigest(),
        MANIFEST_POSITION_ANNOTATION: f"{toc_offset}:{len(toc_frame)}:{len(toc_json)}:1",
        TARSPLIT_POSITION_ANNOTATION: "{}:{}:{}".format(*tar_split_position),
    }


def _toc_tar(buffer: bytearray) -> bytearray:
    """The TOC as a tar, in place: ``buffer`` holds a free block, then the TOC JSON; the entry's
    header goes into the block, its padding and the end-of-archive marker after the JSON."""
    size = len(buffer) - BLOCK
    buffer[:BLOCK] = ustar_header(TOC_NAME, size)
    buffer += bytes(padding(size) + 2 * BLOCK)
    return buffer


class _TOCSpool:
    """Encodes TOC entries as the sink writes them (only their JSON is kept), refusing a TOC
    larger than readers accept as soon as it grows past it.

    An eStargz TOC is preceded by a free block, for the header of its tar entry.
    """

    def __init__(self, containers_storage: bool) -> None:
        self._encoder: TOCEncoder | CSTOCEncoder
        self._encoder = CSTOCEncoder() if containers_storage else TOCEncoder(bytearray(BLOCK))
        self.start = 0 if containers_storage else BLOCK

    @property
    def buffer(self) -> bytearray:
        return self._encoder.buffer

    def __call__(self, entry: TOCEntry | CSTOCEntry) -> None:
        if isinstance(entry, CSTOCEntry) and entry.type == "reg" and not entry.chunk_size:
            entry.chunk_digest = ""  # single-chunk files carry only their digest
        self._encoder.add(entry)  # type: ignore[arg-type]
        self._check()

    def _check(self) -> None:
        check_encoded_size("TOC", len(self.buffer) - self.start, MAX_TOC_SIZE)

    def finish(self, tar_split_digest: str = "") -> memoryview:
        """Close the JSON and return it (a view into :attr:`buffer`)."""
        if isinstance(self._encoder, CSTOCEncoder):
            self._encoder.finish(tar_split_digest)
        else:
            self._encoder.finish()
        self._check()
        return memoryview(self.buffer)[self.start:]


class _OnWorker:
    """Compresses on a pool thread, whose compression context is already allocated."""

    def __init__(self, compressor: Compressor, pool: ThreadPoolExecutor) -> None:
        self._compressor = compressor
        self._pool = pool

    def compress(self, data: bytes | bytearray | memoryview | mmap.mmap) -> bytes:
        return self._pool.submit(self._compressor.compress, data).result()  # type: ignore[arg-type]


def _convert_into(src: PathOrStream, out: BinaryIO, options: _Options) -> BuildResult:
    compressor: Compressor
    if options.format == FORMAT_ESTARGZ:
        compressor = GzipCompressor(options.level)
    else:
        compressor = ZstdCompressor(options.level)
    containers_storage = options.format == FORMAT_ZSTD_CHUNKED
    missing: list[str] = []
    external_toc = None
    toc = _TOCSpool(containers_storage)
    with ExitStack() as stack:
        tar = _plain_tar(src, stack)
        start = tar.tell()
        end = tar.seek(0, os.SEEK_END)

        def listing() -> Iterator[TarEntry]:
            return iter_entries(tar, start)

        sink = _OrderedSink(out, 2 * options.threads + 1, options.progress, end - start, toc)
        pool = stack.enter_context(ThreadPoolExecutor(options.threads, thread_name_prefix="estargz"))
        sink.start()
        pipeline = _Pipeline(tar, sink, compressor, pool, options.chunk_size, options.min_chunk_size,
                             separate_metadata=containers_storage)
        if containers_storage:
            tar_split_spool = stack.enter_context(tempfile.TemporaryFile(prefix="estargz-tar-split-"))
            tar_split = TarSplitWriter(tar_split_spool.write)
        try:
            if containers_storage:
                _containers_storage_entries(pipeline, listing, start, end, tar_split)
            elif options.keep_diff_id:
                _lossless_entries(pipeline, listing, start, end)
            else:
                missing = _build_entries(pipeline, listing(), options.prioritized_files,
                                         options.allow_missing_prioritized)
            pipeline.finish()
        finally:
            sink.close()
        for entry in pipeline.finished:  # entries after the last member
            toc(entry)
        tail = _OnWorker(compressor, pool)
        if containers_storage:
            annotations = _containers_storage_tail(sink, tail, toc, tar_split, tar_split_spool)
            toc_digest = annotations[MANIFEST_CHECKSUM_ANNOTATION]
        else:
            toc_json = toc.finish()
            toc_digest = "sha256:" + hashlib.sha256(toc_json).hexdigest()
            annotations = {TOC_DIGEST_ANNOTATION: toc_digest}
            if options.format == FORMAT_ZSTD_CHUNKED_STARGZ:
                annotations.update(_zstd_toc_and_footer(sink, tail, toc_json))
            else:
                toc_json.release()
                toc_tar = _toc_tar(toc.buffer)
                if options.external_toc:
                    external_toc = tail.compress(toc_tar)
                    sink.write_raw(external_toc_footer())
                else:
                    toc_offset = sink.offset
                    sink.write_unchunked(toc_tar, tail.compress(toc_tar))
                    sink.write_raw(gzip_footer(toc_offset))
            annotations[UNCOMPRESSED_SIZE_ANNOTATION] = str(sink.uncompressed_size)
        out.flush()
    return BuildResult(
        format=options.format,
        toc_digest=toc_digest,
        diff_id="sha256:" + sink.diff_hash.hexdigest(),
        uncompressed_size=sink.uncompressed_size,
        blob_digest="sha256:" + sink.blob_hash.hexdigest(),
        blob_size=sink.offset,
        media_type=GZIP_LAYER_MEDIA_TYPE if options.format == FORMAT_ESTARGZ else ZSTD_LAYER_MEDIA_TYPE,
        annotations=annotations,
        missing_prioritized=tuple(missing),
        external_toc=external_toc,
    )


def _zstd_toc_and_footer(sink: _OrderedSink, compressor: _OnWorker, toc_json: memoryview) -> dict[str, str]:
    """stargz-snapshotter's zstd:chunked tail: the TOC frame and the 40-byte footer, in skippable
    frames; returns the annotations that locate the TOC."""
    toc_frame = compressor.compress(toc_json)
    toc_offset = sink.offset + 8
    sink.write_raw(skippable_frame(toc_frame))
    sink.write_raw(zstd_chunked_footer_40(toc_offset, len(toc_frame), len(toc_json)))
    return {
        LEGACY_MANIFEST_CHECKSUM_ANNOTATION: "sha256:" + hashlib.sha256(toc_frame).hexdigest(),
        LEGACY_MANIFEST_POSITION_ANNOTATION: f"{toc_offset}:{len(toc_frame)}:{len(toc_json)}:1",
    }


@dataclass(frozen=True)
class _Options:
    format: str
    chunk_size: int
    level: int
    min_chunk_size: int
    prioritized_files: tuple[str, ...]
    allow_missing_prioritized: bool
    external_toc: bool
    keep_diff_id: bool
    threads: int
    progress: Progress | None

    def __post_init__(self) -> None:
        if self.chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        if self.min_chunk_size < 0:
            raise ValueError("min_chunk_size must not be negative")
        if self.threads < 1:
            raise ValueError("threads must be at least 1")
        if self.keep_diff_id and not self.external_toc:
            raise ValueError("keep_diff_id needs external_toc: an internal TOC would change the diffID")
        if self.keep_diff_id and self.prioritized_files:
            raise ValueError("keep_diff_id keeps the input order: it cannot prioritize files")
        if self.format not in FORMATS:
            raise ValueError(f"unknown format {self.format!r}")
        if self.format != FORMAT_ESTARGZ and (self.external_toc or self.keep_diff_id):
            raise ValueError("external TOC and keep-diff-id exist only for the gzip eStargz format")
        if self.format == FORMAT_ZSTD_CHUNKED and (self.prioritized_files or self.min_chunk_size):
            raise ValueError("containers/storage zstd:chunked keeps the tar as it is: no prioritized "
                             "files, no min-chunk-size")


def convert(
    src: PathOrStream,
    dst: PathOrStream,
    *,
    format: str = FORMAT_ESTARGZ,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    compression_level: int | None = None,
    min_chunk_size: int = 0,
    prioritized_files: Sequence[str] = (),
    allow_missing_prioritized: bool = False,
    external_toc: bool = False,
    keep_diff_id: bool = False,
    threads: int | None = None,
    progress: Progress | None = None,
) -> BuildResult:
    """Convert a layer tar (plain, gzip or zstd; a path or a binary stream) to a lazy-pulling blob.

    ``format`` is :data:`FORMAT_ESTARGZ` (gzip), :data:`FORMAT_ZSTD_CHUNKED` (containers/storage:
    podman, skopeo, CRI-O) or :data:`FORMAT_ZSTD_CHUNKED_STARGZ` (stargz-snapshotter's flavour).
    ``compression_level`` is a gzip level 0-9 (default :data:`DEFAULT_GZIP_LEVEL`) or a zstd level
    1-22 (default :data:`DEFAULT_ZSTD_LEVEL`, or :data:`DEFAULT_CONTAINERS_STORAGE_ZSTD_LEVEL`).
    ``chunk_size``, ``min_chunk_size`` and prioritized files do not apply to containers/storage
    zstd:chunked, whose chunks are content-defined and whose tar is kept as it is.

    ``dst`` is a path (written to a temporary file renamed into place, so a failed conversion
    leaves nothing behind) or a writable binary stream. ``threads`` (default: every CPU) changes
    speed only, never the output bytes. ``progress(done, total)`` is called as input is consumed.

    ``min_chunk_size`` lets small files and chunks share a gzip member until it holds about that
    many compressed bytes (readers find them by ``innerOffset``). ``external_toc`` leaves the TOC
    out of the blob, which ends with the external-TOC footer; the TOC blob is
    ``BuildResult.external_toc``. ``keep_diff_id`` (with ``external_toc``) keeps every input byte
    in order, so the blob decompresses to the input tar and the diffID does not change.
    """
    if compression_level is None:
        compression_level = {FORMAT_ESTARGZ: DEFAULT_GZIP_LEVEL,
                             FORMAT_ZSTD_CHUNKED: DEFAULT_CONTAINERS_STORAGE_ZSTD_LEVEL}.get(format, DEFAULT_ZSTD_LEVEL)
    options = _Options(format, chunk_size, compression_level, min_chunk_size, tuple(prioritized_files),
                       allow_missing_prioritized, external_toc, keep_diff_id,
                       os.cpu_count() or 1 if threads is None else threads, progress)
    if not isinstance(dst, (str, os.PathLike)):
        return _convert_into(src, dst, options)
    with atomic_output(dst, inputs=(src,)) as out:
        return _convert_into(src, out, options)


def read_workload_record(lines: Sequence[str] | BinaryIO | str, layer_index: int | None = None) -> list[str]:
    """Paths from a workload record (``ctr-remote optimize --record-out`` JSON lines).

    Each line is ``{"path": …, "manifestDigest": …, "layerIndex": N}``. Paths are kept in order
    and de-duplicated (first occurrence kept); with ``layer_index`` only that layer's paths.
    """
    if isinstance(lines, str):
        lines = lines.splitlines()
    elif hasattr(lines, "read"):
        lines = lines.read().decode().splitlines()  # type: ignore[union-attr]
    paths: dict[str, None] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise FormatError(f"workload record line {number} is not JSON") from None
        if not isinstance(record, dict) or not isinstance(record.get("path"), str):
            raise FormatError(f"workload record line {number} has no \"path\"")
        if layer_index is not None and record.get("layerIndex") != layer_index:
            continue
        paths.setdefault(record["path"], None)
    return list(paths)

