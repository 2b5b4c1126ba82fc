"""``estargz mount``: layers merged as overlayfs shows them, served read-only over FUSE.

The merged-tree model and the chunk cache are checked without FUSE. With FUSE (``fuse`` fixture:
skipped on a machine without it, never in CI), blobs of each format, an OCI layout and a
three-layer image from the loopback registry are mounted with the CLI and every file, directory,
link, device and attribute the mount shows is compared with the source tars applied in order
(written here independently of estargz: tarfile, whiteouts, opaque directories). A chunk whose
bytes do not match its digest reads as EIO.
"""

from __future__ import annotations

import dataclasses
import errno
import gzip
import importlib
import io
import json
import os
import random
import signal
import stat
import subprocess
import sys
import tarfile
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helpers import sha256

import estargz
from estargz.chunkcache import ChunkCache
from estargz.layers import open_layers as open_mount_layers
from estargz.mountfs import FuseUnavailableError, MountedImage
from estargz.overlay import OverlayTree
from estargz.source import BLOCK_SIZE

ROOT = Path(__file__).resolve().parent.parent
MTIME = 1700000000
MOUNT_TIMEOUT = 60
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
RNG = random.Random(20261206)
BIG = RNG.randbytes(3 << 20)
"""Random bytes spanning several chunks (chunk size 1 MiB below)."""
CHUNK_SIZE = 1 << 20


# -- layers, written with tarfile ----------------------------------------------------------------

@dataclass
class Member:
    name: str
    kind: str = "reg"
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = MTIME
    link: str = ""
    xattrs: dict[str, str] = field(default_factory=dict)
    dev: tuple[int, int] = (0, 0)


_TAR_TYPES = {"reg": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
              "hardlink": tarfile.LNKTYPE, "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE,
              "fifo": tarfile.FIFOTYPE}


def tar_of(members: list[Member]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type, info.mode, info.uid, info.gid, info.mtime = _TAR_TYPES[m.kind], m.mode, m.uid, m.gid, m.mtime
            info.linkname = m.link
            info.devmajor, info.devminor = m.dev
            info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in m.xattrs.items()}
            if m.kind == "reg":
                info.size = len(m.data)
            tar.addfile(info, io.BytesIO(m.data) if m.kind == "reg" else None)
    return out.getvalue()


def base_layer() -> list[Member]:
    return [
        Member("etc", "dir", mode=0o755),
        Member("etc/os-release", data=b"ID=estargz-mount\n", xattrs={"user.origin": "base"}),
        Member("etc/hostname", data=b"lower\n"),
        Member("etc/hosts.hardlink", "hardlink", link="etc/hostname"),
        Member("usr", "dir", mode=0o755),
        Member("usr/bin", "dir", mode=0o755, uid=1000, gid=100),
        Member("usr/bin/tool", data=b"#!/bin/sh\necho tool\n", mode=0o4755, uid=0, gid=50),
        Member("usr/bin/sh", "symlink", link="/bin/busybox", mode=0o777),
        Member("usr/share", "dir", mode=0o755),
        Member("usr/share/big.bin", data=BIG, mode=0o600, uid=123456, gid=654321, mtime=MTIME - 86400 * 400),
        Member("usr/share/empty", data=b""),
        Member("var", "dir", mode=0o1777),
        Member("var/cache", "dir", mode=0o755),
        Member("var/cache/old", data=b"cached in the lower layer\n"),
        Member("var/cache/sub", "dir", mode=0o700),
        Member("var/cache/sub/deep", data=b"deep\n"),
        Member("dev", "dir", mode=0o755),
        Member("dev/null", "char", mode=0o666, dev=(1, 3)),
        Member("dev/sda", "block", mode=0o660, gid=6, dev=(8, 0)),
        Member("dev/pipe", "fifo", mode=0o600),
        Member("opt", "dir", mode=0o755),
        Member("opt/file-then-dir", data=b"a file below\n"),
        Member("opt/dir-then-file", "dir", mode=0o755),
        Member("opt/dir-then-file/inner", data=b"hidden later\n"),
    ]


