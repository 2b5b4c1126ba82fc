"""The pure chunking rules and the format-free pipeline, driven without files."""

from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from estargz.chunking import (
    HEADER_RUN_LIMIT,
    MemberGrouping,
    content_defined_chunks,
    content_defined_chunks_of_files,
    content_defined_chunks_streamed,
    fixed_chunks,
)
from estargz.pipeline import OrderedSink, Pipeline


@given(st.integers(0, 10_000), st.integers(1, 3000))
def test_fixed_chunks_cover_the_file_in_full_steps(size, chunk_size):
    chunks = list(fixed_chunks(size, chunk_size))
    assert sum(length for _, length in chunks) == size
    assert [offset for offset, _ in chunks] == list(range(0, size, chunk_size))
    assert all(length == chunk_size for _, length in chunks[:-1])
    assert all(0 < length <= chunk_size for _, length in chunks)


def test_fixed_chunks_refuse_a_zero_step():
    with pytest.raises(ValueError):
        list(fixed_chunks(10, 0))


def test_grouping_is_full_once_the_compressed_estimate_reaches_the_minimum():
    grouping = MemberGrouping(1000)
    grouping.add(bytes(100_000))  # compresses to far below 1000 bytes
    assert not grouping.full()
    grouping.add(os.urandom(1200))  # incompressible
    assert grouping.full()
    grouping.reset()
    assert not grouping.full()


_DATA = st.one_of(
    st.binary(max_size=3000),
    st.builds(lambda seed, zeros, tail: hashlib.shake_256(seed).digest(tail) + bytes(zeros) + seed,
              st.binary(min_size=1, max_size=64), st.integers(0, 5000), st.integers(0, 200_000)),
)


@settings(max_examples=40, deadline=None)
@given(st.lists(_DATA, max_size=4), st.integers(1, 70_000))
def test_content_defined_chunks_cover_each_file_alike_however_they_are_read(files, window):
    batched = content_defined_chunks_of_files(files)
    for data, chunks in zip(files, batched, strict=True):
        assert chunks == content_defined_chunks(data)
        assert [offset for offset, _, _ in chunks] == [sum(c[1] for c in chunks[:i]) for i in range(len(chunks))]
        assert sum(length for _, length, _ in chunks) == len(data)
        assert all(not any(data[o:o + n]) for o, n, zeros in chunks if zeros)
        streamed = content_defined_chunks_streamed(lambda at, n, data=data: data[at:at + n], len(data))
        assert list(streamed) == chunks


@dataclass
class _Record:
    name: str
    offset: int = -1
    chunk_digest: str = ""
    digest: str = ""
    end_offset: int = -1


class _Identity:
    """A 'compressor' that keeps the data as it is and notes the size of each member."""

    def __init__(self) -> None:
        self.members: list[int] = []

    def compress(self, data: bytes) -> bytes:
        self.members.append(len(data))
        return bytes(data)

    def compress_zeros(self, size: int) -> bytes:
        self.members.append(size)
        return bytes(size)

    @staticmethod
    def inflate(pieces, max_output=None):
        return iter(pieces)


_STEP = st.one_of(
    st.tuples(st.just("meta"), st.binary(min_size=1, max_size=300)),
    st.tuples(st.just("chunk"), st.binary(min_size=1, max_size=3000)),
    st.tuples(st.just("alone"), st.binary(min_size=1, max_size=300)),
    st.tuples(st.just("zeros"), st.integers(1, 5000)),
)


def _run(steps, threads=1, min_chunk_size=0, metadata_apart=False, compressor=None):
    out, seen = io.BytesIO(), []
    sink = OrderedSink(out, 3, None, 0, seen.append)
    records = []
    with ThreadPoolExecutor(threads) as pool:
        sink.start()
        grouping = MemberGrouping(min_chunk_size) if min_chunk_size else None
        pipeline = Pipeline(io.BytesIO(), sink, compressor or _Identity(), pool, grouping=grouping,
                            metadata_apart=metadata_apart)
        try:
            for index, (kind, value) in enumerate(steps):
                record = _Record(str(index))
                if kind == "meta":
                    pipeline.append(value)
                    continue
                if kind == "zeros":
                    pipeline.add_zeros(record, value, whole_file=True, ends_file=record)
                else:
                    pipeline.add_chunk(record, value, whole_file=True, alone=kind == "alone", ends_file=record)
                records.append((record, value if kind != "zeros" else bytes(value)))
                pipeline.complete([record])
            pipeline.finish()
        finally:
            sink.close()
    return out.getvalue(), records, seen + pipeline.completed, sink


@settings(max_examples=60, deadline=None)
@given(st.lists(_STEP, max_size=40), st.sampled_from([0, 500]), st.booleans())
def test_pipeline_writes_everything_in_order_and_places_every_chunk(steps, min_chunk_size, metadata_apart):
    blob, records, seen, sink = _run(steps, 2, min_chunk_size, metadata_apart)
    plain = b"".join(v if k != "zeros" else bytes(v) for k, v in steps)
    assert blob == plain
    assert sink.uncompressed_size == len(plain)
    assert "sha256:" + sink.diff_hash.hexdigest() == "sha256:" + hashlib.sha256(plain).hexdigest()
    assert [r.name for r in seen] == [r.name for r, _ in records]
    for record, payload in records:
        digest = "sha256:" + hashlib.sha256(payload).hexdigest()
        assert record.chunk_digest == record.digest == digest
        assert record.offset <= blob.find(payload, record.offset) < record.end_offset <= len(blob)
    _, alone, _, _ = _run(steps, 1, min_chunk_size, metadata_apart)
    assert [(r.offset, r.end_offset) for r, _ in records] == [(r.offset, r.end_offset) for r, _ in alone]


@given(st.lists(_STEP, max_size=40))
def test_with_metadata_apart_no_member_mixes_metadata_and_a_chunk(steps):
    compressor = _Identity()
    blob, records, _, _ = _run(steps, metadata_apart=True, compressor=compressor)
    chunk_starts = {record.offset for record, _ in records}
    position = 0
    for size in compressor.members:
        member = blob[position:position + size]
        starts_chunk = position in chunk_starts
        chunk = next((p for r, p in records if r.offset == position), b"")
        assert not starts_chunk or member == chunk
        position += size


def test_a_long_run_of_metadata_is_split_into_members():
    piece = bytes(HEADER_RUN_LIMIT // 4)
    compressor = _Identity()
    _run([("meta", piece)] * 6 + [("chunk", b"x")], compressor=compressor)
    assert compressor.members == [HEADER_RUN_LIMIT, 2 * len(piece), 1]
