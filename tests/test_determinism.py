"""The same input converts to the same bytes, whatever the thread count and thread scheduling.

Each case converts one layer of many small files (and a few multi-chunk ones) many times, with 1
to 4 compression threads, a thread switch interval from tiny to the default, and every third run
beside a second conversion of the layer in another thread, and compares every result with a
reference conversion on one thread. Members go to the compression threads in batches of a few KB
instead of 1 MiB, so that a small layer makes hundreds of batches in flight between the walk,
the compression threads and the sink.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import random
import sys
import tarfile
import threading
from collections.abc import Iterator

import pytest

import estargz
import estargz.pipeline

#: Conversions per case, cycling through the thread counts and switch intervals.
RUNS = 30
THREADS = (1, 2, 3, 4)
SWITCH_INTERVALS = (1e-6, 1e-4, 0.005)
#: Plaintext bytes per batch of members handed to the compression threads.
BATCH_BYTES = 4096

CASES = {
    "estargz": {},
    "estargz-chunked": {"chunk_size": 4096},
    "estargz-min-chunk": {"chunk_size": 8192, "min_chunk_size": 3000},
    "estargz-prioritized": {"prioritized_files": ["dir3/file7", "dir1/file2"]},
    "estargz-external-toc": {"external_toc": True},
    "estargz-keep-diff-id": {"external_toc": True, "keep_diff_id": True},
    "zstd-chunked-stargz": {"format": estargz.FORMAT_ZSTD_CHUNKED_STARGZ, "chunk_size": 8192},
    "zstd-chunked-stargz-min-chunk": {"format": estargz.FORMAT_ZSTD_CHUNKED_STARGZ, "min_chunk_size": 2000},
    "zstd-chunked": {"format": estargz.FORMAT_ZSTD_CHUNKED},
}


def _contents(rng: random.Random, index: int) -> bytes:
    """Text, random bytes, or a file with a run of zeros in it, of a few bytes to tens of KB."""
    kind = index % 4
    size = rng.randrange(0, 12000) if index % 23 else rng.randrange(40000, 90000)
    if kind == 0:
        return rng.randbytes(size)
    if kind == 1:
        return bytes(size // 3) + rng.randbytes(size // 3) + bytes(size - 2 * (size // 3))
    words = [b"import", b"def", b"return", b"self", b"class", b"\n", b"    ", b"value", b"(", b")"]
    return b" ".join(rng.choice(words) for _ in range(size // 5))


def _members(rng: random.Random) -> Iterator[tuple[tarfile.TarInfo, bytes]]:
    for d in range(8):
        info = tarfile.TarInfo(f"dir{d}")
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000 + d
        yield info, b""
        for f in range(30):
            data = _contents(rng, d * 30 + f)
            info = tarfile.TarInfo(f"dir{d}/file{f}")
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000 + f
            info.uid, info.uname = f % 3, f"user{f % 3}"
            if f % 17 == 0:
                info.pax_headers = {"SCHILY.xattr.user.tag": f"t{f}"}
            yield info, data
        link = tarfile.TarInfo(f"dir{d}/link")
        link.type, link.linkname = tarfile.SYMTYPE, f"file{d}"
        yield link, b""


@pytest.fixture(scope="module")
def layer() -> bytes:
    """A layer tar of about 250 files, about 1.5 MB."""
    rng = random.Random(12)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in _members(rng):
            tar.addfile(info, io.BytesIO(data) if data else None)
    return out.getvalue()


def _fingerprint(layer: bytes, threads: int, options: dict[str, object]) -> tuple[str, ...]:
    out = io.BytesIO()
    result = estargz.convert(io.BytesIO(layer), out, threads=threads, **options)  # type: ignore[arg-type]
    external = hashlib.sha256(result.external_toc).hexdigest() if result.external_toc else ""
    return (hashlib.sha256(out.getvalue()).hexdigest(), result.blob_digest, result.toc_digest, result.diff_id,
            external, repr(sorted(result.annotations.items())))


def _beside_another(layer: bytes, threads: int, options: dict[str, object]) -> tuple[str, ...]:
    """A conversion run while another conversion of the layer runs in a second thread."""
    other: list[tuple[str, ...]] = []
    thread = threading.Thread(target=lambda: other.append(_fingerprint(layer, 2, options)))
    thread.start()
    try:
        mine = _fingerprint(layer, threads, options)
    finally:
        thread.join()
    return mine if other == [mine] else ("differs from the conversion beside it", *mine)


@pytest.mark.parametrize("name", CASES)
def test_same_bytes_under_scheduling_variation(layer: bytes, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    options = CASES[name]
    monkeypatch.setattr(estargz.pipeline, "_BATCH_BYTES", BATCH_BYTES)
    reference = _fingerprint(layer, 1, options)
    assert reference[0] == reference[1].removeprefix("sha256:")
    default_interval = sys.getswitchinterval()
    differing = []
    try:
        for run in range(RUNS):
            threads = THREADS[run % len(THREADS)]
            interval = SWITCH_INTERVALS[run // len(THREADS) % len(SWITCH_INTERVALS)]
            sys.setswitchinterval(interval)
            convert = _beside_another if run % 3 == 2 else _fingerprint
            if convert(layer, threads, options) != reference:
                differing.append((run, threads, interval))
    finally:
        sys.setswitchinterval(default_interval)
    assert differing == []


#: Conversions per case, each in a new process.
FRESH_RUNS = 16
FRESH_CASES = {
    "estargz-level-1": {"compression_level": 1},
    "estargz-min-chunk": {"chunk_size": 8192, "min_chunk_size": 3000},
    "zstd-chunked-stargz-min-chunk": {"format": estargz.FORMAT_ZSTD_CHUNKED_STARGZ, "min_chunk_size": 2000},
}


@pytest.mark.parametrize("name", FRESH_CASES)
def test_same_bytes_in_fresh_processes(layer: bytes, name: str) -> None:
    """New processes give the same bytes: ISA-L's deflate did not, now and then, in a new process."""
    options = FRESH_CASES[name]
    context = multiprocessing.get_context("spawn")
    with context.Pool(2, maxtasksperchild=1) as pool:
        runs = pool.starmap(_fingerprint, [(layer, 1 + run % 2, options) for run in range(FRESH_RUNS)], chunksize=1)
    assert runs == [_fingerprint(layer, 2, options)] * FRESH_RUNS
