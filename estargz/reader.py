"""Read eStargz blobs: footer -> TOC -> entry tree -> files that inflate only the chunks they need."""

from __future__ import annotations

import bisect
import collections
import datetime as _dt
import gc
import io
import itertools
import os
import re
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, BinaryIO, TypeVar

from .annotations import (
    LEGACY_MANIFEST_CHECKSUM_ANNOTATION,
    LEGACY_MANIFEST_POSITION_ANNOTATION,
    MANIFEST_CHECKSUM_ANNOTATION,
    MANIFEST_POSITION_ANNOTATION,
    TARSPLIT_POSITION_ANNOTATION,
    TOC_DIGEST_ANNOTATION,
)
from .blobcheck import Coverage, check_blob_structure
from .cstoc import CSTOCEntry, as_toc_entry
from .dialects import detect, read_toc
from .digests import hash_digest, new_hash, sha256_digest
from .errors import FormatError, LimitError, NotFoundError, VerificationError
from .extract import ExtractReport, extract
from .footer import MAX_FOOTER_SIZE, SKIPPABLE_HEADER_SIZE, Footer, parse_footer
from .framing import inflate_frames
from .gojson import parse_rfc3339
from .source import BLOCK_SIZE, RangeFile, Source, SourceLike, as_source, read_ranges
from .tarsplit import FILE_TYPE, SEGMENT_TYPE, TarSplitEntry, iter_records, iter_tar
from .tarstream import BLOCK, iter_entries, padding, toc_header_fields
from .toc import MAX_TOC_SIZE, NO_XATTRS, TOC_NAME, TOCEntry, clean_name

if TYPE_CHECKING:
    from .registry import Anchor

__all__ = ["Reader", "Entry", "EntryFile", "Chunk", "VerifyReport", "open_blob", "MAX_CHUNK_SIZE"]

#: Largest tar-split the reader inflates.
_MAX_TAR_SPLIT = 1 << 30

#: Symbolic links followed in one path before giving up (as Linux's ELOOP limit).
_MAX_SYMLINKS = 40

#: Largest chunk the reader inflates into memory.
MAX_CHUNK_SIZE = 512 << 20
#: Most bytes one compressed byte inflates to (deflate's limit is 1032; zstd's is higher).
_MAX_INFLATE_RATIO = 1 << 16
#: Compressed gap between two ranges a read needs that one request reads through, not splits.
_MAX_GAP = 64 << 10
#: Requests fetch whole aligned blocks of compressed bytes, so that neighbouring small files
#: share them: a ``_BLOCK_FRACTION``-th of the blob, within the bounds below. The reader keeps
#: the bytes of its latest requests, up to ``_KEPT_RUNS`` bytes.
_BLOCK_FRACTION = 512
_MIN_BLOCK = 4 << 10
_MAX_BLOCK = 64 << 10
_KEPT_RUNS = 4 << 20
#: Most compressed bytes of chunks fetched together (one request) and held until inflated.
_MAX_FETCH = 16 << 20
#: File bytes fetched ahead of a read that continues where the previous one ended.
_READ_AHEAD = 4 << 20
#: Last bytes of a blob fetched at once when opening it (the footer and, when it fits, the TOC):
#: a ``_TAIL_FRACTION``-th of the blob, at least a footer, at most ``_MAX_TAIL``; a source's own
#: ``opening_tail`` (see :class:`~estargz.source.Source`) instead when it has one.
_TAIL_FRACTION = 64
_MAX_TAIL = 1 << 20
#: Chunks larger than this are held in a temporary file, not in memory, while a file reads them.
_SPOOL_CHUNK_SIZE = 8 << 20
#: Zero bytes accepted after the TOC JSON (padding and end-of-archive blocks).
_MAX_TOC_TRAILER = 64 << 10
#: Longest entry name or link target accepted, in characters.
MAX_NAME_LENGTH = 64 << 10
#: Bytes of names of implicit parent directories (those without a TOC entry) the reader creates
#: per byte of TOC JSON, and at least: each such name repeats a prefix of an entry's name, so a
#: few deep names could otherwise make memory grow with the square of the TOC's size.
_IMPLICIT_NAMES_PER_TOC_BYTE = 16
_MIN_IMPLICIT_NAMES = 16 << 20
#: What one implicit directory counts against that budget besides its name.
_IMPLICIT_ENTRY_COST = 128
#: Bytes of tar-split JSON accepted per byte of TOC JSON, and at least (tar headers in base64
#: cost about 700 bytes per entry, whose TOC entry takes 30 or more; plus the end-of-archive).
_TAR_SPLIT_PER_TOC_BYTE = 32
_MIN_TAR_SPLIT = 4 << 20
#: tar-split records beyond two per TOC entry (a segment and a file record): the end-of-archive
#: segment and the bytes after it, cut into pieces of at least this many bytes of JSON.
_TAR_SPLIT_BYTES_PER_EXTRA_RECORD = 4096
_ENTRY_TYPES = frozenset({"reg", "dir", "symlink", "hardlink", "char", "block", "fifo"})
_NON_NEGATIVE_FIELDS = ("mode", "uid", "gid", "dev_major", "dev_minor")
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
_V = TypeVar("_V")
#: Surrogates that do not stand for a raw byte of a name (see ``surrogateescape``).
_UNENCODABLE = re.compile("[\ud800-\udc7f\udd00-\udfff]")


def _always(value: _V) -> Callable[[], _V]:
    """A function of no arguments that returns ``value``, without running Python code."""
    return itertools.repeat(value).__next__


#: What an entry without children holds: one shared, read-only mapping.
_NO_CHILDREN: Mapping[str, Entry] = MappingProxyType({})


@dataclass(slots=True)
class Chunk:
    """Where one chunk of a regular file lies: compressed range, and position in the file."""

    offset: int
    """Compressed offset of the gzip member that holds the chunk."""
    inner_offset: int
    """Uncompressed offset of the chunk inside that member (min-chunk-size blobs)."""
    chunk_offset: int
    chunk_size: int
    chunk_digest: str
    next_offset: int = 0
    """Compressed offset where the chunk's member run ends."""


