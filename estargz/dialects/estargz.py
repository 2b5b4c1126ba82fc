"""eStargz: gzip members, the TOC as the tar entry ``stargz.index.json`` and a 51-byte footer; or,
with an external TOC, a 46-byte footer and the TOC in a blob of its own (keep-diff-id: the input
tar kept byte for byte). Reading also accepts the legacy 47-byte footer."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import ExitStack

from ..annotations import TOC_DIGEST_ANNOTATION, UNCOMPRESSED_SIZE_ANNOTATION
from ..footer import ESTARGZ as ESTARGZ_FOOTER
from ..footer import ESTARGZ_EXTERNAL_TOC, ESTARGZ_LEGACY, external_toc_footer, gzip_footer
from ..formats import FORMAT_ESTARGZ, GZIP_LAYER_MEDIA_TYPE
from ..framing import DEFAULT_GZIP_LEVEL, GzipCompressor
from ..pipeline import OrderedSink, Pipeline
from .base import OPTIONAL_OPTIONS, DecodedTOC, LayerOptions, Tail
from .stargz import StargzWriter, read_stargz_toc, toc_digest, toc_tar

__all__ = ["ESTARGZ", "TOC_ENGINE"]

#: The TOC's engine whatever the chunks' level: libdeflate's level 9, denser than the Go reference's
#: level 9 at a small fraction of a conversion's time (the highest, 12, is dense by 2% more but as
#: slow as half a conversion, and a TOC member cannot be split: readers inflate it as one member).
TOC_ENGINE = ("libdeflate", 9)


class _EStargzWriter(StargzWriter):
    def __init__(self, options: LayerOptions) -> None:
        super().__init__(options)
        self._toc_codec = GzipCompressor(options.level, engine=TOC_ENGINE)

    def tail(self, pipeline: Pipeline, sink: OrderedSink) -> Tail:
        toc_json = self.finish_toc()
        digest = toc_digest(toc_json)
        toc_json.release()
        tar = toc_tar(self.buffer)
        external_toc = None
        if self.options.external_toc:
            external_toc = self._toc_codec.compress(tar)  # type: ignore[arg-type]
            sink.write_raw(external_toc_footer())
        else:
            toc_offset = sink.offset
            sink.write_unchunked(tar, self._toc_codec.compress(tar))  # type: ignore[arg-type]
            sink.write_raw(gzip_footer(toc_offset))
        annotations = {TOC_DIGEST_ANNOTATION: digest, UNCOMPRESSED_SIZE_ANNOTATION: str(sink.uncompressed_size)}
        return Tail(digest, annotations, external_toc)


class EStargz:
    """The eStargz dialect."""

    name = FORMAT_ESTARGZ
    compression = "gzip"
    media_type = GZIP_LAYER_MEDIA_TYPE
    default_level = DEFAULT_GZIP_LEVEL
    accepts = OPTIONAL_OPTIONS
    identifying_annotations: tuple[str, ...] = (TOC_DIGEST_ANNOTATION,)
    footer_kinds = frozenset({ESTARGZ_FOOTER, ESTARGZ_LEGACY, ESTARGZ_EXTERNAL_TOC})

    def codec(self, level: int) -> GzipCompressor:
        return GzipCompressor(level)

    def check(self, options: LayerOptions) -> None:
        """Every option applies."""

    def refusal(self, option: str) -> str:
        return f"does not apply to --format {self.name}"

    def lossless(self, options: LayerOptions) -> bool:
        return options.keep_diff_id

    def writer(self, options: LayerOptions, stack: ExitStack) -> _EStargzWriter:
        return _EStargzWriter(options)

    def inflate(self, pieces: Iterable[bytes], max_output: int | None = None) -> Iterator[bytes]:
        return GzipCompressor.inflate(pieces, max_output)

    def read_toc(self, toc_json: bytes) -> DecodedTOC:
        return read_stargz_toc(toc_json)

    def toc_digest(self, toc_json: bytes, compressed_toc: bytes | None) -> str:
        return toc_digest(toc_json)


ESTARGZ = EStargz()
