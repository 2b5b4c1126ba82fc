"""The format-free build pipeline: members, a compression thread pool, an ordered sink.

A dialect's walk feeds a :class:`Pipeline` with metadata bytes (headers, padding) and chunks; the
pipeline cuts them into members (one gzip member or zstd frame each), hands members in batches to
the thread pool, and an :class:`OrderedSink` thread writes the results in submission order. The
output bytes therefore never depend on the number of threads, and since the sink's queue is
bounded, memory does not depend on the layer size.

Hand-off of TOC records: the walk creates each record and sets its descriptive fields. Once a
chunk of the record is placed in a member, the record's position fields (``offset``,
``chunk_digest``, ``digest`` of a whole-file chunk, and ``end_offset`` of the file a member ends)
belong to the sink, which fills them in when it writes that member; the walk never touches them.
The walk passes a record to :meth:`Pipeline.complete` only once it has set its last field; the
record then travels with the next member and is handed to ``on_record`` on the sink thread after
that member is written. The queue between the two threads orders every write before the read.
"""

from __future__ import annotations

import hashlib
import mmap
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from .chunking import HEADER_RUN_LIMIT, MemberGrouping
from .errors import FormatError
from .framing import Compressor

__all__ = ["ChunkRecord", "FileRecord", "MemberChunk", "Member", "OrderedSink", "Pipeline", "Progress"]

#: Members are handed to the compression threads in batches of about this many bytes.
_BATCH_BYTES = 1 << 20
#: Block size for runs of zeros, which are never materialized whole.
_ZERO_BLOCK = 1 << 20

Progress = Callable[[int, int], None]


class ChunkRecord(Protocol):
    """The TOC record of a chunk: the fields the sink fills in."""

    offset: int
    chunk_digest: str
    digest: str


class FileRecord(Protocol):
    """The TOC record of a file whose chunks end where a member ends (containers/storage)."""

    end_offset: int


@dataclass(slots=True)
class MemberChunk:
    """A chunk inside a member's plaintext: its TOC record and where its payload lies."""

    record: ChunkRecord
    start: int
    size: int
    whole_file: bool
    """The chunk is the whole file, so its digest is the file digest."""
    ends_file: FileRecord | None = None
    """The file record whose ``end_offset`` is the end of this chunk's member."""

    def place(self, offset: int, digest: str, member_end: int) -> None:
        """Fill in the position fields, once the member is written at ``offset``."""
        self.record.offset = offset
        self.record.chunk_digest = digest
        if self.whole_file:
            self.record.digest = digest
        if self.ends_file is not None:
            self.ends_file.end_offset = member_end


@dataclass(slots=True)
class Member:
    """The plaintext of one member and the chunks starting in it.

    A run of zeros is kept as its length (``zeros``), never materialized.
    """

    data: bytes
    chunks: list[MemberChunk]
    zeros: int = 0
    completed: list[Any] = field(default_factory=list)
    """Records complete once this member is written, in TOC order."""

    @property
    def size(self) -> int:
        return self.zeros or len(self.data)

    def blocks(self) -> Iterator[bytes]:
        """The plaintext, in blocks of at most 1 MiB for a run of zeros."""
        if not self.zeros:
            yield self.data
            return
        block = bytes(min(self.zeros, _ZERO_BLOCK))
        for start in range(0, self.zeros, len(block)):
            yield block[:min(len(block), self.zeros - start)]


@dataclass(slots=True)
class _Compressed:
    member: Member
    blob: bytes
    chunk_digests: list[str]


def _sha256(data: bytes | memoryview) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _compress_zeros(compressor: Compressor, member: Member) -> _Compressed:
    compress_zeros = getattr(compressor, "compress_zeros", None)  # isinstance of a Protocol is slow
    if compress_zeros is None:
        raise TypeError(f"{type(compressor).__name__} cannot compress a run of zeros")
    digest = hashlib.sha256()
    for block in member.blocks():
        digest.update(block)
    return _Compressed(member, compress_zeros(member.zeros), ["sha256:" + digest.hexdigest()])


def _compress_batch(compressor: Compressor, batch: list[Member]) -> list[_Compressed]:
    out = []
    for member in batch:
        if member.zeros:
            out.append(_compress_zeros(compressor, member))
            continue
        view = memoryview(member.data)
        digests = [_sha256(view[c.start:c.start + c.size]) for c in member.chunks]
        out.append(_Compressed(member, compressor.compress(member.data), digests))
    return out


