"""The stargz TOC, shared by eStargz (gzip) and stargz-snapshotter's zstd:chunked: entries in
eStargz order (or input order for keep-diff-id), chunks every ``chunk_size`` bytes, the TOC JSON."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Generator

from ..chunking import MemberGrouping, fixed_chunks
from ..errors import UnsupportedInputError
from ..ordering import LANDMARK_CONTENTS, check_readable, order_entries
from ..pipeline import Pipeline
from ..tarstream import BLOCK, TarEntry, padding, ustar_header
from ..toc import EMPTY_DIGEST, MAX_TOC_SIZE, TOC_NAME, TOCEncoder, TOCEntry, check_encoded_size, clean_name, \
    format_modtime, iter_toc
from .base import DecodedTOC, LayerOptions, TarInput

__all__ = ["StargzWriter", "toc_tar", "toc_digest", "read_stargz_toc"]

_COPY_BLOCK = 1 << 20


class _OwnerNames:
    """Go's rule for userName/groupName: written only when it changes for a given uid/gid."""

    def __init__(self) -> None:
        self._last: dict[int, str] = {}

    def __call__(self, ident: int, name: str) -> str:
        if not name or self._last.get(ident) == name:
            return ""
        self._last[ident] = name
        return name


class StargzWriter:
    """The walk and the TOC JSON of the stargz dialects; a subclass writes the tail.

    The TOC JSON follows a free block in :attr:`buffer`, room for the header of its tar entry.
    """

    metadata_apart = False

    def __init__(self, options: LayerOptions) -> None:
        self.options = options
        self.grouping: MemberGrouping | None = options.grouping()
        self._encoder = TOCEncoder(bytearray(BLOCK))
        self._names = (_OwnerNames(), _OwnerNames())

    @property
    def buffer(self) -> bytearray:
        """A free block, then the TOC JSON."""
        return self._encoder.buffer

    def on_record(self, record: TOCEntry) -> None:
        self._encoder.add(record)
        self._check_size()

    def _check_size(self) -> None:
        check_encoded_size("TOC", len(self.buffer) - BLOCK, MAX_TOC_SIZE)

    def finish_toc(self) -> memoryview:
        """Close the TOC JSON and return it (a view into :attr:`buffer`)."""
        self._encoder.finish()
        self._check_size()
        return memoryview(self.buffer)[BLOCK:]

    # -- the walk ----------------------------------------------------------------------------
    def walk(self, pipeline: Pipeline, tar: TarInput) -> list[str]:
        if self.options.keep_diff_id:
            self._walk_lossless(pipeline, tar)
            return []
        return self._walk_ordered(pipeline, tar)

    def _walk_ordered(self, pipeline: Pipeline, tar: TarInput) -> list[str]:
        """The entries in eStargz order, headers copied and payloads re-padded; return missing."""
        ordered, missing = order_entries(tar.entries(), self.options.prioritized_files,
                                         allow_missing=self.options.allow_missing_prioritized)
        check_readable(lambda: ordered)
        for entry in ordered:
            if entry.header_offset < 0:
                header = ustar_header(entry.name, entry.size)
            else:
                header = pipeline.read(entry.header_offset, entry.data_offset - entry.header_offset)
            self._add(pipeline, entry, header, bytes(padding(entry.size)))
        return missing

    def _walk_lossless(self, pipeline: Pipeline, tar: TarInput) -> None:
        """The entries in input order with every input byte kept: the blob inflates to the input."""
        check_readable(tar.entries)
        position = tar.start
        for entry in tar.entries():
            if clean_name(entry.name) == TOC_NAME:
                raise UnsupportedInputError(
                    f"the layer already holds {TOC_NAME}: it is an eStargz layer; decompress it first")
            self._add(pipeline, entry, pipeline.read(position, entry.data_offset - position), b"")
            position = entry.data_offset + entry.size
        while position < tar.end:
            length = min(_COPY_BLOCK, tar.end - position)
            pipeline.append(pipeline.read(position, length))
            position += length

    def _record(self, entry: TarEntry) -> TOCEntry:
        unames, gnames = self._names
        record = TOCEntry(
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
            record.link_name = entry.linkname
        elif entry.kind in ("char", "block"):
            record.dev_major, record.dev_minor = entry.devmajor, entry.devminor
        elif entry.kind == "reg":
            record.size = entry.size
        return record

    def _add(self, pipeline: Pipeline, entry: TarEntry, header: bytes, trailer: bytes) -> None:
        """One entry: ``header`` is written before its payload, ``trailer`` after it."""
        record = self._record(entry)
        records = [record]
        pipeline.append(header)
        if entry.kind == "reg" and entry.size == 0:
            record.digest = EMPTY_DIGEST
        elif entry.kind == "reg":
            self._add_payload(pipeline, entry, record, records)
        if trailer:
            pipeline.append(trailer)
        pipeline.complete(records)

    def _add_payload(self, pipeline: Pipeline, entry: TarEntry, record: TOCEntry, records: list[TOCEntry]) -> None:
        step = self.options.chunk_size
        landmark = entry.header_offset < 0
        file_hash = hashlib.sha256() if entry.size > step else None
        for chunk_offset, length in fixed_chunks(entry.size, step):
            payload = LANDMARK_CONTENTS if landmark else pipeline.read(entry.data_offset + chunk_offset, length)
            if chunk_offset == 0:
                chunk = record
            else:
                chunk = TOCEntry(name=entry.name, type="chunk", chunk_offset=chunk_offset)
                records.append(chunk)
            if length == step:
                chunk.chunk_size = step
            if file_hash is not None:
                file_hash.update(payload)
            chunk.inner_offset = pipeline.add_chunk(chunk, payload, whole_file=file_hash is None, alone=landmark)
        if file_hash is not None:
            record.digest = "sha256:" + file_hash.hexdigest()


def toc_tar(buffer: bytearray) -> bytearray:
    """The TOC as a tar, in place: ``buffer`` holds a free block, then the TOC JSON; the entry's
    header goes into the block, its padding and the end-of-archive marker after the JSON."""
    size = len(buffer) - BLOCK
    buffer[:BLOCK] = ustar_header(TOC_NAME, size)
    buffer += bytes(padding(size) + 2 * BLOCK)
    return buffer


def read_stargz_toc(toc_json: bytes) -> DecodedTOC:
    """The stargz TOC JSON, whose entries are parsed one at a time as read."""
    return DecodedTOC(functools.partial(_read_entries, toc_json))


def _read_entries(toc_json: bytes, entry_type: type[TOCEntry]) -> Generator[TOCEntry, None, tuple[int, str]]:
    """The entries of :func:`~estargz.toc.iter_toc`; returns the version, and no tar-split digest."""
    version = yield from iter_toc(toc_json, entry_type)
    return version, ""


def toc_digest(toc_json: bytes | memoryview) -> str:
    """The stargz TOC digest: sha256 of the TOC JSON."""
    return "sha256:" + hashlib.sha256(toc_json).hexdigest()

