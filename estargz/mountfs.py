"""Mount a layer or a whole image lazily as a read-only FUSE file system (libfuse 3 via mfusepy).

Reads fetch only the chunks they touch, through :meth:`Reader.read_chunk` (every chunk checked
against its digest); a chunk that fails its check is an I/O error and a log line, never bytes.
Prioritized (landmark) files are prefetched in the background, then optionally everything else.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from .chunkcache import DEFAULT_CACHE_SIZE, ChunkCache
from .cstoc import parse_rfc3339
from .errors import EStargzError, FormatError, UnsupportedInputError
from .ordering import NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, PREFETCH_MODES
from .overlay import Node, OverlayTree
from .reader import Chunk, Entry, EntryFile

if TYPE_CHECKING:
    from .layers import Layer

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "PREFETCH_MODES",
    "FuseUnavailableError",
    "MountStats",
    "MountedImage",
    "mount",
    "unmount",
]

log = logging.getLogger("estargz.mountfs")

#: Largest blob range one prefetch request reads; a chunk read on demand is fetched in one
#: request when its compressed bytes are no more than this.
_PREFETCH_WINDOW = 16 << 20
#: Prefetch windows fetched at once; their chunks are inflated and checked on at most as many
#: threads as there are CPUs.
_PREFETCH_THREADS = 4
_FUSE_DEVICE = "/dev/fuse"
#: Seconds the kernel may keep attributes and names (the file system never changes).
_KERNEL_CACHE_SECONDS = 3600
_BLOCK_SIZE = 4096
_NAME_MAX = 255
_TYPE_BITS = {"reg": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK, "char": stat.S_IFCHR,
              "block": stat.S_IFBLK, "fifo": stat.S_IFIFO}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
#: Seconds ``mount --daemon`` waits for the file system to appear.
DAEMON_START_TIMEOUT = 120.0
#: Seconds between looks at whether the mount point shows the file system yet.
_MOUNT_POLL_SECONDS = 0.005
_UNMOUNT_TOOLS = ("fusermount3", "fusermount")
#: Characters of the source shown as the file system's name (``mount``, /proc/mounts).
_MAX_FSNAME = 200


class FuseUnavailableError(UnsupportedInputError):
    """This machine cannot mount: no ``/dev/fuse``, no libfuse, or no mfusepy."""


@dataclass
class MountStats:
    """What a mount fetched and how its cache did."""

    bytes_fetched: int
    requests: int
    chunks_fetched: int
    prefetched_bytes: int
    errors: int
    cache: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {"bytesFetched": self.bytes_fetched, "requests": self.requests,
                "chunksFetched": self.chunks_fetched, "prefetchedBytes": self.prefetched_bytes,
                "errors": self.errors, "cache": self.cache}


def _ns(entry: Entry) -> int:
    """The modification time in nanoseconds since the epoch (0 without one, as Go reads it)."""
    try:
        seconds, nanos = parse_rfc3339(entry.modtime)
    except FormatError:
        return 0
    return seconds * 10**9 + nanos


def _device(entry: Entry) -> int:
    """``st_rdev`` of a device entry; EOVERFLOW when this system cannot represent its numbers."""
    if entry.type not in ("char", "block"):
        return 0
    try:
        return os.makedev(entry.dev_major, entry.dev_minor)
    except (OverflowError, ValueError):
        raise OSError(errno.EOVERFLOW, os.strerror(errno.EOVERFLOW)) from None


class MountedImage:
    """The merged layers as a file system, without FUSE: attributes, names and verified reads."""

    def __init__(self, layers: Sequence[Layer], cache: ChunkCache) -> None:
        self.layers = list(layers)
        self.tree = OverlayTree([layer.reader for layer in self.layers])
        self.cache = cache
        self._lock = threading.Lock()
        self._inflight: dict[Hashable, threading.Event] = {}
        self.chunks_fetched = 0
        self.prefetched_bytes = 0
        self.errors = 0
        self._planned = 0
        self._stop = threading.Event()

    # -- attributes ----------------------------------------------------------------------------
    def attributes(self, node: Node) -> dict[str, int]:
        entry = node.entry
        size = len(os.fsencode(entry.link_name)) if entry.type == "symlink" else 0
        if entry.type == "reg":
            size = entry.size
        when = _ns(entry)
        return {"st_mode": _TYPE_BITS[entry.type] | entry.permissions, "st_ino": node.inode,
                "st_nlink": node.nlink, "st_uid": entry.uid, "st_gid": entry.gid, "st_size": size,
                "st_rdev": _device(entry),
                "st_blksize": _BLOCK_SIZE, "st_blocks": (size + 511) // 512,
                "st_atime": when, "st_mtime": when, "st_ctime": when}

    # -- contents ------------------------------------------------------------------------------
    def read(self, node: Node, offset: int, size: int) -> bytes:
        """Up to ``size`` verified bytes of a regular file at ``offset``."""
        entry = node.entry
        end = min(entry.size, offset + size)
        parts = []
        for chunk in _chunks_between(entry.chunks, offset, end):
            data = self.chunk(node.layer, entry, chunk)
            start = max(offset, chunk.chunk_offset) - chunk.chunk_offset
            stop = min(end, chunk.chunk_offset + chunk.chunk_size) - chunk.chunk_offset
            parts.append(data[start:stop])
        return b"".join(parts)

    def chunk(self, layer: int, entry: Entry, chunk: Chunk) -> bytes:
        """One chunk's verified bytes, from the cache or fetched (once, however many ask)."""
        key = _key(layer, chunk)
        while True:
            data = self.cache.get(key, chunk.chunk_digest)
            if data is not None:
                return data
            with self._lock:
                waiting = self._inflight.get(key)
                if waiting is None:
                    self._inflight[key] = threading.Event()
                    break
            waiting.wait()
        try:
            return self._fetch(layer, entry, chunk, key)
        finally:
            self._release([key])

    def _claim(self, layer: int, items: list[tuple[Entry, Chunk]]) -> list[tuple[Entry, Chunk]]:
        """The chunks of ``items`` neither cached nor being fetched, now marked as being fetched."""
        claimed = []
        with self._lock:
            for entry, chunk in items:
                key = _key(layer, chunk)
                if key not in self._inflight and key not in self.cache:
                    self._inflight[key] = threading.Event()
                    claimed.append((entry, chunk))
        return claimed

    def _release(self, keys: list[Hashable]) -> None:
        with self._lock:
            for key in keys:
                self._inflight.pop(key).set()

    def _fetch(self, layer: int, entry: Entry, chunk: Chunk, key: Hashable) -> bytes:
        """A chunk's verified bytes, its compressed bytes fetched in one request (or found in a
        prefetch window), now cached."""
        reader, source = self.layers[layer].reader, self.layers[layer].source
        if chunk.chunk_digest:
            whole = chunk.next_offset - chunk.offset <= _PREFETCH_WINDOW
            with source.preloaded(chunk.offset, chunk.next_offset) if whole else nullcontext():
                data = reader.read_chunk(chunk, name=entry.name)
            self._count(1)
            self.cache.put(key, data, chunk.chunk_digest)
            return data
        return self._fetch_whole_file(layer, entry, chunk)

    def _fetch_whole_file(self, layer: int, entry: Entry, wanted: Chunk) -> bytes:
        """A chunk without its own digest, read through its file, which checks the whole file
        against its digest first."""
        with EntryFile(self.layers[layer].reader, entry) as f:
            f.seek(wanted.chunk_offset)
            data = f.read(wanted.chunk_size)
        self._count(len(entry.chunks) + 1)
        self.cache.put(_key(layer, wanted), data)
        return data

    def _count(self, chunks: int) -> None:
        with self._lock:
            self.chunks_fetched += chunks

    def failed(self, what: str, exc: BaseException) -> None:
        """Log a read that could not be served (it becomes an I/O error)."""
        with self._lock:
            self.errors += 1
        log.error("estargz mount: %s: %s", what, exc)

    # -- prefetch ------------------------------------------------------------------------------
    def prefetch(self, mode: str) -> None:
        """Fetch the landmark (prioritized) files of every layer, then with ``all`` the rest;
        stops when the cache could hold no more or :meth:`stop` is called."""
        if mode not in PREFETCH_MODES:
            raise ValueError(f"prefetch mode must be one of {', '.join(PREFETCH_MODES)}")
        if mode == "none":
            return
        visible = {(node.layer, id(node.entry)): node for node in self.tree.files()}
        for phase in ("landmark", "all") if mode == "all" else ("landmark",):
            for layer in range(len(self.layers)):
                if not self._prefetch_layer(layer, visible, phase):
                    return

    def stop(self) -> None:
        self._stop.set()

    def _prefetch_layer(self, layer: int, visible: dict[tuple[int, int], Node], phase: str) -> bool:
        prioritized = _prioritized(self.layers[layer].reader)
        work: list[tuple[Entry, Chunk]] = []
        for (index, _), node in visible.items():
            if index == layer and (node.entry.name in prioritized) == (phase == "landmark"):
                work.extend((node.entry, chunk) for chunk in node.entry.chunks)
        work.sort(key=lambda item: item[1].offset)
        inflaters = min(_PREFETCH_THREADS, os.cpu_count() or 1)
        with ThreadPoolExecutor(inflaters, thread_name_prefix="estargz-inflate") as chunks, \
                ThreadPoolExecutor(_PREFETCH_THREADS, thread_name_prefix="estargz-prefetch") as windows:
            for window in _windows(work):
                self._planned += sum(chunk.chunk_size for _, chunk in window)
                if self._stop.is_set() or self._planned > self.cache.capacity:
                    return False
                windows.submit(self._prefetch_window, layer, window, chunks)
        return not self._stop.is_set()

    def _prefetch_window(self, layer: int, window: list[tuple[Entry, Chunk]], chunks: Executor) -> None:
        """Fetch a window's chunks with one request, then inflate and check them on ``chunks``;
        a reader of one waits until that chunk is cached, instead of fetching it again."""
        claimed = self._claim(layer, window) if not self._stop.is_set() else []
        if not claimed:
            return
        start, end = claimed[0][1].offset, max(chunk.next_offset for _, chunk in claimed)
        with ExitStack() as held:
            try:
                held.enter_context(self.layers[layer].source.preloaded(start, end))
            except (EStargzError, OSError) as exc:
                self.failed(f"prefetch of layer {self.layers[layer].name}", exc)
                self._release([_key(layer, chunk) for _, chunk in claimed])
                return
            for _ in chunks.map(lambda item: self._prefetch_chunk(layer, *item), claimed):
                pass

    def _prefetch_chunk(self, layer: int, entry: Entry, chunk: Chunk) -> None:
        """Cache one claimed chunk (unless stopping), then let its readers have it."""
        key = _key(layer, chunk)
        try:
            if not self._stop.is_set():
                self._fetch(layer, entry, chunk, key)
                with self._lock:
                    self.prefetched_bytes += chunk.chunk_size
        except (EStargzError, OSError) as exc:
            self.failed(f"prefetch of {entry.name!r} in layer {self.layers[layer].name}", exc)
        finally:
            self._release([key])

    # -- figures -------------------------------------------------------------------------------
    def stats(self) -> MountStats:
        return MountStats(sum(layer.source.bytes for layer in self.layers),
                          sum(layer.source.requests for layer in self.layers),
                          self.chunks_fetched, self.prefetched_bytes, self.errors, self.cache.stats.to_json())

    def close(self) -> None:
        self.stop()
        for layer in self.layers:
            layer.close()


