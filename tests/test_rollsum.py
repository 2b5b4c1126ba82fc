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
from estargz.rollsum import (
    HOLE_THRESHOLD,
    chunk_file,
    chunk_files,
    chunk_stream,
    find_holes,
    split_positions,
)

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


def test_batched_files_find_every_hole_wherever_it_lies() -> None:
    """Files chunked together find the holes each finds alone: zero runs just under and over the
    threshold at every offset modulo 512, and zeros running across the boundary between files."""
    rng = random.Random(13)
    files = [rng.randbytes(offset) + bytes(run) + rng.randbytes(700)
             for run in (HOLE_THRESHOLD - 1, HOLE_THRESHOLD, HOLE_THRESHOLD + 1, 1535)
             for offset in range(0, 1100, 37)]
    files += [rng.randbytes(900) + bytes(700), bytes(700) + rng.randbytes(900), bytes(HOLE_THRESHOLD),
              bytes(HOLE_THRESHOLD - 1), b"\0", rng.randbytes(3000) + bytes(HOLE_THRESHOLD) + TRIGGERS[0]]
    batched = chunk_files(files)
    assert batched == [chunk_file(data) for data in files]
    assert sum(zeros for chunks in batched for _, _, zeros in chunks) > len(files) // 2
    assert chunk_files([]) == []


@pytest.mark.parametrize("share", [1, 64, 1 << 30], ids=["filter", "default", "fallback"])
def test_low_byte_matches_are_checked_on_all_16_bits(share: int) -> None:
    """Large blocks test the low 8 bits of the sum first, then the 16 bits of the few matches, or
    all positions again when matches are too many: each way gives the oracle's splits."""
    rng = random.Random(11)
    data = bytes(rng.choice(b"ab\x00\xff") for _ in range(120_000)) + rng.randbytes(200_000) + TRIGGERS[0]
    with mock.patch.object(rollsum, "_MAX_CANDIDATE_SHARE", share):
        assert split_positions(data).tolist() == oracle_splits(data)


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



# --- streaming -------------------------------------------------------------------------------

segments = st.one_of(
    st.binary(min_size=1, max_size=3000),
    st.sampled_from(TRIGGERS),
    st.integers(1, 1023).map(bytes),
    st.integers(1024, 5000).map(bytes),
    st.just(bytes(1024)),
    st.builds(lambda text, count: text * count,
              st.sampled_from((b"lorem ipsum dolor sit amet ", b"ab", b"\0x")), st.integers(1, 400)),
)
stream_contents = st.lists(segments, max_size=25).map(b"".join)


class Reader:
    """A read callback over ``data`` that records its calls and checks they are in order."""

    def __init__(self, data: bytes, window: int) -> None:
        self.data, self.window, self.done = data, window, 0

    def __call__(self, offset: int, length: int) -> bytes:
        assert offset == self.done and 0 < length <= self.window
        assert offset + length <= len(self.data)
        self.done += length
        return self.data[offset:offset + length]


def _certain_at(data: bytes, chunk: tuple[int, int, bool]) -> int:
    """How many bytes must have been read before ``chunk`` can be known."""
    offset, size, zeros = chunk
    end, n = offset + size, len(data)
    if end == n:
        return n
    if zeros:  # the non-zero byte after the hole
        return end + 1
    if not any(data[end:end + HOLE_THRESHOLD]) and end + HOLE_THRESHOLD <= n:
        return end + HOLE_THRESHOLD  # a hole follows: it must be seen whole
    if data[end - 1] == 0:  # a split in a short zero run: the run's end must be seen
        follower = next((i for i in range(end, n) if data[i]), n)
        return min(follower + 1, n)
    return end


