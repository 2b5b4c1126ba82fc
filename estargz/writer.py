"""Convert a layer tar into an eStargz blob: order entries, cut chunks, compress members in parallel.

Data flow: input tar (plain, gzip or zstd) -> seekable plain tar -> entry index -> order
(dedupe, prioritized files, landmark) -> members (one per chunk, headers in between) ->
thread pool (compress + chunk digest) -> written in order -> TOC member -> footer.
Members are compressed independently and written in submission order, so the output bytes do
not depend on the number of threads; at most a few members are in flight, so memory does not
depend on the layer size.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import queue
import shutil
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator, Sequence, Union

import zstandard
from isal import igzip

from .errors import FormatError
from .footer import gzip_footer
from .framing import DEFAULT_GZIP_LEVEL, GzipCompressor
from .layout import LANDMARK_CONTENTS, order_entries
from .tarstream import BLOCK, TarEntry, iter_entries, padding, ustar_header
from .toc import EMPTY_DIGEST, TOC_NAME, TOCEntry, encode_toc, format_modtime

__all__ = [
    "BuildResult", "convert", "DEFAULT_CHUNK_SIZE", "TOC_DIGEST_ANNOTATION",
    "UNCOMPRESSED_SIZE_ANNOTATION", "read_workload_record",
]

DEFAULT_CHUNK_SIZE = 4 << 20
TOC_DIGEST_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"
UNCOMPRESSED_SIZE_ANNOTATION = "io.containers.estargz.uncompressed-size"
GZIP_LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"

#: A run of headers longer than this is split into several members, bounding member size.
_HEADER_RUN_LIMIT = 4 << 20
#: Members are handed to the compression threads in batches of about this many bytes.
_BATCH_BYTES = 1 << 20
_COPY_BLOCK = 1 << 20

PathOrStream = Union[str, "os.PathLike[str]", BinaryIO]
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class BuildResult:
    """What a conversion produced: the digests and sizes a manifest needs."""

    toc_digest: str
    diff_id: str
    uncompressed_size: int
    blob_digest: str
    blob_size: int
    media_type: str = GZIP_LAYER_MEDIA_TYPE
    missing_prioritized: tuple[str, ...] = ()

    @property
    def annotations(self) -> dict[str, str]:
        """The OCI layer-descriptor annotations that mark the blob as eStargz."""
        return {
            TOC_DIGEST_ANNOTATION: self.toc_digest,
            UNCOMPRESSED_SIZE_ANNOTATION: str(self.uncompressed_size),
        }

    def to_json(self) -> dict[str, object]:
        """A JSON-ready summary, with the layer descriptor as it goes into a manifest."""
        return {
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


@dataclass(slots=True)
class _Member:
    """The plaintext of one gzip member; if it starts with a chunk, the TOC entry of that chunk."""

    data: bytes
    payload_size: int = 0
    chunk: TOCEntry | None = None
    whole_file: bool = False  # the chunk is the whole file, so its digest is the file digest


@dataclass(slots=True)
class _Compressed:
    member: _Member
    blob: bytes
    chunk_digest: str


def _compress_batch(compressor: GzipCompressor, batch: list[_Member]) -> list[_Compressed]:
    out = []
    for member in batch:
        digest = ""
        if member.chunk is not None:
            digest = "sha256:" + hashlib.sha256(memoryview(member.data)[:member.payload_size]).hexdigest()
        out.append(_Compressed(member, compressor.compress(member.data), digest))
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

    The queue of pending batches is bounded, which bounds the memory of the whole pipeline.
    """

    def __init__(self, out: BinaryIO, max_pending: int, progress: Progress | None, total: int) -> None:
        super().__init__(name="estargz-sink", daemon=True)
        self.out = out
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
        if member.chunk is not None:
            member.chunk.offset = self.offset
            member.chunk.chunk_digest = item.chunk_digest
            if member.whole_file:
                member.chunk.digest = item.chunk_digest
        self.diff_hash.update(member.data)
        self.uncompressed_size += len(member.data)
        self.write_raw(item.blob)

    def write_raw(self, blob: bytes) -> None:
        self.out.write(blob)
        self.blob_hash.update(blob)
        self.offset += len(blob)


