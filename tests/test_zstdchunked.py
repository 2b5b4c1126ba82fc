"""zstd:chunked, both dialects: the containers/storage writer and reader, hostile blobs, and
interop with the Go stargz-snapshotter (stargz flavour) and skopeo.

1. Writer (containers/storage dialect): against the vectors in tests/data/zstd-chunked-cs/ (TOC,
   chunk lists, tar-split and frame partition of the current containers/storage writer), and
   structurally on many tars (hypothesis layers, tars made by tar(1), trailing garbage, record
   padding): lossless decompression, every chunk in its own frame, the three skippable frames
   and the 64-byte footer, annotations, reproducibility, refused and special inputs.
2. Reader: every zstd:chunked blob in tests/data, checked against its input tar and the digests
   in its build.json / annotations.json / manifest.json.
3. Hostile blobs, re-assembled here frame by frame: every failure is a typed EStargzError.
4. stargz-snapshotter flavour against the Go checker (tests/interop): Go reads ours, we read
   Go's, and the TOCs agree except for compressed offsets.
5. skopeo 1.9.3 (containers/storage 1.43) converts an OCI layout; estargz reads its layer.

Expected values come from tarfile, zstandard (python-zstandard, which wraps libzstd), anycrc
(with the CRC-64/ISO parameters spelled out), hashlib, the vectors, the Go checker or skopeo,
never from estargz itself. Frames are parsed here from the zstd frame format (RFC 8878).
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
import struct
import subprocess
import sys
import sysconfig
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from unittest import mock

import anycrc
import pytest
import zstandard
from helpers import clean, sha256
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import estargz
from estargz.cstoc import CSTOCEntry, decode_cs_toc, encode_cs_toc
from estargz.dialects import containers_storage
from estargz.errors import (
    EStargzError,
    FormatError,
    UnsupportedInputError,
    VerificationError,
)
from estargz.testing import layers, tar_bytes

DATA = Path(__file__).parent / "data"
CS = DATA / "zstd-chunked-cs"
DEB = DATA / "debian-v0.12"
GO15 = DATA / "estargz-go-v0.15.1"
INPUT = (CS / "input.tar").read_bytes()
SAMPLE_SMALL = (DEB / "inputs" / "sample-small.tar").read_bytes()
SCALE = float(os.environ.get("ESTARGZ_PROPERTY_SCALE", "1"))

CS_FORMAT = estargz.FORMAT_ZSTD_CHUNKED
STARGZ_FORMAT = estargz.FORMAT_ZSTD_CHUNKED_STARGZ
ZSTD_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+zstd"
CHECKSUM_KEY = "io.github.containers.zstd-chunked.manifest-checksum"
POSITION_KEY = "io.github.containers.zstd-chunked.manifest-position"
TARSPLIT_KEY = "io.github.containers.zstd-chunked.tarsplit-position"
LEGACY_CHECKSUM_KEY = "io.containers.zstd-chunked.manifest-checksum"
LEGACY_POSITION_KEY = "io.containers.zstd-chunked.manifest-position"
TOC_DIGEST_KEY = "containerd.io/snapshot/stargz/toc.digest"
UNCOMPRESSED_SIZE_KEY = "io.containers.estargz.uncompressed-size"

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
SKIPPABLE = b"\x50\x2a\x4d\x18"
MAGIC_64 = b"GNUlInUx"
MAGIC_40 = b"GnUlInUx"
MiB = 1 << 20
LANDMARKS = {".prefetch.landmark", ".no.prefetch.landmark"}
TAR_KINDS = {
    tarfile.REGTYPE: "reg", tarfile.AREGTYPE: "reg", tarfile.CONTTYPE: "reg",
    tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink",
    tarfile.CHRTYPE: "char", tarfile.BLKTYPE: "block", tarfile.FIFOTYPE: "fifo",
}
#: CRC-64 with Go's ISO table: reflected polynomial 0xD800000000000000 (normal form 0x1B),
#: initial value and final XOR all ones. Check value: "hello world\n" -> 44e9cf3f572ad9ac.
CRC64_ISO = anycrc.CRC(width=64, poly=0x1B, init=(1 << 64) - 1, refin=True, refout=True,
                       xorout=(1 << 64) - 1)
SECURITY_CAPABILITY = bytes.fromhex("0100000200040000000000000000000000000000")


def rnd(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


# ---------------------------------------------------------------------------------------------
# Frames (RFC 8878), decompression


@dataclass
class Frame:
    kind: str  # "zstd" or "skippable"
    offset: int
    size: int
    data: bytes  # decompressed content, or the skippable payload
    has_checksum: bool = False


def parse_frames(blob: bytes) -> list[Frame]:
    """Every frame of ``blob``: zstd frames are walked block by block (their length is not
    stored anywhere) and each is decompressed on its own; skippable frames give their payload."""
    frames: list[Frame] = []
    pos = 0
    while pos < len(blob):
        magic = blob[pos:pos + 4]
        assert len(magic) == 4, f"truncated frame at {pos}"
        if magic[1:] == SKIPPABLE[1:] and magic[0] & 0xF0 == 0x50:
            (size,) = struct.unpack_from("<I", blob, pos + 4)
            assert pos + 8 + size <= len(blob), f"skippable frame at {pos} overruns the blob"
            frames.append(Frame("skippable", pos, 8 + size, blob[pos + 8:pos + 8 + size]))
            pos += 8 + size
            continue
        assert magic == ZSTD_MAGIC, f"no frame magic at {pos}: {magic.hex()}"
        descriptor = blob[pos + 4]
        fcs_flag, single_segment = descriptor >> 6, (descriptor >> 5) & 1
        checksum, dict_flag = (descriptor >> 2) & 1, descriptor & 3
        header = (4 + 1 + (0 if single_segment else 1) + (0, 1, 2, 4)[dict_flag]
                  + ((1 if single_segment else 0), 2, 4, 8)[fcs_flag])
        assert header == zstandard.frame_header_size(blob[pos:pos + 18])
        end = pos + header
        while True:
            (block_header,) = struct.unpack("<I", blob[end:end + 3] + b"\0")
            last, block_type, block_size = block_header & 1, (block_header >> 1) & 3, block_header >> 3
            assert block_type != 3, f"reserved block type in the frame at {pos}"
            end += 3 + (1 if block_type == 1 else block_size)
            if last:
                break
        end += 4 if checksum else 0
        assert end <= len(blob), f"frame at {pos} overruns the blob"
        frame = blob[pos:end]
        params = zstandard.get_frame_parameters(frame)
        decoder = zstandard.ZstdDecompressor().decompressobj()
        content = decoder.decompress(frame)
        assert decoder.eof and not decoder.unused_data, f"frame at {pos} is not one whole frame"
        if params.content_size != zstandard.CONTENTSIZE_UNKNOWN:
            assert params.content_size == len(content)
        frames.append(Frame("zstd", pos, end - pos, content, bool(params.has_checksum)))
        pos = end
    return frames


def zstd_d(blob: bytes) -> bytes:
    """``zstd -d``: every frame decompressed and concatenated, skippable frames skipped."""
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob), read_across_frames=True)
    parts = []
    while block := reader.read(MiB):
        parts.append(block)
    return b"".join(parts)


def one_frame(payload: bytes) -> bytes:
    """The content of a skippable payload that must be exactly one zstd frame."""
    frames = parse_frames(payload)
    assert [f.kind for f in frames] == ["zstd"]
    return frames[0].data


def skippable(payload: bytes) -> bytes:
    return SKIPPABLE + struct.pack("<I", len(payload)) + payload


def drain(chunks) -> bytes:
    return b"".join(bytes(c) for c in chunks)


# ---------------------------------------------------------------------------------------------
# Tars


def add(tf: tarfile.TarFile, name: str, data: bytes | None = None, *, kind: bytes = tarfile.REGTYPE,
        mode: int = 0o644, uid: int = 0, gid: int = 0, uname: str = "root", gname: str = "root",
        mtime: float = 1_700_000_000, linkname: str = "", devmajor: int = 0, devminor: int = 0,
        pax: dict[str, str] | None = None) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode, info.uid, info.gid, info.uname, info.gname = mode, uid, gid, uname, gname
    info.mtime, info.linkname = mtime, linkname
    info.devmajor, info.devminor = devmajor, devminor
    if pax:
        info.pax_headers = dict(pax)
    if data is not None:
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    else:
        tf.addfile(info)


def xattr_pax(values: dict[str, bytes]) -> dict[str, str]:
    return {"SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape") for k, v in values.items()}


def make_tar(fill, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8",
                      errors="surrogateescape") as tf:
        fill(tf)
    return buf.getvalue()


def archive_end(tar: bytes) -> int:
    """Offset just after the end-of-archive marker (the two zero blocks) of ``tar``."""
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        for _ in tf:
            pass
        end = tf.offset + 1024
    assert tar[end - 1024:end] == bytes(1024)
    return end


def trim_tar(tar: bytes) -> bytes:
    """The tar ending right after its end-of-archive marker (no record padding)."""
    return tar[:archive_end(tar)]


def special_entries(tf: tarfile.TarFile, *, pax: bool = True) -> None:
    """Every entry kind, owners, xattrs, long names and links, zero runs, nanosecond times."""
    alice = dict(uid=1000, gid=1000, uname="alice", gname="staff")
    add(tf, "d/", kind=tarfile.DIRTYPE, mode=0o750, **alice)
    add(tf, "d/file", b"hello, world\n", mode=0o640, **alice)
    add(tf, "d/empty", b"")
    add(tf, "d/hard", kind=tarfile.LNKTYPE, linkname="d/file")
    add(tf, "d/sym", kind=tarfile.SYMTYPE, linkname="../elsewhere/target", mode=0o777)
    add(tf, "dev/", kind=tarfile.DIRTYPE)
    add(tf, "dev/null", kind=tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666)
    add(tf, "dev/sda", kind=tarfile.BLKTYPE, devmajor=8, devminor=16, mode=0o660, gid=6, gname="disk")
    add(tf, "dev/fifo", kind=tarfile.FIFOTYPE, mode=0o600)
    add(tf, "setuid", b"#!/bin/sh\n", mode=0o4755, uid=2 ** 21 + 5, gid=2 ** 21 + 7)
    long_dir = "long/" + "n" * 120 + "/" + "m" * 60
    add(tf, long_dir + "/a-file-with-a-long-name.txt", rnd(1, 3000))
    add(tf, "d/longlink", kind=tarfile.LNKTYPE, linkname=long_dir + "/a-file-with-a-long-name.txt")
    add(tf, "d/longsym", kind=tarfile.SYMTYPE, linkname="../" + long_dir + "/x" * 40, mode=0o777)
    add(tf, "uni/żółć-日本語-<&>\u2028.txt", "zażółć\n".encode())
    add(tf, "zeros/hole", rnd(2, 5000) + bytes(4096) + rnd(3, 3000))
    add(tf, "zeros/lead", bytes(2000) + rnd(4, 700))
    add(tf, "zeros/all", bytes(8192))
    add(tf, "zeros/short", rnd(5, 100) + bytes(1023) + rnd(6, 100))
    add(tf, "big/random", rnd(7, 300_000), mode=0o755)
    add(tf, ".wh.gone", b"")
    if pax:
        add(tf, "x/attrs", rnd(8, 2000), pax={
            **xattr_pax({"security.capability": SECURITY_CAPABILITY, "user.binary": bytes(range(256)),
                         "user.text": "värde".encode(), "user.empty": b""}),
            "mtime": "1700000000.123456789", "atime": "1700000100.5", "ctime": "1700000200.25"})
        add(tf, "x/dir/", kind=tarfile.DIRTYPE, pax=xattr_pax({"trusted.overlay.opaque": b"y"}))


def special_tar(fmt: int = tarfile.PAX_FORMAT) -> bytes:
    return make_tar(lambda tf: special_entries(tf, pax=fmt == tarfile.PAX_FORMAT), fmt)


@dataclass
class Member:
    info: tarfile.TarInfo
    data: bytes | None


def tar_members(tar: bytes) -> list[Member]:
    """Every entry of ``tar`` in order, with the contents of regular files."""
    out = []
    with tarfile.open(fileobj=io.BytesIO(tar), encoding="utf-8", errors="surrogateescape") as tf:
        for m in tf:
            out.append(Member(m, tf.extractfile(m).read() if m.isreg() else None))
    return out


def member_name(m: tarfile.TarInfo) -> str:
    """The raw tar name (as the TOC and tar-split hold it): tarfile strips a directory's "/",
    which every tar in these tests (tarfile's, GNU tar's) writes."""
    return m.name + "/" if m.isdir() and not m.name.endswith("/") else m.name


def toc_text(name: str) -> str:
    """How a name reads back from TOC JSON: undecodable bytes become U+FFFD."""
    return "".join("\ufffd" if "\udc80" <= c <= "\udcff" else c for c in name)


def pax_time(m: tarfile.TarInfo, key: str) -> tuple[int, int] | None:
    value = m.pax_headers.get(key)
    if value is None:
        return (int(m.mtime), 0) if key == "mtime" else None
    exact = decimal.Decimal(value)
    seconds = int(exact.to_integral_value(decimal.ROUND_FLOOR))
    return seconds, int((exact - seconds) * 10 ** 9)


def pax_xattrs(m: tarfile.TarInfo) -> dict[str, bytes]:
    prefix = "SCHILY.xattr."
    return {k[len(prefix):]: v.encode("utf-8", "surrogateescape")
            for k, v in m.pax_headers.items() if k.startswith(prefix)}


def stargz_modtime(m: tarfile.TarInfo) -> str:
    """eStargz TOC modtime: UTC, rounded to the second (halves up), "" for the epoch."""
    seconds, nanos = pax_time(m, "mtime")  # type: ignore[misc]
    seconds += nanos >= 500_000_000
    if seconds == 0:
        return ""
    return (dt.datetime(1970, 1, 1) + dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def cs_modtime(m: tarfile.TarInfo) -> str:
    """Go RFC 3339 with nanoseconds in UTC, trailing zeros of the fraction trimmed."""
    seconds, nanos = pax_time(m, "mtime")  # type: ignore[misc]
    text = (dt.datetime(1970, 1, 1) + dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S")
    if nanos:
        text += "." + f"{nanos:09d}".rstrip("0")
    return text + "Z"


def gnu_tar() -> str | None:
    return shutil.which("tar")


# ---------------------------------------------------------------------------------------------
# 1. containers/storage writer


def convert_cs(tar: bytes, **options) -> tuple[bytes, estargz.BuildResult]:
    out = io.BytesIO()
    result = estargz.convert(io.BytesIO(tar), out, format=CS_FORMAT, **options)
    return out.getvalue(), result


@dataclass
class CsBlob:
    frames: list[Frame]  # the data frames
    toc_json: bytes
    toc_raw: list[dict]
    entries: list[CSTOCEntry]
    tar_split: bytes
    records: list[dict]


def split_cs_blob(blob: bytes) -> CsBlob:
    """Take a containers/storage blob apart: data frames, TOC, tar-split, 64-byte footer."""
    frames = parse_frames(blob)
    *data, toc_frame, ts_frame, footer_frame = frames
    assert frames[0].kind == "zstd"
    assert all(f.kind == "zstd" for f in data)
    assert [f.kind for f in (toc_frame, ts_frame, footer_frame)] == ["skippable"] * 3
    for f in (toc_frame, ts_frame, footer_frame):  # the first of the 16 skippable magics
        assert blob[f.offset:f.offset + 4] == SKIPPABLE
    assert blob[-72:-64] == SKIPPABLE + b"\x40\x00\x00\x00"
    assert len(footer_frame.data) == 64
    *fields, magic = struct.unpack("<7Q8s", footer_frame.data)
    assert magic == MAGIC_64
    toc_offset, toc_length, toc_size, manifest_type, ts_offset, ts_length, ts_size = fields
    assert manifest_type == 1
    assert (toc_offset, toc_length) == (toc_frame.offset + 8, len(toc_frame.data))
    assert (ts_offset, ts_length) == (ts_frame.offset + 8, len(ts_frame.data))
    toc_json, tar_split = one_frame(toc_frame.data), one_frame(ts_frame.data)
    assert (len(toc_json), len(tar_split)) == (toc_size, ts_size)
    version, entries, ts_digest = decode_cs_toc(toc_json)
    assert version == 1
    assert ts_digest == sha256(ts_frame.data)
    raw = json.loads(toc_json)
    assert list(raw) == ["version", "entries", "tarSplitDigest"]
    records = [json.loads(line) for line in tar_split.splitlines()]
    assert tar_split.endswith(b"\n") or not tar_split
    return CsBlob(data, toc_json, raw["entries"] or [], entries, tar_split, records)


def check_annotations(blob: bytes, annotations: dict[str, str]) -> None:
    frames = parse_frames(blob)
    toc_frame, ts_frame = frames[-3], frames[-2]
    assert set(annotations) == {CHECKSUM_KEY, POSITION_KEY, TARSPLIT_KEY}
    assert annotations[CHECKSUM_KEY] == sha256(toc_frame.data)
    assert annotations[POSITION_KEY] == (
        f"{toc_frame.offset + 8}:{len(toc_frame.data)}:{len(one_frame(toc_frame.data))}:1")
    assert annotations[TARSPLIT_KEY] == (
        f"{ts_frame.offset + 8}:{len(ts_frame.data)}:{len(one_frame(ts_frame.data))}")


def record_name(record: dict) -> bytes:
    if "name_raw" in record:
        assert "name" not in record
        return base64.b64decode(record["name_raw"])
    return record.get("name", "").encode()


def check_cs_blob(tar: bytes, blob: bytes, result: estargz.BuildResult) -> CsBlob:
    """Everything a containers/storage zstd:chunked blob must be, checked against ``tar``."""
    # The whole stream is the input, byte for byte; the digests describe it.
    assert zstd_d(blob) == tar
    assert result.format == CS_FORMAT
    assert result.diff_id == sha256(tar)
    assert result.uncompressed_size == len(tar)
    assert (result.blob_digest, result.blob_size) == (sha256(blob), len(blob))
    assert result.media_type == ZSTD_MEDIA_TYPE
    assert result.toc_digest == result.annotations[CHECKSUM_KEY]
    check_annotations(blob, result.annotations)
    parts = split_cs_blob(blob)
    frames = parts.frames
    assert all(f.data for f in frames), "empty frame"
    assert all(f.has_checksum for f in frames)
    assert b"".join(f.data for f in frames) == tar

    # TOC entries against the tar, one per entry, in order.
    members = tar_members(tar)
    heads = [(i, e) for i, e in enumerate(parts.entries) if e.type != "chunk"]
    assert len(heads) == len(members)
    frame_index = {f.offset: i for i, f in enumerate(frames)}
    stream_offset = [0]  # where each frame's content lies in the uncompressed stream
    for f in frames:
        stream_offset.append(stream_offset[-1] + len(f.data))
    content_frames: set[int] = set()
    last_offset = 0
    for (index, entry), member in zip(heads, members):
        m, raw = member.info, parts.toc_raw[index]
        where = f"{m.name!r}"
        assert entry.name == toc_text(member_name(m)), where
        assert entry.type == TAR_KINDS[m.type], where
        assert entry.mode == m.mode and (entry.uid, entry.gid) == (m.uid, m.gid), where
        assert entry.size == (m.size if m.isreg() else 0), where
        assert entry.modtime == pax_time(m, "mtime"), where
        assert entry.accesstime == pax_time(m, "atime"), where
        assert entry.changetime == pax_time(m, "ctime"), where
        assert entry.xattrs == pax_xattrs(m), where
        assert entry.link_name == (m.linkname if m.issym() or m.islnk() else ""), where
        devices = (m.devmajor, m.devminor) if m.ischr() or m.isblk() else (0, 0)
        assert (entry.dev_major, entry.dev_minor) == devices, where
        assert not {"userName", "groupName", "innerOffset"} & set(raw), where
        if not (m.isreg() and m.size):
            # No content: metadata only.
            assert not {"digest", "offset", "endOffset", "chunkSize", "chunkOffset", "chunkDigest",
                        "chunkType"} & set(raw), where
            continue
        data = member.data
        assert data is not None
        assert entry.digest == sha256(data), where
        chunks = [(entry, raw)]
        while index + len(chunks) < len(parts.entries) and parts.entries[index + len(chunks)].type == "chunk":
            chunks.append((parts.entries[index + len(chunks)], parts.toc_raw[index + len(chunks)]))
        if len(chunks) == 1:  # single chunk: no chunk fields at all
            assert not {"chunkSize", "chunkOffset", "chunkDigest", "chunkType"} & set(raw), where
            spans = [(0, len(data), "")]
        else:
            spans = [(c.chunk_offset, c.chunk_size, c.chunk_type) for c, _ in chunks]
            assert "chunkOffset" not in raw
            for c, r in chunks[1:]:  # chunk entries carry nothing but their chunk
                assert set(r) <= {"type", "name", "offset", "chunkSize", "chunkOffset", "chunkDigest",
                                  "chunkType"}, where
                assert c.name == entry.name
            for (c, _), (start, size, _) in zip(chunks, spans):
                assert c.chunk_digest == sha256(data[start:start + size]), where
        position = 0
        first = frame_index[entry.offset]
        for n, ((c, _), (start, size, kind)) in enumerate(zip(chunks, spans)):
            assert start == position and size > 0, where
            position += size
            piece = data[start:start + size]
            if kind == "zeros":
                assert size >= 1024 and piece == bytes(size), where
            else:
                assert kind == "", where
            # Each chunk is exactly one frame, the frames of a file follow each other.
            assert c.offset in frame_index, f"{where}: chunk {n} offset is not a frame"
            assert frame_index[c.offset] == first + n, where
            assert frames[first + n].data == piece, where
            assert stream_offset[first + n] == m.offset_data + start, where
            assert c.offset >= last_offset, where
            last_offset = c.offset
            content_frames.add(first + n)
        assert position == len(data), where
        last = frames[first + len(chunks) - 1]
        assert entry.end_offset == last.offset + last.size, where
    # Metadata (headers, padding, end of archive) lies in the other frames; a run of it between
    # two contents is one frame.
    for i in range(1, len(frames)):
        assert i in content_frames or i - 1 in content_frames, f"two metadata frames in a row at {i}"

    # tar-split: one segment per header group, a record per entry, the end, the trailing bytes.
    records = parts.records
    assert [r["position"] for r in records] == list(range(len(records)))
    files = [r for r in records if r["type"] == 1]
    assert [record_name(r) for r in files] == [
        member_name(m.info).encode("utf-8", "surrogateescape") for m in members]
    rebuilt = []
    for r, member in zip(files, members):
        assert r.get("size", 0) == member.info.size, r
        if member.info.size:
            crc = CRC64_ISO.calc(member.data if member.data is not None else b"")
            assert base64.b64decode(r["payload"]) == crc.to_bytes(8, "big"), r
        else:
            assert r["payload"] is None and "size" not in r, r
    for r in records:
        assert list(r) == [k for k in ("type", "name", "name_raw", "size", "payload", "position") if k in r]
        if r["type"] == 2:
            rebuilt.append(base64.b64decode(r["payload"]))
        else:
            assert r["type"] == 1
            member = members[files.index(r)]
            rebuilt.append(member.data or b"")
    assert b"".join(rebuilt) == tar
    last_file = max((i for i, r in enumerate(records) if r["type"] == 1), default=-1)
    for r in records[last_file + 2:]:  # after the end-of-archive segment: <= 1 MiB segments
        assert r["type"] == 2 and 0 < len(base64.b64decode(r["payload"])) <= MiB
    return parts


def check_cs_reader(tar: bytes, blob: bytes, annotations: dict[str, str]) -> None:
    """estargz reads the blob back: same entries and contents, rebuilt tar, diffID, unpack."""
    for given_annotations in (annotations, None):
        with estargz.open(blob, annotations=given_annotations) as reader:
            assert reader.format == CS_FORMAT
            assert reader.manifest_checksum == annotations[CHECKSUM_KEY] == reader.toc_digest
            report = reader.verify()
            assert report.diff_id == sha256(tar)
    with estargz.open(blob, annotations=annotations) as reader:
        assert drain(reader.iter_rebuilt_tar()) == tar
        out = io.BytesIO()
        assert reader.unpack(out) == len(tar)
        assert out.getvalue() == tar
        check_reader_entries(reader, tar, stargz=False)


def check_reader_entries(reader: estargz.Reader, tar: bytes, *, stargz: bool,
                         empty_xattrs: bool = True) -> None:
    """Every tar entry (a later duplicate wins) is in the blob with its metadata and contents.

    ``empty_xattrs=False``: the writer dropped xattrs with empty values (containers/storage
    1.43 reads Go's ``Header.Xattrs``, which skips empty PAX values).
    """
    members: dict[str, Member] = {}
    for member in tar_members(tar):
        name = clean(member.info.name)
        if stargz and name in LANDMARKS | {"stargz.index.json"}:
            continue
        members.pop(name, None)
        members[name] = member
    entries = {e.name: e for e in reader}
    if "" in members:
        entries[""] = reader.lookup("")
    landmarks = set(entries) & LANDMARKS
    for landmark in landmarks:
        assert stargz and reader.read(landmark) == b"\x0f"
    assert set(entries) - landmarks == set(members)
    for name, member in members.items():
        m, e = member.info, entries[name]
        where = f"{name!r}"
        assert e.type == TAR_KINDS[m.type], where
        assert e.mode == m.mode and (e.uid, e.gid) == (m.uid, m.gid), where
        assert e.xattrs == {k: v for k, v in pax_xattrs(m).items() if v or empty_xattrs}, where
        assert e.modtime == (stargz_modtime(m) if stargz else cs_modtime(m)), where
        if stargz:
            assert e.user_name in ("", m.uname), where
        if m.issym() or m.islnk():
            assert e.link_name == m.linkname, where
        if m.ischr() or m.isblk():
            assert (e.dev_major, e.dev_minor) == (m.devmajor, m.devminor), where
        if m.islnk():
            target_name = clean(m.linkname)
            while members[target_name].info.islnk():
                target_name = clean(members[target_name].info.linkname)
            assert reader.lookup(name) is entries[target_name], where
            assert reader.read(name) == members[target_name].data, where
        if m.isreg():
            assert e.size == m.size and e.digest == sha256(member.data), where
            assert reader.read(name) == member.data, where


# -- against the vectors ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def latest() -> tuple[bytes, estargz.BuildResult]:
    return convert_cs(INPUT)


def go_latest() -> CsBlob:
    return split_cs_blob((CS / "latest.zst").read_bytes())


def test_toc_equals_containers_storage_except_offsets(latest):
    blob, _ = latest
    ours = split_cs_blob(blob)
    version, theirs, _ = decode_cs_toc((CS / "latest.toc.json").read_bytes())
    assert version == 1
    assert len(ours.entries) == len(theirs)
    for mine, go in zip(ours.entries, theirs):
        assert (mine.offset == 0) == (go.offset == 0), go.name
        assert (mine.end_offset == 0) == (go.end_offset == 0), go.name
        mine.offset = go.offset = mine.end_offset = go.end_offset = 0
    assert ours.entries == theirs
    # Given Go's offsets, the TOC is Go's byte for byte.
    ours = split_cs_blob(blob)
    go_json = (CS / "latest.toc.json").read_bytes()
    for mine, go in zip(ours.entries, decode_cs_toc(go_json)[1]):
        mine.offset, mine.end_offset = go.offset, go.end_offset
    assert encode_cs_toc(ours.entries, decode_cs_toc(go_json)[2]) == go_json
    # The same keys on every entry (what is omitted is omitted alike).
    go_raw = json.loads((CS / "latest.toc.json").read_bytes())["entries"]
    assert [sorted(e) for e in ours.toc_raw] == [sorted(e) for e in go_raw]


def test_frame_partition_equals_containers_storage(latest):
    """The uncompressed bytes fall into the same content frames as with the Go writer (Go splits
    some metadata runs over several frames, so consecutive metadata frames are merged)."""
    def partition(parts: CsBlob) -> list[tuple[bool, bytes]]:
        starts = {e.offset for e in parts.entries if e.offset}
        out: list[tuple[bool, bytes]] = []
        for f in parts.frames:
            content = f.offset in starts
            if out and not content and not out[-1][0]:
                out[-1] = (False, out[-1][1] + f.data)
            else:
                out.append((content, f.data))
        return out

    ours, theirs = partition(split_cs_blob(latest[0])), partition(go_latest())
    assert [(c, len(d)) for c, d in ours] == [(c, len(d)) for c, d in theirs]
    assert ours == theirs
    # dir/chunked.bin: 1525, 3827, 18648, 3000 (zeros), 20666, 3334 bytes, one frame each.
    sizes = [len(d) for c, d in ours if c]
    assert sizes[sizes.index(1525):][:6] == [1525, 3827, 18648, 3000, 20666, 3334]


def test_tar_split_equals_containers_storage(latest):
    ours = split_cs_blob(latest[0]).tar_split.splitlines(keepends=True)
    theirs = (CS / "latest.tarsplit.jsonl").read_bytes().splitlines(keepends=True)
    assert len(theirs) == 25
    end = max(i for i, line in enumerate(theirs) if json.loads(line)["type"] == 1) + 2
    assert ours[:end] == theirs[:end]  # byte for byte up to the end-of-archive segment

    def trailing(lines: list[bytes]) -> bytes:
        return b"".join(base64.b64decode(json.loads(line)["payload"]) for line in lines)

    # Go cut the 8704 trailing bytes where the writes fed to it ended (2560 + 6144); estargz
    # writes segments of at most 1 MiB: one here.
    assert [len(base64.b64decode(json.loads(line)["payload"])) for line in theirs[end:]] == [2560, 6144]
    assert trailing(ours[end:]) == trailing(theirs[end:]) == bytes(8704)
    assert len(ours) == end + 1


def test_input_tar_blob_structure(latest):
    blob, result = latest
    parts = check_cs_blob(INPUT, blob, result)
    footer = blob[-72:]
    assert footer[:8] == bytes.fromhex("502a4d1840000000") and footer[-8:] == MAGIC_64
    assert result.diff_id == "sha256:12f57b45d6d023dedea733187cbdc9e024b48c9361c191022d0c6965e96c8b67"
    chunked = [e for e in parts.entries if e.name == "dir/chunked.bin"]
    assert [e.chunk_type for e in chunked] == ["", "", "", "zeros", "", ""]
    check_cs_reader(INPUT, blob, result.annotations)


VECTORS = json.loads((CS / "chunking-vectors.json").read_text())["files"]


def vector_files() -> dict[str, bytes]:
    """The vector files, from the recipe in chunking-vectors.json (one generator, in order)."""
    r = random.Random(7)

    def rand(n: int) -> bytes:
        return bytes(r.getrandbits(8) for _ in range(n))

    files = {"z1023": rand(5000) + bytes(1023) + rand(5000)}
    files["z1024"] = rand(5000) + bytes(1024) + rand(5000)
    files["lead"] = bytes(3000) + rand(9000)
    files["trail"] = rand(9000) + bytes(3000)
    files["allzero"] = bytes(10000)
    files["tiny"] = b"a"
    files["two_holes"] = rand(100) + bytes(2000) + rand(70000) + bytes(1500)
    files["text"] = b"lorem ipsum dolor sit amet " * 40000
    files["big"] = rand(2000000)
    parts = []
    for _ in range(200):
        data = rand(r.randint(1, 3000))
        parts.append(data + bytes(r.choice([5, 900, 1023, 1024, 1025, 4096])))
    files["sparse_mix"] = b"".join(parts)
    for name, spec in VECTORS.items():
        assert hashlib.sha256(files[name]).hexdigest() == spec["sha256"], name
    return files


def test_chunking_vectors_through_the_writer():
    files = vector_files()

    def fill(tf: tarfile.TarFile) -> None:
        add(tf, "v/", kind=tarfile.DIRTYPE)
        for name, data in files.items():
            add(tf, "v/" + name, data)

    tar = make_tar(fill)
    blob, result = convert_cs(tar, compression_level=3)
    parts = check_cs_blob(tar, blob, result)
    got: dict[str, list] = {}
    with_chunk_entries: dict[str, bool] = {}
    for e, raw in zip(parts.entries, parts.toc_raw):
        if e.type == "reg" and e.size:
            name = e.name[2:]
            with_chunk_entries[name] = "chunkSize" in raw
            got[name] = [[0, e.size, ""]] if "chunkSize" not in raw else [[0, e.chunk_size, e.chunk_type]]
        elif e.type == "chunk":
            got[e.name[2:]].append([e.chunk_offset, e.chunk_size, e.chunk_type])
    assert got == {name: spec["chunks"] for name, spec in VECTORS.items()}
    assert with_chunk_entries == {name: spec["toc_chunk_entries"] for name, spec in VECTORS.items()}
    with estargz.open(blob, annotations=result.annotations) as reader:
        assert reader.verify().diff_id == sha256(tar)
        for name, data in files.items():
            assert reader.read("v/" + name) == data


# -- many tars --------------------------------------------------------------------------------


STDLIB = Path(sysconfig.get_paths()["stdlib"])


def system_tar(tmp: Path, *args: str) -> bytes:
    """``tar -C / -cf`` of the stdlib ``json`` package and, where there is one, /etc/alternatives."""
    tar = gnu_tar()
    if tar is None:
        pytest.skip("no tar(1) on this machine")
    paths = [str((STDLIB / "json").relative_to("/"))]
    if Path("/etc/alternatives").is_dir() and os.access("/etc/alternatives", os.R_OK | os.X_OK):
        paths.append("etc/alternatives")
    out = tmp / "system.tar"
    proc = subprocess.run([tar, *args, "-C", "/", "-cf", str(out), *paths], capture_output=True)
    assert proc.returncode in (0, 1), proc.stderr.decode(errors="replace")  # 1: file changed
    return out.read_bytes()


def tree_tar(tmp: Path, *args: str) -> bytes:
    """``tar -C DIR -cf`` of a tree made here: hardlinks, symlinks, a fifo, long names, holes."""
    tar = gnu_tar()
    if tar is None:
        pytest.skip("no tar(1) on this machine")
    root = tmp / "tree"
    deep = root / ("d" * 100) / ("e" * 100)
    deep.mkdir(parents=True)
    (deep / "file.bin").write_bytes(rnd(11, 70000) + bytes(5000) + rnd(12, 50000))
    os.link(deep / "file.bin", root / "hardlink")
    os.symlink("d" * 100 + "/" + "e" * 100 + "/file.bin", root / "symlink")
    os.mkfifo(root / "fifo")
    (root / "empty").write_bytes(b"")
    (root / "text").write_text("hello\n" * 1000)
    for p in [*root.rglob("*"), root]:
        os.utime(p, ns=(1_700_000_000_123_456_789, 1_700_000_000_987_654_321), follow_symlinks=False)
    out = tmp / "tree.tar"
    subprocess.run([tar, *args, "--sort=name", "-C", str(root), "-cf", str(out), "."],
                   check=True, capture_output=True)
    return out.read_bytes()


def tar_case(kind: str, tmp: Path) -> bytes:
    if kind == "input.tar":
        return INPUT
    if kind == "sample-small":
        return SAMPLE_SMALL
    if kind == "trimmed":
        return trim_tar(special_tar())
    if kind == "garbage":
        return special_tar() + b"trailing garbage, not zeros \x01\x02" + rnd(13, 3000)
    if kind == "big-garbage":  # several 1 MiB trailing segments
        return trim_tar(special_tar(tarfile.GNU_FORMAT)) + rnd(14, 2 * MiB + 123)
    if kind == "single-zero-block":
        return trim_tar(special_tar())[:-512]
    if kind == "padded-10240":
        tar = special_tar()
        assert len(tar) % 10240 == 0 and tar[archive_end(tar):] == bytes(len(tar) - archive_end(tar))
        return tar
    if kind == "gnu":
        return special_tar(tarfile.GNU_FORMAT)
    if kind == "empty":
        return make_tar(lambda tf: None)
    if kind == "system-gnu":
        return system_tar(tmp)
    if kind == "system-posix":
        return system_tar(tmp, "--format=posix")
    if kind == "tree-gnu":
        return tree_tar(tmp)
    if kind == "tree-posix":
        return tree_tar(tmp, "--format=posix")
    raise AssertionError(kind)


TAR_CASES = ["input.tar", "sample-small", "trimmed", "garbage", "big-garbage", "single-zero-block",
             "padded-10240", "gnu", "empty", "system-gnu", "system-posix", "tree-gnu", "tree-posix"]


@pytest.mark.parametrize("kind", TAR_CASES)
def test_blob_is_the_tar_in_frames(kind, tmp_path):
    tar = tar_case(kind, tmp_path)
    blob, result = convert_cs(tar)
    parts = check_cs_blob(tar, blob, result)
    check_cs_reader(tar, blob, result.annotations)
    if kind == "empty":
        assert parts.toc_json.startswith(b'{"version":1,"entries":null,')
    if kind == "big-garbage":
        trailing = [r for r in parts.records[-3:]]
        assert [len(base64.b64decode(r["payload"])) for r in trailing] == [MiB, MiB, 123]


@pytest.mark.parametrize("kind", ["input.tar", "garbage", "big-garbage", "gnu", "single-zero-block", "tree-posix"])
def test_file_and_stream_inputs_give_the_same_blob(kind, tmp_path):
    """A tar file is read through a memory map, a stream through the pipeline; a layer of more
    entries than are kept is parsed again on each pass: the blob is the same each way."""
    tar = tar_case(kind, tmp_path)
    path = tmp_path / "layer.tar"
    path.write_bytes(tar)
    expected, _ = convert_cs(tar)
    for kept in (containers_storage._KEPT_ENTRIES, 1):
        with mock.patch.object(containers_storage, "_KEPT_ENTRIES", kept):
            for threads in (1, 2):
                out = io.BytesIO()
                estargz.convert(path, out, format=CS_FORMAT, threads=threads)
                assert out.getvalue() == expected


#: Samples the file-backed resident set (RssFile) while converting argv[1]; prints its growth in KiB.
_FILE_RSS = """
import sys, threading, time
import estargz
import estargz.rollsum  # numpy's libraries are mapped before the baseline

def file_rss():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("RssFile:"))

