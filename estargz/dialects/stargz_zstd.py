"""stargz-snapshotter's zstd:chunked (``nerdctl image convert --zstdchunked``): the eStargz walk
and TOC in zstd frames; the TOC in a skippable frame, then a 40-byte footer."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from contextlib import ExitStack

from ..annotations import (
    LEGACY_MANIFEST_CHECKSUM_ANNOTATION,
    LEGACY_MANIFEST_POSITION_ANNOTATION,
    TOC_DIGEST_ANNOTATION,
    UNCOMPRESSED_SIZE_ANNOTATION,
)
from ..footer import skippable_frame, zstd_chunked_footer_40
from ..formats import FORMAT_ZSTD_CHUNKED_STARGZ, ZSTD_LAYER_MEDIA_TYPE
from ..framing import DEFAULT_ZSTD_LEVEL, ZstdCompressor
from ..pipeline import OrderedSink, Pipeline
from .base import DecodedTOC, LayerOptions, Tail
from .stargz import StargzWriter, read_stargz_toc, toc_digest

__all__ = ["STARGZ_ZSTD", "ESTARGZ_ONLY", "TOC_LEVEL"]

#: Why external TOC and keep-diff-id are refused by the zstd dialects.
ESTARGZ_ONLY = "external TOC and keep-diff-id exist only for the gzip eStargz format"
#: zstd's fastest level packs TOC JSON (names and hex digests) denser than the middle levels, whose
#: parameters suit other data: the TOC frame is the smaller of this level's and the chunks' level's.
#: (The densest, 19, is 13% denser still on a large TOC, but takes as long as the whole conversion.)
TOC_LEVEL = 1
_TOC_CODEC = ZstdCompressor(TOC_LEVEL)


class _StargzZstdWriter(StargzWriter):
    def tail(self, pipeline: Pipeline, sink: OrderedSink) -> Tail:
        toc_json = self.finish_toc()
        digest = toc_digest(toc_json)
        toc_frame = min(_TOC_CODEC.compress(toc_json), pipeline.compress_now(toc_json), key=len)  # type: ignore[arg-type]
        toc_offset = sink.offset + 8
        sink.write_raw(skippable_frame(toc_frame))
        sink.write_raw(zstd_chunked_footer_40(toc_offset, len(toc_frame), len(toc_json)))
        return Tail(digest, {
            TOC_DIGEST_ANNOTATION: digest,
            LEGACY_MANIFEST_CHECKSUM_ANNOTATION: "sha256:" + hashlib.sha256(toc_frame).hexdigest(),
            LEGACY_MANIFEST_POSITION_ANNOTATION: f"{toc_offset}:{len(toc_frame)}:{len(toc_json)}:1",
            UNCOMPRESSED_SIZE_ANNOTATION: str(sink.uncompressed_size),
        })


class StargzZstd:
    """The stargz-snapshotter zstd:chunked dialect."""

    name = FORMAT_ZSTD_CHUNKED_STARGZ
    compression = "zstd"
    media_type = ZSTD_LAYER_MEDIA_TYPE
    default_level = DEFAULT_ZSTD_LEVEL
    accepts = frozenset({"chunk_size", "min_chunk_size", "prioritized_files"})
    identifying_annotations: tuple[str, ...] = (TOC_DIGEST_ANNOTATION,)
    footer_kinds: frozenset[str] = frozenset()  # its 40-byte footer is also containers/storage's before 1.47

    def codec(self, level: int) -> ZstdCompressor:
        return ZstdCompressor(level)

    def check(self, options: LayerOptions) -> None:
        if options.given() - self.accepts:
            raise ValueError(ESTARGZ_ONLY)

    def refusal(self, option: str) -> str:
        return "applies to --format estargz only"

    def lossless(self, options: LayerOptions) -> bool:
        return False

    def writer(self, options: LayerOptions, stack: ExitStack) -> _StargzZstdWriter:
        return _StargzZstdWriter(options)

    def inflate(self, pieces: Iterable[bytes], max_output: int | None = None) -> Iterator[bytes]:
        return ZstdCompressor.inflate(pieces, max_output)

    def read_toc(self, toc_json: bytes) -> DecodedTOC:
        return read_stargz_toc(toc_json)

    def toc_digest(self, toc_json: bytes, compressed_toc: bytes | None) -> str:
        return toc_digest(toc_json)


STARGZ_ZSTD = StargzZstd()
