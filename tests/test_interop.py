"""Interop with the Go reference implementation (stargz-snapshotter estargz 0.12.0, Debian).

The Go side is tests/interop/checker (see tests/interop/README.md), built by the ``go_checker``
fixture in conftest.py. These tests check, on a set of varied tars:

a) blobs written by ``estargz.convert`` pass ``checker verify`` and Go's view of them equals ours;
b) a tampered blob fails ``checker verify`` (the check can fail);
c) blobs written by Go's ``estargz.Build`` (``checker build``) are read and verified by estargz
   and match both the input tar and ``checker verify``;
d) for the same input and options, the TOC written by Go and by estargz are identical except
   for compressed offsets.

Expected values come from the input tar (read with tarfile), from gzip/hashlib, or from the Go
checker, never from estargz itself.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sysconfig
import tarfile
from pathlib import Path, PurePosixPath

import pytest
import zstandard
from helpers import clean, sha256

import estargz

pytestmark = pytest.mark.interop

MiB = 1 << 20
DEFAULT_CHUNK = estargz.DEFAULT_CHUNK_SIZE
LANDMARKS = {".prefetch.landmark", ".no.prefetch.landmark"}
TAR_KINDS = {
    tarfile.REGTYPE: "reg", tarfile.AREGTYPE: "reg", tarfile.CONTTYPE: "reg",
    tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink",
    tarfile.CHRTYPE: "char", tarfile.BLKTYPE: "block", tarfile.FIFOTYPE: "fifo",
}
# A version-2 VFS capability (struct vfs_cap_data): cap_net_bind_service permitted+effective.
SECURITY_CAPABILITY = bytes.fromhex("01000002" "00040000" "00000000" "00000000" "00000000")
BINARY_XATTR = bytes(range(256))[::-1] + b"\x00\xff\x00"


def ancestors(name: str) -> list[str]:
    out = []
    parent = PurePosixPath(name).parent
    while str(parent) != ".":
        out.append(str(parent))
        parent = parent.parent
    return out


# ---------------------------------------------------------------------------------------------
# Input tars


def _data(size: int, seed: int) -> bytes:
    """Deterministic data that compresses, but not to nothing (16 symbols, random order)."""
    raw = random.Random(seed).randbytes(size)
    return raw.translate(bytes(b"abcdefghijklmnop"[i % 16] for i in range(256)))


def _info(name: str, kind: bytes = tarfile.REGTYPE, *, mode: int = 0o644, uid: int = 0,
          gid: int = 0, uname: str = "root", gname: str = "root", mtime: float = 1_700_000_000,
          linkname: str = "", devmajor: int = 0, devminor: int = 0,
          pax: dict[str, str] | None = None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid, info.gid, info.uname, info.gname = uid, gid, uname, gname
    info.mtime = mtime
    info.linkname = linkname
    info.devmajor, info.devminor = devmajor, devminor
    if pax:
        info.pax_headers = dict(pax)
    return info


def _add(tf: tarfile.TarFile, name: str, data: bytes | None = None, **kw) -> None:
    info = _info(name, **kw)
    if data is not None:
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    else:
        tf.addfile(info)


def _xattr_pax(values: dict[str, bytes]) -> dict[str, str]:
    # tarfile takes str PAX values; surrogate escapes make it write raw bytes (hdrcharset=BINARY).
    return {"SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape") for k, v in values.items()}


def write_varied_tar(path: Path, fmt: str, unit: int) -> None:
    """A tar in USTAR, PAX or GNU format with every entry kind; file sizes scale with ``unit``.

    ``unit`` is meant to equal the chunk size: files of exactly 1 and 3 chunks, and files with a
    partial last chunk.
    """
    tar_format = {"ustar": tarfile.USTAR_FORMAT, "pax": tarfile.PAX_FORMAT,
                  "gnu": tarfile.GNU_FORMAT}[fmt]
    with tarfile.open(path, "w", format=tar_format) as tf:
        _add_varied_entries(tf, fmt, unit)
    if fmt == "ustar":
        path.write_bytes(set_typeflag(path.read_bytes(), {"v7dir/": b"\0", "v7dir/file": b"\0"}))


def _add_varied_entries(tf: tarfile.TarFile, fmt: str, unit: int) -> None:
    alice = dict(uid=1000, gid=1000, uname="alice", gname="staff")
    _add(tf, "d/", kind=tarfile.DIRTYPE, mode=0o755)
    _add(tf, "d/empty", b"")
    _add(tf, "d/one", b"x", mode=0o600, **alice)
    _add(tf, "d/exact1", _data(unit, 1), mode=0o755, **alice)
    _add(tf, "d/exact3", _data(3 * unit, 2), **alice)
    _add(tf, "d/multi", _data(2 * unit + unit // 2 + 1, 3), mode=0o640)
    _add(tf, "d/sub/", kind=tarfile.DIRTYPE, mode=0o700, **alice)
    _add(tf, "d/sub/nested.txt", b"nested file\n" * 7, mode=0o4755, **alice)
    _add(tf, "d/sub/deeper/", kind=tarfile.DIRTYPE, mode=0o1777)
    _add(tf, "d/sub/deeper/f", _data(unit + 7, 4), uid=1001, gid=1000, uname="bob",
         gname="staff")
    _add(tf, "d/dup", b"first version\n")
    _add(tf, "d/symlink", kind=tarfile.SYMTYPE, linkname="sub/nested.txt", mode=0o777)
    _add(tf, "d/dangling", kind=tarfile.SYMTYPE, linkname="/nowhere/at/all", mode=0o777)
    _add(tf, "d/hardlink", kind=tarfile.LNKTYPE, linkname="d/multi", mode=0o640)
    _add(tf, "dev/", kind=tarfile.DIRTYPE)
    _add(tf, "dev/fifo", kind=tarfile.FIFOTYPE, mode=0o600)
    _add(tf, "dev/null", kind=tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666)
    _add(tf, "dev/sda", kind=tarfile.BLKTYPE, devmajor=8, devminor=0, mode=0o660,
         gid=6, gname="disk")
    _add(tf, "top.txt", b"top level\n", mtime=1_600_000_000)
    _add(tf, "d/dup", b"second version, replaces the first\n", mtime=1_600_000_001)
    # 150 characters: USTAR splits it over prefix/name, PAX uses a path record, GNU an
    # ././@LongLink entry.
    long_dir = "long/" + "L" * 80 + "/" + "M" * 40
    _add(tf, "long/", kind=tarfile.DIRTYPE)
    _add(tf, long_dir + "/", kind=tarfile.DIRTYPE)
    _add(tf, long_dir + "/file-with-a-long-name.txt", _data(unit // 2 + 3, 5))
    if fmt == "ustar":
        # Pre-POSIX typeflag '\0' for a file and for a directory (a name ending in "/").
        _add(tf, "v7dir/", kind=tarfile.DIRTYPE)
        _add(tf, "v7dir/file", _data(unit + 5, 8))
        return
    _add(tf, "uni/", kind=tarfile.DIRTYPE)
    _add(tf, "uni/żółć-ünïcödé-日本語.txt", "zażółć gęślą jaźń\n".encode(), uname="jürgen",
         uid=1002)
    longer = "x/" + "/".join(["segment-%02d" % i for i in range(12)]) + "/end.bin"
    for parent in reversed(ancestors(longer)):
        _add(tf, parent + "/", kind=tarfile.DIRTYPE)
    _add(tf, longer, _data(unit + 1, 6))
    _add(tf, "d/longlink", kind=tarfile.LNKTYPE, linkname=longer)
    _add(tf, "d/longsymlink", kind=tarfile.SYMTYPE, linkname="../" + longer, mode=0o777)
    _add(tf, "huge-ids", b"huge uid and gid\n", uid=2 ** 22, gid=2 ** 22 + 5,
         uname="big", gname="biggrp")
    if fmt == "pax":
        _add(tf, "xattrs/", kind=tarfile.DIRTYPE,
             pax=_xattr_pax({"user.dirattr": b"on a directory"}))
        _add(tf, "xattrs/ping", _data(unit + 2, 7), mode=0o755,
             pax=_xattr_pax({"security.capability": SECURITY_CAPABILITY,
                             "user.binary": BINARY_XATTR,
                             "user.text": "värde".encode(),
                             "trusted.empty": b""}))
        _add(tf, "xattrs/link", kind=tarfile.SYMTYPE, linkname="ping",
             pax=_xattr_pax({"user.onlink": b"1"}))
        _add(tf, "frac/", kind=tarfile.DIRTYPE)
        _add(tf, "frac/half", b"rounds up\n", mtime=1_700_000_000.5)
        _add(tf, "frac/quarter", b"rounds down\n", mtime=1_700_000_000.25)
        _add(tf, "frac/three-quarters", b"rounds up\n", mtime=1_700_000_000.75)
        # Parents "implicit" and "implicit/sub" have no entries of their own.
        _add(tf, "implicit/sub/file", b"in an implicit directory\n")
    if fmt == "gnu":
        # Names both writers reserve: dropped from the input.
        _add(tf, "stargz.index.json", b'{"version":1,"entries":[]}')
        _add(tf, ".prefetch.landmark", b"\x0f")
        _add(tf, "./.no.prefetch.landmark", b"\x0f")


def set_typeflag(tar: bytes, flags: dict[str, bytes]) -> bytes:
    """Rewrite the typeflag of the USTAR headers named in ``flags`` (and their checksums)."""
    out = bytearray(tar)
    for name, flag in flags.items():
        at = out.find(name.encode() + b"\0")
        assert at >= 0 and at % 512 == 0, name
        out[at + 156:at + 157] = flag
        out[at + 148:at + 156] = b" " * 8
        out[at + 148:at + 156] = b"%06o\0 " % sum(out[at:at + 512])
    return bytes(out)


def write_large_tar(path: Path) -> None:
    """Files around the default chunk size (4 MiB)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        _add(tf, "big/", kind=tarfile.DIRTYPE)
        _add(tf, "big/exact", _data(DEFAULT_CHUNK, 11))
        _add(tf, "big/over", _data(DEFAULT_CHUNK + 1, 12))
        _add(tf, "small", b"small\n")


