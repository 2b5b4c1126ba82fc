"""The Dialect protocol and what a dialect is given and gives back when it writes a layer."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from ..chunking import DEFAULT_CHUNK_SIZE, MemberGrouping
from ..cstoc import CSTOCEntry
from ..framing import Compressor
from ..pipeline import OrderedSink, Pipeline
from ..tarstream import TarEntry, iter_entries
from ..toc import TOCEntry

__all__ = [
    "OPTIONAL_OPTIONS", "LayerOptions", "options_for", "TarInput", "Tail", "LayerWriter", "DecodedTOC", "Dialect",
]

#: The conversion options a dialect may or may not accept (:attr:`Dialect.accepts`).
OPTIONAL_OPTIONS = frozenset({"chunk_size", "min_chunk_size", "prioritized_files", "external_toc", "keep_diff_id"})


@dataclass(frozen=True)
class LayerOptions:
    """The options of one layer conversion; the rules that hold whatever the format."""

    chunk_size: int
    level: int
    min_chunk_size: int = 0
    prioritized_files: tuple[str, ...] = ()
    allow_missing_prioritized: bool = False
    external_toc: bool = False
    keep_diff_id: bool = False

    def __post_init__(self) -> None:
        if self.chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        if self.min_chunk_size < 0:
            raise ValueError("min_chunk_size must not be negative")
        if self.keep_diff_id and not self.external_toc:
            raise ValueError("keep_diff_id needs external_toc: an internal TOC would change the diffID")
        if self.keep_diff_id and self.prioritized_files:
            raise ValueError("keep_diff_id keeps the input order: it cannot prioritize files")

    def given(self) -> frozenset[str]:
        """The optional options set to something other than their default (chunk_size always has one)."""
        return frozenset(name for name in OPTIONAL_OPTIONS - {"chunk_size"} if getattr(self, name))

    def grouping(self) -> MemberGrouping | None:
        """The min-chunk-size grouping of members, if asked for."""
        return MemberGrouping(self.min_chunk_size) if self.min_chunk_size else None


@dataclass(frozen=True)
class TarInput:
    """The seekable plain input tar, between ``start`` and ``end``."""

    file: BinaryIO
    start: int
    end: int
    headers: BinaryIO | None = None
    """The same tar without read-ahead, for the passes over the headers alone (default: ``file``)."""

    def entries(self) -> Iterator[TarEntry]:
        """The entries, read afresh from the headers on each call (never all held at once)."""
        return iter_entries(self.file if self.headers is None else self.headers, self.start)


@dataclass(frozen=True)
class Tail:
    """What the end of the blob gives back: the TOC digest, the annotations, an external TOC blob."""

    toc_digest: str
    annotations: dict[str, str]
    external_toc: bytes | None = field(default=None, repr=False)


class LayerWriter(Protocol):
    """One layer being written in a dialect: the walk, the TOC records, the tail."""

    grouping: MemberGrouping | None
    """How small chunks share a member (min-chunk-size), or None: a member per chunk."""
    metadata_apart: bool
    """Whether headers and padding go in members of their own, never with a chunk."""

    def on_record(self, record: Any) -> None:
        """Take a complete TOC record, on the sink thread, in TOC order."""
        ...

    def walk(self, pipeline: Pipeline, tar: TarInput) -> list[str]:
        """Turn the entries into metadata bytes and chunks; return the prioritized files not found."""
        ...

    def tail(self, pipeline: Pipeline, sink: OrderedSink) -> Tail:
        """Write the TOC and the footer after the last member (all records taken)."""
        ...


@dataclass(frozen=True)
class DecodedTOC:
    """A TOC read into the reader's entry model (eStargz :class:`~estargz.toc.TOCEntry` records)."""

    read_entries: Callable[[type[TOCEntry]], Generator[TOCEntry, None, tuple[int, str]]]
    """The entries, decoded anew one at a time on each call as instances of the class it is given
    (:class:`~estargz.toc.TOCEntry` or a subclass); only the entry being read is held. The
    generator returns the TOC version and the tar-split digest (containers/storage: sha256 of the
    compressed tar-split, when the TOC names it; else "") and raises a FormatError on a bad TOC."""
    read_native_entries: Callable[[], Iterator[CSTOCEntry]] | None = None
    """containers/storage: the entries as the TOC spells them, decoded anew one at a time on each
    call (the tar-split is checked against them)."""


class Dialect(Protocol):
    """One layer format: its names, its codec, its option rules, how it writes and reads a layer."""

    name: str
    """The format name (``estargz.FORMAT_*``)."""
    media_type: str
    compression: str
    """``gzip`` or ``zstd``: the compression of its members, which chooses the level flags."""
    default_level: int
    accepts: frozenset[str]
    """The :data:`OPTIONAL_OPTIONS` this format accepts: the only place those rules live."""
    identifying_annotations: tuple[str, ...]
    """Layer annotations, any of which marks a layer as being in this format."""
    footer_kinds: frozenset[str]
    """Footer kinds (``estargz.footer``) only this format writes."""

    def codec(self, level: int) -> Compressor:
        """The compressor of one chunk at ``level``; its ``inflate`` reads a run of them back."""
        ...

    def check(self, options: LayerOptions) -> None:
        """Refuse (ValueError) options this format does not accept."""
        ...

    def refusal(self, option: str) -> str:
        """Why ``option`` does not apply, as the end of a sentence starting with its flag."""
        ...

    def lossless(self, options: LayerOptions) -> bool:
        """Whether the blob inflates to the input tar, so the diffID does not change."""
        ...

    def writer(self, options: LayerOptions, stack: ExitStack) -> LayerWriter:
        """A writer for one layer; temporary files it needs are closed by ``stack``."""
        ...

    def inflate(self, pieces: Iterable[bytes], max_output: int | None = None) -> Iterator[bytes]:
        """Inflate a run of this format's members or frames (its codec's ``inflate``)."""
        ...

    def read_toc(self, toc_json: bytes) -> DecodedTOC:
        """The TOC JSON in the reader's entry model; its entries are decoded and validated as read."""
        ...

    def toc_digest(self, toc_json: bytes, compressed_toc: bytes | None) -> str:
        """The digest that names the TOC in this format's annotations."""
        ...


def options_for(dialect: Dialect, *, chunk_size: int = DEFAULT_CHUNK_SIZE, compression_level: int | None = None,
                min_chunk_size: int = 0, prioritized_files: Sequence[str] = (),
                allow_missing_prioritized: bool = False, external_toc: bool = False,
                keep_diff_id: bool = False) -> LayerOptions:
    """The options of :func:`estargz.convert`'s keywords in ``dialect``, checked against its rules."""
    options = LayerOptions(
        chunk_size=chunk_size,
        level=dialect.default_level if compression_level is None else compression_level,
        min_chunk_size=min_chunk_size,
        prioritized_files=tuple(prioritized_files),
        allow_missing_prioritized=allow_missing_prioritized,
        external_toc=external_toc,
        keep_diff_id=keep_diff_id,
    )
    dialect.check(options)
    return options