def _key(layer: int, chunk: Chunk) -> Hashable:
    """A chunk's cache key: where its bytes lie in its layer's blob."""
    return (layer, chunk.offset, chunk.inner_offset, chunk.chunk_size)


def _chunks_between(chunks: Sequence[Chunk], start: int, end: int) -> Iterator[Chunk]:
    """The chunks that hold bytes of ``[start, end)``."""
    lo, hi = 0, len(chunks)
    while lo < hi:
        mid = (lo + hi) // 2
        if chunks[mid].chunk_offset + chunks[mid].chunk_size <= start:
            lo = mid + 1
        else:
            hi = mid
    for chunk in chunks[lo:]:
        if chunk.chunk_offset >= end:
            break
        yield chunk


def _prioritized(reader: Any) -> set[str]:
    """Names of the regular files before the prefetch landmark in TOC order (none without one)."""
    if PREFETCH_LANDMARK not in reader or NO_PREFETCH_LANDMARK in reader:
        return set()
    names = set()
    for entry in reader:
        if entry.name == PREFETCH_LANDMARK:
            break
        names.add(entry.name)
    return names


def _windows(work: list[tuple[Entry, Chunk]]) -> Iterator[list[tuple[Entry, Chunk]]]:
    """Runs of chunks (sorted by offset) whose blob range spans at most one prefetch window."""
    window: list[tuple[Entry, Chunk]] = []
    for item in work:
        if window and item[1].next_offset - window[0][1].offset > _PREFETCH_WINDOW:
            yield window
            window = []
        window.append(item)
    if window:
        yield window