SYSTEM_DIRS = ("json", "email")
STDLIB = Path(sysconfig.get_paths()["stdlib"])
ALTERNATIVES = Path("/etc/alternatives")  # real symlinks, where the system has them


def write_system_tar(path: Path) -> None:
    """A tar of real files made by tar(1) in its default (GNU) format: the stdlib ``json`` and
    ``email`` packages (about 2 MB, with __pycache__) and /etc/alternatives (symlinks)."""
    dirs = [d for d in SYSTEM_DIRS if (STDLIB / d).is_dir()]
    assert dirs, f"no {SYSTEM_DIRS} under {STDLIB}"
    gnu_tar = shutil.which("tar")
    if gnu_tar:
        command = [gnu_tar, "-cf", str(path), "-C", str(STDLIB), *dirs]
        if ALTERNATIVES.is_dir() and os.access(ALTERNATIVES, os.R_OK | os.X_OK):
            command += ["-C", "/", str(ALTERNATIVES.relative_to("/"))]
        proc = subprocess.run(command, capture_output=True)
        # Status 1: a file changed while being read (a stdlib __pycache__ being written); the
        # archive is still a valid tar.
        assert proc.returncode in (0, 1), proc.stderr.decode(errors="replace")
    else:
        with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
            for d in dirs:
                tf.add(STDLIB / d, arcname=d)