class _Pipeline:
    """Cuts the ordered entries into members and runs them through the compression threads."""

    def __init__(self, source: BinaryIO, sink: _OrderedSink, compressor: GzipCompressor,
                 pool: ThreadPoolExecutor, chunk_size: int) -> None:
        self.source = source
        self.sink = sink
        self.compressor = compressor
        self.pool = pool
        self.chunk_size = chunk_size
        self.batch: list[_Member] = []
        self.batch_bytes = 0
        self.parts: list[bytes] = []
        self.parts_size = 0
        self.owner: tuple[TOCEntry, int, bool] | None = None
        self.entries: list[TOCEntry] = []
        self.names = (_OwnerNames(), _OwnerNames())

    # -- members -------------------------------------------------------------------------
    def _close_member(self) -> None:
        if not self.parts:
            return
        chunk, payload_size, whole = self.owner or (None, 0, False)
        member = _Member(b"".join(self.parts), payload_size, chunk, whole)
        self.parts, self.parts_size, self.owner = [], 0, None
        self.batch.append(member)
        self.batch_bytes += len(member.data)
        if self.batch_bytes >= _BATCH_BYTES:
            self._submit()

    def _submit(self) -> None:
        if self.batch:
            self.sink.put(self.pool.submit(_compress_batch, self.compressor, self.batch))
            self.batch, self.batch_bytes = [], 0

    def _append(self, data: bytes) -> None:
        if self.parts_size >= _HEADER_RUN_LIMIT:
            self._close_member()
        self.parts.append(data)
        self.parts_size += len(data)

    def _start_chunk(self, chunk: TOCEntry, payload: bytes, whole_file: bool) -> None:
        self._close_member()
        self.owner = (chunk, len(payload), whole_file)
        self.parts.append(payload)  # parts_size counts header bytes only: it stays 0 here

    # -- entries -------------------------------------------------------------------------
    def _read(self, offset: int, size: int) -> bytes:
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

    def add(self, entry: TarEntry) -> None:
        toc = self._toc_entry(entry)
        self.entries.append(toc)
        if entry.header_offset < 0:
            self._append(ustar_header(entry.name, entry.size))
            payload_at = None
        else:
            self._append(self._read(entry.header_offset, entry.data_offset - entry.header_offset))
            payload_at = entry.data_offset
        if entry.kind != "reg":
            return
        if entry.size == 0:
            toc.digest = EMPTY_DIGEST
            return
        size, step = entry.size, self.chunk_size
        file_hash = hashlib.sha256() if size > step else None
        for chunk_offset in range(0, size, step):
            length = min(step, size - chunk_offset)
            if payload_at is None:
                payload = LANDMARK_CONTENTS
            else:
                payload = self._read(payload_at + chunk_offset, length)
            if chunk_offset == 0:
                chunk = toc
            else:
                chunk = TOCEntry(name=entry.name, type="chunk", chunk_offset=chunk_offset)
                self.entries.append(chunk)
            if size - chunk_offset >= step:
                chunk.chunk_size = step
            if file_hash is not None:
                file_hash.update(payload)
            self._start_chunk(chunk, payload, whole_file=file_hash is None)
        if file_hash is not None:
            toc.digest = "sha256:" + file_hash.hexdigest()
        self._append(bytes(padding(size)))

    def finish(self) -> None:
        self._close_member()
        self._submit()


@contextmanager
def _plain_tar(src: PathOrStream, stack: ExitStack) -> Iterator[BinaryIO]:
    """A seekable plain tar for ``src``: the file itself, or a temporary file holding its decompression."""
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
        yield f
        return
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
    yield spool


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


def _check_options(chunk_size: int, threads: int | None) -> int:
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    threads = os.cpu_count() or 1 if threads is None else threads
    if threads < 1:
        raise ValueError("threads must be at least 1")
    return threads


def _convert_into(src: PathOrStream, out: BinaryIO, *, chunk_size: int, compression_level: int,
                  prioritized_files: Sequence[str], allow_missing_prioritized: bool,
                  threads: int, progress: Progress | None) -> BuildResult:
    compressor = GzipCompressor(compression_level)
    with ExitStack() as stack:
        tar = stack.enter_context(_plain_tar(src, stack))
        start = tar.tell()
        entries = list(iter_entries(tar, start))
        total = tar.seek(0, os.SEEK_END) - start
        ordered, missing = order_entries(entries, prioritized_files, allow_missing=allow_missing_prioritized)
        sink = _OrderedSink(out, 2 * threads + 1, progress, total)
        with ThreadPoolExecutor(threads, thread_name_prefix="estargz") as pool:
            sink.start()
            pipeline = _Pipeline(tar, sink, compressor, pool, chunk_size)
            try:
                for entry in ordered:
                    pipeline.add(entry)
                pipeline.finish()
            finally:
                sink.close()
        toc_json = encode_toc(pipeline.entries)
        toc_offset = sink.offset
        toc_tar = b"".join((ustar_header(TOC_NAME, len(toc_json)), toc_json,
                            bytes(padding(len(toc_json)) + 2 * BLOCK)))
        sink.write(_Compressed(_Member(toc_tar), compressor.compress(toc_tar), ""))
        sink.write_raw(gzip_footer(toc_offset))
        out.flush()
    return BuildResult(
        toc_digest="sha256:" + hashlib.sha256(toc_json).hexdigest(),
        diff_id="sha256:" + sink.diff_hash.hexdigest(),
        uncompressed_size=sink.uncompressed_size,
        blob_digest="sha256:" + sink.blob_hash.hexdigest(),
        blob_size=sink.offset,
        missing_prioritized=tuple(missing),
    )


def convert(
    src: PathOrStream,
    dst: PathOrStream,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    compression_level: int = DEFAULT_GZIP_LEVEL,
    prioritized_files: Sequence[str] = (),
    allow_missing_prioritized: bool = False,
    threads: int | None = None,
    progress: Progress | None = None,
) -> BuildResult:
    """Convert a layer tar (plain, gzip or zstd; a path or a binary stream) to an eStargz blob.

    ``dst`` is a path (written to a temporary file renamed into place, so a failed conversion
    leaves nothing behind) or a writable binary stream. ``threads`` (default: every CPU) changes
    speed only, never the output bytes. ``progress(done, total)`` is called as input is consumed.
    """
    threads = _check_options(chunk_size, threads)
    options = dict(chunk_size=chunk_size, compression_level=compression_level,
                   prioritized_files=list(prioritized_files),
                   allow_missing_prioritized=allow_missing_prioritized,
                   threads=threads, progress=progress)
    if not isinstance(dst, (str, os.PathLike)):
        return _convert_into(src, dst, **options)  # type: ignore[arg-type]
    target = os.fspath(dst)
    directory = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(directory):
        raise FileNotFoundError(errno.ENOENT, "no such directory", directory)
    fd, temp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".part", dir=directory)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the mode a new file gets
        with os.fdopen(fd, "wb") as out:
            result = _convert_into(src, out, **options)  # type: ignore[arg-type]
        os.replace(temp, target)
    except BaseException:
        os.unlink(temp)
        raise
    return result


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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

