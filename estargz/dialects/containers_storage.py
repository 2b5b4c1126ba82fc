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
from typing import BinaryIO

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
from ..tarstream import BLOCK, TarEntry, padding
from ..toc import MAX_TAR_SPLIT_SIZE, MAX_TOC_SIZE, check_encoded_size, scan_toc_object
from .base import DecodedTOC, LayerOptions, Tail, TarInput
from .stargz_zstd import ESTARGZ_ONLY

__all__ = ["CONTAINERS_STORAGE", "has_containers_storage_schema"]

_COPY_BLOCK = 1 << 20
_KEEPS_THE_TAR = "which keeps the tar as it is"
#: Entry keys (lower case) only a containers/storage TOC has.
_CONTAINERS_STORAGE_KEYS = frozenset({"endoffset", "chunktype", "accesstime", "changetime"})
#: One of those keys, or ``tarSplitDigest``, in lower case as a JSON key (spelled without escapes).
_CONTAINERS_STORAGE_KEY = re.compile(r'"(?:endoffset|chunktype|accesstime|changetime|tarsplitdigest)"[ \t\n\r]*:')


class _SpanPlanner:
    """The content-defined chunks of the next files, cut ahead on a thread of their own.

    Small files are cut in batches (one vectorized pass for many files), large ones in windows.
    Reads with ``os.pread`` so the pipeline's reads are undisturbed; a source without a file
    descriptor is cut in line instead. :meth:`close` stops the thread; call it whatever happens.
    """

    _LOOKAHEAD = 4  # batches in flight
    _SMALL_FILE = 256 << 10
    _BATCH_BYTES = 4 << 20

    def __init__(self, pipeline: Pipeline, files: Iterable[TarEntry]) -> None:
        self._pipeline = pipeline
        try:
            self._fd: int | None = pipeline.source.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):
            self._fd = None
        self._batches = self._batched(files)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="estargz-chunker") if self._fd is not None else None
        self._ahead: deque[tuple[list[TarEntry], Future[list[tuple[list[Span], bytes | None]]]]] = deque()
        self._ready: deque[tuple[TarEntry, tuple[list[Span], bytes | None]]] = deque()
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

    def _cut(self, batch: list[TarEntry]) -> list[tuple[list[Span], bytes | None]]:
        """The chunks of each file, and the contents of small files (read once, used twice)."""
        if len(batch) == 1 and batch[0].size > self._SMALL_FILE:
            entry = batch[0]
            return [(list(content_defined_chunks_streamed(lambda at, n: self._read(entry, at, n), entry.size)),
                     None)]
        contents = [self._read(entry, 0, entry.size) for entry in batch]
        return list(zip(content_defined_chunks_of_files(contents), contents, strict=True))

    def _fill(self) -> None:
        if self._pool is None:
            return
        while len(self._ahead) < self._LOOKAHEAD and (batch := next(self._batches, None)) is not None:
            self._ahead.append((batch, self._pool.submit(self._cut, batch)))

    def spans(self, entry: TarEntry) -> tuple[list[Span], bytes | None]:
        """The chunks of ``entry``, and its contents if it is small; files come in input order."""
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
    return any("\udc80" <= c <= "\udcff" for c in name)


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
        self._spool: BinaryIO = stack.enter_context(tempfile.TemporaryFile(prefix="estargz-tar-split-"))
        self._tar_split = TarSplitWriter(self._spool.write)

    def on_record(self, record: CSTOCEntry) -> None:
        if record.type == "reg" and not record.chunk_size:
            record.chunk_digest = ""  # single-chunk files carry only their digest
        self._encoder.add(record)
        check_encoded_size("TOC", len(self._encoder.buffer), MAX_TOC_SIZE)

    def walk(self, pipeline: Pipeline, tar: TarInput) -> list[str]:
        """Every input byte kept in order; headers and padding in frames between the chunks'."""
        check_readable(tar.entries)
        planner = _SpanPlanner(pipeline, (e for e in tar.entries() if e.kind == "reg" and e.size))
        try:
            position, last_size = self._entries(pipeline, tar, planner)
        finally:
            planner.close()
        self._ending(pipeline, tar, position, last_size)
        return []

    def _entries(self, pipeline: Pipeline, tar: TarInput, planner: _SpanPlanner) -> tuple[int, int]:
        position, last_size = tar.start, 0
        for entry in tar.entries():
            if _has_undecodable(entry.name) or _has_undecodable(entry.linkname):
                raise UnsupportedInputError(
                    f"name {entry.name!r} is not valid UTF-8: the zstd:chunked TOC cannot hold it "
                    "(containers/storage would fail to pull the layer)")
            header = pipeline.read(position, entry.data_offset - position)
            pipeline.append(header)
            self._tar_split.segment(header)
            records = [_record(entry)]
            crc = None
            if entry.kind == "reg" and entry.size:
                crc = _add_content(pipeline, entry, records, *planner.spans(entry))
            pipeline.complete(records)
            self._tar_split.file(entry.name.encode("utf-8", "surrogateescape"), entry.size, crc)
            position, last_size = entry.data_offset + entry.size, entry.size
        return position, last_size

    def _ending(self, pipeline: Pipeline, tar: TarInput, position: int, last_size: int) -> None:
        """The end of the archive as a tar reader consumes it (last padding, two zero blocks), then
        whatever follows, every byte kept."""
        archive_end = min(tar.end, position + padding(last_size) + 2 * BLOCK)
        ending = pipeline.read(position, archive_end - position)
        pipeline.append(ending)
        self._tar_split.segment(ending)
        for offset in range(archive_end, tar.end, _COPY_BLOCK):
            rest = pipeline.read(offset, min(_COPY_BLOCK, tar.end - offset))
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


def _hash_zeros(length: int, crc: int, file_hash: hashlib._Hash | None) -> int:
    """Feed ``length`` zero bytes to the CRC-64 (returned) and the file digest, block by block."""
    block = bytes(min(length, _COPY_BLOCK))
    for start in range(0, length, len(block)):
        piece = block[:min(len(block), length - start)]
        crc = crc64_iso(piece, crc)
        if file_hash is not None:
            file_hash.update(piece)
    return crc


def _add_content(pipeline: Pipeline, entry: TarEntry, records: list[CSTOCEntry], spans: list[Span],
                 contents: bytes | None) -> int:
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
            pipeline.add_zeros(chunk, length, whole_file=file_hash is None, ends_file=last)
            crc = _hash_zeros(length, crc, file_hash)
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
            pipeline.add_chunk(chunk, payload, whole_file=file_hash is None, alone=True, ends_file=last)
    if file_hash is not None:
        record.digest = "sha256:" + file_hash.hexdigest()
    return crc


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