# -- FUSE ------------------------------------------------------------------------------------
def _loading_fuse() -> Future[Any]:
    """Check for the FUSE device, then load mfusepy on a thread (finding libfuse runs helper
    programs, which can overlap opening the layers): the future gives the module, or raises
    FuseUnavailableError naming what is missing."""
    if not os.path.exists(_FUSE_DEVICE):
        raise FuseUnavailableError(f"cannot mount: {_FUSE_DEVICE} does not exist (load the fuse kernel module, "
                                   "or give the container --device /dev/fuse)")
    loading: Future[Any] = Future()

    def load() -> None:
        try:
            loading.set_result(_import_fuse())
        except BaseException as exc:  # handed to the caller through the future
            loading.set_exception(exc)

    threading.Thread(target=load, name="estargz-load-fuse", daemon=True).start()
    return loading


def _import_fuse() -> Any:
    """The mfusepy module, or FuseUnavailableError naming what is missing."""
    try:
        import mfusepy
    except ImportError:
        raise FuseUnavailableError("cannot mount: the Python package mfusepy is missing "
                                   "(pip install 'estargz[mount]')") from None
    except OSError as exc:
        raise FuseUnavailableError(f"cannot mount: libfuse is missing ({exc}; "
                                   "apt-get install fuse3 libfuse3-3)") from None
    return mfusepy


