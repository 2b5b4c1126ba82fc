"""The zstd:chunked chunker (estargz.rollsum) against the Go writer's vectors and a per-byte oracle.

tests/data/zstd-chunked-cs/ is a copy of the containers/storage vectors (see its README.md):
chunking-vectors.json holds the Go writer's chunk lists for ten synthetic files, latest.toc.json
the chunks of input.tar's files. The oracle below is a literal per-byte port of the spec's
procedure (bup rollsum, 1024-byte holes), independent of the vectorized implementation.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tarfile
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from estargz import rollsum
from estargz.rollsum import chunk_file, find_holes, split_positions

DATA = Path(__file__).parent / "data" / "zstd-chunked-cs"
SCALE = float(os.environ.get("ESTARGZ_PROPERTY_SCALE", "1"))
PROPERTY = settings(max_examples=max(1, round(80 * SCALE)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class RollSum:
    """The Go RollSum, byte by byte, with explicit uint32 wrapping."""

    def __init__(self) -> None:
        self.s1 = 64 * 31
        self.s2 = 64 * 63 * 31
        self.window = [0] * 64
        self.wofs = 0

    def roll(self, ch: int) -> None:
        drop = self.window[self.wofs]
        self.s1 = (self.s1 + ch - drop) & 0xFFFFFFFF
        self.s2 = (self.s2 + self.s1 - 64 * (drop + 31)) & 0xFFFFFFFF
        self.window[self.wofs] = ch
        self.wofs = (self.wofs + 1) % 64

    def on_split(self) -> bool:
        return self.s2 & 0xFFFF == 0xFFFF


def oracle_splits(data: bytes) -> list[int]:
    rs, out = RollSum(), []
    for i, ch in enumerate(data):
        rs.roll(ch)
        if rs.on_split():
            out.append(i + 1)
    return out


def oracle_chunks(data: bytes) -> list[tuple[int, int, bool]]:
    """Spec §4 procedure, literally."""
    rs, chunks, start, i, n = RollSum(), [], 0, 0, len(data)
    while i < n:
        j = i
        while j < n and data[j] == 0:
            j += 1
        if j - i >= 1024:
            if start < i:
                chunks.append((start, i - start, False))
            for _ in range(j - i):
                rs.roll(0)
            chunks.append((i, j - i, True))
            start = i = j
            continue
        for k in range(i, max(j, i + 1)):  # a short zero run (or one byte) is ordinary data
            rs.roll(data[k])
            if rs.on_split():
                chunks.append((start, k + 1 - start, False))
                start = k + 1
        i = max(j, i + 1)
    if start < n:
        chunks.append((start, n - start, False))
    return chunks


def _trigger_windows(count: int) -> list[bytes]:
    """64-byte windows after which the split test holds (found in seeded random data)."""
    buf = random.Random(1).randbytes(1 << 21)
    ends = split_positions(buf)
    return [buf[e - 64:e] for e in ends[ends >= 64][:count].tolist()]


TRIGGERS = _trigger_windows(16)

pieces = st.one_of(
    st.binary(min_size=1, max_size=300),
    st.sampled_from(TRIGGERS),
    st.builds(bytes, st.sampled_from((1, 63, 64, 500, 1023, 1024, 1025, 1100, 2100))),
    st.integers(0, 3000).map(bytes),
)
contents = st.lists(pieces, max_size=12).map(b"".join)


def _small_tuning() -> ExitStack:
    """Shrink block sizes so that small inputs cross every internal boundary."""
    stack = ExitStack()
    stack.enter_context(mock.patch.object(rollsum, "_BLOCK", 997))
    stack.enter_context(mock.patch.object(rollsum, "_SMALL", 300))
    stack.enter_context(mock.patch.object(rollsum, "_FIND_WINDOW", 1500))
    stack.enter_context(mock.patch.object(rollsum, "_COALESCE", 2000))
    return stack


# --- the Go writer's vectors -----------------------------------------------------------------


def _vector_files() -> dict[str, bytes]:
    """Rebuild the vector files from the recipe in chunking-vectors.json (same order, one generator)."""
    r = random.Random(7)

    def rnd(n: int) -> bytes:
        return bytes(r.getrandbits(8) for _ in range(n))

    files = {"z1023": rnd(5000) + bytes(1023) + rnd(5000)}
    files["z1024"] = rnd(5000) + bytes(1024) + rnd(5000)
    files["lead"] = bytes(3000) + rnd(9000)
    files["trail"] = rnd(9000) + bytes(3000)
    files["allzero"] = bytes(10000)
    files["tiny"] = b"a"
    files["two_holes"] = rnd(100) + bytes(2000) + rnd(70000) + bytes(1500)
    files["text"] = b"lorem ipsum dolor sit amet " * 40000
    files["big"] = rnd(2000000)
    parts = []
    for _ in range(200):
        data = rnd(r.randint(1, 3000))
        parts.append(data + bytes(r.choice([5, 900, 1023, 1024, 1025, 4096])))
    files["sparse_mix"] = b"".join(parts)
    return files


VECTORS = json.loads((DATA / "chunking-vectors.json").read_text())["files"]


@pytest.fixture(scope="module")
def vector_files() -> dict[str, bytes]:
    files = _vector_files()
    for name, spec in VECTORS.items():
        assert len(files[name]) == spec["size"]
        assert hashlib.sha256(files[name]).hexdigest() == spec["sha256"], name
    return files


@pytest.mark.parametrize("as_view", [False, True], ids=["bytes", "memoryview"])
@pytest.mark.parametrize("name", sorted(VECTORS))
def test_chunking_vectors(vector_files: dict[str, bytes], name: str, as_view: bool) -> None:
    spec = VECTORS[name]
    data = vector_files[name]
    got = chunk_file(memoryview(data) if as_view else data)
    if spec["toc_chunk_entries"]:
        assert got == [(off, size, kind == "zeros") for off, size, kind in spec["chunks"]]
    else:  # the TOC of a single-chunk file has no chunk fields: only the extent is known
        assert [(off, size) for off, size, _ in got] == [(0, spec["size"])]
    assert spec["toc_chunk_entries"] == (len(got) > 1)


def test_allzero_file_is_one_zeros_chunk(vector_files: dict[str, bytes]) -> None:
    assert chunk_file(vector_files["allzero"]) == [(0, 10000, True)]


def test_vectors_match_the_oracle(vector_files: dict[str, bytes]) -> None:
    for name in ("z1023", "z1024", "lead", "trail", "two_holes", "sparse_mix"):
        assert chunk_file(vector_files[name]) == oracle_chunks(vector_files[name]), name


def _toc_chunks(entries: list[dict]) -> dict[str, list[tuple[int, int, bool, str]]]:
    out: dict[str, list[tuple[int, int, bool, str]]] = {}
    for e in entries:
        if e["type"] == "reg" and e.get("size", 0) > 0:
            out[e["name"]] = []
            if "chunkSize" not in e:  # single chunk: the whole file
                out[e["name"]].append((0, e["size"], False, e["digest"]))
                continue
        if e["type"] in ("reg", "chunk") and "chunkSize" in e:
            out[e["name"]].append((e.get("chunkOffset", 0), e["chunkSize"],
                                   e.get("chunkType") == "zeros", e["chunkDigest"]))
    return out


def test_input_tar_chunks_match_latest_toc() -> None:
    toc = json.loads((DATA / "latest.toc.json").read_bytes())
    expected = _toc_chunks(toc["entries"])
    seen = {}
    with tarfile.open(DATA / "input.tar") as tar:
        for member in tar:
            if member.isreg() and member.size > 0:
                data = tar.extractfile(member).read()
                got = chunk_file(data)
                seen[member.name] = [
                    (off, size, zeros and len(got) > 1,
                     "sha256:" + hashlib.sha256(data[off:off + size]).hexdigest())
                    for off, size, zeros in got
                ]
    assert seen == expected
    assert len(expected["dir/chunked.bin"]) == 6


# --- properties ------------------------------------------------------------------------------


@PROPERTY
@given(contents)
def test_matches_oracle(data: bytes) -> None:
    assert chunk_file(data) == oracle_chunks(data)
    with _small_tuning():
        assert chunk_file(data) == oracle_chunks(data)
        assert chunk_file(memoryview(data)) == oracle_chunks(data)


@PROPERTY
@given(contents)
def test_chunks_cover_the_file(data: bytes) -> None:
    chunks = chunk_file(data)
    pos = 0
    for offset, size, zeros in chunks:
        assert offset == pos and size > 0
        if zeros:
            assert size >= 1024 and data[offset:offset + size] == bytes(size)
        pos += size
    assert pos == len(data)
    # Holes are maximal: no zeros chunk touches another zero byte.
    for (offset, size, zeros) in chunks:
        if zeros:
            assert offset == 0 or data[offset - 1] != 0
            assert offset + size == len(data) or data[offset + size] != 0


@PROPERTY
@given(st.binary(max_size=5000), st.integers(0, 3))
def test_split_positions_match_rollsum(data: bytes, pad: int) -> None:
    data = TRIGGERS[pad] + data + TRIGGERS[pad + 1]
    expected = oracle_splits(data)
    assert split_positions(data).tolist() == expected
    with _small_tuning():
        assert split_positions(data).tolist() == expected


@PROPERTY
@given(contents)
def test_holes_match_naive_scan(data: bytes) -> None:
    expected, i = [], 0
    while i < len(data):
        j = i
        while j < len(data) and data[j] == 0:
            j += 1
        if j - i >= 1024:
            expected.append((i, j))
        i = max(j, i + 1)
    assert find_holes(data) == expected
    with _small_tuning():
        assert find_holes(memoryview(data)) == expected
        assert find_holes(bytearray(data)) == expected


def test_split_needs_the_byte_before_the_window() -> None:
    """The state is not reset at chunk boundaries: the same window splits wherever it lands."""
    trigger = TRIGGERS[0]
    for prefix in (b"", b"x", random.Random(3).randbytes(70000)):
        data = prefix + trigger
        assert len(data) in split_positions(data).tolist()


def test_rolls_through_holes_and_across_blocks() -> None:
    rng = random.Random(5)
    data = rng.randbytes(300_000) + bytes(5000) + rng.randbytes(400_000) + bytes(70_000) + rng.randbytes(9)
    assert chunk_file(data) == oracle_chunks(data)
    assert chunk_file(memoryview(data)) == chunk_file(data)


def test_buffer_types() -> None:
    data = random.Random(9).randbytes(200_000) + bytes(2000)
    expected = chunk_file(data)
    assert chunk_file(bytearray(data)) == expected
    assert chunk_file(memoryview(data)) == expected
    assert chunk_file(memoryview(np.frombuffer(data, np.uint8).reshape(-1, 8))) == expected
    assert chunk_file(memoryview(data).cast("b")) == expected
    assert chunk_file(b"") == chunk_file(memoryview(b"")) == []
    assert chunk_file(b"\0") == [(0, 1, False)]


def test_non_contiguous_buffer_is_refused() -> None:
    with pytest.raises(TypeError):
        chunk_file(memoryview(bytes(100))[::2])


def test_thread_safety() -> None:
    from concurrent.futures import ThreadPoolExecutor

    inputs = [random.Random(i).randbytes(600_000) for i in range(4)]
    expected = [chunk_file(d) for d in inputs]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(chunk_file, inputs * 2)) == expected * 2