def middle_layer() -> list[Member]:
    return [
        Member("etc", "dir", mode=0o755, mtime=MTIME + 60),
        Member("etc/.wh.hostname", data=b""),
        Member("var", "dir", mode=0o1777, mtime=MTIME + 60),
        Member("var/cache", "dir", mode=0o750, uid=7, mtime=MTIME + 60),
        Member("var/cache/.wh..wh..opq", data=b""),
        Member("var/cache/new", data=b"only this is left in var/cache\n"),
        Member("opt", "dir", mode=0o755),
        Member("opt/.wh.file-then-dir", data=b""),
        Member("opt/file-then-dir", "dir", mode=0o711),
        Member("opt/file-then-dir/x", data=b"x\n"),
        Member("opt/dir-then-file", data=b"now a file\n", mode=0o640),
    ]


def top_layer() -> list[Member]:
    return [
        Member("etc", "dir", mode=0o755, mtime=MTIME + 120),
        Member("etc/os-release", data=b"ID=estargz-mount\nVERSION=2\n", mode=0o444,
               xattrs={"user.origin": "top", "user.extra": "yes"}),
        Member("usr", "dir", mode=0o755),
        Member("usr/share", "dir", mode=0o755),
        Member("usr/share/big.bin", data=BIG[::-1], mode=0o644),
        Member("usr/share/big.bin.link", "hardlink", link="usr/share/big.bin"),
    ]


LAYERS = [base_layer(), middle_layer(), top_layer()]


# -- what the mount must show: the tars applied in order -----------------------------------------

@dataclass
class Expected:
    kind: str
    mode: int
    uid: int
    gid: int
    mtime: int
    data: bytes = b""
    link: str = ""
    xattrs: dict[str, bytes] = field(default_factory=dict)
    dev: tuple[int, int] = (0, 0)
    group: int = 0
    """Names of one layer's hardlink group share a number (0: not hardlinked)."""


def _drop(tree: dict[str, Expected], name: str) -> None:
    for key in [k for k in tree if k == name or k.startswith(name + "/")]:
        del tree[key]


def applied(layers: list[list[Member]]) -> dict[str, Expected]:
    """The tree the layers give extracted in order, lowest first, with OCI whiteouts."""
    tree: dict[str, Expected] = {}
    groups = 0
    for members in layers:
        for m in members:
            parent, _, base = m.name.rpartition("/")
            if base == ".wh..wh..opq":
                for key in [k for k in tree if k.startswith(parent + "/")]:
                    del tree[key]
            elif base.startswith(".wh."):
                _drop(tree, f"{parent}/{base[4:]}" if parent else base[4:])
        by_name: dict[str, Expected] = {}
        for m in members:
            if m.name.rpartition("/")[2].startswith(".wh."):
                continue
            if m.kind == "hardlink":
                target = by_name[m.link]
                if not target.group:
                    groups += 1
                    target.group = groups
                _drop(tree, m.name)
                tree[m.name] = by_name[m.name] = target
                continue
            entry = Expected(m.kind, m.mode, m.uid, m.gid, m.mtime, m.data, m.link,
                             {k: v.encode() for k, v in m.xattrs.items()}, m.dev)
            old = tree.get(m.name)
            if not (m.kind == "dir" and old is not None and old.kind == "dir"):
                _drop(tree, m.name)
            tree[m.name] = by_name[m.name] = entry
    return tree


_KINDS = {stat.S_IFREG: "reg", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFCHR: "char",
          stat.S_IFBLK: "block", stat.S_IFIFO: "fifo"}


def compare_tree(mountpoint: Path, expected: dict[str, Expected]) -> None:
    """Every name below ``mountpoint`` against ``expected``: type, mode, owner, time, contents,
    link target, device numbers, xattrs; hardlinked names share an inode, others do not."""
    found: dict[str, os.stat_result] = {}
    for directory, dirs, files in os.walk(mountpoint):
        for name in dirs + files:
            path = os.path.join(directory, name)
            found[os.path.relpath(path, mountpoint)] = os.lstat(path)
    assert sorted(found) == sorted(expected)
    inodes: dict[int, str] = {}
    for name, want in expected.items():
        st, path = found[name], mountpoint / name
        assert (_KINDS[stat.S_IFMT(st.st_mode)], stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, int(st.st_mtime)) \
            == (want.kind, want.mode, want.uid, want.gid, want.mtime), name
        xattrs = {key: os.getxattr(path, key, follow_symlinks=False)
                  for key in os.listxattr(path, follow_symlinks=False)}
        assert xattrs == want.xattrs, name
        if want.kind == "reg":
            assert path.read_bytes() == want.data, name
            assert st.st_size == len(want.data)
            assert st.st_nlink == sum(1 for other in expected.values() if other is want), name
        elif want.kind == "symlink":
            assert os.readlink(path) == want.link
        elif want.kind in ("char", "block"):
            assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == want.dev
        owner = inodes.setdefault(st.st_ino, name)
        assert expected[owner] is want, f"{name} and {owner} share inode {st.st_ino}"