def _stream_checked(data: bytes, window: int) -> list[tuple[int, int, bool]]:
    """chunk_stream over ``data``, checking reads and that each chunk comes out without delay."""
    reader = Reader(data, window)
    chunks = []
    for chunk in chunk_stream(reader, len(data), window=window):
        # Reads are whole windows: the chunk is due once the window holding its last needed byte is in.
        due = min(-(-_certain_at(data, chunk) // window) * window, len(data))
        assert reader.done <= due, (chunk, reader.done, due)
        chunks.append(chunk)
    assert reader.done == len(data)
    return chunks



@PROPERTY
@given(stream_contents, st.integers(1024, 20000))
def test_stream_matches_chunk_file(data: bytes, window: int) -> None:
    expected = chunk_file(data)
    assert _stream_checked(data, window) == expected
    for small in (1024, 1500, 4096):
        assert list(chunk_stream(Reader(data, small), len(data), window=small)) == expected


@settings(max_examples=max(1, round(30 * SCALE)), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(stream_contents, st.integers(1, 1100))
def test_stream_tiny_windows_and_small_tuning(data: bytes, window: int) -> None:
    """Windows shorter than the context or the hole threshold work too (slowly)."""
    expected = chunk_file(data)
    with _small_tuning():
        assert list(chunk_stream(Reader(data, window), len(data), window=window)) == expected
        assert list(chunk_stream(Reader(data, 4096), len(data), window=4096)) == expected


@pytest.mark.parametrize("window", [1024, 1500, 4096, 65536, 1 << 20])
def test_stream_chunking_vectors(vector_files: dict[str, bytes], window: int) -> None:
    for name, data in vector_files.items():
        if window < 4096 and len(data) > 100_000:
            data = data[:100_000]  # keep the tiny windows quick
        assert list(chunk_stream(Reader(data, window), len(data), window=window)) == chunk_file(data), name


def test_stream_edge_cases() -> None:
    assert list(chunk_stream(Reader(b"", 1024), 0)) == []
    assert list(chunk_stream(Reader(b"\0", 1024), 1)) == [(0, 1, False)]
    for n in (1023, 1024, 1025, 4096, 4097):
        data = bytes(n)
        assert list(chunk_stream(Reader(data, 1024), n, window=1024)) == chunk_file(data)
    # A split right before a window edge, in a short zero run across it, right after a hole.
    trigger = TRIGGERS[0]
    for data in (trigger + bytes(2000), trigger + bytes(1000) + b"x", bytes(3000) + trigger + b"y"):
        for window in range(1024, 1100):
            assert _stream_checked(data, window) == chunk_file(data)
    with pytest.raises(ValueError):
        chunk_stream(Reader(b"x", 1), 1, window=0)
    with pytest.raises(ValueError):
        list(chunk_stream(lambda offset, length: b"", 10))  # short read
    # Any contiguous buffer may come back from read.
    data = random.Random(4).randbytes(5000) + bytes(3000) + b"z"
    got = list(chunk_stream(lambda offset, length: memoryview(data)[offset:offset + length],
                            len(data), window=1024))
    assert got == chunk_file(data)


def _sparse_layout(size: int) -> list[tuple[int, bytes]]:
    """Random islands (non-zero at both ends) in a zero file, some only 1023 zeros apart."""
    rng = random.Random(11)
    gaps = [40 << 20, 1023, 1024, 1025, 1 << 20, 5000, 1023, 2 << 20, 300_000, 0]
    islands, pos, tail = [], 0, 100_000  # the file starts and ends with data
    while True:
        length = rng.randint(1, 400_000)
        if pos + length + 2048 + tail > size:
            break
        body = bytearray(rng.randbytes(length))
        body[0] |= 1
        body[-1] |= 1
        islands.append((pos, bytes(body)))
        pos += length + gaps[len(islands) % len(gaps)]
    body = bytearray(rng.randbytes(tail))
    body[0] = body[-1] = 7
    islands.append((size - tail, bytes(body)))
    return islands


def test_stream_memory_on_a_sparse_file() -> None:
    import bisect
    import tracemalloc

    size, window = 64 << 20, 1 << 20
    islands = _sparse_layout(size)
    starts = [start for start, _ in islands]

    def read(offset: int, length: int) -> bytearray:
        out = bytearray(length)
        i = max(bisect.bisect_right(starts, offset) - 1, 0)
        while i < len(islands) and islands[i][0] < offset + length:
            start, body = islands[i]
            lo, hi = max(start, offset), min(start + len(body), offset + length)
            if lo < hi:
                out[lo - offset:hi - offset] = body[lo - start:hi - start]
            i += 1
        return out

    # Expected: islands closer than 1024 zeros form one region, chunked with a zero context.
    expected, regions = [], []
    for start, body in islands:
        if regions and start - regions[-1][1] < HOLE_THRESHOLD:
            regions[-1][2].append(bytes(start - regions[-1][1]) + body)
            regions[-1][1] = start + len(body)
        else:
            regions.append([start, start + len(body), [body]])
    pos = 0
    for start, end, parts in regions:
        if start > pos:
            expected.append((pos, start - pos, True))
        expected += [(start + off, n, False) for off, n, _ in chunk_file(b"".join(parts))]
        pos = end
    assert pos == size and any(n > 30 * window for _, n, z in expected if z)

    tracemalloc.start()
    try:
        got = list(chunk_stream(read, size, window=window))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got == expected
    assert peak < 8 << 20, peak


def test_stream_long_zero_file() -> None:
    import tracemalloc

    size, window = 100_000_000, 1 << 20
    tracemalloc.start()
    try:
        got = list(chunk_stream(lambda offset, length: bytes(length), size, window=window))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got == [(0, size, True)]
    assert peak < 4 << 20, peak


def test_first_nonzero_in_long_zero_runs() -> None:
    """The search narrows big segments down before building a mask (bounded temporary memory)."""
    size = 9 << 20
    for target in (0, 4095, 4096, 70_000, 200_001, (4 << 20) + 12345, size - 1, size):
        buf = bytearray(size)
        if target < size:
            buf[target] = 3
            buf[-1] = 1
        arr = np.frombuffer(buf, np.uint8)
        assert rollsum._first_nonzero(arr, memoryview(buf), 0) == target
        assert find_holes(bytes(buf)) == ([(0, target)] if target >= 1024 else []) + (
            [(target + 1, size - 1)] if target < size - 1025 else [])