# -- running ---------------------------------------------------------------------------------
def mount(source: str, mountpoint: str | os.PathLike[str], *, layer: int | str | None = None,
          platform: str | None = None, toc_digest: str | None = None, prefetch: str = "landmark",
          cache_size: int = DEFAULT_CACHE_SIZE, cache_dir: str | os.PathLike[str] | None = None,
          cache_dir_size: int = 0, stats_interval: float | None = None, stats_stream: TextIO | None = None,
          ready: threading.Event | None = None, **client_options: Any) -> MountStats:
    """Mount ``source`` read-only at ``mountpoint`` and serve it until it is unmounted (or SIGINT,
    SIGTERM, SIGHUP); return what was fetched.

    ``source``: a blob file, an OCI layout directory, or a registry reference (an image: every
    layer merged as overlayfs shows them; or a blob by digest); ``layer`` mounts one layer of an
    image. ``prefetch``: ``landmark`` (prioritized files first, in the background), ``all`` (then
    every other file) or ``none``. The chunk cache keeps ``cache_size`` bytes in memory and, with
    ``cache_dir``, ``cache_dir_size`` bytes there. ``stats_interval`` prints the figures as JSON
    lines to ``stats_stream`` (default standard error) that often. ``ready`` is set once mounted.
    ``client_options`` go to :class:`~estargz.RegistryClient`.
    """
    if prefetch not in PREFETCH_MODES:
        raise ValueError(f"prefetch must be one of {', '.join(PREFETCH_MODES)}, not {prefetch!r}")
    loading = _loading_fuse()
    mountpoint = os.fspath(mountpoint)
    if not os.path.isdir(mountpoint):
        raise FileNotFoundError(errno.ENOENT, "mount point is not a directory", mountpoint)
    cache = ChunkCache(cache_size, cache_dir, cache_dir_size)
    from .layers import open_layers  # registries and HTTP load only when a mount opens its layers

    fuse, layers = _open_while_loading(loading, lambda: open_layers(source, layer=layer, platform=platform,
                                                                    toc_digest=toc_digest, **client_options))
    from .fuseops import FuseOperations

    image = MountedImage(layers, cache)
    for opened in image.layers:
        if opened.anchor == "none":
            log.warning("estargz mount: layer %s: no TOC digest from a checked manifest anchors its TOC; "
                        "it is trusted as far as its source is", opened.name)
    stop = threading.Event()
    mounted = threading.Event()
    started = _start_background(image, prefetch, stats_interval, stats_stream or sys.stderr, stop, mounted, ready,
                                mountpoint)
    try:
        with _default_stop_signals():
            try:
                fuse.FUSE(FuseOperations(image, mounted), mountpoint, foreground=True, ro=True,
                          default_permissions=True, fsname=_option_value(f"estargz:{source}"), subtype="estargz",
                          use_ino=True, attr_timeout=_KERNEL_CACHE_SECONDS, entry_timeout=_KERNEL_CACHE_SECONDS,
                          negative_timeout=_KERNEL_CACHE_SECONDS, kernel_cache=True)
            except RuntimeError as exc:  # libfuse's status; after a stop signal it is non-zero too
                if not mounted.is_set():
                    raise EStargzError(f"libfuse could not mount {mountpoint} (status {exc})") from None
    finally:
        stop.set()
        image.stop()
        for thread in started:
            thread.join()
        image.close()
    return image.stats()