# -- building blobs and images -------------------------------------------------------------------

def convert(tmp_path: Path, members: list[Member], layer_format: str, name: str = "layer",
            **options: Any) -> tuple[Path, estargz.BuildResult]:
    source = tmp_path / f"{name}.tar"
    source.write_bytes(tar_of(members))
    blob = tmp_path / f"{name}.blob"
    result = estargz.convert(source, blob, format=layer_format, chunk_size=CHUNK_SIZE, **options)
    return blob, result


def write_layout(root: Path, blobs: list[tuple[Path, estargz.BuildResult]]) -> Path:
    """An OCI layout tagged ``v1`` holding the converted layers, lowest first."""
    store = root / "blobs" / "sha256"
    store.mkdir(parents=True)

    def put(data: bytes) -> str:
        (store / sha256(data)[7:]).write_bytes(data)
        return sha256(data)

    layers = []
    for blob, result in blobs:
        put(blob.read_bytes())
        layers.append({"mediaType": result.media_type, "digest": result.blob_digest, "size": result.blob_size,
                       "annotations": result.annotations})
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [r.diff_id for _, r in blobs]}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": OCI_CONFIG, "digest": put(config), "size": len(config)},
                           "layers": layers}).encode()
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": put(manifest), "size": len(manifest),
         "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}))
    return root


# -- mounting with the CLI -----------------------------------------------------------------------

@dataclass
class Mounted:
    path: Path
    process: subprocess.Popen
    log: Path

    def stats(self) -> dict[str, Any]:
        """The last figures the mount printed (its exit report, or a live line); {} before any."""
        lines = [line for line in self.log.read_text().split("\n")[:-1] if line.startswith("{")]
        return json.loads(lines[-1]) if lines else {}


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "estargz", *args]


_ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@contextmanager
def mounted(source: str | Path, mountpoint: Path, *options: str) -> Iterator[Mounted]:
    """``estargz mount SOURCE MOUNTPOINT`` in the foreground until the block ends, then
    ``estargz umount``; the process must exit 0 with its figures printed."""
    mountpoint.mkdir(exist_ok=True)
    log = mountpoint.with_name(mountpoint.name + ".log")
    with open(log, "wb") as out:
        process = subprocess.Popen(_command("mount", str(source), str(mountpoint), *options), cwd=ROOT, env=_ENV,
                                   stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while not os.path.ismount(mountpoint):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"mount did not start: {log.read_text()}")
        time.sleep(0.02)
    mount = Mounted(mountpoint, process, log)
    try:
        yield mount
    finally:
        if os.path.ismount(mountpoint):
            subprocess.run(_command("umount", str(mountpoint)), cwd=ROOT, env=_ENV, check=True)
        try:
            assert process.wait(timeout=MOUNT_TIMEOUT) == 0, log.read_text()
        finally:
            if process.poll() is None:
                process.kill()
    assert not os.path.ismount(mountpoint)


# -- the merged tree, without FUSE ---------------------------------------------------------------

def open_layers(tmp_path: Path, layers: list[list[Member]], layer_format: str = estargz.FORMAT_ESTARGZ
                ) -> list[estargz.Reader]:
    return [estargz.open(convert(tmp_path, m, layer_format, f"layer{i}")[0]) for i, m in enumerate(layers)]


