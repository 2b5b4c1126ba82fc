"""The dialects: one per format, the only place that knows which options fit which format; and the
conversion's threads, which end with it whatever happens."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading

import pytest

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
    return LayerOptions(**{"chunk_size": 1 << 20, "level": 3, **given})  # type: ignore[arg-type]


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
    with pytest.raises(UnsupportedInputError, match="not valid UTF-8") as failure:
        estargz.convert(path, io.BytesIO(), format=estargz.FORMAT_ZSTD_CHUNKED, threads=1)
    assert failure.value is not None
    assert len(_chunker_threads()) == before
