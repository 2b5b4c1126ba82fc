"""Content-defined chunking of zstd:chunked (containers/storage): bup rollsum splits and zero holes.

Every regular file's content is cut on its own, with a fresh rolling-sum state:

* a maximal run of at least :data:`HOLE_THRESHOLD` zero bytes is a *hole*, its own ``zeros`` chunk;
  its bytes go through the rolling sum but are never tested for a split;
* any other byte is rolled, then tested: when the low :data:`ROLLSUM_BITS` bits of ``s2`` are all
  ones the chunk ends *after* that byte. There is no minimum nor maximum chunk size.

The rolling sum (window 64, character offset 31, ``s1 = 64*31``, ``s2 = 64*63*31`` initially) never
wraps: after byte ``t``, ``s2 = 124992 + sum((k + 1) * c[t - k] for k in range(64))`` exactly, bytes
before the file start counting as zero. The split test therefore depends only on the last 64 bytes,
which lets :func:`chunk_file` evaluate it for all positions at once with numpy.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .source import BLOCK_SIZE

__all__ = [
    "WINDOW_SIZE", "CHAR_OFFSET", "ROLLSUM_BITS", "HOLE_THRESHOLD",
    "Span", "chunk_file", "chunk_files", "chunk_stream", "split_positions", "find_holes",
]

WINDOW_SIZE = 64
CHAR_OFFSET = 31
#: A chunk ends where the low 16 bits of s2 are all ones.
ROLLSUM_BITS = 16
#: Zero runs at least this long become ``zeros`` chunks.
HOLE_THRESHOLD = 1 << 10

Span = tuple[int, int, bool]
"""(offset in the file, length, is a run of zeros)."""
Buffer = bytes | bytearray | memoryview

_S2_INIT = WINDOW_SIZE * (WINDOW_SIZE - 1) * CHAR_OFFSET
_MASK = (1 << ROLLSUM_BITS) - 1
# Weighted window sum (mod 2**16) at which s2 & 0xFFFF == 0xFFFF.
_TARGET = (_MASK - _S2_INIT) & _MASK
_CONTEXT = WINDOW_SIZE - 1
_BLOCK = 1 << 18  # bytes per vectorized step: the working set stays in the L2 cache
_SMALL = 4096  # below this, two (slow) prefix sums beat 21 (fast) array operations
_HOLE_NEEDLE = bytes(HOLE_THRESHOLD)
_FIND_WINDOW = 1 << 20
_NONZERO = re.compile(rb"[^\x00]")
_LOCAL = threading.local()
# Splits are evaluated across holes shorter than this rather than paying a pass per data range.
_COALESCE = 1 << 16
_LOW_BYTE = 0xFF
#: Above one low-byte match in this many positions, a block's splits come from the prefix sums.
_MAX_CANDIDATE_SHARE = 64
_SCALES = [np.uint8(1 << k) for k in range(6)]
#: The oldest of the 64 bytes weighs 64, the newest 1.
_WEIGHTS = np.arange(WINDOW_SIZE, 0, -1, dtype=np.uint16)


def _byte_view(data: Buffer) -> memoryview:
    view = memoryview(data)
    if not view.c_contiguous:
        raise TypeError("chunking needs a contiguous buffer")
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    return view


def _as_array(data: Buffer) -> np.ndarray:
    return np.frombuffer(_byte_view(data), np.uint8)


def _first_nonzero(arr: np.ndarray, view: memoryview, pos: int) -> int:
    """Index of the first non-zero byte at or after ``pos``, or ``len(arr)``."""
    size = len(arr)
    found = _NONZERO.search(view, pos, pos + 4096)  # most holes are short
    if found:
        return found.start()
    pos, step = pos + 4096, 1 << 16
    while pos < size:
        segment = arr[pos:pos + step]
        if segment.any():
            while len(segment) > 1 << 16:  # halve it first: the mask below stays small
                half = len(segment) // 2
                if segment[:half].any():
                    segment = segment[:half]
                else:
                    pos, segment = pos + half, segment[half:]
            return pos + int(np.argmax(segment != 0))
        pos += step
        step = min(step * 2, 1 << 22)
    return size


class _Finder:
    """``find`` of the hole needle over any buffer; a memoryview is searched through 1 MiB copies."""

    def __init__(self, data: Buffer, view: memoryview) -> None:
        self.direct = data if isinstance(data, (bytes, bytearray)) else None
        self.view = view
        self.window = b""
        self.window_start = 0

    def find(self, pos: int) -> int:
        if self.direct is not None:
            return self.direct.find(_HOLE_NEEDLE, pos)
        size = len(self.view)
        while True:
            window_end = self.window_start + len(self.window)
            if self.window_start <= pos < window_end:
                found = self.window.find(_HOLE_NEEDLE, pos - self.window_start)
                if found >= 0:
                    return self.window_start + found
                if window_end == size:
                    return -1
                # Overlap by 1023 bytes so that a run crossing the window end is seen whole.
                pos = max(pos, window_end - (HOLE_THRESHOLD - 1))
            elif pos >= size:
                return -1
            self.window_start = pos
            self.window = self.view[pos:pos + _FIND_WINDOW].tobytes()


def find_holes(data: Buffer) -> list[tuple[int, int]]:
    """The maximal runs of at least :data:`HOLE_THRESHOLD` zero bytes, as sorted (start, end) pairs."""
    view = _byte_view(data)
    arr = np.frombuffer(view, np.uint8)
    finder = _Finder(data, view)
    holes: list[tuple[int, int]] = []
    pos = 0
    # The search resumes at a non-zero byte (or 0), so a match is always the start of its run.
    while pos <= len(arr) - HOLE_THRESHOLD and (start := finder.find(pos)) >= 0:
        pos = _first_nonzero(arr, view, start + HOLE_THRESHOLD)
        holes.append((start, pos))
    return holes


def _small_splits(arr: np.ndarray, start: int, end: int) -> np.ndarray:
    """Split positions in (start, end] from two prefix sums: few numpy calls, for short ranges.

    With P and Q the prefix sums of the bytes and of P, the weighted window sum ending at ``t``
    is ``Q[t] - Q[t-64] - 64 * P[t-64]``.
    """
    ctx = min(start, WINDOW_SIZE)
    e = np.zeros(WINDOW_SIZE + end - start, np.uint16)
    e[WINDOW_SIZE - ctx:] = arr[start - ctx:end]
    p = np.cumsum(e, dtype=np.uint16)
    q = np.cumsum(p, dtype=np.uint16)
    r = q[WINDOW_SIZE:] - q[:-WINDOW_SIZE]
    r -= p[:-WINDOW_SIZE] << 6
    return np.flatnonzero(r == _TARGET) + (start + 1)


class _Roller:
    """Buffers for the vectorized split test over blocks of up to :data:`_BLOCK` bytes.

    One instance per thread is kept and reused: allocating and first touching fresh buffers
    costs more than the computation for files of a few hundred KB.
    """

    def __init__(self) -> None:
        size = _BLOCK + _CONTEXT
        self.window = np.empty(size, np.uint8)
        self.bufs = [np.empty(size, np.uint8) for _ in range(5)]
        self.hits = np.empty(size, np.bool_)

    def block(self, arr: np.ndarray, start: int, end: int) -> np.ndarray:
        """Positions ``p`` in (start, end] where the split test holds after rolling byte ``p - 1``.

        Doubling: with A_w(t) the sum of the last w bytes and B_w(t) = sum((k+1) * c[t-k]) over
        them, A_2w(t) = A_w(t) + A_w(t-w) and B_2w(t) = B_w(t) + B_w(t-w) + w * A_w(t-w).
        21 whole-array operations on bytes, which give the low 8 bits of the sum: the few
        positions where those match are then checked on all 16 bits.
        """
        ctx = min(start, _CONTEXT)
        length = _CONTEXT + end - start
        if ctx == _CONTEXT:
            e = arr[start - _CONTEXT:end]
        else:
            e = self.window[:length]
            e[:_CONTEXT - ctx] = 0  # the initial window is all zeros
            e[_CONTEXT - ctx:] = arr[start - ctx:end]
        a, b, na, nb, tmp = (buf[:length] for buf in self.bufs)
        np.add(e[1:], e[:-1], out=a[1:])
        np.add(a[1:], e[:-1], out=b[1:])
        for k in range(1, 6):
            w = 1 << k
            np.add(b[w:], b[:-w], out=nb[w:])
            np.multiply(a[:-w], _SCALES[k], out=tmp[w:])  # a byte shift is not vectorized
            np.add(nb[w:], tmp[w:], out=nb[w:])
            b, nb = nb, b
            if k < 5:
                np.add(a[w:], a[:-w], out=na[w:])
                a, na = na, a
        hits = self.hits[:end - start]
        np.equal(b[_CONTEXT:], _TARGET & _LOW_BYTE, out=hits)
        candidates = np.flatnonzero(hits)
        if len(candidates) > (end - start) // _MAX_CANDIDATE_SHARE:
            return _small_splits(arr, start, end)
        found: np.ndarray = candidates[_window_sums(e, candidates) == _TARGET] + (start + 1)
        return found


def _window_sums(e: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The weighted window sums (mod 2**16) of the 64 bytes ``e[i:i + 64]`` for each ``i`` in ``ends``."""
    sums: np.ndarray = np.dot(sliding_window_view(e, WINDOW_SIZE)[ends], _WEIGHTS)  # uint16 arithmetic wraps
    return sums