@dataclass(eq=False, slots=True)
class Entry(TOCEntry):
    """A node of the layer tree: a TOC entry by its cleaned name, with what the tree adds.
    Hardlink names resolve to the entry of their target. Entries compare by identity.

    The chunk fields it has as a TOC entry describe its first chunk; :attr:`chunks` has them all."""

    xattrs: Mapping[str, bytes] = field(default_factory=_always(NO_XATTRS))  # type: ignore[assignment]
    num_link: int = 0
    chunks: Sequence[Chunk] = field(default=(), repr=False)
    """The chunks of a regular file with data, in file order."""
    children: Mapping[str, Entry] = field(default_factory=_always(_NO_CHILDREN), repr=False)
    """A directory's entries by name (its last name component)."""

    __eq__ = object.__eq__
    __hash__ = object.__hash__

    @property
    def permissions(self) -> int:
        """Permission bits with setuid, setgid and sticky (the file type comes from ``type``)."""
        return self.mode & 0o7777

    @property
    def mtime(self) -> _dt.datetime | None:
        """The modification time, or None when the TOC has none."""
        return _modtime(self.modtime) if self.modtime else None

    def is_dir(self) -> bool:
        return self.type == "dir"

    def is_file(self) -> bool:
        return self.type == "reg"


@dataclass(frozen=True)
class VerifyReport:
    """What :meth:`Reader.verify` checked."""

    toc_digest: str
    files: int
    chunks: int
    bytes: int
    diff_id: str | None = None
    """containers/storage zstd:chunked: the diffID of the tar rebuilt from tar-split and files."""
    coverage: Coverage | None = field(default=None, compare=False)
    """What the whole-blob check covered: blob bytes, compressed units, tar entries."""


def _components(name: str) -> list[str]:
    """The components of a cleaned name, last first (a stack to pop from)."""
    return name.split("/")[::-1] if name else []


