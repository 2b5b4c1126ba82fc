"""Requests per operation against a registry: opening fetches the footer and the TOC together, a
file read fetches the chunks it needs in one ranged request, sequential reads read ahead."""

from __future__ import annotations

import io
import random
import tarfile
from collections.abc import Iterator
from typing import Any

import pytest
from test_registry import FakeRegistry, no_credential_files  # noqa: F401 (autouse fixture)

import estargz
from estargz import reader
from estargz.annotations import MANIFEST_POSITION_ANNOTATION
from estargz.registry import BlobSource, RegistryClient

CHUNK = 16 << 10
#: Requests fetch whole aligned blocks of at most this many compressed bytes.
BLOCK = 64 << 10
#: Compressible but not trivially: words drawn at random, so chunks differ and deflate to a third.
WORDS = [bytes(random.Random(i).choices(b"abcdefghijklmnopqrstuvwxyz", k=7)) for i in range(512)]


def _text(size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    return b" ".join(rng.choices(WORDS, k=size // 8 + 1))[:size]


FILES = {"big.txt": _text(600_000, 1), "small.txt": b"hello\n", "other.txt": _text(200_000, 2)}


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _layer(fmt: str, files: dict[str, bytes] = FILES, **options: Any) -> bytes:
    out = io.BytesIO()
    estargz.convert(io.BytesIO(_tar(files)), out, format=fmt, chunk_size=CHUNK, **options)
    return out.getvalue()


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeRegistry]:
    registry = FakeRegistry()
    yield registry
    registry.close()


def _open(fake: FakeRegistry, blob: bytes) -> tuple[BlobSource, estargz.Reader]:
    digest = fake.add_blob(blob)
    source = RegistryClient(fake.host, timeout=5, insecure=True).blob("lib/img", digest, len(blob))
    return source, estargz.open(source)


@pytest.mark.parametrize("fmt", estargz.FORMATS)
def test_open_fetches_footer_and_toc_in_one_request(fake: FakeRegistry, fmt: str) -> None:
    source, blob = _open(fake, _layer(fmt))
    with source, blob:
        assert {e.name for e in blob if e.type == "reg"} >= set(FILES)
        assert source.requests == 1


@pytest.mark.parametrize("fmt", estargz.FORMATS)
def test_whole_file_read_is_one_request(fake: FakeRegistry, fmt: str) -> None:
    source, blob = _open(fake, _layer(fmt))
    with source, blob:
        assert len(blob.lookup("big.txt").chunks) > 10
        before, received = source.requests, source.bytes_transferred
        assert blob.read("big.txt") == FILES["big.txt"]
        assert source.requests - before == 1
        assert source.bytes_transferred - received < len(FILES["big.txt"]) // 2  # compressed, and only its own


@pytest.mark.parametrize("fmt", estargz.FORMATS)
def test_sequential_reads_read_ahead(fake: FakeRegistry, fmt: str) -> None:
    source, blob = _open(fake, _layer(fmt))
    with source, blob, blob.open("big.txt") as f:
        before = source.requests
        pieces = iter(lambda: f.read(4096), b"")
        assert b"".join(pieces) == FILES["big.txt"]
        assert source.requests - before == 1


@pytest.mark.parametrize("fmt", estargz.FORMATS)
def test_random_reads_fetch_only_their_chunks(fake: FakeRegistry, fmt: str) -> None:
    source, blob = _open(fake, _layer(fmt))
    with source, blob, blob.open("big.txt") as f:
        f.seek(300_000)
        before, received = source.requests, source.bytes_transferred
        assert f.read(100) == FILES["big.txt"][300_000:300_100]
        f.seek(100_000)
        assert f.read(CHUNK + 1) == FILES["big.txt"][100_000:100_000 + CHUNK + 1]
        assert source.requests - before == 2
        assert source.bytes_transferred - received <= 4 * BLOCK  # their aligned blocks, no read-ahead


@pytest.mark.parametrize("options", [{}, {"min_chunk_size": 1 << 20}])
def test_a_neighbouring_small_file_comes_with_the_previous_request(fake: FakeRegistry, options: Any) -> None:
    source, blob = _open(fake, _layer(estargz.FORMAT_ESTARGZ, **options))
    with source, blob:
        before = source.requests
        assert blob.read("big.txt") == FILES["big.txt"] and blob.read("small.txt") == FILES["small.txt"]
        assert source.requests - before == 1


def test_large_toc_takes_a_second_request(fake: FakeRegistry) -> None:
    layer = _layer(estargz.FORMAT_ZSTD_CHUNKED, {f"d/f{i:05d}": b"x" for i in range(6000)})
    source, blob = _open(fake, layer)
    with source, blob:
        assert len(blob) == 6000 and blob.read("d/f05999") == b"x"
        assert source.requests == 3  # the tail, the rest of the TOC, the file


@pytest.mark.parametrize("fmt", estargz.FORMATS)
def test_a_bad_chunk_fetched_ahead_fails_only_the_reads_that_reach_it(fmt: str) -> None:
    layer = bytearray(_layer(fmt))
    with estargz.open(bytes(layer)) as blob:
        last = blob.lookup("big.txt").chunks[-1]
    layer[(last.offset + last.next_offset) // 2] ^= 0xFF
    with estargz.open(bytes(layer)) as blob, blob.open("big.txt") as f:
        assert f.read(4096) == FILES["big.txt"][:4096]
        assert f.read(last.chunk_offset - 4096) == FILES["big.txt"][4096:last.chunk_offset]
        with pytest.raises(estargz.EStargzError):
            f.read()


def test_annotated_toc_is_read_alone(fake: FakeRegistry) -> None:
    out = io.BytesIO()
    result = estargz.convert(io.BytesIO(_tar(FILES)), out, format=estargz.FORMAT_ZSTD_CHUNKED)
    digest = fake.add_blob(out.getvalue())
    with RegistryClient(fake.host, timeout=5, insecure=True).blob("lib/img", digest, len(out.getvalue())) as source, \
            estargz.open(source, annotations=result.annotations) as blob:
        toc_length = int(result.annotations[MANIFEST_POSITION_ANNOTATION].split(":")[1])
        assert source.requests == 1 and source.bytes_transferred == toc_length
        assert blob.read("small.txt") == FILES["small.txt"]



class _Recording:
    """A source over bytes that records the lengths each call fetches."""

    def __init__(self, data: bytes) -> None:
        self.data, self.size, self.calls = data, len(data), []

    def read_at(self, offset: int, length: int) -> bytes:
        self.calls.append(length)
        return self.data[offset:offset + length]

    def read_ranges(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        self.calls.append(sum(length for _, length in ranges))
        return [self.data[offset:offset + length] for offset, length in ranges]


@pytest.mark.parametrize("fmt", estargz.FORMATS)
def test_one_fetch_is_bounded(monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    limit = 32 << 10
    monkeypatch.setattr(reader, "_MAX_FETCH", limit)
    source = _Recording(_layer(fmt))
    with estargz.open(source) as blob:
        source.calls.clear()
        spread = blob.lookup("big.txt").chunks
        spread[1].offset, spread[1].next_offset = spread[-1].offset, spread[-1].next_offset
        with pytest.raises(estargz.EStargzError):
            blob.read("big.txt")  # its second chunk now points at its last one
        assert len(source.calls) > 1
        assert max(source.calls) <= limit + 2 * reader._MIN_BLOCK
