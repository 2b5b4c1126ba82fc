"""The dialects: one per format, the only place that knows which options fit which format; and the
conversion's threads, which end with it whatever happens."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import tarfile
import threading

import pytest
import zstandard

import estargz
from estargz.dialects import DIALECTS, OPTIONAL_OPTIONS, LayerOptions, dialect
from estargz.errors import UnsupportedInputError


def _tar(*files: tuple[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _options(**given: object) -> LayerOptions:
    return LayerOptions(**{"chunk_size": 1 << 20, "level": 3, **given})


_SET = {"min_chunk_size": 1000, "prioritized_files": ("a",), "external_toc": True}


def test_every_format_has_one_dialect():
    assert sorted(DIALECTS) == sorted(estargz.FORMATS)
    assert {d.name for d in DIALECTS.values()} == set(estargz.FORMATS)
    with pytest.raises(ValueError, match="unknown format"):
        dialect("zstd")


@pytest.mark.parametrize("name", estargz.FORMATS)
@pytest.mark.parametrize("option", sorted(_SET))
def test_the_dialect_refuses_exactly_the_options_it_does_not_accept(name, option):
    chosen = dialect(name)
    options = _options(**{option: _SET[option]})
    if option in chosen.accepts:
        chosen.check(options)
        return
    with pytest.raises(ValueError):
        chosen.check(options)
    with pytest.raises(ValueError):
        estargz.convert(io.BytesIO(_tar(("a", b"x"))), io.BytesIO(), format=name, **{option: _SET[option]})


def test_accepted_options_are_optional_options():
    for chosen in DIALECTS.values():
        assert chosen.accepts <= OPTIONAL_OPTIONS
        assert set(chosen.identifying_annotations)


@pytest.mark.parametrize("name", estargz.FORMATS)
def test_media_type_and_default_level_are_what_convert_uses(name):
    chosen = dialect(name)
    layer = _tar(("a", b"hello " * 1000))
    default = estargz.convert(io.BytesIO(layer), io.BytesIO(), format=name)
    explicit = estargz.convert(io.BytesIO(layer), io.BytesIO(), format=name, compression_level=chosen.default_level)
    assert default.media_type == chosen.media_type
    assert default.blob_digest == explicit.blob_digest
    assert any(key in default.annotations for key in chosen.identifying_annotations)


@pytest.mark.parametrize("name", estargz.FORMATS)
def test_lossless_means_the_diff_id_is_kept(name):
    layer = _tar(("a", b"hello"), ("b", b"world" * 3000))
    options = {"external_toc": True, "keep_diff_id": True} if "keep_diff_id" in dialect(name).accepts else {}
    result = estargz.convert(io.BytesIO(layer), io.BytesIO(), format=name, **options)
    kept = result.diff_id == "sha256:" + hashlib.sha256(layer).hexdigest()
    assert kept == dialect(name).lossless(_options(**options))


def _chunker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("estargz-chunker")]


def test_the_chunking_thread_ends_when_the_conversion_fails(tmp_path):
    files = [(f"f{i}", bytes([i]) * 70000) for i in range(40)] + [("caf\udce9.txt", b"latin-1")]
    path = tmp_path / "layer.tar"
    path.write_bytes(_tar(*files))
    before = len(_chunker_threads())
    with pytest.raises(UnsupportedInputError, match="not valid UTF-8"):  # its traceback holds the walk's frames
        estargz.convert(path, io.BytesIO(), format=estargz.FORMAT_ZSTD_CHUNKED, threads=1)
    assert len(_chunker_threads()) == before


def _zstd_blob_with_40_byte_footer(data: bytes, toc_json: bytes) -> bytes:
    """``data`` then the TOC in a skippable frame and the 40-byte footer (as containers/storage
    before 1.47 and stargz-snapshotter write it)."""
    frame = zstandard.ZstdCompressor(level=3, write_checksum=True).compress(toc_json)
    toc_offset = len(data) + 8
    footer = struct.pack("<4Q", toc_offset, len(frame), len(toc_json), 1) + b"GnUlInUx"
    return b"".join(_SKIPPABLE + struct.pack("<I", len(p)) + p for p in (frame, footer)).join((data, b""))


_SKIPPABLE = b"\x50\x2a\x4d\x18"


@pytest.mark.parametrize("indent", [None, 2])
def test_a_containers_storage_toc_is_recognised_by_its_schema_not_its_spelling(indent):
    files = [("a.txt", b"hello\n"), ("big.bin", bytes(range(256)) * 1000)]
    blob = io.BytesIO()
    estargz.convert(io.BytesIO(_tar(*files)), blob, format=estargz.FORMAT_ZSTD_CHUNKED)
    with estargz.open(blob.getvalue()) as original:
        data_end = original.data_end
        offset, length = original.footer.toc_offset, original.footer.toc_length
    toc = json.loads(zstandard.ZstdDecompressor().decompress(blob.getvalue()[offset:offset + length]))
    del toc["tarSplitDigest"]
    toc = {"entries": toc["entries"], "version": toc["version"]}  # another key order
    toc_json = json.dumps(toc, indent=indent).encode()
    rebuilt = _zstd_blob_with_40_byte_footer(blob.getvalue()[:data_end], toc_json)
    with estargz.open(rebuilt) as reader:
        assert reader.format == estargz.FORMAT_ZSTD_CHUNKED
        assert reader.toc_digest == "sha256:" + hashlib.sha256(
            rebuilt[reader.footer.toc_offset:reader.footer.toc_offset + reader.footer.toc_length]).hexdigest()
        assert {name: reader.read(name) for name, _ in files} == dict(files)


def test_a_stargz_zstd_toc_stays_stargz_under_a_40_byte_footer():
    files = [("a.txt", b"hello\n")]
    blob = io.BytesIO()
    result = estargz.convert(io.BytesIO(_tar(*files)), blob, format=estargz.FORMAT_ZSTD_CHUNKED_STARGZ)
    with estargz.open(blob.getvalue()) as reader:
        assert reader.format == estargz.FORMAT_ZSTD_CHUNKED_STARGZ
        assert reader.toc_digest == result.toc_digest
        assert reader.read("a.txt") == b"hello\n"