def _modtime(text: str) -> _dt.datetime | None:
    """A TOC modtime as a UTC datetime; None if it is not RFC 3339 (Go's reader takes it as the
    zero time); LimitError outside the years 1 to 9999."""
    try:
        seconds, nanos = parse_rfc3339(text)
    except FormatError:
        return None
    try:
        return _EPOCH + _dt.timedelta(seconds=seconds, microseconds=nanos // 1000)
    except OverflowError:
        raise LimitError(f"modification time {text!r} is out of range") from None


def _fill_owner_names(entry: Entry, user_names: dict[int, str], group_names: dict[int, str]) -> None:
    """Go writers give an owner's name only when it changes for its id: give ``entry`` the names
    last given for its ids when it has none; remember those it has."""
    if entry.user_name:
        user_names[entry.uid] = entry.user_name
    elif user_names:
        entry.user_name = user_names.get(entry.uid, "")
    if entry.group_name:
        group_names[entry.gid] = entry.group_name
    elif group_names:
        entry.group_name = group_names.get(entry.gid, "")


def _size_chunks(entry: Entry) -> None:
    """Fill in the chunk sizes left 0 (the rest of the file); check that the chunks cover it contiguously."""
    expected = 0
    for index, chunk in enumerate(entry.chunks):
        if chunk.chunk_size == 0:
            chunk.chunk_size = entry.size - chunk.chunk_offset
        if chunk.chunk_offset != expected or chunk.chunk_size <= 0:
            raise FormatError(f"TOC: chunks of {entry.name!r} do not cover the file contiguously")
        if chunk.chunk_size > MAX_CHUNK_SIZE:
            raise LimitError(f"TOC: chunk of {chunk.chunk_size} bytes in {entry.name!r} is too large")
        expected += chunk.chunk_size
        if index + 1 == len(entry.chunks) and expected != entry.size:
            raise FormatError(f"TOC: chunks of {entry.name!r} add up to {expected}, not {entry.size}")
    if len(entry.chunks) == 1 and not entry.chunks[0].chunk_digest:
        entry.chunks[0].chunk_digest = entry.digest  # one chunk holds the whole file


def _check_entry(index: int, entry: TOCEntry) -> None:
    """Reject a TOC entry (not a chunk) that no tar entry could have produced."""
    name = entry.name
    if (entry.type in _ENTRY_TYPES and name.isascii() and "\0" not in name and len(name) <= MAX_NAME_LENGTH
            and not (entry.link_name or entry.xattrs or entry.modtime)
            and entry.size | entry.mode | entry.uid | entry.gid | entry.dev_major | entry.dev_minor >= 0):
        return  # the plainest entries, checked at once
    _check_entry_fields(index, entry)


def _check_entry_fields(index: int, entry: TOCEntry) -> None:
    if entry.type not in _ENTRY_TYPES:
        raise FormatError(f"TOC entry {index}: unknown type {entry.type!r}")
    _check_name(index, entry.name)
    if entry.link_name:
        _check_name(index, entry.link_name)
    if entry.xattrs and any(not name or "\0" in name for name in entry.xattrs):
        raise FormatError(f"TOC entry {index}: empty xattr name, or one holding a NUL character")
    if entry.size < 0:
        raise FormatError(f"TOC entry {entry.name!r}: negative size")
    if entry.mode | entry.uid | entry.gid | entry.dev_major | entry.dev_minor < 0:
        negative = next(attr for attr in _NON_NEGATIVE_FIELDS if getattr(entry, attr) < 0)
        raise LimitError(f"TOC entry {index}: negative {negative}")
    if entry.modtime:
        _modtime(entry.modtime)


def _check_name(index: int, text: str) -> None:
    """Reject an entry's name or link target that is too long or that no tar name could be."""
    if len(text) > MAX_NAME_LENGTH:
        raise LimitError(f"TOC entry {index}: name longer than {MAX_NAME_LENGTH} characters")
    if "\0" in text:
        raise FormatError(f"TOC entry {index}: name or link target holds a NUL character")
    if not text.isascii() and _UNENCODABLE.search(text):
        raise FormatError(f"TOC entry {index}: name or link target holds an unpaired surrogate escape")


class Reader:
    """An opened blob (eStargz, or either dialect of zstd:chunked). Use :func:`estargz.open`."""

    anchor: Anchor | None = None
    """For a registry layer, the :class:`~estargz.registry.Anchor` its TOC was checked against."""

    def __init__(self, source: Source, *, toc_digest: str | None = None, toc: Source | None = None,
                 annotations: Mapping[str, str] | None = None, owns_source: bool = False) -> None:
        self._source = source
        self._owns_source = owns_source
        self._runs = _Runs()
        size = source.size
        annotations = dict(annotations or {})
        source = _TailSource(source, annotations, self._runs)
        self.footer: Footer = _footer_from_annotations(annotations, size) or parse_footer(
            source.read_at(size - min(MAX_FOOTER_SIZE, size), min(MAX_FOOTER_SIZE, size)), size)
        self.toc_offset: int | None = self.footer.toc_offset
        """Offset of the TOC (gzip member, or zstd frame inside its skippable frame); None when
        the TOC is kept outside the blob."""
        compressed: bytes | None = None
        if self.footer.toc_length is not None:  # zstd:chunked: the TOC is a zstd frame
            self.data_end = self.footer.toc_offset - SKIPPABLE_HEADER_SIZE  # type: ignore[operator]
            compressed = source.read_at(self.footer.toc_offset, self.footer.toc_length)  # type: ignore[arg-type]
            toc_json = _read_zstd_toc(compressed, self.footer.toc_uncompressed_length)
            self.manifest_checksum: str | None = sha256_digest(compressed)
            """sha256 of the compressed TOC (zstd:chunked's manifest-checksum annotation)."""
        else:
            self.manifest_checksum = None
            if self.toc_offset is None:
                if toc is None:
                    raise FormatError("the blob keeps its TOC outside (external TOC): "
                                      "give the TOC blob (toc=, or --toc FILE)")
                self.data_end = size - self.footer.size
                toc_json = _read_toc(toc, 0, toc.size)
            else:
                if toc is not None:
                    raise ValueError("toc= is for blobs whose TOC is kept outside; this one has its TOC inside")
                self.data_end = self.toc_offset
                toc_json = _read_toc(source, self.toc_offset, size - self.footer.size)
        self.dialect, decoded = read_toc(detect(self.footer.kind, annotations), toc_json)
        """The format's dialect (:mod:`estargz.dialects`): how its TOC reads and its chunks inflate."""
        self.format = self.dialect.name
        self._inflate = self.dialect.inflate
        self.toc_digest: str = self.dialect.toc_digest(toc_json, compressed)
        """The digest a manifest annotation carries for this format: sha256 of the TOC JSON
        (eStargz, stargz zstd:chunked) or of the compressed TOC (containers/storage zstd:chunked)."""
        if toc_digest is not None and toc_digest != self.toc_digest:
            raise VerificationError(f"TOC digest is {self.toc_digest}, expected {toc_digest}")
        _check_annotated_digests(annotations, self.manifest_checksum, toc_json)
        self.tar_split_digest = ""
        """containers/storage: sha256 of the compressed tar-split, when the TOC names it."""
        self.version = 0
        self._decoded = decoded
        self._names: dict[str, Entry] = {}
        self._order: list[str] = []
        self._link_targets: dict[str, Entry] = {}
        self._toc_size = len(toc_json)
        self._implicit_budget = max(_MIN_IMPLICIT_NAMES, _IMPLICIT_NAMES_PER_TOC_BYTE * len(toc_json))
        with _collection_paused():
            self._build_tree(self._iter_toc_entries(Entry))  # type: ignore[arg-type]

    @property
    def toc_entries(self) -> list[TOCEntry]:
        """The TOC's entries as written (containers/storage entries in the eStargz model), decoded
        anew on each access."""
        return list(self._iter_toc_entries())

    def _iter_toc_entries(self, entry_type: type[TOCEntry] = TOCEntry) -> Iterator[TOCEntry]:
        """The TOC's entries, decoded one at a time by its dialect as ``entry_type``; sets the
        version and the tar-split digest once all are read."""
        self.version, self.tar_split_digest = yield from self._decoded.read_entries(entry_type)

    def _iter_cs_files(self) -> Iterator[CSTOCEntry]:
        """The containers/storage TOC's entries other than chunks, decoded anew one at a time."""
        read = self._decoded.read_native_entries
        return (entry for entry in (read() if read is not None else ()) if entry.type != "chunk")

    def _pieces(self, start: int, end: int) -> Iterator[bytes]:
        return _pieces(self._source, start, end)

    def _build_tree(self, toc_entries: Iterable[Entry]) -> None:
        """Index the TOC's entries (decoded as :class:`Entry`) by cleaned name, chunks under their file."""
        root = Entry(name="", type="dir", mode=0o755, children={})
        names = self._names
        names[""] = root
        user_names: dict[int, str] = {}
        group_names: dict[int, str] = {}
        last_file: Entry | None = None
        data_entries: list[tuple[Entry, Chunk]] = []
        index = chunks = -1
        add_name = self._order.append
        for index, entry in enumerate(toc_entries):
            if entry.type == "chunk":
                chunks += 1
                if last_file is None:
                    raise FormatError(f"TOC entry {index}: chunk without a preceding regular file")
                data_entries.append((last_file, _add_chunk(last_file, entry, entry.chunk_offset)))
                continue
            _check_entry(index, entry)
            entry.name = name = clean_name(entry.name)
            _fill_owner_names(entry, user_names, group_names)
            if not entry.xattrs:
                entry.xattrs = NO_XATTRS
            last_file = entry if entry.type == "reg" else None
            if last_file is not None and entry.size > 0:
                data_entries.append((entry, _add_chunk(entry, entry, 0)))
            if name == "":
                if entry.type != "dir":
                    raise FormatError("TOC root entry is not a directory")
                entry.children = root.children
                names[""] = root = entry
                continue
            if name not in names:
                add_name(name)
            names[name] = entry
        self._entry_count = index - chunks
        self._link_chunks(data_entries)
        self._link_tree()

    def _link_chunks(self, data_entries: list[tuple[Entry, Chunk]]) -> None:
        data_end = self.data_end
        last = data_end
        for file, chunk in reversed(data_entries):
            if not 0 <= chunk.offset < data_end or chunk.inner_offset < 0:
                raise FormatError(f"TOC entry {file.name!r}: chunk offset {chunk.offset} is outside the data")
            chunk.next_offset = last
            if chunk.offset != 0 and chunk.inner_offset == 0:
                last = chunk.offset
        for entry in self._names.values():
            if entry.type == "reg" and entry.size != 0:
                _size_chunks(entry)

    def _link_tree(self) -> None:
        """Give each directory its children, each entry its link count; create implicit parents."""
        names = self._names
        names[""].num_link += 2
        for name in self._order:
            entry = names[name]
            parent_name, _, base = name.rpartition("/")
            parent = names.get(parent_name)
            if parent is None or parent.type != "dir":
                parent = self._parent_dir(parent_name)
            target = self._resolve(entry) if entry.type == "hardlink" else entry
            children = parent.children
            if children is _NO_CHILDREN:
                parent.children = children = {}
            children[base] = target  # type: ignore[index]
            if target.type != "dir":
                target.num_link += 1
            else:  # a directory is never a hardlink's target
                parent.num_link += 1
                entry.num_link += 2

    def _parent_dir(self, name: str) -> Entry:
        missing = []
        while (entry := self._names.get(name)) is None:
            missing.append(name)
            name = name.rpartition("/")[0]
        if entry.type == "hardlink":
            entry = self._resolve(entry)
        if entry.type != "dir":
            raise FormatError(f"TOC: {name!r} is a {entry.type}, but entries lie below it")
        for directory in reversed(missing):  # synthesize absent parents, top down
            self._implicit_budget -= len(directory) + _IMPLICIT_ENTRY_COST
            if self._implicit_budget < 0:
                raise LimitError("TOC: too many or too deep implicit parent directories for its size")
            child = Entry(name=directory, type="dir", mode=0o755, num_link=2)
            self._names[directory] = child
            _add_child(entry, directory.rpartition("/")[2], child)
            entry.num_link += 1
            entry = child
        return entry

    def _resolve(self, entry: Entry) -> Entry:
        """The entry a hardlink leads to; each link's target is remembered, so resolving every
        link of a chain costs as much as resolving the chain once."""
        chain: dict[str, None] = {}
        while entry.type == "hardlink":
            known = self._link_targets.get(entry.name)
            if known is not None:
                entry = known
                break
            chain[entry.name] = None
            target_name = clean_name(entry.link_name)
            target = self._names.get(target_name)
            if target is None:
                raise FormatError(f"TOC: hardlink {entry.name!r} points to missing {entry.link_name!r}")
            if target_name in chain:
                raise FormatError(f"TOC: hardlink cycle through {entry.name!r}")
            entry = target
        if entry.type == "dir":
            raise FormatError(f"TOC: hardlink to directory {entry.name!r}")
        self._link_targets.update(dict.fromkeys(chain, entry))
        return entry

    @property
    def size(self) -> int:
        """Size of the blob in bytes."""
        return self._source.size

    # -- lookups ---------------------------------------------------------------------------
    def lookup(self, name: str) -> Entry:
        """The entry for ``name`` (cleaned, so ``/a``, ``./a`` and ``a`` are equal); hardlinks resolved."""
        entry = self._names.get(clean_name(name))
        if entry is None:
            raise NotFoundError(f"{name!r} is not in the layer")
        return self._resolve(entry) if entry.type == "hardlink" else entry

    def __contains__(self, name: str) -> bool:
        return clean_name(name) in self._names

    def __iter__(self) -> Iterator[Entry]:
        """Every entry of the TOC once, in TOC order (hardlinks as themselves, not resolved)."""
        return map(self._names.__getitem__, self._order)

    def __len__(self) -> int:
        return len(self._order)

    # -- contents --------------------------------------------------------------------------
    def read_chunk(self, chunk: Chunk, *, name: str = "") -> bytes:
        """The uncompressed bytes of one chunk, checked against its chunk digest.

        A chunk whose TOC entry has no chunk digest is read through its file
        (:meth:`open`), which checks the whole file against its digest first.
        """
        return b"".join(self._verified_chunk(chunk, name))

    def _fetch(self, chunks: Sequence[Chunk]) -> list[bytes]:
        """The compressed bytes of each chunk's member run: those of recent requests are reused,
        the others fetched in one :func:`read_ranges` call, in aligned blocks; runs that
        touch, overlap or lie within ``_MAX_GAP`` of each other are one range."""
        spans = [(chunk.offset, chunk.next_offset) for chunk in chunks]
        found = {span: self._runs.find(*span) for span in set(spans)}
        block = min(_MAX_BLOCK, max(_MIN_BLOCK, self.size // _BLOCK_FRACTION))
        merged: list[list[int]] = []
        for start, end in sorted(span for span, data in found.items() if data is None):
            start = start - start % block
            end = max(end, min(self.data_end, end + -end % block))
            if merged and start - merged[-1][1] <= _MAX_GAP:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        fetched = read_ranges(self._source, [(start, end - start) for start, end in merged]) if merged else []
        for (start, end), data in zip(merged, fetched, strict=True):
            if len(data) != end - start:
                raise FormatError(f"the source gave {len(data)} bytes for range [{start}, {end})")
            self._runs.add(start, data)
        starts = [start for start, _ in merged]

        def bytes_of(span: tuple[int, int]) -> bytes:
            kept = found[span]
            if kept is not None:
                return kept
            run = bisect.bisect_right(starts, span[0]) - 1
            return fetched[run][span[0] - starts[run]:span[1] - starts[run]]

        return [bytes_of(span) for span in spans]

    def _chunk_pieces(self, chunk: Chunk, name: str, compressed: bytes | None = None) -> Iterator[bytes]:
        """The chunk's bytes in pieces of at most 1 MiB, unchecked; FormatError if it is short.

        ``compressed`` is the chunk's member run when already fetched; else it is read now.
        """
        span = chunk.next_offset - chunk.offset
        if chunk.inner_offset > _MAX_INFLATE_RATIO * span:
            raise LimitError(f"chunk of {name!r}: inner offset {chunk.inner_offset} is more than "
                             f"{span} compressed bytes can hold")
        want = chunk.inner_offset + chunk.chunk_size
        pieces = (self._pieces(chunk.offset, chunk.next_offset) if compressed is None
                  else (compressed[i:i + BLOCK_SIZE] for i in range(0, len(compressed), BLOCK_SIZE)))
        inflated = _InflatedStream(self._inflate(pieces, want))
        inflated.skip(chunk.inner_offset)
        remaining = chunk.chunk_size
        while remaining:
            piece = inflated.read(min(BLOCK_SIZE, remaining))
            if not piece:
                raise FormatError(f"chunk at offset {chunk.offset} of {name!r} holds fewer bytes than the TOC says")
            remaining -= len(piece)
            yield piece

    def _verified_chunk(self, chunk: Chunk, name: str, compressed: bytes | None = None) -> Iterator[bytes]:
        """The chunk's pieces; VerificationError after the last one if they miss its digest."""
        if not chunk.chunk_digest:
            raise VerificationError(f"chunk of {name!r} at file offset {chunk.chunk_offset} has no digest: "
                                    "read it through the file, which is checked whole")
        chunk_hash = new_hash()
        for piece in self._chunk_pieces(chunk, name, compressed):
            chunk_hash.update(piece)
            yield piece
        if hash_digest(chunk_hash) != chunk.chunk_digest:
            raise VerificationError(f"chunk digest mismatch in {name!r} at file offset {chunk.chunk_offset}")

    def _fetched_chunks(self, chunks: Sequence[Chunk]) -> Iterator[tuple[Chunk, bytes | None]]:
        """Each chunk with its compressed bytes, fetched in batches of at most ``_MAX_FETCH``
        bytes, one request each; None for a chunk too large for a batch (it is streamed)."""
        position = 0
        while position < len(chunks):
            count = _batch_size(chunks, position, len(chunks))
            if count == 0:
                yield chunks[position], None
                position += 1
                continue
            batch = chunks[position:position + count]
            yield from zip(batch, self._fetch(batch), strict=True)
            position += count

    def _derive_chunk_digests(self, entry: Entry) -> None:
        """Check a file that lacks chunk digests against its file digest, streaming, and record
        the digest of each of its chunks, so later reads of single chunks are checked too."""
        if not entry.digest:
            raise VerificationError(f"{entry.name!r} has no digest to verify its contents")
        file_hash = new_hash()
        derived = []
        for chunk, compressed in self._fetched_chunks(entry.chunks):
            chunk_hash = new_hash()
            for piece in self._chunk_pieces(chunk, entry.name, compressed):
                chunk_hash.update(piece)
                file_hash.update(piece)
            derived.append(hash_digest(chunk_hash))
        if hash_digest(file_hash) != entry.digest:
            raise VerificationError(f"digest mismatch for {entry.name!r}")
        for chunk, digest in zip(entry.chunks, derived, strict=True):
            if chunk.chunk_digest and chunk.chunk_digest != digest:
                raise VerificationError(f"chunk digest mismatch in {entry.name!r} at file offset {chunk.chunk_offset}")
            chunk.chunk_digest = digest

    def resolve(self, name: str) -> Entry:
        """The entry ``name`` leads to with its symlinks followed inside the layer, as a path
        lookup in the unpacked layer would (absolute targets start at the layer's root, and
        nothing leads above it)."""
        pending = _components(clean_name(name))
        resolved = ""
        hops = 0
        while pending:
            part = pending.pop()
            path = f"{resolved}/{part}" if resolved else part
            entry = self._names.get(path)
            if entry is None:
                raise NotFoundError(f"{name!r} is not in the layer")
            if entry.type != "symlink":
                resolved = path
                continue
            hops += 1
            if hops > _MAX_SYMLINKS:
                raise FormatError(f"{name!r}: too many levels of symbolic links")
            base = "" if entry.link_name.startswith("/") else resolved
            rest = "/".join(reversed(pending))
            pending, resolved = _components(clean_name(f"{base}/{entry.link_name}/{rest}")), ""
        return self.lookup(resolved)

    def open(self, name: str) -> EntryFile:
        """A seekable, read-only binary file over a regular file's contents (symlinks followed)."""
        entry = self.resolve(name)
        if entry.type != "reg":
            raise FormatError(f"{name!r} is not a regular file (it is a {entry.type})")
        return EntryFile(self, entry)

    def read(self, name: str) -> bytes:
        """The whole contents of a regular file (symlinks followed)."""
        with self.open(name) as f:
            return f.read()

    def verify(self, toc_digest: str | None = None, *, blob_digest: str | None = None,
               threads: int | None = None) -> VerifyReport:
        """Check the whole blob against its TOC, and the TOC against ``toc_digest`` (if given).

        Every compressed unit (gzip member: canonical header, CRC-32, ISIZE; zstd frame:
        canonical header, content checksum), every tar header against its TOC entry, every chunk
        against its place and digest, every file against its digest, the padding, the tar-split,
        the TOC's unit and the footer: a blob passes only when each of its bytes is accounted
        for. Compression formats can encode the same data in several ways, so a change that
        decodes to the same bytes is caught only by ``blob_digest`` (the layer descriptor's
        digest), which is checked too when given. With ``threads`` > 1 (default: more than one
        CPU) the blob is read and inflated on a second thread. Raises VerificationError or
        FormatError.
        """
        if toc_digest is not None and toc_digest != self.toc_digest:
            raise VerificationError(f"TOC digest is {self.toc_digest}, expected {toc_digest}")
        toc_entries, records = self._toc_and_tar_split()
        coverage = check_blob_structure(self._source, self.footer, self.data_end, toc_entries, records,
                                        threaded=(threads or os.cpu_count() or 1) > 1)
        if blob_digest is not None and blob_digest != coverage.blob_digest:
            raise VerificationError(f"blob digest is {coverage.blob_digest}, expected {blob_digest}")
        files = [entry for entry in self._names.values() if entry.type == "reg"]
        return VerifyReport(self.toc_digest, len(files), sum(len(e.chunks) for e in files),
                            sum(e.size for e in files), coverage.stream_digest, coverage)

    def _toc_and_tar_split(self) -> tuple[Iterator[TOCEntry], list[TarSplitEntry] | None]:
        """The TOC's entries, and the checked tar-split records if there are any: the TOC is
        decoded once for both (the entries the records were checked against are kept until read)."""
        read_native = self._decoded.read_native_entries
        if self.footer.tar_split is None or read_native is None:
            return self._iter_toc_entries(), None
        for_records, for_entries = itertools.tee(read_native())
        records = list(self._iter_tar_split(entry for entry in for_records if entry.type != "chunk"))
        return map(as_toc_entry, for_entries), records

    def tar_split(self) -> list[TarSplitEntry]:
        """The tar-split records of a containers/storage zstd:chunked blob, checked against the
        TOC's ``tarSplitDigest`` and against the TOC's entries: the same entries in the same order,
        and the tar header of each (in the tar-split) saying what its TOC entry says."""
        return list(self._iter_tar_split(self._iter_cs_files()))

    def _iter_tar_split(self, toc_files: Iterator[CSTOCEntry]) -> Iterator[TarSplitEntry]:
        """The records of :meth:`tar_split`, each checked before it is given against the TOC's
        entries other than chunks, ``toc_files``."""
        if self.footer.tar_split is None:
            raise FormatError("this blob has no tar-split (only containers/storage >= 1.50 writes it)")
        offset, length, uncompressed = self.footer.tar_split
        compressed = self._source.read_at(offset, length)
        if self.tar_split_digest and sha256_digest(compressed) != self.tar_split_digest:
            raise VerificationError("tar-split digest differs from the TOC's tarSplitDigest")
        limit = min(_MAX_TAR_SPLIT, max(_MIN_TAR_SPLIT, _TAR_SPLIT_PER_TOC_BYTE * self._toc_size))
        if uncompressed > limit:
            raise LimitError(f"tar-split of {uncompressed} bytes is too large for a TOC of {self._toc_size} bytes")
        data = b"".join(inflate_frames([compressed], uncompressed + 1))
        if len(data) != uncompressed:
            raise FormatError(f"tar-split holds {len(data)} bytes, the footer says {uncompressed}")
        max_records = 2 * self._entry_count + 2 + uncompressed // _TAR_SPLIT_BYTES_PER_EXTRA_RECORD
        return _checked_tar_split(iter_records(data, max_records), toc_files)

    def iter_rebuilt_tar(self) -> Iterator[bytes]:
        """The original tar of a containers/storage zstd:chunked blob, rebuilt from its tar-split
        and the files' chunks (as a partial pull does), each file checked against its CRC-64."""
        records = self.tar_split()
        by_name = {clean_name(e.name): e.name for e in self._iter_cs_files()}

        def content(record: TarSplitEntry) -> Iterator[bytes]:
            entry = self.lookup(by_name[clean_name(record.name.decode("utf-8", "surrogateescape"))])
            file_hash = new_hash()
            with EntryFile(self, entry) as f:
                while block := f.read(BLOCK_SIZE):
                    file_hash.update(block)
                    yield block
            if entry.digest and hash_digest(file_hash) != entry.digest:
                raise VerificationError(f"digest mismatch for {entry.name!r}")

        return (bytes(piece) for piece in iter_tar(records, content))

    def unpack(self, out: BinaryIO) -> int:
        """Write the layer as a plain tar to ``out``; return the number of bytes written.

        That is the blob's data inflated, without the TOC entry, checked as :meth:`verify` does:
        each part is written only once it is checked (a file once its digests match), so a
        bad blob stops the output before any unchecked byte. When the data has no
        end-of-archive marker (every blob with a TOC inside), one is added. Blobs that keep the
        input's bytes (keep-diff-id, containers/storage zstd:chunked) unpack to the original tar
        byte for byte whenever it ended with its marker, as tars do.
        """
        toc_entries, records = self._toc_and_tar_split()
        coverage = check_blob_structure(self._source, self.footer, self.data_end, toc_entries, records,
                                        threaded=(os.cpu_count() or 1) > 1, out=out)
        if coverage.has_end_marker:
            return coverage.written
        out.write(bytes(2 * BLOCK))
        return coverage.written + 2 * BLOCK

    def extract(self, dest: str | os.PathLike[str]) -> ExtractReport:
        """Extract the layer below ``dest``; see :func:`estargz.extract.extract`."""
        return extract(self, dest)

    # -- lifetime --------------------------------------------------------------------------
    def close(self) -> None:
        if self._owns_source:
            close = getattr(self._source, "close", None)
            if close is not None:
                close()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def _collection_paused() -> Iterator[None]:
    """Automatic garbage collection paused, if it is on: the tree holds no reference cycles, and
    each of its entries would otherwise make the collector traverse all the others again and again
    (a third of the time a TOC of many small entries takes). The objects made meanwhile then join
    the oldest generation at once (unless objects are frozen, which this must not undo), rather
    than through a collection of the youngest that would traverse them all."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        if not gc.get_freeze_count():
            gc.freeze()
            gc.unfreeze()
        gc.enable()


def _batch_size(chunks: Sequence[Chunk], first: int, stop: int) -> int:
    """How many chunks from ``first`` (before ``stop``) to fetch together: while the blob range
    from the lowest to the highest byte of their member runs spans at most ``_MAX_FETCH`` bytes
    (that bounds what one request fetches, gaps included)."""
    low, high = chunks[first].offset, chunks[first].next_offset
    for index in range(first, stop):
        low, high = min(low, chunks[index].offset), max(high, chunks[index].next_offset)
        if high - low > _MAX_FETCH:
            return index - first
    return stop - first


class _Runs:
    """Compressed bytes of the latest requests, up to ``_KEPT_RUNS`` bytes, oldest dropped first."""

    def __init__(self) -> None:
        self._runs: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def find(self, start: int, end: int) -> bytes | None:
        """The bytes of ``[start, end)`` if one kept run holds them all."""
        with self._lock:
            for run_start, data in self._runs.items():
                if run_start <= start and end <= run_start + len(data):
                    return data[start - run_start:end - run_start]
        return None

    def add(self, start: int, data: bytes) -> None:
        if len(data) > _KEPT_RUNS:
            return
        with self._lock:
            self._size += len(data) - len(self._runs.pop(start, b""))
            self._runs[start] = data
            while self._size > _KEPT_RUNS:
                self._size -= len(self._runs.popitem(last=False)[1])


class _TailSource:
    """A source whose last bytes (see ``_TAIL_FRACTION``) are fetched in one request by the first
    read that needs any of them, then served from memory and kept in ``runs`` for chunk reads:
    opening reads the footer and the TOC, which is usually among them. Not when annotations give
    the TOC's position: then the TOC alone is read, in one request. A source with an
    ``opening_tail`` has that many last bytes fetched at once instead."""

    def __init__(self, source: Source, annotations: Mapping[str, str], runs: _Runs) -> None:
        self._source = source
        self._runs = runs
        self.size = source.size
        tail: int | None = getattr(source, "opening_tail", None)
        if tail is None:
            tail = min(_MAX_TAIL, max(MAX_FOOTER_SIZE, self.size // _TAIL_FRACTION))
        if any(key in annotations for key in (MANIFEST_POSITION_ANNOTATION, LEGACY_MANIFEST_POSITION_ANNOTATION)):
            tail = 0
        self._start = max(0, self.size - tail)
        self._tail: bytes | None = None

    def read_at(self, offset: int, length: int) -> bytes:
        end = offset + length
        if end <= self._start or offset < 0 or length < 0 or end > self.size:
            return self._source.read_at(offset, length)
        if self._tail is None:
            self._tail = self._source.read_at(self._start, self.size - self._start)
            self._runs.add(self._start, self._tail)
        head = self._source.read_at(offset, self._start - offset) if offset < self._start else b""
        return head + self._tail[max(offset, self._start) - self._start:end - self._start]


def _add_chunk(file: Entry, toc_entry: TOCEntry, chunk_offset: int) -> Chunk:
    """Add to ``file`` the chunk at ``chunk_offset`` that a TOC entry (the file's own, or a chunk
    entry after it) gives."""
    chunk = Chunk(toc_entry.offset, toc_entry.inner_offset, chunk_offset, toc_entry.chunk_size, toc_entry.chunk_digest)
    if not isinstance(file.chunks, list):
        file.chunks = []
    file.chunks.append(chunk)
    return chunk


def _add_child(directory: Entry, name: str, child: Entry) -> None:
    if directory.children is _NO_CHILDREN:
        directory.children = {}
    directory.children[name] = child  # type: ignore[index]


def _pieces(source: Source, start: int, end: int) -> Iterator[bytes]:
    while start < end:
        length = min(BLOCK_SIZE, end - start)
        yield source.read_at(start, length)
        start += length


def _position(annotations: Mapping[str, str], keys: tuple[str, ...], fields: int) -> tuple[int, ...] | None:
    for key in keys:
        if key in annotations:
            parts = annotations[key].split(":")
            if len(parts) != fields or not all(p.isdigit() for p in parts):
                raise FormatError(f"annotation {key} is not {fields} numbers: {annotations[key]!r}")
            return tuple(int(p) for p in parts)
    return None


def _footer_from_annotations(annotations: Mapping[str, str], blob_size: int) -> Footer | None:
    """Where the TOC (and tar-split) lie according to zstd:chunked layer annotations, if given."""
    if TOC_DIGEST_ANNOTATION in annotations and MANIFEST_CHECKSUM_ANNOTATION in annotations:
        raise FormatError("both zstd:chunked and eStargz TOC annotations found")
    position = _position(annotations, (MANIFEST_POSITION_ANNOTATION, LEGACY_MANIFEST_POSITION_ANNOTATION), 4)
    if position is None:
        return None
    offset, length, uncompressed, manifest_type = position
    if manifest_type != 1:
        raise FormatError(f"manifest-position annotation has type {manifest_type}, expected 1")
    tar_split = _position(annotations, (TARSPLIT_POSITION_ANNOTATION,), 3)
    for start, size in [(offset, length), *([tar_split[:2]] if tar_split else [])]:
        if start < SKIPPABLE_HEADER_SIZE or start + size > blob_size:
            raise FormatError(f"annotation points at [{start}, {start + size}) outside the blob")
    return Footer("annotations", 0, offset, length, uncompressed, tar_split)  # type: ignore[arg-type]


def _check_annotated_digests(annotations: Mapping[str, str], manifest_checksum: str | None,
                             toc_json: bytes) -> None:
    for key in (MANIFEST_CHECKSUM_ANNOTATION, LEGACY_MANIFEST_CHECKSUM_ANNOTATION):
        if key in annotations and annotations[key] != manifest_checksum:
            raise VerificationError(f"compressed TOC digest is {manifest_checksum}, annotation {key} says "
                                    f"{annotations[key]}")
    expected = annotations.get(TOC_DIGEST_ANNOTATION)
    if expected is not None and expected != (toc_json_digest := sha256_digest(toc_json)):
        raise VerificationError(f"TOC digest is {toc_json_digest}, annotation {TOC_DIGEST_ANNOTATION} "
                                f"says {expected}")


def _checked_tar_split(records: Iterable[TarSplitEntry], toc: Iterator[CSTOCEntry]) -> Iterator[TarSplitEntry]:
    """``records``, each file record checked against the TOC entry at the same place, and so is
    the tar header in the segment before it (after the previous entry's padding)."""
    previous: TarSplitEntry | None = None
    previous_size = files = 0
    for record in records:
        if record.type == FILE_TYPE:
            entry = next(toc, None)
            if entry is None:
                raise VerificationError(f"tar-split has more entries than the TOC's {files}")
            previous_size = _check_tar_split_header(record, previous, previous_size, entry)
            files += 1
        previous = record
        yield record
    if next(toc, None) is not None:
        raise VerificationError(f"tar-split has {files} entries, the TOC more")


def _check_tar_split_header(record: TarSplitEntry, segment: TarSplitEntry | None, previous_size: int,
                            entry: CSTOCEntry) -> int:
    """Check a file record and the header in the ``segment`` before it against its TOC entry;
    return the entry's size (the padding that starts the next segment)."""
    where = f"entry {entry.name!r}"
    if record.name != entry.name.encode("utf-8", "surrogateescape") or record.size != entry.size:
        raise VerificationError(f"tar-split and TOC disagree on {where}")
    if segment is None or segment.type != SEGMENT_TYPE:
        raise VerificationError(f"tar-split has no header for {where}")
    headers = list(iter_entries(io.BytesIO(segment.payload[padding(previous_size):])))  # type: ignore[index]
    if not headers:
        raise VerificationError(f"tar-split has no header for {where}")
    header = headers[0]
    expected = (entry.type, entry.name, entry.link_name, entry.mode, entry.size if entry.type == "reg" else 0,
                entry.uid, entry.gid, entry.dev_major, entry.dev_minor, entry.xattrs, entry.modtime or header.mtime)
    found = (header.kind, header.name, header.linkname if header.kind in ("symlink", "hardlink") else "",
             header.mode, header.size, header.uid, header.gid, header.devmajor, header.devminor,
             header.xattrs, header.mtime)
    if expected != found:
        raise VerificationError(f"the TOC's metadata of {where} differs from its tar header")
    return header.size


def _read_zstd_toc(compressed: bytes, uncompressed_length: int | None) -> bytes:
    """The TOC JSON from its zstd frame, checked against the length the footer gives."""
    if uncompressed_length is not None and uncompressed_length > MAX_TOC_SIZE:
        raise LimitError(f"TOC of {uncompressed_length} bytes exceeds the {MAX_TOC_SIZE}-byte limit")
    data = b"".join(inflate_frames([compressed], MAX_TOC_SIZE + 1))
    if len(data) > MAX_TOC_SIZE:
        raise LimitError(f"TOC exceeds the {MAX_TOC_SIZE}-byte limit")
    if uncompressed_length is not None and len(data) != uncompressed_length:
        raise FormatError(f"TOC holds {len(data)} bytes, the footer says {uncompressed_length}")
    return data


def _read_toc(source: Source, start: int, end: int) -> bytes:
    """The TOC JSON from the gzip member holding the ``stargz.index.json`` tar entry."""
    inflated = _InflatedStream(_inflate_gzip(_pieces(source, start, end)))
    header = inflated.read(BLOCK)
    if len(header) < BLOCK:
        raise FormatError("TOC member is shorter than a tar header")
    name, toc_size = toc_header_fields(header)
    if name != TOC_NAME:
        raise FormatError(f"TOC tar entry is named {name!r}, expected {TOC_NAME!r}")
    if toc_size > MAX_TOC_SIZE:
        raise LimitError(f"TOC of {toc_size} bytes exceeds the {MAX_TOC_SIZE}-byte limit")
    data = inflated.read(toc_size)
    if len(data) < toc_size:
        raise FormatError("TOC tar entry is truncated")
    # What follows is tar padding and the end-of-archive marker: zeros, then the member's end,
    # where its CRC is checked.
    trailer = inflated.read(_MAX_TOC_TRAILER + 1)
    if len(trailer) > _MAX_TOC_TRAILER or trailer.count(0) != len(trailer):
        raise FormatError("unexpected data after the TOC in its gzip member")
    return data


def _inflate_gzip(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """Consecutive gzip members inflated by the standard zlib (each member's CRC-32 and size
    checked at its end), in blocks of at most ``BLOCK_SIZE``; FormatError on corrupt data or
    input ending inside a member.

    The TOC is read with it, not ISA-L: on CPUs with AVX-512, ISA-L's inflation leaves the vector
    state such that the Python work on the TOC that follows runs about a fifth slower."""
    inflater = None
    for piece in pieces:
        while True:
            if inflater is None:
                if not piece:
                    break
                inflater = zlib.decompressobj(wbits=31)
            try:
                out = inflater.decompress(piece, BLOCK_SIZE)
            except zlib.error as exc:
                raise FormatError(f"corrupt gzip data: {exc}") from None
            if out:
                yield out
            if inflater.eof:
                piece, inflater = inflater.unused_data, None
                continue
            piece = inflater.unconsumed_tail
            if not piece and len(out) < BLOCK_SIZE:
                break
    if inflater is not None:
        raise FormatError("gzip data ends in the middle of a member")


class _InflatedStream:
    """Reads exact amounts from a generator of inflated blocks, holding at most one block extra."""

    def __init__(self, blocks: Iterator[bytes]) -> None:
        self._blocks = blocks
        self._buffer = b""

    def read(self, size: int) -> bytes:
        parts, have = [self._buffer], len(self._buffer)
        while have < size and (block := next(self._blocks, None)) is not None:
            parts.append(block)
            have += len(block)
        data = b"".join(parts)
        self._buffer = data[size:]
        return data[:size]

    def skip(self, size: int) -> None:
        while size > 0 and (skipped := len(self.read(min(size, BLOCK_SIZE)))):
            size -= skipped


class _HeldChunk:
    """A chunk's checked bytes: in memory, or in a temporary file when large."""

    def __init__(self, pieces: Iterator[bytes], size: int) -> None:
        self._file: BinaryIO | None = None
        self._data = b""
        if size > _SPOOL_CHUNK_SIZE:
            self._file = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the cache)
            try:
                for piece in pieces:
                    self._file.write(piece)
            except BaseException:
                self._file.close()
                raise
        else:
            self._data = b"".join(pieces)

    def read(self, start: int, size: int) -> bytes:
        if self._file is None:
            return self._data[start:start + size]
        self._file.seek(start)
        return self._file.read(size)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class EntryFile(RangeFile):
    """Random access to one regular file; each read inflates only the chunks it touches.

    No byte is returned before it is checked: each chunk against its chunk digest, and a file
    whose TOC entry lacks chunk digests against its file digest first (streaming, once).
    """

    def __init__(self, reader: Reader, entry: Entry) -> None:
        super().__init__(entry.size)
        self._reader = reader
        self.entry = entry
        self._cached: tuple[Chunk, _HeldChunk] | None = None
        self._prefetched: dict[int, bytes] = {}
        """Compressed bytes of chunks fetched with an earlier one, by index, until inflated."""
        self._read_end = 0

    def _index_at(self, offset: int) -> int:
        chunks = self.entry.chunks
        lo, hi = 0, len(chunks) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if chunks[mid].chunk_offset <= offset:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _held(self, index: int, fetch_end: int) -> _HeldChunk:
        """The checked bytes of chunk ``index``; when they are not fetched yet, fetch them with
        those of the following chunks that start before file offset ``fetch_end``."""
        chunk = self.entry.chunks[index]
        if self._cached is not None and self._cached[0] is chunk:
            return self._cached[1]
        if not all(c.chunk_digest for c in self.entry.chunks):
            self._reader._derive_chunk_digests(self.entry)
        if index not in self._prefetched:
            self._prefetch(index, fetch_end)
        compressed = self._prefetched.pop(index, None)
        held = _HeldChunk(self._reader._verified_chunk(chunk, self.entry.name, compressed), chunk.chunk_size)
        self._drop_cache()
        self._cached = (chunk, held)
        return held

    def _prefetch(self, index: int, fetch_end: int) -> None:
        chunks = self.entry.chunks
        stop = bisect.bisect_left(chunks, fetch_end, lo=index + 1, key=lambda c: c.chunk_offset)
        count = _batch_size(chunks, index, stop)
        batch = chunks[index:index + count]
        self._prefetched = dict(zip(range(index, index + count), self._reader._fetch(batch) if batch else []))

    def _drop_cache(self) -> None:
        if self._cached is not None:
            self._cached[1].close()
            self._cached = None

    def pread(self, size: int, offset: int) -> bytes:
        """Up to ``size`` bytes at ``offset``, without moving the file position."""
        end = min(self.entry.size, offset + size)
        fetch_end = end + _READ_AHEAD if offset == self._read_end else end
        parts = []
        while offset < end:
            index = self._index_at(offset)
            chunk = self.entry.chunks[index]
            piece = self._held(index, fetch_end).read(offset - chunk.chunk_offset, end - offset)
            if not piece:
                raise FormatError(f"chunks of {self.entry.name!r} do not cover offset {offset}")
            parts.append(piece)
            offset += len(piece)
        self._read_end = offset
        return b"".join(parts)

    def close(self) -> None:
        self._drop_cache()
        self._prefetched = {}
        super().close()


def open_blob(src: SourceLike, *, toc_digest: str | None = None, toc: SourceLike | None = None,
              annotations: Mapping[str, str] | None = None) -> Reader:
    """Open a blob (eStargz or zstd:chunked) from a path, bytes, a seekable file or a ranged source.

    With ``toc_digest`` the TOC is checked against it before anything else is read. ``toc`` is
    the TOC blob of a blob written with an external TOC (same kinds of source). ``annotations``
    are the layer descriptor's: zstd:chunked positions locate the TOC instead of the footer, and
    the TOC digests they carry are checked.
    """
    with ExitStack() as stack:
        toc_source = None
        if toc is not None:
            toc_source = as_source(toc)
            if _owned(toc):  # read once while opening
                stack.callback(getattr(toc_source, "close", lambda: None))
        source = as_source(src)
        try:
            return Reader(source, toc_digest=toc_digest, toc=toc_source, annotations=annotations,
                          owns_source=_owned(src))
        except BaseException:
            if _owned(src):
                getattr(source, "close", lambda: None)()
            raise


def _owned(src: SourceLike) -> bool:
    """Whether opening ``src`` creates a source that the reader must close."""
    return isinstance(src, (str, bytes, bytearray, memoryview)) or hasattr(src, "__fspath__")
