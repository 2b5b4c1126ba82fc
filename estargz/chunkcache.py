"""A bounded cache of verified chunks: least recently used first out, in memory and optionally
in a directory (content-addressed by chunk digest, re-checked on every load)."""

from __future__ import annotations

import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

from .digests import SHA256, sha256_digest

__all__ = ["DEFAULT_CACHE_SIZE", "CacheStats", "ChunkCache"]

#: Memory the chunk cache may hold by default.
DEFAULT_CACHE_SIZE = 256 << 20
#: How the names of chunk files in a cache directory start (the digest, ``:`` as ``-``).
_DISK_PREFIX = "sha256-"


@dataclass
class CacheStats:
    """Cache figures: lookups answered from memory or disk, misses, evictions, bytes held."""

    memory_hits: int = 0
    disk_hits: int = 0
    misses: int = 0
    evictions: int = 0
    memory_bytes: int = 0
    disk_bytes: int = 0

    def to_json(self) -> dict[str, int]:
        return {"memoryHits": self.memory_hits, "diskHits": self.disk_hits, "misses": self.misses,
                "evictions": self.evictions, "memoryBytes": self.memory_bytes, "diskBytes": self.disk_bytes}


class _Lru:
    """Keys in least-recently-used order with their sizes, and the total, under a byte limit
    (with ``keep_newest``, the newest key stays even when it alone is over the limit)."""

    def __init__(self, limit: int, keep_newest: bool = False) -> None:
        self.limit = limit
        self._keep = 1 if keep_newest else 0
        self.sizes: OrderedDict[Hashable, int] = OrderedDict()
        self.total = 0

    def touch(self, key: Hashable) -> bool:
        if key not in self.sizes:
            return False
        self.sizes.move_to_end(key)
        return True

    def add(self, key: Hashable, size: int) -> list[Hashable]:
        """Record ``key``; return the keys evicted to stay within the limit."""
        self.sizes[key] = size
        self.total += size
        evicted = []
        while self.total > self.limit and len(self.sizes) > self._keep:
            old, old_size = self.sizes.popitem(last=False)
            self.total -= old_size
            evicted.append(old)
        return evicted


class ChunkCache:
    """Chunks by key, at most ``memory_limit`` bytes in memory (or the one chunk last kept, if it
    alone is larger: a file can always be read on without fetching each piece's chunk again) and
    ``disk_limit`` bytes in ``directory`` (a larger chunk is not kept there). Thread-safe.

    Only chunks with a digest go to disk, under the digest's name, and a disk chunk is returned
    only if it still hashes to that digest.
    """

    def __init__(self, memory_limit: int, directory: str | os.PathLike[str] | None = None,
                 disk_limit: int = 0) -> None:
        if memory_limit < 0 or disk_limit < 0:
            raise ValueError("cache limits must not be negative")
        self._memory: dict[Hashable, bytes] = {}
        self._memory_lru = _Lru(memory_limit, keep_newest=True)
        self._directory = os.fspath(directory) if directory is not None else None
        self._disk_lru = _Lru(disk_limit if self._directory is not None else 0)
        self._lock = threading.Lock()
        self.stats = CacheStats()
        if self._directory is not None:
            os.makedirs(self._directory, exist_ok=True)
            self._index_directory()

    @property
    def capacity(self) -> int:
        """Bytes the cache can hold at most (memory and disk)."""
        return self._memory_lru.limit + self._disk_lru.limit

    def get(self, key: Hashable, digest: str = "") -> bytes | None:
        """The chunk under ``key`` (from memory, else from disk by ``digest``), or None."""
        with self._lock:
            if self._memory_lru.touch(key):
                self.stats.memory_hits += 1
                return self._memory[key]
        data = self._load(digest) if digest else None
        with self._lock:
            if data is None:
                self.stats.misses += 1
                return None
            self.stats.disk_hits += 1
            self._keep_in_memory(key, data)
        return data

    def put(self, key: Hashable, data: bytes, digest: str = "") -> None:
        """Keep a verified chunk."""
        with self._lock:
            self._keep_in_memory(key, data)
        if digest and self._directory is not None and len(data) <= self._disk_lru.limit:
            self._store(digest, data)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._memory

    def _keep_in_memory(self, key: Hashable, data: bytes) -> None:
        if key in self._memory:
            return
        self._memory[key] = data
        for old in self._memory_lru.add(key, len(data)):
            del self._memory[old]
            self.stats.evictions += 1
        self.stats.memory_bytes = self._memory_lru.total

    def _index_directory(self) -> None:
        """Take in the chunks an earlier run left in the directory (oldest first), within the limit."""
        found = []
        with os.scandir(self._directory) as entries:
            for item in entries:
                if item.name.startswith(_DISK_PREFIX) and item.is_file(follow_symlinks=False):
                    stat = item.stat(follow_symlinks=False)
                    found.append((stat.st_mtime, item.name, stat.st_size))
        for _, name, size in sorted(found):
            for old in self._disk_lru.add(name.replace("-", ":", 1), size):
                os.unlink(self._path(str(old)))
        self.stats.disk_bytes = self._disk_lru.total

    def _path(self, digest: str) -> str:
        return os.path.join(self._directory or "", digest.replace(":", "-"))

    def _load(self, digest: str) -> bytes | None:
        with self._lock:
            if not self._disk_lru.touch(digest):
                return None
        try:
            with open(self._path(digest), "rb") as f:
                data = f.read()
        except OSError:
            return None
        if not digest.startswith(f"{SHA256}:") or sha256_digest(data) != digest:
            return None
        return data

    def _store(self, digest: str, data: bytes) -> None:
        with self._lock:
            if self._disk_lru.touch(digest):
                return
            evicted = self._disk_lru.add(digest, len(data))
            self.stats.disk_bytes = self._disk_lru.total
        for old in evicted:
            self.stats.evictions += 1
            try:
                os.unlink(self._path(str(old)))
            except FileNotFoundError:
                pass
        if digest in evicted:
            return
        fd, temporary = tempfile.mkstemp(dir=self._directory, prefix=".chunk-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(temporary, self._path(digest))