def test_overlay_applies_whiteouts_and_opaque_directories(tmp_path: Path) -> None:
    readers = open_layers(tmp_path, LAYERS)
    tree = OverlayTree(readers)
    expected = applied(LAYERS)
    names = {}
    stack = [("", tree.root)]
    while stack:
        path, node = stack.pop()
        for name, child in node.children.items():
            names[f"{path}/{name}" if path else name] = child
            stack.append((f"{path}/{name}" if path else name, child))
    assert sorted(names) == sorted(expected)
    assert tree.lookup("etc/hostname") is None and tree.lookup("etc/hosts.hardlink") is not None
    assert sorted(tree.lookup("var/cache").children) == ["new"]
    assert tree.lookup("var/cache").entry.mode & 0o7777 == 0o750
    assert tree.lookup("opt/dir-then-file").entry.type == "reg"
    assert readers[2].read("usr/share/big.bin") == BIG[::-1]
    assert tree.lookup("usr/share/big.bin") is tree.lookup("usr/share/big.bin.link")
    assert tree.lookup("usr/share/big.bin").nlink == 2
    assert tree.lookup("etc/os-release").layer == 2


def test_overlay_hides_landmarks_and_keeps_lower_metadata_of_implicit_directories(tmp_path: Path) -> None:
    lower = [Member("srv", "dir", mode=0o700, uid=5), Member("srv/a", data=b"a")]
    upper = [Member("srv/b", data=b"b")]  # srv has no entry of its own here
    blobs = [convert(tmp_path, lower, estargz.FORMAT_ESTARGZ, "lower", prioritized_files=["srv/a"]),
             convert(tmp_path, upper, estargz.FORMAT_ESTARGZ, "upper")]
    readers = [estargz.open(blob) for blob, _ in blobs]
    assert estargz.PREFETCH_LANDMARK in readers[0] and estargz.NO_PREFETCH_LANDMARK in readers[1]
    tree = OverlayTree(readers)
    assert sorted(tree.root.children) == ["srv"]
    srv = tree.lookup("srv")
    assert (srv.entry.mode & 0o7777, srv.entry.uid, sorted(srv.children)) == (0o700, 5, ["a", "b"])


def test_chunks_without_digest_are_checked_against_the_file_digest(tmp_path: Path) -> None:
    """A chunk without its own digest (older eStargz writers) is served only after the whole file
    matched its digest."""
    blob, _ = convert(tmp_path, base_layer(), estargz.FORMAT_ESTARGZ)
    layers = open_mount_layers(blob)
    image = MountedImage(layers, ChunkCache(1 << 30))
    node = image.tree.lookup("usr/share/big.bin")
    for chunk in node.entry.chunks:
        chunk.chunk_digest = ""
    assert image.read(node, CHUNK_SIZE - 10, 20) == BIG[CHUNK_SIZE - 10:CHUNK_SIZE + 10]
    # the whole file once for its digest, then the two chunks the read touches, each checked
    assert len(node.entry.chunks) == 3 and image.chunks_fetched == 3 + 2
    node.entry.digest = sha256(b"something else")
    for chunk in node.entry.chunks:  # the digests the first read derived
        chunk.chunk_digest = ""
    image.cache = ChunkCache(1 << 30)
    with pytest.raises(estargz.VerificationError, match="digest mismatch for 'usr/share/big.bin'"):
        image.read(node, 0, 1)
    node.entry.digest = ""
    with pytest.raises(estargz.VerificationError, match="no digest"):
        image.read(node, 0, 1)
    image.close()


# -- what the mount fetches, without FUSE -------------------------------------------------------

@pytest.mark.parametrize("layer_format", estargz.FORMATS)
def test_opening_a_layer_fetches_its_footer_then_only_its_toc(tmp_path: Path, layer_format: str) -> None:
    """No share of the blob beyond the TOC is fetched when mounting (bytes a start does not need)."""
    blob, _ = convert(tmp_path, base_layer(), layer_format)
    [layer] = open_mount_layers(str(blob))
    assert layer.source.requests == 2
    assert layer.source.bytes <= blob.stat().st_size - layer.reader.data_end
    layer.close()