start, peak, done = file_rss(), [0], threading.Event()

def sample():
    while not done.is_set():
        peak[0] = max(peak[0], file_rss())
        time.sleep(0.005)

sampler = threading.Thread(target=sample)
sampler.start()
estargz.convert(sys.argv[1], sys.argv[2], format="zstd:chunked", compression_level=1)
done.set()
sampler.join()
print(max(peak[0], file_rss()) - start)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_memory_mapped_tar_stays_out_of_the_resident_set(tmp_path):
    """Pages of the mapped input are given back once read: the resident set does not grow with the
    tar (here 128 MiB: a large file and many small ones), only with the reads in flight."""
    pattern = rnd(21, 1 << 20)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        info = tarfile.TarInfo("big")
        info.size = 96 * MiB
        tf.addfile(info, io.BytesIO(pattern * 96))
        for index in range(4096):
            info = tarfile.TarInfo(f"small/{index}")
            info.size = 8000
            tf.addfile(info, io.BytesIO(pattern[index * 16:index * 16 + 8000]))
    layer = tmp_path / "layer.tar"
    layer.write_bytes(buf.getvalue())
    done = subprocess.run([sys.executable, "-c", _FILE_RSS, str(layer), str(tmp_path / "blob")],
                          capture_output=True, text=True, check=True, cwd=Path(estargz.__file__).parent.parent)
    assert int(done.stdout) < 64 << 10, f"{int(done.stdout) >> 10} MiB of the tar resident"