#: Sub-second parts of modification times, in nanoseconds: both writers round to the second,
#: halves up.
FRACTIONS = (500_000_000, 499_999_999, 999_999_999, 1, 0, 750_000_000)


def write_dot_tar(path: Path) -> None:
    """``tar --format=posix -C copy-of-json -cf - .``: names start with "./", a "./" root entry,
    and PAX mtime records with nanoseconds (set to the :data:`FRACTIONS`)."""
    src = path.with_suffix(".src")
    shutil.copytree(STDLIB / "json", src, copy_function=shutil.copy)
    paths = sorted(src.rglob("*"), key=lambda p: (p.is_dir(), len(p.parts), str(p)))
    for i, p in enumerate([*paths, src]):  # directories last: creating files changes their mtime
        os.utime(p, ns=(1_700_000_000 * 10**9, (1_690_000_000 + i) * 10**9 + FRACTIONS[i % 6]))
    gnu_tar = shutil.which("tar")
    if gnu_tar:
        subprocess.run([gnu_tar, "--format=posix", "-C", str(src), "-cf", str(path), "."],
                       check=True, capture_output=True)
    else:
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
            tf.add(src, arcname=".")


class Tars:
    """Input tars, built on first use and shared by the whole module."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._made: dict[str, Path] = {}

    def __call__(self, key: str) -> Path:
        if key not in self._made:
            path = self.root / f"{key}.tar"
            base, _, compression = key.partition(".")
            if compression == "gz":  # compressed inputs: both builders decompress them first
                path.write_bytes(gzip.compress(self(base).read_bytes(), mtime=0))
            elif compression == "zst":
                path.write_bytes(zstandard.ZstdCompressor().compress(self(base).read_bytes()))
            elif key == "system":
                write_system_tar(path)
            elif key == "dot":
                write_dot_tar(path)
            elif key == "large":
                write_large_tar(path)
            else:
                fmt, unit = key.split("-")
                write_varied_tar(path, fmt, int(unit))
            self._made[key] = path
        return self._made[key]


@pytest.fixture(scope="module")
def tars(tmp_path_factory: pytest.TempPathFactory) -> Tars:
    return Tars(tmp_path_factory.mktemp("tars"))


# ---------------------------------------------------------------------------------------------
# The checker


class Checker:
    def __init__(self, path: str) -> None:
        self.path = path

    def run(self, *args: object) -> subprocess.CompletedProcess:
        return subprocess.run([self.path, *map(str, args)], capture_output=True, timeout=120)

    def _ok(self, *args: object) -> subprocess.CompletedProcess:
        proc = self.run(*args)
        assert proc.returncode == 0, (
            f"estargz-checker {' '.join(map(str, args))} exited {proc.returncode}:\n"
            f"{proc.stderr.decode(errors='replace')}")
        return proc

    def verify(self, blob: Path, toc_digest: str = "-") -> dict:
        return json.loads(self._ok("verify", blob, toc_digest).stdout)

    def build(self, src: Path, dst: Path, *, chunk_size: int = 0, level: int = 9, procs: int = 1,
              prioritized: tuple[str, ...] = (), allow_missing: bool = False) -> dict:
        args: list[object] = ["build", "--chunk-size", chunk_size, "--level", level,
                              "--procs", procs]
        if prioritized:
            args += ["--prioritized", ",".join(prioritized)]
        if allow_missing:
            args.append("--allow-missing-prioritized")
        proc = self._ok(*args, src, dst)
        return {**json.loads(proc.stdout), "stderr": proc.stderr.decode(errors="replace")}

    def toc(self, blob: Path) -> bytes:
        return self._ok("toc", blob).stdout


@pytest.fixture(scope="module")
def checker(go_checker) -> Checker:
    return Checker(str(go_checker))


# ---------------------------------------------------------------------------------------------
# Expectations


RESERVED = LANDMARKS | {"stargz.index.json"}


def tar_members(path: Path) -> dict[str, tuple[tarfile.TarInfo, bytes | None]]:
    """Cleaned name -> (member, contents of a regular file); a later duplicate wins.

    Landmarks and ``stargz.index.json`` are left out: eStargz writers drop them from the input.
    """
    out: dict[str, tuple[tarfile.TarInfo, bytes | None]] = {}
    raw = path.read_bytes()
    if raw[:4] == b"\x28\xb5\x2f\xfd":
        raw = zstandard.ZstdDecompressor().decompressobj().decompress(raw)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        for m in tf:
            name = clean(m.name)
            if name in RESERVED:
                continue
            data = tf.extractfile(m).read() if m.isreg() else None
            out.pop(name, None)
            out[name] = (m, data)
    return out


def tar_modtime(member: tarfile.TarInfo) -> str:
    """RFC 3339 UTC, rounded to the nearest second with halves up; "" for the epoch."""
    exact = decimal.Decimal(member.pax_headers.get("mtime", member.mtime))  # no float rounding
    seconds = int(exact.to_integral_value(decimal.ROUND_FLOOR))
    if exact - seconds >= decimal.Decimal("0.5"):
        seconds += 1
    if seconds == 0:
        return ""
    return (dt.datetime(1970, 1, 1) + dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def tar_xattrs(member: tarfile.TarInfo) -> dict[str, bytes]:
    prefix = "SCHILY.xattr."
    return {k[len(prefix):]: v.encode("utf-8", "surrogateescape")
            for k, v in member.pax_headers.items() if k.startswith(prefix)}


def gunzip_digest(blob: Path) -> tuple[str, int]:
    """diffID and size of the layer: the whole blob gunzipped (multi-member) with the stdlib."""
    h = hashlib.sha256()
    size = 0
    with gzip.open(blob, "rb") as f:
        while block := f.read(MiB):
            h.update(block)
            size += len(block)
    return "sha256:" + h.hexdigest(), size


def check_reader_against_tar(reader: estargz.Reader, tar: Path,
                             prioritized: tuple[str, ...] = ()) -> None:
    """Every tar entry is in the blob with the same metadata and contents, and nothing else."""
    members = tar_members(tar)
    entries = {e.name: e for e in reader}
    assert "" not in entries
    if "" in members:  # a "./" entry: the root, which iteration does not list
        entries[""] = reader.lookup("")
    assert set(entries) - LANDMARKS == set(members)
    landmark = ".prefetch.landmark" if prioritized else ".no.prefetch.landmark"
    assert set(entries) & LANDMARKS == {landmark}
    assert reader.read(landmark) == b"\x0f"
    order = [e.name for e in reader]
    if prioritized:
        # The prioritized files, their parents and hardlink targets come before the landmark.
        head = set(order[:order.index(landmark)])
        for p in map(clean, prioritized):
            assert {p, *(a for a in ancestors(p) if a in members)} <= head
            if members[p][0].islnk():
                assert clean(members[p][0].linkname) in head
    else:
        assert order[0] == landmark
    for name, (m, data) in members.items():
        e = entries[name]
        where = f"{tar.name}: {name}"
        assert e.type == TAR_KINDS[m.type], where
        assert e.mode == m.mode, where
        assert (e.uid, e.gid) == (m.uid, m.gid), where
        assert (e.user_name, e.group_name) == (m.uname, m.gname), where
        assert e.modtime == tar_modtime(m), where
        assert e.xattrs == tar_xattrs(m), where
        if m.issym() or m.islnk():
            assert e.link_name == m.linkname, where
        if m.ischr() or m.isblk():
            assert (e.dev_major, e.dev_minor) == (m.devmajor, m.devminor), where
        if m.islnk():
            target = reader.lookup(name)
            assert target.name == clean(m.linkname), where
            assert reader.read(name) == members[clean(m.linkname)][1], where
        if m.isreg():
            assert e.size == m.size, where
            assert e.digest == sha256(data), where
            assert reader.read(name) == data, where


def go_group_names(toc_entries: list[estargz.TOCEntry]) -> dict[str, str]:
    """groupName as Go 0.12.0 presents it: an omitted one is looked up among the *user* names."""
    unames: dict[int, str] = {}
    out: dict[str, str] = {}
    for e in toc_entries:
        if e.type == "chunk":
            continue
        if e.user_name:
            unames[e.uid] = e.user_name
        out[clean(e.name)] = e.group_name or unames.get(e.gid, "")
    return out


def check_go_view(go: dict, reader: estargz.Reader) -> None:
    """``checker verify`` output describes the same tree, metadata and contents as our reader."""
    names = {e.name for e in reader}
    names |= {a for n in names for a in ancestors(n)}
    names.discard("")
    go_entries = {e["name"]: e for e in go["entries"]}
    assert len(go_entries) == len(go["entries"])
    assert set(go_entries) == names
    group_names = go_group_names(reader.toc_entries)
    chunks = 0
    seen: set[int] = set()
    for name, g in go_entries.items():
        ours = reader.lookup(name)  # hardlinks resolved: Go shows them as their target
        where = f"{name}: go={g}"
        assert g["type"] == ours.type, where
        assert g["size"] == ours.size, where
        assert g["mode"] == ours.mode, where
        assert (g["uid"], g["gid"]) == (ours.uid, ours.gid), where
        assert g["userName"] == ours.user_name, where
        assert g["groupName"] == group_names.get(ours.name, ""), where
        assert g["linkName"] == ours.link_name, where
        assert (g["devMajor"], g["devMinor"]) == (ours.dev_major, ours.dev_minor), where
        assert g["modTime"] == ours.modtime, where
        assert {k: base64.b64decode(v) for k, v in g["xattrs"].items()} == ours.xattrs, where
        assert g["digest"] == ours.digest, where
        assert g["numLink"] == ours.num_link, where
        if ours.type == "reg":
            assert g["contentSHA256"] == sha256(reader.read(name)), where
            assert g["digest"] == g["contentSHA256"], where
            assert [(c["offset"], c["chunkOffset"], c["chunkSize"], c["chunkDigest"])
                    for c in g["chunks"]] == [
                (c.offset, c.chunk_offset, c.chunk_size, c.chunk_digest) for c in ours.chunks
            ], where
            if id(ours) not in seen:
                seen.add(id(ours))
                chunks += len(ours.chunks)
        else:
            assert g["contentSHA256"] == "" and g["chunks"] == [], where
    assert go["chunksVerified"] == chunks
    assert chunks > 0
    assert go["tocDigest"] == reader.toc_digest


# ---------------------------------------------------------------------------------------------
# a) estargz writes, Go reads

PRIO_VARIED = ("d/sub/nested.txt", "d/hardlink", "top.txt")
# Unclean spellings, a directory, a replaced duplicate.
PRIO_ODD = ("/top.txt", "./d/one", "d/sub/deeper/", "d/dup", "d//exact1")
PRIO_SYSTEM = ("json/__init__.py", "email/mime/text.py", "email/__init__.py")
PRIO_DOT = ("./decoder.py", "__pycache__/")

WRITE_CASES = [
    # tar, chunk size, level, prioritized
    ("ustar-1000", 1000, 6, ()),
    ("ustar-1000", DEFAULT_CHUNK, 9, PRIO_VARIED),
    ("pax-4", 4, 0, ()),
    ("pax-1000", 1000, 1, PRIO_VARIED + ("xattrs/ping", "d/longlink")),
    ("pax-65536", 65536, 9, ()),
    ("gnu-65536", 65536, 9, PRIO_VARIED),
    ("gnu-4", 4, 1, ("d/longlink",)),
    ("gnu-1000", 1000, 6, PRIO_ODD),
    ("pax-1000.zst", 1000, 6, ()),
    ("ustar-1000.gz", 1000, 9, ()),
    ("system", DEFAULT_CHUNK, 6, ()),
    ("system", 65536, 1, PRIO_SYSTEM),
    ("dot", 4096, 9, PRIO_DOT),
    ("large", DEFAULT_CHUNK, 1, ("big/over",)),
]


def _case_id(case: tuple) -> str:
    tar, chunk, level, prio = case[:4]
    return f"{tar}-chunk{chunk}-level{level}" + ("-prio" if prio else "")


@pytest.mark.parametrize("case", WRITE_CASES, ids=map(_case_id, WRITE_CASES))
def test_go_reads_estargz_blob(case, tars, checker, tmp_path):
    tar_key, chunk_size, level, prioritized = case
    tar = tars(tar_key)
    blob = tmp_path / "out.esgz"
    result = estargz.convert(tar, blob, chunk_size=chunk_size, compression_level=level,
                             prioritized_files=prioritized, threads=2)
    go = checker.verify(blob, result.toc_digest)
    assert go["tocDigest"] == result.toc_digest
    assert go["diffID"] == result.diff_id
    assert go["uncompressedSize"] == result.uncompressed_size
    assert gunzip_digest(blob) == (result.diff_id, result.uncompressed_size)
    assert blob.stat().st_size == result.blob_size
    assert result.annotations == {
        "containerd.io/snapshot/stargz/toc.digest": go["tocDigest"],
        "io.containers.estargz.uncompressed-size": str(go["uncompressedSize"]),
    }
    with estargz.open(blob, toc_digest=result.toc_digest) as reader:
        assert reader.footer.kind == "estargz"
        assert reader.verify().chunks == go["chunksVerified"]
        check_reader_against_tar(reader, tar, prioritized)
        check_go_view(go, reader)
    # "-" makes the checker use the digests inside the TOC, without the expected TOC digest.
    assert checker.verify(blob, "-")["entries"] == go["entries"]


# ---------------------------------------------------------------------------------------------
# b) The check can fail


@pytest.mark.parametrize("level", [0, 6])
def test_go_rejects_tampered_estargz_blob(level, tars, checker, tmp_path):
    blob = tmp_path / "good.esgz"
    result = estargz.convert(tars("pax-1000"), blob, chunk_size=1000, compression_level=level)
    checker.verify(blob, result.toc_digest)
    with estargz.open(blob) as reader:
        chunk = reader.lookup("d/exact3").chunks[1]
    assert chunk.next_offset - chunk.offset > 200
    data = bytearray(blob.read_bytes())
    data[(chunk.offset + chunk.next_offset) // 2] ^= 0x01
    bad = tmp_path / "bad.esgz"
    bad.write_bytes(bytes(data))
    for digest in (result.toc_digest, "-"):
        proc = checker.run("verify", bad, digest)
        assert proc.returncode != 0, proc.stdout.decode()
        assert b"estargz-checker: error:" in proc.stderr
    with estargz.open(bad) as reader, pytest.raises((estargz.VerificationError,
                                                     estargz.FormatError)):
        reader.verify()
    # The TOC digest is checked too.
    wrong = "sha256:" + "0" * 64
    proc = checker.run("verify", blob, wrong)
    assert proc.returncode != 0 and b"VerifyTOC" in proc.stderr


# ---------------------------------------------------------------------------------------------
# c) Go writes, estargz reads

BUILD_CASES = [
    # tar, chunk size, level, prioritized, procs
    ("ustar-1000", 1000, 1, (), 1),
    ("pax-4", 4, 9, (), 2),
    ("pax-1000", 1000, 1, PRIO_VARIED + ("xattrs/ping",), 1),
    ("gnu-65536", 65536, 9, PRIO_VARIED, 2),
    ("gnu-1000", 1000, 6, PRIO_ODD, 2),
    ("gnu-1000.gz", 1000, 1, (), 1),
    ("pax-1000.zst", 1000, 9, PRIO_VARIED, 2),
    ("system", 0, 1, (), 2),
    ("system", 4096, 9, PRIO_SYSTEM, 1),
    ("dot", 4096, 1, PRIO_DOT, 2),
]


def _build_id(case: tuple) -> str:
    return _case_id(case) + f"-procs{case[4]}"


@pytest.mark.parametrize("case", BUILD_CASES, ids=map(_build_id, BUILD_CASES))
def test_estargz_reads_go_blob(case, tars, checker, tmp_path):
    tar_key, chunk_size, level, prioritized, procs = case
    tar = tars(tar_key)
    blob = tmp_path / "go.esgz"
    built = checker.build(tar, blob, chunk_size=chunk_size, level=level, procs=procs,
                          prioritized=prioritized)
    assert gunzip_digest(blob) == (built["diffID"], built["uncompressedSize"])
    assert sha256(blob.read_bytes()) == built["blobDigest"]
    with estargz.open(blob, toc_digest=built["tocDigest"]) as reader:
        assert reader.footer.kind == "estargz"
        report = reader.verify(built["tocDigest"])
        assert report.toc_digest == built["tocDigest"]
        assert report.chunks > 0
        check_reader_against_tar(reader, tar, prioritized)
        go = checker.verify(blob, built["tocDigest"])
        assert go["diffID"] == built["diffID"]
        check_go_view(go, reader)
        assert report.chunks == go["chunksVerified"]


def test_estargz_rejects_wrong_toc_digest_of_go_blob(tars, checker, tmp_path):
    blob = tmp_path / "go.esgz"
    built = checker.build(tars("ustar-1000"), blob, chunk_size=1000, level=1)
    with pytest.raises(estargz.VerificationError):
        estargz.open(blob, toc_digest="sha256:" + "0" * 64)
    data = bytearray(blob.read_bytes())
    with estargz.open(blob) as reader:
        chunk = reader.lookup("d/exact3").chunks[1]
    data[(chunk.offset + chunk.next_offset) // 2] ^= 0x01
    with estargz.open(bytes(data), toc_digest=built["tocDigest"]) as reader, \
            pytest.raises((estargz.VerificationError, estargz.FormatError)):
        reader.verify()


# ---------------------------------------------------------------------------------------------
# d) Same input, same options: same TOC

TOC_FIELDS = ("name", "type", "size", "mode", "uid", "gid", "user_name", "group_name",
              "link_name", "modtime", "xattrs", "digest", "dev_major", "dev_minor",
              "chunk_offset", "chunk_size", "chunk_digest")

TOC_CASES = [
    # tar, chunk size, prioritized
    ("ustar-1000", DEFAULT_CHUNK, ()),
    ("ustar-1000", 1000, PRIO_VARIED),
    ("pax-4", 4, ()),
    ("pax-1000", 1000, PRIO_VARIED + ("xattrs/ping", "d/longlink")),
    ("gnu-65536", 65536, ()),
    ("gnu-65536", DEFAULT_CHUNK, PRIO_VARIED),
    ("gnu-1000", 1000, PRIO_ODD),
    ("gnu-1000.gz", 1000, ()),
    ("pax-1000.zst", 1000, PRIO_VARIED),
    ("system", DEFAULT_CHUNK, PRIO_SYSTEM),
    ("system", 4096, ()),
    ("dot", 1000, PRIO_DOT),
    ("large", DEFAULT_CHUNK, ()),
]


def _toc_id(case: tuple) -> str:
    tar, chunk, prio = case
    return f"{tar}-chunk{chunk}" + ("-prio" if prio else "")


def build_both(checker: Checker, tar: Path, tmp_path: Path, chunk_size: int,
               prioritized: tuple[str, ...] = (), allow_missing: bool = False):
    """Go build (--procs 1) and estargz.convert with the same options."""
    go_blob, py_blob = tmp_path / "go.esgz", tmp_path / "py.esgz"
    built = checker.build(tar, go_blob, chunk_size=chunk_size, level=1, procs=1,
                          prioritized=prioritized, allow_missing=allow_missing)
    result = estargz.convert(tar, py_blob, chunk_size=chunk_size, compression_level=1,
                             prioritized_files=prioritized,
                             allow_missing_prioritized=allow_missing)
    return go_blob, built, py_blob, result


def toc_rows(entries: list[estargz.TOCEntry]) -> list[tuple]:
    return [tuple(getattr(e, f) for f in TOC_FIELDS) for e in entries]


@pytest.mark.parametrize("case", TOC_CASES, ids=map(_toc_id, TOC_CASES))
def test_same_toc_as_go(case, tars, checker, tmp_path):
    tar_key, chunk_size, prioritized = case
    go_blob, built, py_blob, result = build_both(checker, tars(tar_key), tmp_path, chunk_size,
                                                 prioritized)
    go_raw, py_raw = checker.toc(go_blob), checker.toc(py_blob)
    assert sha256(go_raw) == built["tocDigest"]
    assert sha256(py_raw) == result.toc_digest
    go_version, go_toc = estargz.decode_toc(go_raw)
    py_version, py_toc = estargz.decode_toc(py_raw)
    assert py_version == go_version == 1
    assert toc_rows(py_toc) == toc_rows(go_toc)
    # Only the compressed offsets differ, and only where there is data; with Go's offsets the
    # JSON is byte for byte Go's (estargz encodes as Go's json.MarshalIndent does).
    for g, p in zip(go_toc, py_toc):
        assert (g.offset == 0) == (p.offset == 0), g.name
        assert g.inner_offset == p.inner_offset == 0
        p.offset = g.offset
    assert estargz.encode_toc(py_toc) == go_raw


def test_missing_prioritized_files_like_go(tars, checker, tmp_path):
    prioritized = ("top.txt", "does/not/exist", "d/one", "d/nope")
    tar = tars("pax-1000")
    go_blob, built, py_blob, result = build_both(checker, tar, tmp_path, 1000, prioritized,
                                                 allow_missing=True)
    assert "prioritized files not found in input: does/not/exist, d/nope" in built["stderr"]
    assert result.missing_prioritized == ("does/not/exist", "d/nope")
    assert toc_rows(estargz.decode_toc(checker.toc(py_blob))[1]) == \
        toc_rows(estargz.decode_toc(checker.toc(go_blob))[1])
    # Without allow-missing both refuse.
    proc = checker.run("build", "--prioritized", "top.txt,does/not/exist", tar, tmp_path / "x")
    assert proc.returncode != 0 and b"not found" in proc.stderr
    with pytest.raises(estargz.NotFoundError):
        estargz.convert(tar, tmp_path / "y", prioritized_files=("top.txt", "does/not/exist"))


def test_prioritized_file_in_implicit_directory(tars, checker, tmp_path):
    """A file whose parent directory has no tar entry: Go 0.12.0's moveRec recurses into the
    parent and reports the *file* as not found, leaving it in place; estargz skips the absent
    ancestor and prioritizes the file (docs/format.md, "Entry order"). Go reads the result."""
    tar = tars("pax-1000")
    name = "implicit/sub/file"
    proc = checker.run("build", "--prioritized", name, tar, tmp_path / "x")
    assert proc.returncode != 0
    assert f'file: "{clean(ancestors(name)[0])}": not found'.encode() in proc.stderr
    go_blob, built, py_blob, result = build_both(checker, tar, tmp_path, 1000, (name,),
                                                 allow_missing=True)
    assert f"prioritized files not found in input: {name}" in built["stderr"]
    go_toc = estargz.decode_toc(checker.toc(go_blob))[1]
    py_toc = estargz.decode_toc(checker.toc(py_blob))[1]
    assert go_toc[0].name == ".prefetch.landmark"
    assert result.missing_prioritized == ()
    assert [e.name for e in py_toc[:2]] == [name, ".prefetch.landmark"]
    checker.verify(py_blob, result.toc_digest)


def test_contiguous_file_typeflag(tmp_path, checker):
    """Typeflag '7' (contiguous file): Go 0.12.0's Build refuses it ("unsupported input tar
    entry '7'"); estargz converts it as a regular file, and Go reads that blob."""
    tar = tmp_path / "cont.tar"
    with tarfile.open(tar, "w", format=tarfile.USTAR_FORMAT) as tf:
        _add(tf, "contiguous", b"contiguous file\n" * 100)
    tar.write_bytes(set_typeflag(tar.read_bytes(), {"contiguous": b"7"}))
    proc = checker.run("build", tar, tmp_path / "go.esgz")
    assert proc.returncode != 0 and b"unsupported input tar entry '7'" in proc.stderr
    blob = tmp_path / "py.esgz"
    result = estargz.convert(tar, blob, chunk_size=1000)
    go = checker.verify(blob, result.toc_digest)
    with estargz.open(blob) as reader:
        check_reader_against_tar(reader, tar)
        check_go_view(go, reader)
    assert {e["name"]: e["type"] for e in go["entries"]}["contiguous"] == "reg"