class OrderedSink(threading.Thread):
    """On its own thread, writes compressed batches in submission order and keeps the digests.

    The queue of pending batches is bounded, which bounds the memory of the whole pipeline. Once a
    member is written, the records it completes are handed to ``on_record`` (and dropped).
    """

    def __init__(self, out: BinaryIO, max_pending: int, progress: Progress | None, total: int,
                 on_record: Callable[[Any], None]) -> None:
        super().__init__(name="estargz-sink", daemon=True)
        self.out = out
        self.on_record = on_record
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
                self._write(batch.result())
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

    def _write(self, batch: list[_Compressed]) -> None:
        """Place the chunks of a batch of members, write the members in one write, then hand over
        the records they complete."""
        offset = self.offset
        for item in batch:
            member = item.member
            member_end = offset + len(item.blob)
            for chunk, digest in zip(member.chunks, item.chunk_digests, strict=True):
                chunk.place(offset, digest, member_end)
            offset = member_end
            for block in member.blocks():
                self.diff_hash.update(block)
            self.uncompressed_size += member.size
        self.write_raw(b"".join([item.blob for item in batch]))
        for item in batch:
            for record in item.member.completed:
                self.on_record(record)

    def write_unchunked(self, plain: bytearray, blob: bytes) -> None:
        """A member holding no chunk (the TOC's): its plaintext counts in the diffID and size."""
        self.diff_hash.update(plain)
        self.uncompressed_size += len(plain)
        self.write_raw(blob)

    def write_raw(self, blob: bytes) -> None:
        """Bytes that are not a member's (skippable frames, footers)."""
        self.out.write(blob)
        self.blob_hash.update(blob)
        self.offset += len(blob)


class Pipeline:
    """Cuts metadata bytes and chunks into members and runs them through the compression threads.

    A chunk starts a member, unless ``grouping`` (min-chunk-size) says the open member still has
    room. Runs of metadata bytes are split at :data:`HEADER_RUN_LIMIT`; with ``metadata_apart``
    metadata bytes never share a member with a chunk.
    """

    def __init__(self, source: BinaryIO, sink: OrderedSink, compressor: Compressor, pool: ThreadPoolExecutor,
                 *, grouping: MemberGrouping | None = None, metadata_apart: bool = False) -> None:
        self.source = source
        self.sink = sink
        self.compressor = compressor
        self.pool = pool
        self._grouping = grouping
        self._metadata_apart = metadata_apart
        self._batch: list[Member] = []
        self._batch_bytes = 0
        self._parts: list[bytes] = []
        self._member_size = 0
        self._header_run = 0
        self._chunks: list[MemberChunk] = []
        self.completed: list[Any] = []
        """Complete records not yet handed to a member."""

    def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes of the input tar at ``offset``."""
        self.source.seek(offset)
        data = self.source.read(size)
        if len(data) != size:
            raise FormatError(f"tar: unexpected end of archive at offset {offset + len(data)}")
        return data

    def append(self, data: bytes) -> None:
        """Bytes between chunks: headers, padding, the archive's end."""
        if self._header_run >= HEADER_RUN_LIMIT or (self._metadata_apart and self._chunks):
            self._close_member()
        self._add_bytes(data)
        self._header_run += len(data)

    def add_chunk(self, record: ChunkRecord, payload: bytes, *, whole_file: bool, alone: bool = False,
                  ends_file: FileRecord | None = None) -> int:
        """Add a chunk (a new member with ``alone``); return where it starts in its member."""
        if alone or self._grouping is None or self._grouping.full():
            self._close_member()
        start = self._member_size
        self._chunks.append(MemberChunk(record, start, len(payload), whole_file, ends_file))
        self._add_bytes(payload)
        self._header_run = 0
        return start

    def add_zeros(self, record: ChunkRecord, size: int, *, whole_file: bool,
                  ends_file: FileRecord | None = None) -> None:
        """A run of ``size`` zeros as a chunk in a member of its own."""
        self._close_member()
        self._queue_member(Member(b"", [MemberChunk(record, 0, size, whole_file, ends_file)], zeros=size))

    def complete(self, records: list[Any]) -> None:
        """Records whose fields the walk has all set: they go to the TOC after the next member."""
        self.completed.extend(records)

    def finish(self) -> None:
        """Queue the open member and the last batch."""
        self._close_member()
        self._submit()

    def compress_now(self, data: bytes | bytearray | memoryview | mmap.mmap) -> bytes:
        """Compress ``data`` on a pool thread, whose compression context is already allocated."""
        return self.pool.submit(self.compressor.compress, data).result()  # type: ignore[arg-type]

    def _add_bytes(self, data: bytes) -> None:
        self._parts.append(data)
        self._member_size += len(data)
        if self._grouping is not None:
            self._grouping.add(data)

    def _close_member(self) -> None:
        if not self._parts:
            return
        self._queue_member(Member(b"".join(self._parts), self._chunks, completed=self.completed))
        self.completed = []
        self._parts, self._member_size, self._header_run, self._chunks = [], 0, 0, []
        if self._grouping is not None:
            self._grouping.reset()

    def _queue_member(self, member: Member) -> None:
        self._batch.append(member)
        self._batch_bytes += len(member.data)
        if self._batch_bytes >= _BATCH_BYTES:
            self._submit()

    def _submit(self) -> None:
        if self._batch:
            self.sink.put(self.pool.submit(_compress_batch, self.compressor, self._batch))
            self._batch, self._batch_bytes = [], 0