def _open_while_loading(loading: Future[Any], opener: Callable[[], list[Layer]]) -> tuple[Any, list[Layer]]:
    """mfusepy and the opened layers; without FUSE, that is the error raised, whatever opening did."""
    try:
        layers = opener()
    except BaseException:
        loading.result()
        raise
    try:
        return loading.result(), layers
    except BaseException:
        for opened in layers:
            opened.close()
        raise


def _option_value(text: str) -> str:
    """``text`` as a libfuse ``-o`` value: commas and backslashes escaped, at most 200 characters."""
    return text[:_MAX_FSNAME].replace("\\", "\\\\").replace(",", "\\,")


def _start_background(image: MountedImage, prefetch: str, stats_interval: float | None, stream: TextIO,
                      stop: threading.Event, mounted: threading.Event, ready: threading.Event | None,
                      mountpoint: str) -> list[threading.Thread]:
    """Start the prefetch now, while libfuse mounts (a program started on the mount finds its
    first files fetched or on their way), the live figures, and what sets ``mounted`` and
    ``ready`` once the mount point shows the file system."""

    def announce() -> None:
        while not stop.is_set() and not os.path.ismount(mountpoint):
            stop.wait(_MOUNT_POLL_SECONDS)
        if stop.is_set():
            return
        mounted.set()
        if ready is not None:
            ready.set()

    def figures() -> None:
        while not stop.wait(stats_interval):
            stream.write(json.dumps(image.stats().to_json()) + "\n")
            stream.flush()

    threads = [threading.Thread(target=image.prefetch, args=(prefetch,), name="estargz-prefetch", daemon=True),
               threading.Thread(target=announce, name="estargz-mounted", daemon=True)]
    if stats_interval:
        threads.append(threading.Thread(target=figures, name="estargz-stats", daemon=True))
    for thread in threads:
        thread.start()
    return threads


class _default_stop_signals:
    """Hand SIGINT, SIGTERM and SIGHUP to libfuse while it runs (it installs its handlers only
    over the default ones; they end the loop and unmount), and restore the caller's after."""

    _SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __enter__(self) -> None:
        self._saved = {}
        if threading.current_thread() is threading.main_thread():
            self._saved = {signum: signal.signal(signum, signal.SIG_DFL) for signum in self._SIGNALS}

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)


def unmount(mountpoint: str | os.PathLike[str]) -> None:
    """Unmount a FUSE mount point (``fusermount3 -u``; ``umount`` as root without it)."""
    mountpoint = os.fspath(mountpoint)
    tool = next((found for name in _UNMOUNT_TOOLS if (found := shutil.which(name))), None)
    command = [tool, "-u", mountpoint] if tool else ["umount", mountpoint]
    proc = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0:
        message = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise OSError(errno.EINVAL, f"cannot unmount: {message}", mountpoint)


def wait_for_mount(mountpoint: str, process: subprocess.Popen[bytes], timeout: float = DAEMON_START_TIMEOUT) -> bool:
    """Wait until ``mountpoint`` is mounted (True) or ``process`` has ended or time ran out (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.ismount(mountpoint):
            return True
        if process.poll() is not None:
            return False
        time.sleep(_MOUNT_POLL_SECONDS)
    return False