def test_a_chunk_read_on_demand_is_one_request(tmp_path: Path) -> None:
    blob, _ = convert(tmp_path, base_layer(), estargz.FORMAT_ESTARGZ)
    image = MountedImage(open_mount_layers(str(blob)), ChunkCache(1 << 30))
    node = image.tree.lookup("usr/share/big.bin")
    chunk, source = node.entry.chunks[1], image.layers[0].source
    assert chunk.next_offset - chunk.offset > BLOCK_SIZE  # more than one piece of the reader's
    before = source.requests, source.bytes
    assert image.read(node, CHUNK_SIZE + 5, 10) == BIG[CHUNK_SIZE + 5:CHUNK_SIZE + 15]
    assert (source.requests - before[0], source.bytes - before[1]) == (1, chunk.next_offset - chunk.offset)
    image.close()


def test_a_prefetched_chunk_is_served_while_later_ones_are_still_being_fetched(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read waiting for a chunk the prefetch is fetching gets it once that chunk is cached, not
    once the prefetch's whole window is."""
    blob, _ = convert(tmp_path, base_layer(), estargz.FORMAT_ESTARGZ, prioritized_files=["usr/share/big.bin"])
    image = MountedImage(open_mount_layers(str(blob)), ChunkCache(1 << 30))
    node = image.tree.lookup("usr/share/big.bin")
    reader, (first, *_, last) = image.layers[0].reader, node.entry.chunks
    gates = {id(first): threading.Event(), id(last): threading.Event()}
    started, looked = threading.Event(), threading.Event()
    read_chunk, cache_get = reader.read_chunk, image.cache.get

    def held_back(chunk: estargz.Chunk, *, name: str = "") -> bytes:
        if chunk is first:
            started.set()
        if id(chunk) in gates:
            gates[id(chunk)].wait()
        return read_chunk(chunk, name=name)

    def get(key: Any, digest: str | None = None) -> bytes | None:
        found = cache_get(key, digest)
        if threading.current_thread().name.startswith("reader"):
            looked.set()
        return found

    monkeypatch.setattr(reader, "read_chunk", held_back)
    monkeypatch.setattr(image.cache, "get", get)
    prefetching = threading.Thread(target=image.prefetch, args=("landmark",))
    prefetching.start()
    readers = ThreadPoolExecutor(1, thread_name_prefix="reader")
    try:
        assert started.wait(MOUNT_TIMEOUT)
        requests = image.layers[0].source.requests
        reading = readers.submit(image.read, node, 0, 10)
        assert looked.wait(MOUNT_TIMEOUT)  # the read found the first chunk neither cached nor free to fetch
        gates[id(first)].set()
        assert reading.result(timeout=MOUNT_TIMEOUT) == BIG[:10]  # while the last chunk is held back
        assert image.layers[0].source.requests == requests  # from the prefetch, not fetched again
    finally:
        for gate in gates.values():
            gate.set()
        readers.shutdown()
        prefetching.join()
    assert image.prefetched_bytes == len(BIG)
    image.close()


# -- the chunk cache, without FUSE ---------------------------------------------------------------

def test_cache_stays_within_its_memory_limit() -> None:
    cache = ChunkCache(memory_limit=250)
    for key in range(10):
        cache.put(key, bytes([key]) * 100)
    assert cache.stats.memory_bytes <= 250 and cache.stats.evictions == 8
    assert cache.get(9) == bytes([9]) * 100 and cache.get(0) is None
    cache.put("huge", b"x" * 251)  # larger than the limit: kept alone
    assert cache.get("huge") == b"x" * 251 and cache.get(9) is None
    assert cache.stats.memory_bytes == 251
    cache.put(10, b"y")
    assert cache.get("huge") is None and cache.stats.memory_bytes == 1


def test_disk_cache_is_checked_and_survives_a_restart(tmp_path: Path) -> None:
    data = b"verified chunk" * 100
    digest = sha256(data)
    cache = ChunkCache(memory_limit=0, directory=tmp_path, disk_limit=1 << 20)
    cache.put("k", data, digest)
    cache.put("other", b"pushes k out of memory")
    assert cache.get("k", digest) == data and cache.stats.disk_hits == 1
    again = ChunkCache(memory_limit=0, directory=tmp_path, disk_limit=1 << 20)
    assert again.get("other key", digest) == data
    (tmp_path / digest.replace(":", "-")).write_bytes(b"tampered" + data[8:])
    assert ChunkCache(memory_limit=0, directory=tmp_path, disk_limit=1 << 20).get("k", digest) is None


def test_disk_cache_stays_within_its_limit(tmp_path: Path) -> None:
    cache = ChunkCache(memory_limit=0, directory=tmp_path, disk_limit=1000)
    for index in range(5):
        data = bytes([index]) * 400
        cache.put(index, data, sha256(data))
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= 1000
    assert len(list(tmp_path.iterdir())) == 2


def test_no_fuse_device_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mount_module = importlib.import_module("estargz.mountfs")
    monkeypatch.setattr(mount_module, "_FUSE_DEVICE", str(tmp_path / "no-fuse"))
    blob, _ = convert(tmp_path, base_layer(), estargz.FORMAT_ESTARGZ)
    with pytest.raises(FuseUnavailableError, match="no-fuse does not exist"):
        estargz.mount(str(blob), tmp_path)


@pytest.mark.parametrize("source", ["layer.blob", "missing.blob"])
def test_no_mfusepy_is_a_clear_error(tmp_path: Path, source: str) -> None:
    """Missing FUSE is the error, whether or not the source would open."""
    convert(tmp_path, base_layer(), estargz.FORMAT_ESTARGZ)
    (tmp_path / "mnt").mkdir()
    (tmp_path / "mfusepy.py").write_text("raise ImportError('not installed here')\n")
    proc = subprocess.run(_command("mount", str(tmp_path / source), str(tmp_path / "mnt")), cwd=ROOT,
                          capture_output=True,
                          text=True, env={**_ENV, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}, check=False)
    if not os.path.exists("/dev/fuse"):
        assert "/dev/fuse does not exist" in proc.stderr
    else:
        assert proc.stderr.strip().splitlines() == [
            "estargz: error: cannot mount: the Python package mfusepy is missing (pip install 'estargz[mount]')"]
    assert proc.returncode == 1


# -- mounted -------------------------------------------------------------------------------------

@pytest.mark.parametrize("layer_format", estargz.FORMATS)
def test_mount_blob_shows_every_attribute(fuse: None, tmp_path: Path, layer_format: str) -> None:
    blob, _ = convert(tmp_path, base_layer(), layer_format)
    with mounted(blob, tmp_path / "mnt", "--prefetch", "none") as mount:
        compare_tree(mount.path, applied([base_layer()]))
        with pytest.raises(OSError) as caught:
            (mount.path / "etc" / "new").write_bytes(b"")
        assert caught.value.errno == errno.EROFS
    stats = mount.stats()
    size = blob.stat().st_size
    block = min(64 << 10, max(4 << 10, size // 512))  # reads fetch whole aligned blocks of the blob
    assert stats["errors"] == 0 and 0 < stats["bytesFetched"] <= size + block * stats["requests"]


def test_mount_oci_layout_merges_layers(fuse: None, tmp_path: Path) -> None:
    blobs = [convert(tmp_path, m, fmt, f"layer{i}") for i, (m, fmt) in
             enumerate(zip(LAYERS, (estargz.FORMAT_ESTARGZ, estargz.FORMAT_ZSTD_CHUNKED,
                                    estargz.FORMAT_ZSTD_CHUNKED_STARGZ), strict=True))]
    layout = write_layout(tmp_path / "layout", blobs)
    with mounted(layout, tmp_path / "mnt") as mount:
        compare_tree(mount.path, applied(LAYERS))


def test_layer_without_toc_is_refused_before_mounting(fuse: None, tmp_path: Path) -> None:
    blob, result = convert(tmp_path, base_layer(), estargz.FORMAT_ESTARGZ)
    plain = tmp_path / "plain.tar.gz"
    plain.write_bytes(gzip.compress(tar_of(middle_layer()), mtime=0))
    plain_result = dataclasses.replace(result, blob_digest=sha256(plain.read_bytes()), blob_size=plain.stat().st_size,
                                       media_type="application/vnd.oci.image.layer.v1.tar+gzip", annotations={})
    layout = write_layout(tmp_path / "layout", [(blob, result), (plain, plain_result)])
    (tmp_path / "mnt").mkdir()
    proc = subprocess.run(_command("mount", str(layout), str(tmp_path / "mnt")), cwd=ROOT, env=_ENV,
                          capture_output=True, text=True, timeout=MOUNT_TIMEOUT, check=False)
    assert proc.returncode == 1 and not os.path.ismount(tmp_path / "mnt")
    message = proc.stderr.strip().splitlines()
    assert len(message) == 1 and message[0].startswith(f"estargz: error: layer {plain_result.blob_digest}: ")


@pytest.mark.interop
def test_mount_image_from_registry(fuse: None, tmp_path: Path, skopeo: Path, docker_registry: Any) -> None:
    blobs = [convert(tmp_path, m, estargz.FORMAT_ESTARGZ, f"layer{i}", prioritized_files=["etc/os-release"]
                     if i == 2 else ()) for i, m in enumerate(LAYERS)]
    layout = write_layout(tmp_path / "layout", blobs)
    ref = f"{docker_registry.host}/estargz/mount:v1"
    proc = subprocess.run([str(skopeo), "copy", "-q", "--preserve-digests", "--dest-tls-verify=false",
                           f"oci:{layout}:v1", f"docker://{ref}"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    with mounted(ref, tmp_path / "mnt", "--insecure") as mount:
        compare_tree(mount.path, applied(LAYERS))
    stats = mount.stats()
    total = sum(blob.stat().st_size for blob, _ in blobs)
    assert stats["errors"] == 0 and stats["bytesFetched"] <= total + 64 * stats["requests"]
    with mounted(ref, tmp_path / "mnt2", "--layer", "1", "--insecure") as mount:
        compare_tree(mount.path, applied([middle_layer()]))
    assert "no TOC digest" not in mount.log.read_text()
    blob_ref = f"{docker_registry.host}/estargz/mount@{blobs[2][1].blob_digest}"
    with mounted(blob_ref, tmp_path / "mnt3", "--insecure") as mount:
        compare_tree(mount.path, applied([top_layer()]))
    assert f"layer {blobs[2][1].blob_digest}: no TOC digest from a checked manifest" in mount.log.read_text()


def corrupt_chunk(tmp_path: Path) -> tuple[Path, bytes]:
    """An eStargz blob (stored gzip members) whose ``usr/share/big.bin`` second chunk holds other
    bytes with a valid gzip CRC: only its chunk digest can tell. Returns the blob and the file."""
    blob, _ = convert(tmp_path, base_layer(), estargz.FORMAT_ESTARGZ, compression_level=0)
    data = bytearray(blob.read_bytes())
    with estargz.open(blob) as reader:
        chunk = reader.lookup("usr/share/big.bin").chunks[1]
    original = BIG[chunk.chunk_offset:chunk.chunk_offset + chunk.chunk_size]
    at = data.index(original[:4096], chunk.offset)  # the first stored block of the member
    data[at + 100] ^= 0xFF
    tampered = bytearray(original)
    tampered[100] ^= 0xFF
    trailer = chunk.next_offset - 8
    data[trailer:trailer + 4] = zlib.crc32(tampered).to_bytes(4, "little")
    blob.write_bytes(data)
    with estargz.open(blob) as reader, pytest.raises(estargz.VerificationError):
        reader.read("usr/share/big.bin")
    return blob, BIG


def test_corrupted_chunk_reads_as_eio(fuse: None, tmp_path: Path) -> None:
    blob, big = corrupt_chunk(tmp_path)
    with mounted(blob, tmp_path / "mnt", "--prefetch", "none") as mount:
        with open(mount.path / "usr/share/big.bin", "rb") as f:
            assert f.read(CHUNK_SIZE) == big[:CHUNK_SIZE]
            with pytest.raises(OSError) as caught:
                f.read(CHUNK_SIZE)
            assert caught.value.errno == errno.EIO
            f.seek(2 * CHUNK_SIZE)
            assert f.read() == big[2 * CHUNK_SIZE:]
        assert (mount.path / "etc/os-release").read_bytes() == b"ID=estargz-mount\n"
    log = mount.log.read_text()
    assert "chunk digest mismatch in 'usr/share/big.bin'" in log
    assert mount.stats()["errors"] >= 1


def test_prefetch_landmark_then_reads_are_cached(fuse: None, tmp_path: Path) -> None:
    blob, _ = convert(tmp_path, base_layer(), estargz.FORMAT_ESTARGZ, prioritized_files=["usr/share/big.bin"])
    with mounted(blob, tmp_path / "mnt", "--prefetch", "landmark", "--stats", "0.05") as mount:
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while mount.stats().get("prefetchedBytes", 0) < len(BIG):
            assert time.monotonic() < deadline, mount.log.read_text()
            time.sleep(0.05)
        before = mount.stats()
        assert (mount.path / "usr/share/big.bin").read_bytes() == BIG
        time.sleep(0.2)
        after = mount.stats()
        assert after["requests"] == before["requests"] and after["chunksFetched"] == before["chunksFetched"]
        assert after["cache"]["memoryHits"] >= 3


def test_prefetch_all_fetches_every_shown_file_and_nothing_hidden(fuse: None, tmp_path: Path) -> None:
    blobs = [convert(tmp_path, m, estargz.FORMAT_ESTARGZ, f"layer{i}") for i, m in enumerate(LAYERS)]
    layout = write_layout(tmp_path / "layout", blobs)
    shown = {id(e): len(e.data) for e in applied(LAYERS).values() if e.kind == "reg"}
    with mounted(layout, tmp_path / "mnt", "--prefetch", "all", "--stats", "0.05") as mount:
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while mount.stats().get("prefetchedBytes", 0) < sum(shown.values()):
            assert time.monotonic() < deadline, mount.log.read_text()
            time.sleep(0.05)
        time.sleep(0.2)
        stats = mount.stats()
    assert stats["prefetchedBytes"] == sum(shown.values())  # not the lower big.bin the top layer hides
    assert stats["bytesFetched"] < sum(blob.stat().st_size for blob, _ in blobs) - len(BIG) // 2


def test_small_cache_evicts_and_refetches(fuse: None, tmp_path: Path) -> None:
    blob, _ = convert(tmp_path, base_layer(), estargz.FORMAT_ESTARGZ)
    with mounted(blob, tmp_path / "mnt", "--prefetch", "none", "--cache-size", "1500K") as mount:
        for _ in range(2):
            with open(mount.path / "usr/share/big.bin", "rb", buffering=0) as f:
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # the kernel asks the mount again
                assert f.read() == BIG
    stats = mount.stats()
    assert stats["cache"]["memoryBytes"] <= 1500 << 10
    assert stats["cache"]["evictions"] >= 2
    assert stats["chunksFetched"] >= 4


def test_sigterm_unmounts_and_reports(fuse: None, tmp_path: Path) -> None:
    blob, _ = convert(tmp_path, base_layer(), estargz.FORMAT_ZSTD_CHUNKED)
    with mounted(blob, tmp_path / "mnt", "--prefetch", "none") as mount:
        assert (mount.path / "etc/os-release").read_bytes() == b"ID=estargz-mount\n"
        mount.process.send_signal(signal.SIGTERM)
        assert mount.process.wait(timeout=MOUNT_TIMEOUT) == 0
        assert not os.path.ismount(mount.path)
    assert mount.stats()["chunksFetched"] == 1


def test_daemon_and_umount(fuse: None, tmp_path: Path) -> None:
    blob, _ = convert(tmp_path, base_layer(), estargz.FORMAT_ESTARGZ)
    mountpoint, log = tmp_path / "mnt", tmp_path / "mount.log"
    mountpoint.mkdir()
    proc = subprocess.run(_command("mount", "--daemon", "--log", str(log), str(blob), str(mountpoint)), cwd=ROOT,
                          env=_ENV, capture_output=True, text=True, timeout=MOUNT_TIMEOUT, check=False)
    assert proc.returncode == 0, proc.stderr
    pid = json.loads(proc.stdout)["pid"]
    try:
        assert (mountpoint / "usr/bin/tool").read_bytes() == b"#!/bin/sh\necho tool\n"
    finally:
        subprocess.run(_command("umount", str(mountpoint)), cwd=ROOT, env=_ENV, check=True)
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while "chunksFetched" not in log.read_text():
        assert time.monotonic() < deadline, f"mount process {pid} did not report"
        time.sleep(0.05)
    assert not os.path.ismount(mountpoint)
    assert json.loads(log.read_text().strip().splitlines()[-1])["chunksFetched"] == 1
