"""Convert a layer tar into a lazy-pulling blob: the input made a seekable plain tar, then the
format's dialect (:mod:`estargz.dialects`) walks its entries through the format-free
:mod:`estargz.pipeline` and writes the tail (TOC, footer, annotations).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import BinaryIO, Union, cast

import zstandard
from isal import igzip

from .annotations import LAYER_DIGEST_ANNOTATION
from .chunking import DEFAULT_CHUNK_SIZE
from .dialects import Dialect, LayerOptions, TarInput, options_for
from .dialects import dialect as dialect_named
from .errors import FormatError
from .formats import FORMAT_ESTARGZ, GZIP_LAYER_MEDIA_TYPE
from .output import atomic_output
from .pipeline import OrderedSink, Pipeline, Progress
from .tarstream import ReadAhead

__all__ = ["BuildResult", "convert", "DEFAULT_CHUNK_SIZE", "read_workload_record"]

_COPY_BLOCK = 1 << 20

PathOrStream = Union[str, "os.PathLike[str]", BinaryIO]


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
            stream = cast(BinaryIO, stack.enter_context(igzip.IGzipFile(fileobj=stream, mode="rb")))  # type: ignore[no-untyped-call]
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


def _convert_into(src: PathOrStream, out: BinaryIO, dialect: Dialect, options: LayerOptions, threads: int,
                  progress: Progress | None) -> BuildResult:
    compressor = dialect.codec(options.level)
    with ExitStack() as stack:
        plain = _plain_tar(src, stack)
        start = plain.tell()
        tar = cast(BinaryIO, ReadAhead(plain))
        source = TarInput(tar, start, tar.seek(0, os.SEEK_END), headers=plain)
        layer = dialect.writer(options, stack)
        sink = OrderedSink(out, 2 * threads + 1, progress, source.end - start, layer.on_record)
        pool = stack.enter_context(ThreadPoolExecutor(threads, thread_name_prefix="estargz"))
        sink.start()
        pipeline = Pipeline(tar, sink, compressor, pool, grouping=layer.grouping,
                            metadata_apart=layer.metadata_apart)
        try:
            missing = layer.walk(pipeline, source)
            pipeline.finish()
        finally:
            sink.close()
        for record in pipeline.completed:  # records after the last member
            layer.on_record(record)
        tail = layer.tail(pipeline, sink)
        out.flush()
    return BuildResult(
        format=dialect.name,
        toc_digest=tail.toc_digest,
        diff_id="sha256:" + sink.diff_hash.hexdigest(),
        uncompressed_size=sink.uncompressed_size,
        blob_digest="sha256:" + sink.blob_hash.hexdigest(),
        blob_size=sink.offset,
        media_type=dialect.media_type,
        annotations=tail.annotations,
        missing_prioritized=tuple(missing),
        external_toc=tail.external_toc,
    )


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
    chosen = dialect_named(format)
    if threads is not None and threads < 1:
        raise ValueError("threads must be at least 1")
    options = options_for(chosen, chunk_size=chunk_size, compression_level=compression_level,
                          min_chunk_size=min_chunk_size, prioritized_files=prioritized_files,
                          allow_missing_prioritized=allow_missing_prioritized, external_toc=external_toc,
                          keep_diff_id=keep_diff_id)
    workers = os.cpu_count() or 1 if threads is None else threads
    if not isinstance(dst, (str, os.PathLike)):
        return _convert_into(src, dst, chosen, options, workers, progress)
    with atomic_output(dst, inputs=(src,)) as out:
        return _convert_into(src, out, chosen, options, workers, progress)


def read_workload_record(lines: Sequence[str] | BinaryIO | str, layer_index: int | None = None) -> list[str]:
    """Paths from a workload record (``ctr-remote optimize --record-out`` JSON lines).

    Each line is ``{"path": …, "manifestDigest": …, "layerIndex": N}``. Paths are kept in order
    and de-duplicated (first occurrence kept); with ``layer_index`` only that layer's paths.
    """
    if isinstance(lines, str):
        lines = lines.splitlines()
    elif hasattr(lines, "read"):
        lines = lines.read().decode().splitlines()
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