def _roller() -> _Roller:
    roller = getattr(_LOCAL, "roller", None)
    if roller is None:
        roller = _LOCAL.roller = _Roller()
    return roller


def split_positions(data: Buffer, ranges: list[tuple[int, int]] | None = None) -> np.ndarray:
    """Sorted chunk ends ``p`` (the split test holds right after rolling byte ``p - 1``).

    Holes are not taken into account. ``ranges`` restricts the bytes tested (sorted, disjoint
    ``(start, end)`` pairs); the rolling state still covers every byte of ``data``.
    """
    arr = _as_array(data)
    if ranges is None:
        ranges = [(0, len(arr))]
    found = []
    for lo, hi in ranges:
        for start in range(lo, hi, _BLOCK):
            end = min(start + _BLOCK, hi)
            if end - start < _SMALL:
                hits = _small_splits(arr, start, end)
            else:
                hits = _roller().block(arr, start, end)
            if hits.size:
                found.append(hits)
    return np.concatenate(found) if found else np.zeros(0, np.int64)


def _data_ranges(holes: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """The stretches between holes, merged across holes shorter than :data:`_COALESCE`."""
    ranges: list[tuple[int, int]] = []
    pos = 0
    for start, end in holes + [(size, size)]:
        if start > pos:
            if ranges and pos - ranges[-1][1] < _COALESCE:
                ranges[-1] = (ranges[-1][0], start)
            else:
                ranges.append((pos, start))
        pos = end
    return ranges


def chunk_file(data: Buffer) -> list[Span]:
    """Cut one file's content into chunks exactly as the containers/storage writer does.

    Returns contiguous ``(offset, length, is_zeros)`` tuples covering ``data``; ``[]`` when empty.
    A file made of a single hole is one chunk with ``is_zeros`` true (the TOC omits the chunk
    fields of single-chunk files anyway).
    """
    arr = _as_array(data)
    size = len(arr)
    holes = find_holes(data)
    return _assemble(size, holes, split_positions(data, _data_ranges(holes, size)).tolist())


def chunk_files(files: Sequence[Buffer]) -> list[list[Span]]:
    """:func:`chunk_file` of each of many (small) files, with one vectorized pass for all of them.

    The files are laid end to end with :data:`WINDOW_SIZE` zero bytes before each, which gives
    each file the all-zero window of a fresh rolling state; holes are looked for only in the files
    that hold an all-zero aligned block of the joined bytes (see :func:`_files_with_zero_blocks`).
    """
    if not files:
        return []
    sizes = [memoryview(data).nbytes for data in files]
    joined = bytes(WINDOW_SIZE).join([b"", *files])
    starts = np.arange(1, len(files) + 1, dtype=np.int64) * WINDOW_SIZE
    starts[1:] += np.cumsum(sizes[:-1], dtype=np.int64)
    ends = starts + sizes
    splits = split_positions(joined)
    # A split at a file's start belongs to the gap before it, one at its end to the file.
    firsts = np.searchsorted(splits, starts, "right").tolist()
    lasts = np.searchsorted(splits, ends, "right").tolist()
    split_list = splits.tolist()
    holed = _files_with_zero_blocks(_as_array(joined), starts, ends)
    result: list[list[Span]] = []
    for index, (data, size, start, first, last) in enumerate(zip(files, sizes, starts.tolist(), firsts, lasts)):
        holes = find_holes(data) if index in holed else []
        if first == last and not holes and size:
            result.append([(0, size, False)])
        else:
            result.append(_assemble(size, holes, [split - start for split in split_list[first:last]]))
    return result


#: Any run of :data:`HOLE_THRESHOLD` zero bytes holds a whole aligned block of this many bytes.
_ZERO_BLOCK = HOLE_THRESHOLD // 2
_WORDS_PER_ZERO_BLOCK = _ZERO_BLOCK // 8


def _files_with_zero_blocks(arr: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> set[int]:
    """Indexes of the files (``arr[starts[i]:ends[i]]``) that hold an all-zero block of
    :data:`_ZERO_BLOCK` bytes aligned in ``arr``: every file with a hole is among them."""
    words = arr[:len(arr) // _ZERO_BLOCK * _ZERO_BLOCK].view(np.uint64).reshape(-1, _WORDS_PER_ZERO_BLOCK)
    zero_blocks = np.flatnonzero(np.bitwise_or.reduce(words, axis=1) == 0) * _ZERO_BLOCK
    if not zero_blocks.size:
        return set()
    owners = np.searchsorted(starts, zero_blocks, "right") - 1
    inside = (owners >= 0) & (zero_blocks + _ZERO_BLOCK <= ends[np.maximum(owners, 0)])
    return set(owners[inside].tolist())


def _assemble(size: int, holes: list[tuple[int, int]], splits: list[int]) -> list[Span]:
    """Chunks from a file's holes and split points (splits inside holes are dropped)."""
    chunks: list[Span] = []
    start = hole_index = 0
    for end in splits + [size]:  # a split inside a hole ends at or before start: skipped
        while hole_index < len(holes) and holes[hole_index][0] < end:
            hole_start, hole_end = holes[hole_index]
            if hole_start > start:
                chunks.append((start, hole_start - start, False))
            chunks.append((hole_start, hole_end - hole_start, True))
            start = hole_end
            hole_index += 1
        if end > start:
            chunks.append((start, end - start, False))
            start = end
    return chunks


def _bounded_ranges(holes: list[tuple[int, int]], start: int, end: int) -> list[tuple[int, int]]:
    """The stretches of [start, end) between ``holes``, merged like :func:`_data_ranges`."""
    ranges: list[tuple[int, int]] = []
    pos = start
    for hole_start, hole_end in holes + [(end, end)]:
        if hole_start > pos:
            if ranges and pos - ranges[-1][1] < _COALESCE:
                ranges[-1] = (ranges[-1][0], hole_start)
            else:
                ranges.append((pos, hole_start))
        pos = hole_end
    return ranges


def chunk_stream(read: Callable[[int, int], Buffer], size: int, *,
                 window: int = BLOCK_SIZE) -> Iterator[Span]:
    """:func:`chunk_file` for a file too large for memory, read ``window`` bytes at a time.

    ``read(offset, length)`` must return exactly ``length`` bytes of the file at ``offset``; it is
    called for consecutive, non-overlapping stretches of at most ``window`` bytes, so every byte is
    read once, in order. Yields the same chunks as ``chunk_file(whole_file)``, each as soon as it
    is certain (a data chunk when its split is seen, a hole when its first non-zero follower is).
    Besides the current window only 63 bytes of rolling context are kept, and the length of a zero
    run (under :data:`HOLE_THRESHOLD` bytes) ending the previous window, whose fate (hole or data)
    the next window decides; a hole longer than the window is read through, never held whole.
    ``window`` may be any positive size; below about 64 KiB the per-window overhead shows.
    """
    if window < 1:
        raise ValueError(f"window must be positive, not {window}")
    if size < 0:
        raise ValueError(f"size must be non-negative, not {size}")
    return _StreamChunker(read, size, window).chunks()


_ZERO_CONTEXT = bytes(_CONTEXT)


class _StreamChunker:
    """:func:`chunk_stream`'s state between windows.

    Normal state: the zero bytes ``[pos - carry, pos)`` are neither tested nor classified yet, and
    ``context`` holds the 63 bytes before them (zeros before the file start). Hole state
    (``hole_start >= 0``): ``[hole_start, pos)`` is a hole (``chunk_start == hole_start``) whose
    end is not known yet.
    """

    def __init__(self, read: Callable[[int, int], Buffer], size: int, window: int) -> None:
        self.read, self.size, self.window = read, size, window
        self.chunk_start = 0  # everything before it has been yielded
        self.pos = 0  # next byte to read
        self.carry = 0
        self.context = _ZERO_CONTEXT
        self.hole_start = -1

    def chunks(self) -> Iterator[Span]:
        while self.pos < self.size:
            yield from self._window(min(self.window, self.size - self.pos))
        if self.hole_start >= 0:
            yield (self.hole_start, self.size - self.hole_start, True)

    def _read(self, n: int) -> bytes | bytearray:
        data = self.read(self.pos, n)
        if not isinstance(data, (bytes, bytearray)):
            data = _byte_view(data).tobytes()
        if len(data) != n:
            raise ValueError(f"read({self.pos}, {n}) returned {len(data)} bytes")
        return data

    def _window(self, n: int) -> Iterator[Span]:
        """Classify the next ``n`` bytes, yielding every chunk they settle."""
        pos = self.pos
        data = self._read(n)
        view = memoryview(data)
        arr = np.frombuffer(view, np.uint8)
        last = pos + n == self.size
        skip = 0  # bytes of ``data`` that continue the open hole
        if self.hole_start >= 0:
            skip = _first_nonzero(arr, view, 0)
            if skip == n:
                self.pos += n
                return
            yield (self.hole_start, pos + skip - self.hole_start, True)
            self.chunk_start = pos + skip
            self.hole_start = -1
            self.context = _ZERO_CONTEXT  # a hole is longer than the context
        start = pos + skip - self.carry  # file offset of the first byte to test in this window
        first, holes = _window_holes(data, arr, view, pos, skip, start, self.carry)
        if first == n and not holes and not last:  # a short zero run so far: wait and see
            self.carry += n - skip
            self.pos += n
            return
        data_end, open_hole = _settled_end(arr, holes, pos, first, last)
        # Splits on the virtual buffer context + carried zeros + data[skip:]: its first 63 tested
        # bytes need the small ``head`` buffer, the rest has its whole context inside ``data``.
        head = self.context + bytes(self.carry) + bytes(view[skip:skip + _CONTEXT])
        splits = _window_splits(data, head, holes, pos, skip, start, data_end)
        # The pending data chunk ends at data_end only if a hole follows or the file ends.
        yield from self._emit(splits + ([data_end] if last or open_hole >= 0 else []), holes)
        self.hole_start = open_hole
        self.carry = 0 if open_hole >= 0 else pos + n - data_end
        if open_hole < 0:
            self.context = _context_before(view, head, pos, skip, start, data_end)
        self.pos += n

    def _emit(self, ends: list[int], holes: list[tuple[int, int]]) -> Iterator[Span]:
        """Data chunks ending at ``ends`` and the holes between them. A split inside a hole ends
        at or before chunk_start: skipped."""
        hole_index = 0
        for end in ends:
            while hole_index < len(holes) and holes[hole_index][0] < end:
                yield from self._through_hole(holes[hole_index])
                hole_index += 1
            if end > self.chunk_start:
                yield (self.chunk_start, end - self.chunk_start, False)
                self.chunk_start = end
        for hole in holes[hole_index:]:
            yield from self._through_hole(hole)

    def _through_hole(self, hole: tuple[int, int]) -> Iterator[Span]:
        """The data before a closed hole, then the hole."""
        closed_start, closed_end = hole
        if closed_start > self.chunk_start:
            yield (self.chunk_start, closed_start - self.chunk_start, False)
        yield (closed_start, closed_end - closed_start, True)
        self.chunk_start = closed_end


def _window_holes(data: bytes | bytearray, arr: np.ndarray, view: memoryview, pos: int, skip: int,
                  start: int, carry: int) -> tuple[int, list[tuple[int, int]]]:
    """The first non-zero byte of a window, and its holes: the leading zero run (which may
    extend the carried one), then the others."""
    n = len(data)
    first = _first_nonzero(arr, view, skip)
    holes: list[tuple[int, int]] = []
    if carry + first - skip >= HOLE_THRESHOLD:
        holes.append((start, pos + first))
    scan = first
    while scan <= n - HOLE_THRESHOLD and (found := data.find(_HOLE_NEEDLE, scan)) >= 0:
        scan = _first_nonzero(arr, view, found + HOLE_THRESHOLD)
        holes.append((pos + found, pos + scan))
    return first, holes


def _settled_end(arr: np.ndarray, holes: list[tuple[int, int]], pos: int, first: int,
                 last: bool) -> tuple[int, int]:
    """``(data_end, open_hole)``: bytes up to ``data_end`` are settled; a zero run ending the
    window may grow, and when it is a hole already it is taken off ``holes`` as ``open_hole``
    (else -1)."""
    n = len(arr)
    if last:
        return pos + n, -1
    if holes and holes[-1][1] == pos + n:
        open_hole = holes.pop()[0]
        return open_hole, open_hole
    if arr[n - 1] == 0:  # under HOLE_THRESHOLD zeros, else found above; first < n
        low = max(first, n - HOLE_THRESHOLD)
        return pos + low + int(np.flatnonzero(arr[low:])[-1]) + 1, -1
    return pos + n, -1


def _window_splits(data: bytes | bytearray, head: bytes, holes: list[tuple[int, int]], pos: int, skip: int,
                   start: int, data_end: int) -> list[int]:
    """Split positions in ``[start, data_end)`` minus the holes: in ``head`` (whose byte 0 is at
    ``start - 63``) for the first tested bytes, in ``data`` for the rest."""
    base = start - _CONTEXT
    head_ranges, tail_ranges = [], []
    for lo, hi in _bounded_ranges(holes, start, data_end):
        if lo - base < len(head):
            head_ranges.append((lo - base, min(hi - base, len(head))))
        lo = max(lo - pos, skip + _CONTEXT)
        if hi - pos > lo:
            tail_ranges.append((lo, hi - pos))
    splits: list[int] = []
    if head_ranges:
        splits += (split_positions(head, head_ranges) + base).tolist()
    if tail_ranges:
        splits += (split_positions(data, tail_ranges) + pos).tolist()
    return splits


def _context_before(view: memoryview, head: bytes, pos: int, skip: int, start: int, data_end: int) -> bytes:
    """The 63 bytes before ``data_end``: inside ``data[skip:]``, or else inside ``head``."""
    if data_end - pos - _CONTEXT >= skip:
        return bytes(view[data_end - pos - _CONTEXT:data_end - pos])
    base = start - _CONTEXT
    return head[data_end - base - _CONTEXT:data_end - base]