@pytest.mark.parametrize("cut", [100, 700, 1029])  # in a header, in the next one, in content
def test_truncated_tar_file_is_a_format_error(cut, tmp_path):
    tar = special_tar()
    path = tmp_path / "layer.tar"
    path.write_bytes(tar[:-(len(tar) - cut)])
    with pytest.raises(FormatError):
        estargz.convert(path, io.BytesIO(), format=CS_FORMAT)


PROPERTY = settings(max_examples=max(1, round(25 * SCALE)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@PROPERTY
@given(layer=layers(max_entries=12, max_content=48 << 10),
       ending=st.sampled_from(["as-written", "trimmed", "garbage"]), level=st.sampled_from([1, 3, 10]))
def test_hypothesis_layers(layer, ending, level):
    tar = tar_bytes(layer)
    if ending == "trimmed":
        tar = trim_tar(tar)
    elif ending == "garbage":
        tar += b"\x00junk" * 7
    blob, result = convert_cs(tar, compression_level=level)
    check_cs_blob(tar, blob, result)
    check_cs_reader(tar, blob, result.annotations)


def test_zstd_cli_decompresses_to_the_input(latest, tmp_path):
    zstd = shutil.which("zstd")
    if zstd is None:
        pytest.skip("no zstd(1) on this machine")
    path = tmp_path / "layer.zst"
    path.write_bytes(latest[0])
    assert subprocess.run([zstd, "-dc", str(path)], capture_output=True, check=True).stdout == INPUT


# -- annotations, options, reproducibility -----------------------------------------------------


def test_annotations_only_io_github_keys(latest):
    _, result = latest
    check_annotations(latest[0], result.annotations)
    assert not any(k.startswith(("containerd.io/", "io.containers.")) for k in result.annotations)
    assert result.toc_digest == result.annotations[CHECKSUM_KEY]
    summary = result.to_json()
    assert summary["descriptor"] == {"mediaType": ZSTD_MEDIA_TYPE, "digest": result.blob_digest,
                                     "size": result.blob_size, "annotations": result.annotations}


def test_reproducible_across_threads_and_time_zones():
    tar = special_tar()
    blobs = set()
    saved = os.environ.get("TZ")
    try:
        for zone in ("UTC", "America/New_York", "Asia/Kolkata"):
            os.environ["TZ"] = zone
            time.tzset()
            for threads in (1, 2):
                blob, result = convert_cs(tar, threads=threads)
                blobs.add((blob, json.dumps(result.annotations)))
    finally:
        if saved is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = saved
        time.tzset()
    assert len(blobs) == 1
    # Times are written in UTC.
    assert b'"modtime":"2023-11-14T22:13:20Z"' in split_cs_blob(blobs.pop()[0]).toc_json


def test_levels_and_defaults():
    tar = special_tar()
    default, result = convert_cs(tar)
    assert default == convert_cs(tar, compression_level=estargz.DEFAULT_CONTAINERS_STORAGE_ZSTD_LEVEL)[0]
    assert estargz.DEFAULT_CONTAINERS_STORAGE_ZSTD_LEVEL == 10
    sizes = {}
    for level in (1, 19):
        blob, result = convert_cs(tar, compression_level=level)
        check_cs_blob(tar, blob, result)
        sizes[level] = len(blob)
    assert sizes[19] < sizes[1]
    # The chunks are content-defined: the chunk size does not apply.
    assert convert_cs(tar, chunk_size=4096)[0] == default
    for bad in ({"compression_level": 0}, {"compression_level": 23}, {"min_chunk_size": 1000},
                {"prioritized_files": ["d/file"]}, {"external_toc": True}):
        with pytest.raises(ValueError):
            convert_cs(tar, **bad)


def test_writes_to_a_path(tmp_path):
    dst = tmp_path / "layer.zst"
    result = estargz.convert(io.BytesIO(SAMPLE_SMALL), dst, format=CS_FORMAT)
    check_cs_blob(SAMPLE_SMALL, dst.read_bytes(), result)
    with estargz.open(dst, annotations=result.annotations) as reader:
        assert reader.verify().diff_id == sha256(SAMPLE_SMALL)


def test_compressed_inputs_give_the_same_blob():
    tar = special_tar()
    plain = convert_cs(tar)[0]
    assert convert_cs(zstandard.ZstdCompressor(level=3).compress(tar))[0] == plain
    assert convert_cs(gzip.compress(tar, mtime=0))[0] == plain


# -- refused and special inputs ----------------------------------------------------------------


@pytest.mark.parametrize("second", ["dup", "./dup", "dir/../dup", "/dup"])
def test_duplicate_names_are_refused(second, tmp_path):
    def fill(tf: tarfile.TarFile) -> None:
        add(tf, "dir/", kind=tarfile.DIRTYPE)
        add(tf, "dup", b"first\n")
        add(tf, second, b"second\n")

    tar = make_tar(fill)
    if second == "/dup":  # rooted: Go's filepath.Clean keeps the slash, not a duplicate
        blob, result = convert_cs(tar)
        check_cs_blob(tar, blob, result)
        return
    with pytest.raises(UnsupportedInputError, match="duplicate"):
        convert_cs(tar)
    dst = tmp_path / "out.zst"
    with pytest.raises(UnsupportedInputError):
        estargz.convert(io.BytesIO(tar), dst, format=CS_FORMAT)
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def test_special_entries_in_the_toc():
    tar = special_tar()
    blob, result = convert_cs(tar)
    parts = check_cs_blob(tar, blob, result)
    by_name = {e.name: (e, raw) for e, raw in zip(parts.entries, parts.toc_raw) if e.type != "chunk"}
    hard, hard_raw = by_name["d/hard"]
    assert hard.type == "hardlink" and hard.link_name == "d/file" and "size" not in hard_raw
    sym, _ = by_name["d/sym"]
    assert (sym.type, sym.link_name, sym.mode) == ("symlink", "../elsewhere/target", 0o777)
    assert by_name["dev/null"][1] == {"type": "char", "name": "dev/null", "mode": 0o666,
                                     "modtime": "2023-11-14T22:13:20Z", "devMajor": 1, "devMinor": 3}
    assert by_name["dev/sda"][0].type == "block" and by_name["dev/sda"][1]["devMinor"] == 16
    assert by_name["dev/fifo"][0].type == "fifo"
    assert by_name["setuid"][0].mode == 0o4755 and by_name["setuid"][0].uid == 2 ** 21 + 5
    attrs_raw = by_name["x/attrs"][1]
    assert attrs_raw["xattrs"] == {
        "security.capability": base64.b64encode(SECURITY_CAPABILITY).decode(),
        "user.binary": base64.b64encode(bytes(range(256))).decode(),
        "user.empty": "", "user.text": base64.b64encode("värde".encode()).decode()}
    assert list(attrs_raw["xattrs"]) == sorted(attrs_raw["xattrs"])
    assert (attrs_raw["modtime"], attrs_raw["accesstime"], attrs_raw["changetime"]) == (
        "2023-11-14T22:13:20.123456789Z", "2023-11-14T22:15:00.5Z", "2023-11-14T22:16:40.25Z")
    assert by_name["x/dir/"][0].xattrs == {"trusted.overlay.opaque": b"y"}
    long_name = "long/" + "n" * 120 + "/" + "m" * 60 + "/a-file-with-a-long-name.txt"
    assert long_name in by_name
    assert by_name["d/longlink"][0].link_name == long_name
    assert "uni/żółć-日本語-<&>\u2028.txt" in by_name
    assert b'"uni/\xc5\xbc\xc3\xb3\xc5\x82\xc4\x87-\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e-\\u003c\\u0026\\u003e\\u2028.txt"' in parts.toc_json
    empty_raw = by_name["d/empty"][1]
    assert set(empty_raw) == {"type", "name", "mode", "modtime"}
    with estargz.open(blob, annotations=result.annotations) as reader:
        assert reader.read("d/hard") == b"hello, world\n"
        assert reader.lookup("d/longlink").name == long_name
        assert reader.lookup("d/empty").digest == sha256(b"")


def test_gnu_long_names_and_links():
    tar = special_tar(tarfile.GNU_FORMAT)
    assert b"././@LongLink" in tar
    blob, result = convert_cs(tar)
    parts = check_cs_blob(tar, blob, result)
    # The long-name blocks are in the entry's header segment, never a record of their own.
    names = [record_name(r) for r in parts.records if r["type"] == 1]
    assert b"././@LongLink" not in names
    segments = [base64.b64decode(r["payload"]) for r in parts.records if r["type"] == 2]
    assert any(s.count(b"././@LongLink") == 1 and len(s) >= 3 * 512 for s in segments)


def test_zero_runs():
    tar = special_tar()
    blob, result = convert_cs(tar)
    parts = check_cs_blob(tar, blob, result)
    frames = {f.offset: f for f in parts.frames}

    def chunks(name: str) -> list[tuple[int, int, str]]:
        return [(e.chunk_offset, e.chunk_size, e.chunk_type) for e in parts.entries if e.name == name]

    hole_chunks = chunks("zeros/hole")
    index = hole_chunks.index((5000, 4096, "zeros"))  # random data, then the hole, on its own
    assert hole_chunks[index + 1][0] == 9096 and hole_chunks[index + 1][2] == ""
    assert chunks("zeros/lead")[0] == (0, 2000, "zeros")
    # A file that is one zero run, or holds only short runs, is one chunk without chunk fields.
    for name in ("zeros/all", "zeros/short"):
        assert chunks(name) == [(0, 0, "")], name
    hole = next(e for e in parts.entries if e.name == "zeros/hole" and e.chunk_type == "zeros")
    assert frames[hole.offset].data == bytes(4096)
    assert hole.chunk_digest == sha256(bytes(4096))
    assert frames[hole.offset].size < 100  # a hole compresses to almost nothing


@pytest.mark.parametrize("names", [("caf\udce9.txt",), ("caf\udce9/", "caf\udce9/\udcff.txt")])
def test_non_utf8_names_are_refused(names, tmp_path):
    """The TOC would hold U+FFFD where the tar-split holds the raw bytes, and containers/storage
    fails to pull such a layer: the writer refuses it and leaves no output."""
    def fill(tf: tarfile.TarFile) -> None:
        for name in names:
            if name.endswith("/"):
                add(tf, name, kind=tarfile.DIRTYPE)
            else:
                add(tf, name, b"latin-1 name\n")

    tar = make_tar(fill)
    out = tmp_path / "layer.zst"
    with pytest.raises(UnsupportedInputError, match="not valid UTF-8"):
        estargz.convert(io.BytesIO(tar), out, format=CS_FORMAT)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# 2. Reader: every zstd:chunked blob of tests/data


def skopeo_layer(layout: Path) -> tuple[Path, dict, dict]:
    """(layer blob, layer descriptor, config) of the single image of an OCI layout."""
    index = json.loads((layout / "index.json").read_text())
    [descriptor] = index["manifests"]
    manifest = json.loads(blob_path(layout, descriptor["digest"]).read_bytes())
    [layer] = manifest["layers"]
    config = json.loads(blob_path(layout, manifest["config"]["digest"]).read_bytes())
    return blob_path(layout, layer["digest"]), layer, config


def blob_path(layout: Path, digest: str) -> Path:
    algorithm, _, hex_digest = digest.partition(":")
    return layout / "blobs" / algorithm / hex_digest


@dataclass
class BlobCase:
    id: str
    path: Path
    format: str
    footer: str
    input: bytes | None  # the input tar whose entries the blob holds, when it is stored
    annotations: dict[str, str]
    blob_digest: str
    toc_digest: str  # as a manifest carries it for this format
    diff_id: str | None  # sha256 of the whole decompressed stream
    lossless: bool = False  # the stream is the input tar byte for byte


def sha256sums(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        digest, _, name = line.partition("  ")
        out[name.strip().lstrip("*")] = "sha256:" + digest
    return out


def blob_cases() -> list[BlobCase]:
    cases = []
    cs_sums = sha256sums(CS / "SHA256SUMS")
    latest_ann = json.loads((CS / "latest.annotations.json").read_text())
    cases.append(BlobCase("cs-latest", CS / "latest.zst", CS_FORMAT, "zstd:chunked-64", INPUT, latest_ann,
                          cs_sums["latest.zst"], latest_ann[CHECKSUM_KEY], sha256(INPUT), lossless=True))
    v143_ann = json.loads((CS / "v1.43.annotations.json").read_text())
    cases.append(BlobCase("cs-v1.43", CS / "v1.43.zst", CS_FORMAT, "zstd:chunked-40", INPUT, v143_ann,
                          cs_sums["v1.43.zst"], v143_ann[LEGACY_CHECKSUM_KEY], sha256(INPUT[:62976])))
    for name in ("small", "compressible"):
        build = json.loads((DEB / "cs-zstdchunked" / f"{name}.build.json").read_text())
        cases.append(BlobCase(f"deb-cs-{name}", DEB / "cs-zstdchunked" / f"{name}.blob", CS_FORMAT,
                              "zstd:chunked-40", SAMPLE_SMALL if name == "small" else None,
                              build["annotations"], build["blobDigest"],
                              build["annotations"][LEGACY_CHECKSUM_KEY], build["diffID"]))
    for name in ("small-default", "small-chunk4k", "compressible-default"):
        build = json.loads((DEB / "estargz-zstdchunked" / f"{name}.build.json").read_text())
        cases.append(BlobCase(f"deb-stargz-{name}", DEB / "estargz-zstdchunked" / f"{name}.blob",
                              STARGZ_FORMAT, "zstd:chunked-40",
                              SAMPLE_SMALL if name.startswith("small") else None,
                              build["annotations"], build["blobDigest"], build["tocDigest"], build["diffID"]))
    go15 = {e["file"]: e for e in json.loads((GO15 / "MANIFEST.json").read_text())}
    entry = go15["writer_zstdchunked.zst"]
    cases.append(BlobCase("go15-stargz", GO15 / "writer_zstdchunked.zst", STARGZ_FORMAT, "zstd:chunked-40",
                          (GO15 / "input.tar").read_bytes(), entry["annotations"], entry["sha256"],
                          entry["tocDigest"], entry["diffID"]))
    for name in ("small", "compressible"):
        layout = DEB / "skopeo" / f"oci-zstdchunked-{name}"
        path, layer, _ = skopeo_layer(layout)
        manifest = json.loads((DEB / "skopeo" / f"oci-zstdchunked-{name}.manifest.json").read_text())
        assert manifest["layers"] == [layer]
        assert layer["mediaType"] == ZSTD_MEDIA_TYPE
        cases.append(BlobCase(f"skopeo-{name}", path, CS_FORMAT, "zstd:chunked-40",
                              SAMPLE_SMALL if name == "small" else None, layer["annotations"],
                              layer["digest"], layer["annotations"][LEGACY_CHECKSUM_KEY], None))
    return cases


BLOB_CASES = blob_cases()


@pytest.mark.parametrize("case", BLOB_CASES, ids=[c.id for c in BLOB_CASES])
def test_reads_stored_blob(case: BlobCase):
    blob = case.path.read_bytes()
    assert sha256(blob) == case.blob_digest
    stream = zstd_d(blob)
    if case.diff_id is not None:
        assert sha256(stream) == case.diff_id
    if case.lossless:
        assert stream == case.input
    for given_annotations in (None, case.annotations):
        with estargz.open(blob, annotations=given_annotations) as reader:
            assert reader.format == case.format
            assert reader.footer.kind == (case.footer if given_annotations is None else "annotations")
            assert reader.toc_digest == case.toc_digest
            assert reader.manifest_checksum == case.annotations.get(
                CHECKSUM_KEY, case.annotations.get(LEGACY_CHECKSUM_KEY))
            report = reader.verify()
            assert report.toc_digest == case.toc_digest
            assert report.files > 0 and report.chunks > 0
            if case.format == CS_FORMAT and case.footer == "zstd:chunked-64":
                assert report.diff_id == case.diff_id
            else:
                assert report.diff_id is None
            if case.input is not None:
                check_reader_entries(reader, case.input, stargz=case.format == STARGZ_FORMAT)
            out = io.BytesIO()
            reader.unpack(out)
            if case.format == CS_FORMAT:  # the stream is a whole tar
                assert out.getvalue() == stream
            else:  # no end-of-archive marker in the stream: unpack adds one
                assert out.getvalue() == stream + bytes(1024)
    with estargz.open(blob, toc_digest=case.toc_digest) as reader:
        with pytest.raises(VerificationError):
            reader.verify(toc_digest="sha256:" + "0" * 64)
    with pytest.raises(VerificationError):
        estargz.open(blob, toc_digest="sha256:" + "0" * 64)


@pytest.mark.parametrize("case", BLOB_CASES, ids=[c.id for c in BLOB_CASES])
def test_annotated_checksum_is_checked(case: BlobCase):
    blob = case.path.read_bytes()
    wrong = "sha256:" + "1" * 64
    with pytest.raises(VerificationError):
        estargz.open(blob, annotations={**case.annotations, LEGACY_CHECKSUM_KEY: wrong})
    if TOC_DIGEST_KEY in case.annotations:  # stargz flavour: the uncompressed TOC's digest too
        with pytest.raises(VerificationError):
            estargz.open(blob, annotations={**case.annotations, TOC_DIGEST_KEY: wrong})
    else:
        with pytest.raises(VerificationError):
            estargz.open(blob, annotations={**case.annotations, CHECKSUM_KEY: wrong})
    # Both families (eStargz toc.digest and containers/storage >= 1.44 manifest-checksum).
    both = {**case.annotations, TOC_DIGEST_KEY: case.toc_digest,
            CHECKSUM_KEY: case.annotations.get(CHECKSUM_KEY, case.annotations.get(LEGACY_CHECKSUM_KEY))}
    with pytest.raises(FormatError):
        estargz.open(blob, annotations=both)


def test_v143_stream_drops_the_record_padding():
    blob = (CS / "v1.43.zst").read_bytes()
    assert zstd_d(blob) == INPUT[:62976]
    assert sha256(INPUT[:62976]).startswith("sha256:dc631216")
    with estargz.open(blob) as reader:
        assert reader.footer.tar_split is None
        with pytest.raises(FormatError):
            reader.tar_split()
        with pytest.raises(FormatError):
            drain(reader.iter_rebuilt_tar())


def test_latest_rebuilds_the_input():
    blob = (CS / "latest.zst").read_bytes()
    annotations = json.loads((CS / "latest.annotations.json").read_text())
    with estargz.open(blob, annotations=annotations) as reader:
        assert drain(reader.iter_rebuilt_tar()) == INPUT
        assert reader.verify().diff_id == sha256(INPUT)
        out = io.BytesIO()
        assert reader.unpack(out) == len(INPUT)
        assert out.getvalue() == INPUT
        records = reader.tar_split()
        assert len(records) == 25
        assert reader.tar_split_digest == sha256(blob[50098:50098 + 1246])


def test_skopeo_config_keeps_the_input_diff_id():
    """skopeo 1.9.3 writes the config from the input tar, which its 1.43 writer did not keep
    whole (the record padding is dropped): a known inconsistency, visible here."""
    compressible = (DEB / "inputs" / "sample-compressible.tar.sha256").read_text().split()[0]
    for name, input_digest in (("small", sha256(SAMPLE_SMALL)), ("compressible", "sha256:" + compressible)):
        layout = DEB / "skopeo" / f"oci-zstdchunked-{name}"
        path, _, config = skopeo_layer(layout)
        assert config["rootfs"]["diff_ids"] == [input_digest]
        build = json.loads((DEB / "cs-zstdchunked" / f"{name}.build.json").read_text())
        assert build["inputTarDigest"] == input_digest
        # skopeo's blob is byte for byte the one the 1.43 writer made.
        assert sha256(path.read_bytes()) == build["blobDigest"]
        assert sha256(zstd_d(path.read_bytes())) == build["diffID"] != input_digest
    blob = skopeo_layer(DEB / "skopeo" / "oci-zstdchunked-small")[0].read_bytes()
    assert zstd_d(blob) == trim_tar(SAMPLE_SMALL)


# ---------------------------------------------------------------------------------------------
# 3. Hostile blobs


def hostile_tar() -> bytes:
    def fill(tf: tarfile.TarFile) -> None:
        add(tf, "a/", kind=tarfile.DIRTYPE)
        add(tf, "a/multi", rnd(21, 150_000) + bytes(3000) + rnd(22, 40_000))
        add(tf, "a/small", b"small file\n")
        add(tf, "a/link", kind=tarfile.SYMTYPE, linkname="small")

    return make_tar(fill)


@dataclass
class Parts:
    tar: bytes
    data: bytes  # the data frames
    toc: dict
    tar_split: list[dict]


@pytest.fixture(scope="module")
def hostile() -> Parts:
    tar = hostile_tar()
    blob, _ = convert_cs(tar)
    split = split_cs_blob(blob)
    data_end = split.frames[-1].offset + split.frames[-1].size
    return Parts(tar, blob[:data_end], json.loads(split.toc_json), split.records)


def assemble(parts: Parts, *, toc: dict | None = None, tar_split: list[dict] | None = None,
             tar_split_bytes: bytes | None = None, fix_digest: bool = True,
             level: int = 3) -> tuple[bytes, dict[str, str]]:
    """A containers/storage blob from data frames, a TOC and a tar-split, put together here."""
    compressor = zstandard.ZstdCompressor(level=level, write_checksum=True)
    toc = json.loads(json.dumps(parts.toc if toc is None else toc))
    if tar_split_bytes is None:
        records = parts.tar_split if tar_split is None else tar_split
        tar_split_bytes = b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records)
    ts_frame = compressor.compress(tar_split_bytes)
    if fix_digest:
        toc["tarSplitDigest"] = sha256(ts_frame)
    toc_json = json.dumps(toc, separators=(",", ":"), ensure_ascii=False).encode()
    toc_frame = compressor.compress(toc_json)
    toc_offset = len(parts.data) + 8
    ts_offset = toc_offset + len(toc_frame) + 8
    footer = struct.pack("<7Q", toc_offset, len(toc_frame), len(toc_json), 1, ts_offset, len(ts_frame),
                         len(tar_split_bytes)) + MAGIC_64
    blob = parts.data + skippable(toc_frame) + skippable(ts_frame) + skippable(footer)
    annotations = {CHECKSUM_KEY: sha256(toc_frame),
                   POSITION_KEY: f"{toc_offset}:{len(toc_frame)}:{len(toc_json)}:1",
                   TARSPLIT_KEY: f"{ts_offset}:{len(ts_frame)}:{len(tar_split_bytes)}"}
    return blob, annotations


def open_both(blob: bytes, annotations: dict[str, str]):
    """The blob opened through its footer and through its annotations."""
    return [estargz.open(blob), estargz.open(blob, annotations=annotations)]


def test_reassembled_blob_is_valid(hostile):
    blob, annotations = assemble(hostile)
    for reader in open_both(blob, annotations):
        assert reader.verify().diff_id == sha256(hostile.tar)
        assert drain(reader.iter_rebuilt_tar()) == hostile.tar


@pytest.mark.parametrize("magic", [b"GNUlInUX", b"gnulinux", MAGIC_40, bytes(8)])
def test_bad_footer_magic(hostile, magic):
    blob, _ = assemble(hostile)
    bad = blob[:-8] + magic
    with pytest.raises(FormatError):
        estargz.open(bad)


def test_bad_skippable_header_and_manifest_type(hostile):
    blob, _ = assemble(hostile)
    for bad in (blob[:-72] + b"\x51\x2a\x4d\x19" + blob[-68:],  # not a skippable magic
                blob[:-72] + SKIPPABLE + b"\x41\x00\x00\x00" + blob[-64:]):  # wrong size
        with pytest.raises(FormatError):
            estargz.open(bad)
    fields = list(struct.unpack("<7Q", blob[-64:-8]))
    fields[3] = 2  # manifest type
    with pytest.raises(FormatError):
        estargz.open(blob[:-64] + struct.pack("<7Q", *fields) + MAGIC_64)


@pytest.mark.parametrize("field,value", [
    (0, "size"), (0, "huge"), (1, "size"), (1, "huge"), (4, "size"), (5, "size"), (5, "huge"),
    (0, "into-footer"), (2, "size"), (2, "huge"), (6, "size"), (6, "huge"), (6, "small"),
])
def test_footer_offsets_outside_the_blob(hostile, field, value):
    blob, _ = assemble(hostile)
    fields = list(struct.unpack("<7Q", blob[-64:-8]))
    fields[field] = {"size": len(blob), "huge": (1 << 64) - 1, "into-footer": len(blob) - 60,
                     "small": fields[field] - 1}[value]
    bad = blob[:-64] + struct.pack("<7Q", *fields) + MAGIC_64
    with pytest.raises(EStargzError) as info:
        with estargz.open(bad) as reader:
            reader.verify()
    assert isinstance(info.value, FormatError)


@pytest.mark.parametrize("key,value", [
    (POSITION_KEY, "{size}:10:10:1"), (POSITION_KEY, "8:{size}:10:1"), (POSITION_KEY, "0:10:10:1"),
    (POSITION_KEY, "8:10:10:2"), (POSITION_KEY, "8:10:10"), (POSITION_KEY, "-8:10:10:1"),
    (POSITION_KEY, "a:b:c:d"), (TARSPLIT_KEY, "{size}:10:10"), (TARSPLIT_KEY, "8:10"),
    (LEGACY_POSITION_KEY, "{size}:10:10:1"),
])
def test_annotation_positions_outside_the_blob(hostile, key, value):
    blob, annotations = assemble(hostile)
    annotations = {k: v for k, v in annotations.items() if not (key == LEGACY_POSITION_KEY and k == POSITION_KEY)}
    annotations[key] = value.format(size=len(blob))
    with pytest.raises(FormatError):
        estargz.open(blob, annotations=annotations)


def test_toc_entry_offsets_outside_the_data(hostile):
    for value in ("blob", "toc", "huge"):
        toc = json.loads(json.dumps(hostile.toc))
        entry = next(e for e in toc["entries"] if e["type"] == "chunk")
        blob, annotations = assemble(hostile, toc=toc)
        entry["offset"] = {"blob": len(blob) + 10, "toc": len(hostile.data) + 8, "huge": 2 ** 62}[value]
        blob, annotations = assemble(hostile, toc=toc)
        with pytest.raises(FormatError):
            estargz.open(blob, annotations=annotations)


def test_toc_chunks_that_do_not_cover_the_file(hostile):
    toc = json.loads(json.dumps(hostile.toc))
    chunk = next(e for e in toc["entries"] if e["type"] == "chunk")
    chunk["chunkOffset"] += 1
    blob, annotations = assemble(hostile, toc=toc)
    with pytest.raises(FormatError):
        estargz.open(blob, annotations=annotations)


def test_manifest_checksum_mismatch(hostile):
    blob, annotations = assemble(hostile)
    _, other_annotations = assemble(hostile, level=19)  # same TOC JSON, other bytes
    assert other_annotations[CHECKSUM_KEY] != annotations[CHECKSUM_KEY]
    with pytest.raises(VerificationError):
        estargz.open(blob, annotations={**annotations, CHECKSUM_KEY: other_annotations[CHECKSUM_KEY]})
    legacy = {LEGACY_CHECKSUM_KEY: other_annotations[CHECKSUM_KEY],
              LEGACY_POSITION_KEY: annotations[POSITION_KEY]}
    with pytest.raises(VerificationError):
        estargz.open(blob, annotations=legacy)


def test_toc_with_trailing_data(hostile):
    compressor = zstandard.ZstdCompressor(level=3)
    toc_json = json.dumps(hostile.toc, separators=(",", ":")).encode() + b" {}"
    toc_frame = compressor.compress(toc_json)
    toc_offset = len(hostile.data) + 8
    footer = struct.pack("<4Q", toc_offset, len(toc_frame), len(toc_json), 1) + MAGIC_40
    with pytest.raises(FormatError):
        estargz.open(hostile.data + skippable(toc_frame) + skippable(footer))


def mutate_file_record(records: list[dict], target: str, **changes) -> list[dict]:
    out = json.loads(json.dumps(records))
    record = next(r for r in out if r["type"] == 1 and r.get("name") == target)
    record.update(changes)
    return out


@pytest.mark.parametrize("change", ["rename", "resize", "retype", "drop-file", "add-file"])
def test_tar_split_that_disagrees_with_the_toc(hostile, change):
    records = json.loads(json.dumps(hostile.tar_split))
    if change == "rename":
        records = mutate_file_record(records, "a/small", name="a/other")
    elif change == "resize":
        records = mutate_file_record(records, "a/small", size=12)
    elif change == "retype":  # a file record turned into an (empty) segment
        records = mutate_file_record(records, "a/link", type=2)
    elif change == "drop-file":
        index = next(i for i, r in enumerate(records) if r.get("name") == "a/link")
        del records[index]
        for i, r in enumerate(records):
            r["position"] = i
    else:
        records.insert(len(records) - 1, {"type": 1, "name": "a/extra", "payload": None,
                                          "position": len(records) - 1})
        records[-1]["position"] = len(records) - 1
    blob, annotations = assemble(hostile, tar_split=records)  # tarSplitDigest matches it
    for reader in open_both(blob, annotations):
        with pytest.raises(VerificationError):
            reader.tar_split()
        with pytest.raises(VerificationError):
            reader.verify()
        with pytest.raises(VerificationError):
            drain(reader.iter_rebuilt_tar())


def test_toc_metadata_that_disagrees_with_the_tar_split(hostile):
    """The tar-split is authenticated by the TOC, and the TOC must describe the same entries as
    the tar headers in it: containers/storage >= 1.55 (``ensureTOCMatchesTarSplit``) compares
    type, linkName, mode, size, uid, gid, devMajor/devMinor, xattrs and times, and fails the
    pull on any difference. A TOC that lies about an entry (say a setuid mode) while the tar the
    diffID covers says otherwise must not verify."""
    accepted = []
    for field, value in [("mode", 0o4755), ("uid", 5), ("gid", 7), ("linkName", "/etc/shadow"),
                         ("modtime", "2001-01-01T00:00:00Z"), ("xattrs", {"user.x": "eA=="}),
                         ("type", "fifo")]:
        toc = json.loads(json.dumps(hostile.toc))
        next(e for e in toc["entries"] if e["name"] == "a/link")[field] = value
        blob, annotations = assemble(hostile, toc=toc)
        try:
            with estargz.open(blob, annotations=annotations) as reader:
                reader.verify()
        except VerificationError:
            continue
        accepted.append(field)
    assert accepted == [], f"TOC fields that may contradict the tar-split headers: {accepted}"


@pytest.mark.parametrize("field", ["digest", "chunkDigest"])
def test_toc_content_digest_mismatch(hostile, field):
    toc = json.loads(json.dumps(hostile.toc))
    entry = next(e for e in toc["entries"] if e["name"] == "a/multi" and field in e)
    entry[field] = "sha256:" + "2" * 64
    blob, annotations = assemble(hostile, toc=toc)
    with estargz.open(blob, annotations=annotations) as reader:
        if field == "chunkDigest":  # reads check chunk digests; the file digest in verify()
            with pytest.raises(VerificationError):
                reader.read("a/multi")
        with pytest.raises(VerificationError):
            reader.verify()


def test_swapped_frame_of_a_single_chunk_file(hostile):
    """A single-chunk file has no chunkDigest in a containers/storage TOC: its ``digest`` is the
    only check of its content, and a read must not return bytes that do not match it (a valid
    zstd frame of other content passes the frame checksum)."""
    entry = next(e for e in hostile.toc["entries"] if e["name"] == "a/small")
    frame = next(f for f in parse_frames(hostile.data) if f.offset == entry["offset"])
    assert frame.data == b"small file\n"
    evil = zstandard.ZstdCompressor(level=3, write_checksum=True).compress(b"evil file!\n")
    assert len(evil) == frame.size
    data = hostile.data[:frame.offset] + evil + hostile.data[frame.offset + frame.size:]
    blob, annotations = assemble(Parts(hostile.tar, data, hostile.toc, hostile.tar_split))
    with estargz.open(blob, annotations=annotations) as reader:
        with pytest.raises(VerificationError):
            reader.verify()
        with pytest.raises(VerificationError):
            reader.read("a/small")


def test_tar_split_digest_mismatch(hostile):
    # The TOC names the tar-split compressed at level 3; the blob holds the same JSON lines
    # compressed at level 19: same content, other bytes.
    digest = json.loads(split_cs_blob(assemble(hostile)[0]).toc_json)["tarSplitDigest"]
    blob, annotations = assemble(hostile, toc={**hostile.toc, "tarSplitDigest": digest}, level=19,
                                 fix_digest=False)
    frames = parse_frames(blob)
    assert json.loads(one_frame(frames[-3].data))["tarSplitDigest"] == digest
    assert sha256(frames[-2].data) != digest
    for reader in open_both(blob, annotations):
        with pytest.raises(VerificationError):
            reader.tar_split()
        with pytest.raises(VerificationError):
            reader.verify()


def test_crc_mismatch_in_the_tar_split(hostile):
    records = mutate_file_record(hostile.tar_split, "a/multi",
                                 payload=base64.b64encode(b"\x00" * 7 + b"\x01").decode())
    blob, annotations = assemble(hostile, tar_split=records)
    for reader in open_both(blob, annotations):
        assert reader.read("a/multi")  # the file itself is intact
        with pytest.raises(VerificationError):
            drain(reader.iter_rebuilt_tar())
        with pytest.raises(VerificationError):
            reader.verify()


@pytest.mark.parametrize("tar_split", [b"not json\n", b'{"type":3,"position":0}\n',
                                       b'{"type":2,"payload":"!!","position":0}\n',
                                       b'{"type":2,"payload":"","position":5}\n', b""])
def test_malformed_tar_split(hostile, tar_split):
    blob, annotations = assemble(hostile, tar_split_bytes=tar_split)
    for reader in open_both(blob, annotations):
        with pytest.raises(EStargzError):
            reader.verify()


@pytest.mark.parametrize("where", ["content", "zeros", "metadata", "toc", "tar-split"])
def test_corrupt_frame(hostile, where):
    blob, annotations = assemble(hostile)
    frames = parse_frames(blob)
    toc = hostile.toc["entries"]
    if where == "content":
        chunk = next(e for e in toc if e["type"] == "chunk" and e.get("chunkType") != "zeros")
        frame = next(f for f in frames if f.offset == chunk["offset"])
    elif where == "zeros":
        chunk = next(e for e in toc if e.get("chunkType") == "zeros")
        frame = next(f for f in frames if f.offset == chunk["offset"])
    elif where == "metadata":
        frame = frames[0]
    else:
        frame = frames[-3] if where == "toc" else frames[-2]
    at = frame.offset + frame.size // 2 + (4 if frame.kind == "skippable" else 0)
    bad = bytearray(blob)
    bad[at] ^= 0x55
    bad = bytes(bad)
    if where == "metadata":
        # A partial pull never reads metadata frames (the tar is rebuilt from the tar-split), but
        # verify() covers the whole blob, and so does decompressing the whole stream.
        with estargz.open(bad, annotations=annotations) as reader:
            with pytest.raises((FormatError, VerificationError)):
                reader.verify()
            with pytest.raises((FormatError, VerificationError)):
                reader.unpack(io.BytesIO())
        return
    with pytest.raises((FormatError, VerificationError)):
        with estargz.open(bad, annotations=annotations) as reader:
            reader.verify()
    if where == "toc":
        with pytest.raises(FormatError):
            estargz.open(bad)


def test_truncated_blob(hostile):
    blob, annotations = assemble(hostile)
    ts_offset, ts_length, _ = map(int, annotations[TARSPLIT_KEY].split(":"))
    for size in (0, 1, 4, 8, 40, 71, 72, 100, len(hostile.data), len(blob) // 2, ts_offset + 10,
                 len(blob) - 72, len(blob) - 64, len(blob) - 8, len(blob) - 1):
        with pytest.raises(FormatError):
            estargz.open(blob[:size])  # the footer is gone or cut
        if size == ts_offset + ts_length:
            # Annotations locate the TOC and tar-split: the footer is not needed (containers/
            # storage >= 1.54 never reads it); a part of one is bytes that belong to nothing.
            with estargz.open(blob[:size], annotations=annotations) as reader:
                assert reader.verify().diff_id == sha256(hostile.tar)
        else:
            with pytest.raises(FormatError):
                with estargz.open(blob[:size], annotations=annotations) as reader:
                    reader.verify()


def test_data_frames_cut_short(hostile):
    """A blob whose data frames end early (the TOC and footer intact) fails when read."""
    chunk = next(e for e in hostile.toc["entries"] if e["type"] == "chunk")
    parts = Parts(hostile.tar, hostile.data[:chunk["offset"] + 10], hostile.toc, hostile.tar_split)
    blob, annotations = assemble(parts)
    with pytest.raises(FormatError):
        with estargz.open(blob, annotations=annotations) as reader:
            reader.verify()


# ---------------------------------------------------------------------------------------------
# 4. stargz-snapshotter flavour against the Go checker


class Checker:
    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def run(self, *args: object) -> bytes:
        proc = subprocess.run([self.path, *map(str, args)], capture_output=True, timeout=120)
        assert proc.returncode == 0, (
            f"estargz-checker {' '.join(map(str, args))} exited {proc.returncode}:\n"
            f"{proc.stderr.decode(errors='replace')}")
        return proc.stdout

    def verify(self, blob: Path, toc_digest: str) -> dict:
        return json.loads(self.run("verify", "--zstdchunked", blob, toc_digest))

    def build(self, src: Path, dst: Path, *, chunk_size: int, level: int) -> dict:
        return json.loads(self.run("build", "--zstdchunked", "--procs", 1, "--chunk-size", chunk_size,
                                   "--level", level, src, dst))

    def toc(self, blob: Path) -> bytes:
        return self.run("toc", "--zstdchunked", blob)


@pytest.fixture(scope="module")
def checker(go_checker) -> Checker:
    return Checker(go_checker)


def varied_tar(unit: int) -> bytes:
    def fill(tf: tarfile.TarFile) -> None:
        alice = dict(uid=1000, gid=1000, uname="alice", gname="staff")
        add(tf, "d/", kind=tarfile.DIRTYPE, **alice)
        add(tf, "d/empty", b"")
        add(tf, "d/one", b"x", mode=0o600)
        add(tf, "d/exact", rnd(31, unit), **alice)
        add(tf, "d/three", rnd(32, 3 * unit), mode=0o755)
        add(tf, "d/partial", rnd(33, 2 * unit + unit // 2 + 1))
        add(tf, "d/hard", kind=tarfile.LNKTYPE, linkname="d/three")
        add(tf, "d/sym", kind=tarfile.SYMTYPE, linkname="exact", mode=0o777)
        add(tf, "dev/null", kind=tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666)
        add(tf, "dev/fifo", kind=tarfile.FIFOTYPE)
        add(tf, "long/" + "L" * 110 + "/file.txt", b"long name\n" * 50)
        add(tf, "x/attrs", rnd(34, unit + 3), pax=xattr_pax({"user.a": b"v\xff", "security.capability":
                                                              SECURITY_CAPABILITY}))
        add(tf, "x/zeros", bytes(3 * unit + 5))

    return make_tar(fill)


def stargz_input(key: str, tmp: Path) -> Path:
    path = tmp / f"{key}.tar"
    if key == "sample-small":
        path.write_bytes(SAMPLE_SMALL)
    elif key == "input.tar":
        path.write_bytes(INPUT)
    elif key.startswith("varied-"):
        path.write_bytes(varied_tar(int(key.split("-")[1])))
    elif key == "system":
        path.write_bytes(system_tar(tmp))
    else:
        raise AssertionError(key)
    return path


STARGZ_CASES = [
    # tar, chunk size, level
    ("sample-small", estargz.DEFAULT_CHUNK_SIZE, 3),
    ("sample-small", 4096, 1),
    ("input.tar", 1000, 9),
    ("varied-1000", 1000, 19),
    ("varied-65536", 65536, 3),
    ("system", 65536, 6),
]
STARGZ_IDS = [f"{t}-chunk{c}-level{l}" for t, c, l in STARGZ_CASES]


def check_go_view(go: dict, reader: estargz.Reader) -> None:
    """``checker verify`` describes the same tree, metadata and contents as our reader."""
    names = {e.name for e in reader}
    names |= {str(p) for n in names for p in PurePosixPath(n).parents if str(p) != "."}
    names.discard("")
    go_entries = {e["name"]: e for e in go["entries"]}
    assert set(go_entries) == names
    chunks, seen = 0, set()
    for name, g in go_entries.items():
        ours = reader.lookup(name)
        where = f"{name}: {g}"
        assert (g["type"], g["size"], g["mode"]) == (ours.type, ours.size, ours.mode), where
        assert (g["uid"], g["gid"], g["userName"]) == (ours.uid, ours.gid, ours.user_name), where
        assert (g["linkName"], g["devMajor"], g["devMinor"]) == (ours.link_name, ours.dev_major,
                                                                 ours.dev_minor), where
        assert g["modTime"] == ours.modtime, where
        assert {k: base64.b64decode(v) for k, v in g["xattrs"].items()} == ours.xattrs, where
        assert (g["digest"], g["numLink"]) == (ours.digest, ours.num_link), where
        if ours.type == "reg":
            assert g["contentSHA256"] == sha256(reader.read(name)) == g["digest"], where
            assert [(c["offset"], c["chunkOffset"], c["chunkSize"], c["chunkDigest"]) for c in g["chunks"]] == [
                (c.offset, c.chunk_offset, c.chunk_size, c.chunk_digest) for c in ours.chunks], where
            if id(ours) not in seen:
                seen.add(id(ours))
                chunks += len(ours.chunks)
    assert go["chunksVerified"] == chunks > 0
    assert go["tocDigest"] == reader.toc_digest


@pytest.mark.interop
@pytest.mark.parametrize("case", STARGZ_CASES, ids=STARGZ_IDS)
def test_go_reads_our_stargz_blob(case, checker, tmp_path):
    key, chunk_size, level = case
    tar = stargz_input(key, tmp_path)
    blob = tmp_path / "ours.zst"
    result = estargz.convert(tar, blob, format=STARGZ_FORMAT, chunk_size=chunk_size, compression_level=level)
    raw = blob.read_bytes()
    frames = parse_frames(raw)
    assert [f.kind for f in frames[-2:]] == ["skippable", "skippable"]
    assert raw[-48:-40] == SKIPPABLE + b"\x28\x00\x00\x00" and raw[-8:] == MAGIC_40
    toc_json = one_frame(frames[-2].data)
    assert sha256(toc_json) == result.toc_digest
    assert set(result.annotations) == {TOC_DIGEST_KEY, UNCOMPRESSED_SIZE_KEY, LEGACY_CHECKSUM_KEY,
                                       LEGACY_POSITION_KEY}
    assert result.annotations[TOC_DIGEST_KEY] == result.toc_digest
    assert result.annotations[LEGACY_CHECKSUM_KEY] == sha256(frames[-2].data)
    assert result.annotations[LEGACY_POSITION_KEY] == (
        f"{frames[-2].offset + 8}:{len(frames[-2].data)}:{len(toc_json)}:1")
    assert result.annotations[UNCOMPRESSED_SIZE_KEY] == str(len(zstd_d(raw)))
    assert result.diff_id == sha256(zstd_d(raw))
    go = checker.verify(blob, result.toc_digest)
    assert go["diffID"] == result.diff_id and go["uncompressedSize"] == result.uncompressed_size
    with estargz.open(blob, annotations=result.annotations) as reader:
        assert reader.format == STARGZ_FORMAT
        assert reader.verify(result.toc_digest).diff_id is None
        check_go_view(go, reader)
        check_reader_entries(reader, tar.read_bytes(), stargz=True)
    # Go rejects a tampered blob (the check can fail).
    data_frame = next(f for f in frames if f.kind == "zstd" and len(f.data) > 64)
    bad = bytearray(raw)
    bad[data_frame.offset + data_frame.size // 2] ^= 0xFF
    (tmp_path / "bad.zst").write_bytes(bytes(bad))
    proc = subprocess.run([checker.path, "verify", "--zstdchunked", str(tmp_path / "bad.zst"), result.toc_digest],
                          capture_output=True)
    assert proc.returncode != 0


TOC_FIELDS = ("name", "type", "size", "mode", "uid", "gid", "user_name", "group_name", "link_name",
              "modtime", "xattrs", "digest", "dev_major", "dev_minor", "inner_offset", "chunk_offset",
              "chunk_size", "chunk_digest")


@pytest.mark.interop
@pytest.mark.parametrize("case", STARGZ_CASES, ids=STARGZ_IDS)
def test_same_stargz_toc_as_go_and_go_blobs_read(case, checker, tmp_path):
    key, chunk_size, level = case
    tar = stargz_input(key, tmp_path)
    go_blob, py_blob = tmp_path / "go.zst", tmp_path / "py.zst"
    built = checker.build(tar, go_blob, chunk_size=chunk_size, level=level)
    result = estargz.convert(tar, py_blob, format=STARGZ_FORMAT, chunk_size=chunk_size,
                             compression_level=level, threads=1)
    go_raw, py_raw = checker.toc(go_blob), checker.toc(py_blob)
    assert sha256(go_raw) == built["tocDigest"] and sha256(py_raw) == result.toc_digest
    go_version, go_toc = estargz.decode_toc(go_raw)
    py_version, py_toc = estargz.decode_toc(py_raw)
    assert go_version == py_version == 1
    assert [tuple(getattr(e, f) for f in TOC_FIELDS) for e in py_toc] == [
        tuple(getattr(e, f) for f in TOC_FIELDS) for e in go_toc]
    for g, p in zip(go_toc, py_toc):
        assert (g.offset == 0) == (p.offset == 0), g.name
        p.offset = g.offset
    assert estargz.encode_toc(py_toc) == go_raw  # byte for byte, given Go's offsets
    # (The streams differ: Go re-encodes tar headers, estargz copies them from the input.)
    # The Go-built blob, read and verified by estargz.
    raw = go_blob.read_bytes()
    assert sha256(raw) == built["blobDigest"] and sha256(zstd_d(raw)) == built["diffID"]
    with estargz.open(go_blob, toc_digest=built["tocDigest"]) as reader:
        assert reader.format == STARGZ_FORMAT
        assert reader.footer.kind == "zstd:chunked-40"
        report = reader.verify(built["tocDigest"])
        assert report.chunks > 0
        check_reader_entries(reader, tar.read_bytes(), stargz=True)
        out = io.BytesIO()
        reader.unpack(out)
        assert out.getvalue() == zstd_d(raw) + bytes(1024)


@pytest.mark.interop
def test_go_rejects_containers_storage_blob(checker, tmp_path):
    """stargz-snapshotter cannot read the containers/storage dialect (64-byte footer magic)."""
    blob = tmp_path / "cs.zst"
    blob.write_bytes(convert_cs(SAMPLE_SMALL)[0])
    proc = subprocess.run([checker.path, "verify", "--zstdchunked", str(blob), "-"], capture_output=True)
    assert proc.returncode != 0


# ---------------------------------------------------------------------------------------------
# 5. skopeo


def write_blob(root: Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": "sha256:" + digest, "size": len(data)}


def write_oci_layout(root: Path, layer: bytes, tag: str = "v1") -> None:
    """An OCI image layout holding one image with one uncompressed layer."""
    root.mkdir(parents=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    layer_descriptor = {"mediaType": "application/vnd.oci.image.layer.v1.tar", **write_blob(root, layer)}
    config = {"architecture": "amd64", "os": "linux", "config": {},
              "rootfs": {"type": "layers", "diff_ids": [layer_descriptor["digest"]]}}
    config_descriptor = {"mediaType": "application/vnd.oci.image.config.v1+json",
                         **write_blob(root, json.dumps(config).encode())}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config_descriptor, "layers": [layer_descriptor]}
    manifest_descriptor = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                           **write_blob(root, json.dumps(manifest).encode()),
                           "annotations": {"org.opencontainers.image.ref.name": tag}}
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest_descriptor]}))


SKOPEO_CASES = ["special", "sample-small", "tree"]


@pytest.mark.interop
@pytest.mark.parametrize("kind", SKOPEO_CASES)
def test_skopeo_zstd_chunked_layer(kind, skopeo, tmp_path):
    if kind == "special":
        tar = special_tar()
    elif kind == "sample-small":
        tar = SAMPLE_SMALL
    else:
        tar = tree_tar(tmp_path, "--format=posix")
    tar = trim_tar(tar)  # skopeo 1.9.3 fails on bytes after the end-of-archive marker
    write_oci_layout(tmp_path / "src", tar)
    env = {**os.environ, "HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path)}
    proc = subprocess.run([str(skopeo), "--insecure-policy", "copy", "-q", "--dest-compress-format",
                           "zstd:chunked", f"oci:{tmp_path / 'src'}:v1", f"oci:{tmp_path / 'dst'}:v1"],
                          capture_output=True, timeout=300, env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    path, layer, config = skopeo_layer(tmp_path / "dst")
    blob = path.read_bytes()
    assert layer["mediaType"] == ZSTD_MEDIA_TYPE
    assert (layer["digest"], layer["size"]) == (sha256(blob), len(blob))
    assert config["rootfs"]["diff_ids"] == [sha256(tar)]
    annotations = layer.get("annotations", {})
    assert zstd_d(blob) == tar
    if CHECKSUM_KEY in annotations:  # a skopeo built with containers/storage >= 1.44
        checksum_key, footers = CHECKSUM_KEY, ("zstd:chunked-40", "zstd:chunked-56", "zstd:chunked-64")
    else:  # skopeo 1.9.3 = containers/storage 1.43: old keys, 40-byte footer, no tar-split
        assert {LEGACY_CHECKSUM_KEY, LEGACY_POSITION_KEY} <= set(annotations), annotations
        checksum_key, footers = LEGACY_CHECKSUM_KEY, ("zstd:chunked-40",)
    assert TOC_DIGEST_KEY not in annotations
    with estargz.open(blob, annotations=annotations) as reader:
        assert reader.format == CS_FORMAT
        assert reader.manifest_checksum == annotations[checksum_key]
        report = reader.verify(annotations[checksum_key])
        assert report.files > 0
        if reader.footer.tar_split is not None:
            assert report.diff_id == sha256(tar)
        check_reader_entries(reader, tar, stargz=False, empty_xattrs=checksum_key == CHECKSUM_KEY)
        out = io.BytesIO()
        reader.unpack(out)
        assert out.getvalue() == tar
    with estargz.open(blob) as reader:
        assert reader.footer.kind in footers
        assert reader.toc_digest == annotations[checksum_key]
        check_reader_entries(reader, tar, stargz=False, empty_xattrs=checksum_key == CHECKSUM_KEY)
