"""Conversion modes: min-chunk-size, external TOC (and the TOC image), keep-diff-id; their CLI
flags; and the three gzip footers.

Expected values come from the Go reference vectors in tests/data/estargz-go-v0.15.1/ (README.md,
MANIFEST.json), from the input tars themselves, or from an independent decoding with zlib, gzip,
tarfile, json and hashlib, never from estargz's own reader alone.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import itertools
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import pytest
import zstandard
from helpers import clean, gunzip, gzip_members, sha256
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import estargz
from estargz import footer as footer_mod
from estargz.cli import main
from estargz.footer import (
    ESTARGZ,
    ESTARGZ_EXTERNAL_TOC,
    ESTARGZ_LEGACY,
    Footer,
    external_toc_footer,
    gzip_footer,
    legacy_gzip_footer,
    parse_footer,
)
from estargz.tarstream import BLOCK
from estargz.testing import layers, layers_with_duplicates, tar_bytes
from estargz.tocimage import toc_image_manifest, write_toc_image

GO = Path(__file__).parent / "data" / "estargz-go-v0.15.1"
MANIFEST = {item["file"]: item for item in json.loads((GO / "MANIFEST.json").read_text())}
INPUT = (GO / "input.tar").read_bytes()
GO_PRIO = ["foo/big.bin", "hl"]

LANDMARK_CONTENTS = b"\x0f"
LANDMARKS = {".prefetch.landmark", ".no.prefetch.landmark"}
EXTERNAL_FOOTER = (bytes.fromhex("1f8b08040000000000ff" "1500" "5347" "1100") + b"STARGZEXTERNALTOC"
                   + bytes.fromhex("010000ffff" "0000000000000000"))
GZIP_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_DIGEST_KEY = "containerd.io/snapshot/stargz/layer.digest"


# --------------------------------------------------------------------------------------------
# independent helpers (zlib / gzip / tarfile / json only)
# --------------------------------------------------------------------------------------------

def internal_toc_offset(blob: bytes) -> int:
    """The TOC offset of a blob ending with the 51-byte footer, parsed with struct only."""
    assert blob[-51:-41] == bytes.fromhex("1f8b08040000000000ff") and blob[-41:-35] == b"\x1a\x00SG\x16\x00"
    assert blob[-19:-13] == b"STARGZ"
    return int(blob[-35:-19], 16)


def toc_tar_json(tar_bytes: bytes) -> bytes:
    """The TOC JSON of a plain TOC tar: exactly one entry stargz.index.json, then 1024 zero bytes."""
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["stargz.index.json"]
        data = tar.extractfile(members[0]).read()
    padded = 512 + (len(data) + 511) // 512 * 512
    assert len(tar_bytes) == padded + 1024
    assert tar_bytes[padded:] == bytes(1024)
    assert tar_bytes[512 + len(data):padded] == bytes(padded - 512 - len(data))
    return data


def internal_toc(blob: bytes) -> dict:
    offset = internal_toc_offset(blob)
    return json.loads(toc_tar_json(gunzip(blob[offset:-51])))


def external_toc(toc_blob: bytes) -> dict:
    assert len(gzip_members(toc_blob)) == 1
    return json.loads(toc_tar_json(gunzip(toc_blob)))


def is_data(entry: dict) -> bool:
    return entry["type"] == "chunk" or (entry["type"] == "reg" and entry.get("size", 0) > 0)


def offset_pattern(entries: list[dict]) -> list[int]:
    """Offsets of the data entries as ranks: equal where entries share a gzip member."""
    offsets = [e.get("offset", 0) for e in entries if is_data(e)]
    assert offsets == sorted(offsets), "data offsets must not decrease in TOC order"
    distinct = sorted(set(offsets))
    return [distinct.index(o) for o in offsets]


def without_offset(entries: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "offset"} for e in entries]


def assert_same_toc(ours: dict, go: dict, *, offset_pattern_too: bool = True) -> None:
    """Entry by entry: every field equal except "offset", whose pattern must match Go's."""
    assert ours["version"] == go["version"] == 1
    a, b = ours["entries"], go["entries"]
    assert [(e["name"], e["type"]) for e in a] == [(e["name"], e["type"]) for e in b]
    for x, y in zip(without_offset(a), without_offset(b)):
        assert x == y  # name, type, size, modtime, linkName, mode, uid/gid, names, innerOffset,
        #               devMajor/Minor, xattrs, digest, chunkOffset, chunkSize, chunkDigest
    if offset_pattern_too:
        assert [("offset" in e) for e in a] == [("offset" in e) for e in b]
        assert offset_pattern(a) == offset_pattern(b)


def tar_files(tar_bytes: bytes) -> dict[str, bytes]:
    """Regular files (and hardlinks, as their target's contents) of a tar, by cleaned name."""
    files: dict[str, bytes] = {}
    links: dict[str, str] = {}
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        for member in tar:
            links.pop(clean(member.name), None)
            if member.isreg():
                files[clean(member.name)] = tar.extractfile(member).read()
            elif member.islnk():
                links[clean(member.name)] = clean(member.linkname)
    # Like the readers (Go's too), hardlinks resolve by name once the whole TOC is known,
    # so the last declaration of the target wins.
    for name, target in links.items():
        files[name] = files[target]
    return files


def tar_names(tar_bytes: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        return [clean(m.name) for m in tar]


def check_every_offset(reader: estargz.Reader, files: dict[str, bytes]) -> None:
    """Every file reads back whole, and from every offset (pread, and seek + read)."""
    for name, data in files.items():
        assert reader.read(name) == data, name
        with reader.open(name) as f:
            for offset in range(len(data) + 1):
                assert f.pread(len(data), offset) == data[offset:], (name, offset)
                assert f.pread(3, offset) == data[offset:offset + 3], (name, offset)
                f.seek(offset)
                assert f.read(2) == data[offset:offset + 2]


def convert_bytes(src: bytes | Path, **options) -> tuple[bytes, estargz.BuildResult]:
    out = io.BytesIO()
    source = src if isinstance(src, Path) else io.BytesIO(src)
    result = estargz.convert(source, out, **options)
    blob = out.getvalue()
    assert result.blob_size == len(blob) and result.blob_digest == sha256(blob)
    return blob, result


# --------------------------------------------------------------------------------------------
# 1. min-chunk-size
# --------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def minchunk_input_tar() -> tuple[bytes, estargz.BuildResult]:
    return convert_bytes(GO / "input.tar", chunk_size=4, min_chunk_size=64000, prioritized_files=GO_PRIO)


def test_minchunk_toc_matches_go_entry_by_entry():
    blob, result = minchunk_input_tar()
    go_blob = (GO / "build_minchunk.esgz").read_bytes()
    ours, go = internal_toc(blob), internal_toc(go_blob)
    assert_same_toc(ours, go)
    # Offset 0 is omitted on the first member; entries there carry only innerOffset.
    first = [(e["name"], e.get("chunkOffset", 0), e["innerOffset"]) for e in ours["entries"]
             if is_data(e) and "offset" not in e]
    assert first == [("./foo/big.bin", 0, 1024), ("./foo/big.bin", 4, 1028), ("./foo/big.bin", 8, 1032),
                     ("./foo/bar.txt", 0, 3072), ("./foo/bar.txt", 4, 3076)]
    assert result.toc_digest == sha256(toc_tar_json(gunzip(blob[internal_toc_offset(blob):-51])))
    assert MANIFEST["build_minchunk.esgz"]["tocDigest"] == sha256(
        toc_tar_json(gunzip(go_blob[internal_toc_offset(go_blob):-51])))


@pytest.mark.parametrize("which", ["ours", "go"])
def test_minchunk_offsets_are_member_starts_and_landmark_starts_a_member(which):
    blob = minchunk_input_tar()[0] if which == "ours" else (GO / "build_minchunk.esgz").read_bytes()
    toc = internal_toc(blob)
    starts = gzip_members(blob)
    toc_offset = internal_toc_offset(blob)
    assert toc_offset in starts and starts[-1] == len(blob) - 51
    data_starts = [s for s in starts if s < toc_offset]
    data = [e for e in toc["entries"] if is_data(e)]
    assert {e.get("offset", 0) for e in data} == set(data_starts)
    for s in data_starts[1:]:  # every later member starts with a chunk payload
        assert any(e.get("offset", 0) == s and e.get("innerOffset", 0) == 0 for e in data), s
    (landmark,) = [e for e in toc["entries"] if e["name"] == ".prefetch.landmark"]
    assert landmark.get("offset", 0) > 0 and "innerOffset" not in landmark
    assert landmark["offset"] in data_starts
    # three data members: prioritized group + its headers, landmark onwards, (TOC)
    assert len(data_starts) == 2


@pytest.mark.parametrize("which", ["ours", "go"])
def test_minchunk_verify_and_read_every_offset(which):
    if which == "ours":
        blob, result = minchunk_input_tar()
        digest = result.toc_digest
    else:
        blob, digest = (GO / "build_minchunk.esgz").read_bytes(), MANIFEST["build_minchunk.esgz"]["tocDigest"]
    files = tar_files(INPUT)
    with estargz.open(blob, toc_digest=digest) as reader:
        report = reader.verify(digest)  # Go's VerifyTOC rejects this blob; ours accepts it
        assert (report.files, report.chunks, report.bytes) == (6, 9, 25)
        check_every_offset(reader, files)
        assert reader.read(".prefetch.landmark") == LANDMARK_CONTENTS
        assert reader.toc_offset == internal_toc_offset(blob)


def test_minchunk_gunzip_is_the_tar():
    blob, result = minchunk_input_tar()
    go_blob = (GO / "build_minchunk.esgz").read_bytes()
    stream = gunzip(blob)
    assert sha256(stream) == result.diff_id and len(stream) == result.uncompressed_size
    assert sha256(gunzip(go_blob)) == MANIFEST["build_minchunk.esgz"]["diffID"]
    data_end, go_data_end = internal_toc_offset(blob), internal_toc_offset(go_blob)
    # The layer part is the same tar Go writes (same order, same headers), byte for byte.
    assert gunzip(blob[:data_end]) == gunzip(go_blob[:go_data_end])
    # ... and the same as without min-chunk-size.
    plain, _ = convert_bytes(GO / "input.tar", chunk_size=4, prioritized_files=GO_PRIO)
    assert gunzip(blob[:data_end]) == gunzip(plain[:internal_toc_offset(plain)])
    files = tar_files(stream)
    assert files.pop("stargz.index.json") == toc_tar_json(gunzip(blob[data_end:-51]))
    assert files.pop(".prefetch.landmark") == LANDMARK_CONTENTS
    assert files == tar_files(INPUT)
    assert len(blob) < len(plain)


# -- bigger layers ---------------------------------------------------------------------------

def random_layer(seed: int, n_small: int, n_big: int, big_size: tuple[int, int]) -> bytes:
    """Many small files (random or repetitive contents), a few big random files, dirs, symlinks."""
    rng = random.Random(seed)
    files = []
    for i in range(n_small):
        size = rng.choice([0, 1, rng.randrange(1, 600), rng.randrange(1, 3000), rng.randrange(1, 9000)])
        if rng.random() < 0.6:
            data = rng.randbytes(size)
        else:
            data = (b"lorem ipsum %d dolor " % i * (size // 10 + 1))[:size]
        files.append((f"d{i % 9}/f{i:05d}", data))
    for j in range(n_big):
        files.append((f"big/b{j}", rng.randbytes(rng.randrange(*big_size))))
    rng.shuffle(files)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ["big"] + [f"d{i}" for i in range(9)]:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1600000000
            tar.addfile(info)
        for k, (name, data) in enumerate(files):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1600000000 + k, 0o644
            tar.addfile(info, io.BytesIO(data))
            if k % 50 == 0:
                link = tarfile.TarInfo(name + ".lnk")
                link.type, link.linkname = tarfile.SYMTYPE, os.path.basename(name)
                tar.addfile(link)
    return buf.getvalue()


@functools.lru_cache(maxsize=None)
def mid_layer() -> bytes:
    return random_layer(1, 400, 4, (20000, 70000))


MID_CHUNK = 8192
MID_PRIO = ("d3/f00003", "big/b1", "d0/f00000")


@functools.lru_cache(maxsize=None)
def mid_converted(min_chunk: int, prioritized: tuple[str, ...] = (), threads: int = 1):
    return convert_bytes(mid_layer(), chunk_size=MID_CHUNK, min_chunk_size=min_chunk,
                         prioritized_files=prioritized, threads=threads)


def check_min_chunk_layout(blob: bytes, min_chunk: int, chunk_size: int) -> None:
    """Members start only at 0 and chunk payloads; landmarks start one; members are >= M/2.

    The writer closes a member at the first chunk start once its estimated compressed size
    (each piece deflated at level 1) reaches M, so with mostly incompressible contents a member
    is also at most about M + one chunk + a few headers.
    """
    with estargz.open(blob) as reader:
        toc_offset = reader.toc_offset
        entries = reader.toc_entries
    data = [e for e in entries if e.type == "chunk" or (e.type == "reg" and e.size > 0)]
    starts = gzip_members(blob)
    assert toc_offset in starts
    data_starts = [s for s in starts if s < toc_offset]
    assert data_starts[0] == 0
    payload_starts = {e.offset for e in data if e.inner_offset == 0}
    assert {e.offset for e in data} <= set(data_starts)
    assert set(data_starts[1:]) <= payload_starts, "a member starts elsewhere than at a chunk payload"
    landmark_starts = set()
    for e in entries:
        if clean(e.name) in LANDMARKS:
            assert e.inner_offset == 0 and e.offset in data_starts
            landmark_starts.add(e.offset)
    ends = data_starts[1:] + [toc_offset]
    for start, end in zip(data_starts, ends):
        last_in_run = end == toc_offset or end in landmark_starts
        if not last_in_run:
            assert end - start >= min_chunk // 2, (start, end - start, min_chunk)
        assert end - start <= min_chunk + chunk_size + 4096, (start, end - start, min_chunk)


@pytest.mark.parametrize("min_chunk", [4096, 16384, 65536])
@pytest.mark.parametrize("prioritized", [(), MID_PRIO], ids=["noprio", "prio"])
def test_min_chunk_layout_on_bigger_layers(min_chunk, prioritized):
    blob, result = mid_converted(min_chunk, prioritized)
    plain, plain_result = mid_converted(0, prioritized)
    check_min_chunk_layout(blob, min_chunk, MID_CHUNK)
    assert len(blob) < len(plain)
    assert len(gzip_members(blob)) < len(gzip_members(plain))
    # Same layer tar inside, only the member boundaries differ.
    with estargz.open(blob) as reader, estargz.open(plain) as plain_reader:
        assert gunzip(blob[:reader.toc_offset]) == gunzip(plain[:plain_reader.toc_offset])
        assert [(e.name, e.type, e.size, e.digest, e.chunk_offset, e.chunk_size, e.chunk_digest)
                for e in reader.toc_entries] == \
               [(e.name, e.type, e.size, e.digest, e.chunk_offset, e.chunk_size, e.chunk_digest)
                for e in plain_reader.toc_entries]
        reader.verify(result.toc_digest)
        files = tar_files(mid_layer())
        for name, data in files.items():
            assert reader.read(name) == data
        with reader.open("big/b1") as f:  # reads that straddle chunk and member boundaries
            data = files["big/b1"]
            for offset in range(0, len(data), 2999):
                assert f.pread(MID_CHUNK + 7, offset) == data[offset:offset + MID_CHUNK + 7]
    assert sha256(gunzip(blob)) == result.diff_id


def test_min_chunk_one_byte_is_the_same_as_none():
    """Any non-empty member is 'full' for M=1, so every chunk starts a member, as without M."""
    assert mid_converted(1)[0] == mid_converted(0)[0]


def test_min_chunk_bigger_than_the_layer_keeps_one_member_per_run():
    blob, _ = mid_converted(1 << 30, MID_PRIO)
    with estargz.open(blob) as reader:
        toc_offset = reader.toc_offset
        landmark = reader.lookup(".prefetch.landmark").chunks[0].offset
    assert [s for s in gzip_members(blob) if s < toc_offset] == [0, landmark]


@functools.lru_cache(maxsize=None)
def big_layer() -> bytes:
    return random_layer(7, 300, 6, (300000, 600000))  # > 2 MiB: several compression batches


def test_min_chunk_output_does_not_depend_on_threads():
    tar = big_layer()
    one = convert_bytes(tar, chunk_size=65536, min_chunk_size=100000, threads=1)
    two = convert_bytes(tar, chunk_size=65536, min_chunk_size=100000, threads=2)
    assert one[0] == two[0] and one[1] == two[1]
    check_min_chunk_layout(one[0], 100000, 65536)
    ext1 = convert_bytes(tar, chunk_size=65536, min_chunk_size=100000, external_toc=True, threads=1)
    ext2 = convert_bytes(tar, chunk_size=65536, min_chunk_size=100000, external_toc=True, threads=2)
    assert ext1[0] == ext2[0] and ext1[1] == ext2[1]
    assert ext1[1].toc_digest == one[1].toc_digest


def test_negative_min_chunk_size_is_refused():
    with pytest.raises(ValueError):
        convert_bytes(INPUT, min_chunk_size=-1)


# --------------------------------------------------------------------------------------------
# 2. external TOC
# --------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def external_input_tar() -> tuple[bytes, estargz.BuildResult]:
    return convert_bytes(GO / "input.tar", chunk_size=4, external_toc=True)


def test_external_toc_footer_bytes():
    blob, _ = external_input_tar()
    assert len(EXTERNAL_FOOTER) == 46
    assert blob[-46:] == EXTERNAL_FOOTER == external_toc_footer()
    assert (GO / "build_externaltoc.esgz").read_bytes()[-46:] == EXTERNAL_FOOTER
    assert gzip_members(blob)[-1] == len(blob) - 46
    assert zlib.decompress(EXTERNAL_FOOTER, 31) == b""


def test_external_toc_blob_holds_no_toc():
    blob, result = external_input_tar()
    stream = gunzip(blob)
    assert b"stargz.index.json" not in stream
    assert sha256(stream) == result.diff_id and len(stream) == result.uncompressed_size
    # The same layer data as Go's (and so the same diffID), without an end-of-archive marker.
    assert stream == gunzip((GO / "build_externaltoc.esgz").read_bytes())
    assert result.diff_id == MANIFEST["build_externaltoc.esgz"]["diffID"]
    assert len(stream) % 512 == 0 and stream[-1024:] != bytes(1024)
    with tarfile.open(fileobj=io.BytesIO(stream)) as tar:
        last = tar.getmembers()[-1]
        assert last.offset_data + 512 == len(stream)  # the last block is the last file's data
    files = tar_files(stream + bytes(1024))
    assert files.pop(".no.prefetch.landmark") == LANDMARK_CONTENTS
    assert files == tar_files(INPUT)


def test_external_toc_blob_is_a_toc_tar():
    blob, result = external_input_tar()
    toc_blob = result.external_toc
    assert isinstance(toc_blob, bytes)
    toc_json = toc_tar_json(gunzip(toc_blob))
    assert sha256(toc_json) == result.toc_digest
    go_toc_blob = (GO / "build_externaltoc.toc.tar.gz").read_bytes()
    assert sha256(toc_tar_json(gunzip(go_toc_blob))) == MANIFEST["build_externaltoc.esgz"]["tocDigest"]
    # Both TOC tars have the same USTAR header layout (only the size field may differ).
    ours_header, go_header = gunzip(toc_blob)[:512], gunzip(go_toc_blob)[:512]
    assert ours_header[:124] == go_header[:124] and ours_header[136:148] == go_header[136:148]
    assert ours_header[156:] == go_header[156:]


def test_external_toc_entries_match_go():
    blob, result = external_input_tar()
    ours, go = external_toc(result.external_toc), external_toc((GO / "build_externaltoc.toc.tar.gz").read_bytes())
    assert_same_toc(ours, go)
    data_starts = set(gzip_members(blob)[:-1])
    assert {e.get("offset", 0) for e in ours["entries"] if is_data(e)} <= data_starts
    assert ours["entries"][0]["name"] == ".no.prefetch.landmark"


def test_external_toc_opens_with_toc_only():
    blob, result = external_input_tar()
    files = tar_files(INPUT)
    for toc in (result.external_toc, io.BytesIO(result.external_toc)):
        with estargz.open(blob, toc=toc, toc_digest=result.toc_digest) as reader:
            assert reader.toc_offset is None
            assert reader.data_end == len(blob) - 46
            assert reader.footer == Footer(ESTARGZ_EXTERNAL_TOC, 46, None)
            assert reader.toc_digest == result.toc_digest
            report = reader.verify(result.toc_digest)
            assert (report.files, report.chunks, report.bytes) == (6, 9, 25)
            check_every_offset(reader, files)
            out = io.BytesIO()
            reader.unpack(out)
            assert out.getvalue() == gunzip(blob) + bytes(1024)  # end-of-archive marker added
    with pytest.raises(estargz.FormatError, match="external TOC"):
        estargz.open(blob)
    with pytest.raises(estargz.VerificationError):
        estargz.open(blob, toc=result.external_toc, toc_digest="sha256:" + "0" * 64)


def test_go_external_toc_blob(tmp_path):
    blob_path, toc_path = GO / "build_externaltoc.esgz", GO / "build_externaltoc.toc.tar.gz"
    digest = MANIFEST["build_externaltoc.esgz"]["tocDigest"]
    files = tar_files(INPUT)
    for toc in (toc_path, str(toc_path), toc_path.read_bytes()):
        with estargz.open(blob_path, toc=toc) as reader:
            assert reader.toc_digest == digest
            assert reader.toc_offset is None and reader.data_end == blob_path.stat().st_size - 46
            reader.verify(digest)
            check_every_offset(reader, files)
            assert reader.read(".no.prefetch.landmark") == LANDMARK_CONTENTS
            extracted = reader.extract(tmp_path / f"x{len(list(tmp_path.iterdir()))}")
            assert extracted.entries > 0
    with pytest.raises(estargz.FormatError):
        estargz.open(blob_path)


@pytest.mark.parametrize("blob_name,toc", [
    ("build_externaltoc.esgz", "keepdiffid.toc.tar.gz"),
    ("keepdiffid.esgz", "build_externaltoc.toc.tar.gz"),
    ("build_externaltoc.esgz", "build_chunk4.esgz"),
    ("build_externaltoc.esgz", b""),
    ("build_externaltoc.esgz", b"\x1f\x8b\x08\x00garbage"),
])
def test_external_toc_with_the_wrong_toc_fails_cleanly(blob_name, toc):
    toc_source = toc if isinstance(toc, bytes) else GO / toc
    with pytest.raises(estargz.EStargzError):
        with estargz.open(GO / blob_name, toc=toc_source) as reader:
            reader.verify()


def test_toc_blob_descriptor():
    blob, result = external_input_tar()
    descriptor = result.toc_blob_descriptor
    assert descriptor == {
        "mediaType": GZIP_MEDIA_TYPE,
        "digest": sha256(result.external_toc),
        "size": len(result.external_toc),
        "annotations": {LAYER_DIGEST_KEY: sha256(blob)},
    }
    summary = result.to_json()
    assert summary["tocDescriptor"] == descriptor
    assert summary["descriptor"]["digest"] == sha256(blob)
    _, internal = convert_bytes(INPUT, chunk_size=4)
    assert internal.external_toc is None and internal.toc_blob_descriptor is None
    assert "tocDescriptor" not in internal.to_json()
    with pytest.raises(ValueError):
        toc_image_manifest([result, internal])


@functools.lru_cache(maxsize=None)
def several_external_results() -> list[estargz.BuildResult]:
    results = [external_input_tar()[1]]
    for seed in range(3):
        results.append(convert_bytes(random_layer(seed + 100, 20, 1, (5000, 9000)),
                                     chunk_size=4096, external_toc=True)[1])
    return results


def test_toc_image_manifest():
    results = several_external_results()
    manifest_bytes = toc_image_manifest(results)
    manifest = json.loads(manifest_bytes)
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"] == {"mediaType": "application/vnd.oci.image.config.v1+json",
                                  "digest": sha256(b"{}"), "size": 2}
    layers = manifest["layers"]
    assert [layer["digest"] for layer in layers] == sorted(sha256(r.external_toc) for r in results)
    by_digest = {sha256(r.external_toc): r for r in results}
    for layer in layers:
        r = by_digest[layer["digest"]]
        assert layer["mediaType"] == GZIP_MEDIA_TYPE and layer["size"] == len(r.external_toc)
        assert layer["annotations"] == {LAYER_DIGEST_KEY: r.blob_digest}
    assert toc_image_manifest(list(reversed(results))) == manifest_bytes  # order does not matter


def test_write_toc_image(tmp_path):
    results = several_external_results()
    layout = tmp_path / "tocimage"
    digest = write_toc_image(layout, results, tag="v1-esgztoc")
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout / "index.json").read_text())
    assert index["schemaVersion"] == 2
    (entry,) = index["manifests"]
    assert entry["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert entry["digest"] == digest
    assert entry["annotations"] == {"org.opencontainers.image.ref.name": "v1-esgztoc"}
    blobs = layout / "blobs" / "sha256"
    for path in blobs.iterdir():  # every blob is named after its sha256
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name
    manifest_bytes = (blobs / digest.split(":")[1]).read_bytes()
    assert len(manifest_bytes) == entry["size"]
    assert manifest_bytes == toc_image_manifest(results)
    manifest = json.loads(manifest_bytes)
    referenced = [manifest["config"]] + manifest["layers"]
    for descriptor in referenced:
        data = (blobs / descriptor["digest"].split(":")[1]).read_bytes()
        assert len(data) == descriptor["size"] and sha256(data) == descriptor["digest"]
    assert {p.name for p in blobs.iterdir()} == {d["digest"].split(":")[1] for d in referenced} | {digest.split(":")[1]}
    for layer in manifest["layers"]:  # each layer is a TOC blob
        external_toc((blobs / layer["digest"].split(":")[1]).read_bytes())


# --------------------------------------------------------------------------------------------
# 3. keep-diff-id
# --------------------------------------------------------------------------------------------

def pytar(fmt: int, *, duplicates: bool = False, global_header: bool = False) -> bytes:
    """A tarfile-made tar (padded to 10240 bytes by tarfile) with long names and links."""
    buf = io.BytesIO()
    pax_headers = {"comment": "a PAX global header"} if global_header else None
    with tarfile.open(fileobj=buf, mode="w", format=fmt, pax_headers=pax_headers) as tar:
        def add(name, data=None, **fields):
            info = tarfile.TarInfo(name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 1700000000, 1000, 1000, "u", "g"
            for key, value in fields.items():
                setattr(info, key, value)
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
        add("dir", type=tarfile.DIRTYPE, mode=0o755)
        add("dir/small", b"small file\n")
        long = fmt != tarfile.USTAR_FORMAT
        add("dir/" + ("long-name-" * 15 if long else "name"), b"a long name " * 100)  # > 100 characters
        add("dir/multi", bytes(range(256)) * 40)
        add("dir/empty", b"")
        add("dir/link", type=tarfile.SYMTYPE, linkname="../" + "target-" * (20 if long else 2))
        add("dir/hard", type=tarfile.LNKTYPE, linkname="dir/small")
        add("dir/fifo", type=tarfile.FIFOTYPE)
        if duplicates:
            add("dir/small", b"small file, again\n")
            add("./dir/multi", b"replaced")
            add("dir", type=tarfile.DIRTYPE, mode=0o700)
    data = buf.getvalue()
    assert len(data) % 10240 == 0
    return data


def tar_end(data: bytes) -> int:
    """Offset of the end-of-archive marker of a tar (tarfile's view)."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        last = tar.getmembers()[-1]
        return last.offset_data + (last.size + 511) // 512 * 512 if last.isreg() else last.offset_data


@functools.lru_cache(maxsize=None)
def system_tar(fmt: str) -> bytes:
    """A real tar made by GNU tar of a few small system documentation directories."""
    if shutil.which("tar") is None:
        pytest.skip("no tar command")
    candidates = ["usr/share/doc/apt", "usr/share/doc/bash", "usr/share/doc/tar", "usr/share/doc/coreutils",
                  "usr/share/doc/base-files", "etc/apt"]
    paths = [p for p in candidates if os.path.isdir("/" + p) and os.access("/" + p, os.R_OK)]
    if not paths:
        pytest.skip("no small system directory to archive")
    proc = subprocess.run(["tar", "-C", "/", f"--format={fmt}", "-cf", "-", *paths],
                          capture_output=True, timeout=60)
    if proc.returncode != 0 or not proc.stdout:
        pytest.skip(f"tar failed: {proc.stderr.decode(errors='replace')}")
    return proc.stdout


KEEP_INPUTS = {
    "go-input.tar": lambda: INPUT,
    "system-gnu": lambda: system_tar("gnu"),
    "system-pax": lambda: system_tar("pax"),
    "tarfile-pax": lambda: pytar(tarfile.PAX_FORMAT),
    "tarfile-pax-global-header": lambda: pytar(tarfile.PAX_FORMAT, global_header=True, duplicates=True),
    "tarfile-gnu-dups": lambda: pytar(tarfile.GNU_FORMAT, duplicates=True),
    "tarfile-ustar-dups": lambda: pytar(tarfile.USTAR_FORMAT, duplicates=True),
    "trailing-100-zeros": lambda: pytar(tarfile.PAX_FORMAT) + bytes(100),
    "trailing-garbage": lambda: pytar(tarfile.GNU_FORMAT)[:tar_end(pytar(tarfile.GNU_FORMAT)) + 1024]
                                + b"garbage after the end-of-archive marker\n" * 3,
    "empty-tar": lambda: bytes(1024),
    "big-random": lambda: random_layer(3, 50, 2, (100000, 200000)),
}


@pytest.mark.parametrize("chunk_size", [4, 4096, None], ids=["chunk4", "chunk4096", "default"])
@pytest.mark.parametrize("name", list(KEEP_INPUTS))
def test_keep_diff_id_round_trip(name, chunk_size):
    tar = KEEP_INPUTS[name]()
    if chunk_size == 4 and len(tar) > 200000:
        chunk_size = 512  # still many chunks per file, without millions of members
    options = {"chunk_size": chunk_size} if chunk_size else {}
    blob, result = convert_bytes(tar, external_toc=True, keep_diff_id=True, **options)
    assert result.diff_id == sha256(tar)
    assert result.uncompressed_size == len(tar)
    assert gunzip(blob) == tar
    assert blob[-46:] == EXTERNAL_FOOTER
    toc = external_toc(result.external_toc)
    assert sha256(toc_tar_json(gunzip(result.external_toc))) == result.toc_digest
    names = [clean(e["name"]) for e in toc["entries"] or [] if e["type"] != "chunk"]
    assert not LANDMARKS & set(names)
    assert names == tar_names(tar)  # input order, duplicates kept
    with estargz.open(blob, toc=result.external_toc, toc_digest=result.toc_digest) as reader:
        assert reader.toc_offset is None
        reader.verify(result.toc_digest)
        out = io.BytesIO()
        assert reader.unpack(out) == len(tar)
        assert out.getvalue() == tar
        for file_name, data in tar_files(tar).items():
            assert reader.read(file_name) == data


def test_keep_diff_id_chunk_offsets_point_into_the_input():
    """With keep-diff-id each chunk's member holds exactly the input bytes at that tar position."""
    tar = pytar(tarfile.PAX_FORMAT)
    blob, result = convert_bytes(tar, chunk_size=1000, external_toc=True, keep_diff_id=True)
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        data_offsets = {clean(m.name): m.offset_data for m in t if m.isreg() and m.size}
    starts = gzip_members(blob)
    position = {}  # member start -> uncompressed position of the member in the input
    done = 0
    for start, end in zip(starts, starts[1:]):
        position[start] = done
        done += len(zlib.decompress(blob[start:end], 31))
    for entry in external_toc(result.external_toc)["entries"]:
        if is_data(entry):
            name = clean(entry["name"])
            at = position[entry.get("offset", 0)] + entry.get("innerOffset", 0)
            assert at == data_offsets[name] + entry.get("chunkOffset", 0)


def test_keep_diff_id_with_min_chunk_size():
    tar = random_layer(5, 200, 2, (20000, 40000))
    blob, result = convert_bytes(tar, chunk_size=8192, min_chunk_size=16384, external_toc=True, keep_diff_id=True)
    assert gunzip(blob) == tar and result.diff_id == sha256(tar)
    plain, _ = convert_bytes(tar, chunk_size=8192, external_toc=True, keep_diff_id=True)
    assert len(blob) < len(plain)
    with estargz.open(blob, toc=result.external_toc) as reader:
        reader.verify()
        out = io.BytesIO()
        reader.unpack(out)
        assert out.getvalue() == tar


def test_keep_diff_id_matches_go():
    blob, result = convert_bytes(GO / "input.tar", chunk_size=4, external_toc=True, keep_diff_id=True)
    go_blob = (GO / "keepdiffid.esgz").read_bytes()
    go_toc = (GO / "keepdiffid.toc.tar.gz").read_bytes()
    assert result.diff_id == MANIFEST["keepdiffid.esgz"]["diffID"] == sha256(INPUT)
    assert_same_toc(external_toc(result.external_toc), external_toc(go_toc))
    assert gunzip(go_blob) == INPUT
    with estargz.open(go_blob, toc=go_toc, toc_digest=MANIFEST["keepdiffid.esgz"]["tocDigest"]) as reader:
        reader.verify()
        out = io.BytesIO()
        assert reader.unpack(out) == len(INPUT)
        assert out.getvalue() == INPUT
        check_every_offset(reader, tar_files(INPUT))


def test_keep_diff_id_tar_without_end_marker():
    """gunzip(blob) is the input; unpack adds the missing end-of-archive marker (as documented)."""
    full = pytar(tarfile.PAX_FORMAT)
    tar = full[:tar_end(full)]
    blob, result = convert_bytes(tar, chunk_size=64, external_toc=True, keep_diff_id=True)
    assert gunzip(blob) == tar and result.diff_id == sha256(tar)
    with estargz.open(blob, toc=result.external_toc) as reader:
        reader.verify()
        out = io.BytesIO()
        reader.unpack(out)
        assert out.getvalue() == tar + bytes(1024)


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_keep_diff_id_compressed_input(codec):
    tar = pytar(tarfile.GNU_FORMAT, duplicates=True)
    packed = gzip.compress(tar) if codec == "gzip" else zstandard.ZstdCompressor().compress(tar)
    for src in (io.BytesIO(packed), _Unseekable(packed)):
        blob, result = _convert_stream(src)
        assert result.diff_id == sha256(tar)
        assert gunzip(blob) == tar
        with estargz.open(blob, toc=result.external_toc) as reader:
            out = io.BytesIO()
            reader.unpack(out)
            assert out.getvalue() == tar


class _Unseekable(io.RawIOBase):
    def __init__(self, data: bytes) -> None:
        super().__init__()
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        chunk = self._data.read(min(len(buffer), 777))
        buffer[:len(chunk)] = chunk
        return len(chunk)


def _convert_stream(src) -> tuple[bytes, estargz.BuildResult]:
    out = io.BytesIO()
    result = estargz.convert(src, out, chunk_size=100, external_toc=True, keep_diff_id=True)
    return out.getvalue(), result


PROPERTY = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@PROPERTY
@given(layer=layers_with_duplicates(chunk_size=7, max_content=4096), chunk_size=st.sampled_from([1, 7, 100, 4096]),
       extra=st.sampled_from([b"", bytes(512), bytes(100), b"trailing garbage"]))
def test_keep_diff_id_property(layer, chunk_size, extra):
    """Any layer (USTAR, PAX, GNU; duplicates; odd trailers): gunzip(blob) and unpack give the input."""
    tar = tar_bytes(layer) + extra
    blob, result = convert_bytes(tar, chunk_size=chunk_size, external_toc=True, keep_diff_id=True)
    assert result.diff_id == sha256(tar) and gunzip(blob) == tar
    with estargz.open(blob, toc=result.external_toc) as reader:
        reader.verify()
        names = [clean(e.name) for e in reader.toc_entries if e.type != "chunk"]
        assert names == tar_names(tar)
        out = io.BytesIO()
        reader.unpack(out)
        assert out.getvalue() == tar


@PROPERTY
@given(layer=layers(chunk_size=5, max_content=8192), chunk_size=st.sampled_from([1, 5, 64, 1000]),
       min_chunk=st.sampled_from([1, 64, 700, 5000, 1 << 20]), external=st.booleans())
def test_min_chunk_property(layer, chunk_size, min_chunk, external):
    """min-chunk-size only drops member boundaries: same TOC but offsets, same tar, same files.

    It promises fewer members, not a smaller blob (see test_min_chunk_promises_fewer_members_not_fewer_bytes).
    """
    tar = tar_bytes(layer)
    options = dict(chunk_size=chunk_size, external_toc=external)
    blob, result = convert_bytes(tar, min_chunk_size=min_chunk, **options)
    plain, plain_result = convert_bytes(tar, **options)
    toc_of = (lambda b, r: external_toc(r.external_toc)) if external else (lambda b, r: internal_toc(b))
    ours, base = toc_of(blob, result), toc_of(plain, plain_result)
    strip = ("offset", "innerOffset")
    assert [{k: v for k, v in e.items() if k not in strip} for e in ours["entries"] or []] == \
           [{k: v for k, v in e.items() if k not in strip} for e in base["entries"] or []]
    data_end = len(blob) - 46 if external else internal_toc_offset(blob)
    plain_end = len(plain) - 46 if external else internal_toc_offset(plain)
    assert gunzip(blob[:data_end]) == gunzip(plain[:plain_end])
    starts = set(gzip_members(blob[:data_end]))
    assert {e.get("offset", 0) for e in ours["entries"] or [] if is_data(e)} <= starts
    assert set(member_plain_starts(blob[:data_end])) <= set(member_plain_starts(plain[:plain_end]))
    with estargz.open(blob, toc=result.external_toc) as reader, \
            estargz.open(plain, toc=plain_result.external_toc) as plain_reader:
        reader.verify()
        for entry in plain_reader:
            if entry.type == "reg":
                assert reader.read(entry.name) == plain_reader.read(entry.name)


def test_min_chunk_counts_a_member_as_one_deflate_stream():
    """Files that repeat each other cost little once the first is in the member, as with Go: 100
    copies of one text share a member that min-chunk-size 5000 would close after a few if each
    file were counted as compressed on its own."""
    text = b"".join(b"line %d of a small source file that repeats\n" % i for i in range(40))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(100):
            info = tarfile.TarInfo(f"src/f{i}.py")
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text))
    blob, result = convert_bytes(buf.getvalue(), min_chunk_size=5000, external_toc=True)
    entries = [e for e in external_toc(result.external_toc)["entries"] if e["name"].startswith("src/")]
    assert len({e.get("offset", 0) for e in entries}) == 1
    with estargz.open(blob, toc=result.external_toc) as reader:
        reader.verify()
        assert reader.read("src/f99.py") == text


def member_plain_starts(data: bytes) -> list[int]:
    """Where each gzip member of ``data`` starts in the inflated stream."""
    starts, position = [], 0
    for offset, end in itertools.pairwise([*gzip_members(data), len(data)]):
        starts.append(position)
        position += len(gunzip(data[offset:end]))
    return starts


def test_min_chunk_promises_fewer_members_not_fewer_bytes():
    """One incompressible 1001-byte file, chunks of 1000, min-chunk-size 700: its first chunk joins
    the member of the landmark and the headers, and deflating the two kinds of bytes in one block
    costs more than the member boundary saved. The guarantee is the Go rule: a chunk opens a member
    only once the open one holds min-chunk-size (estimated) compressed bytes."""
    payload = random.Random(0).randbytes(1001)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("etc")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    for external in (False, True):
        blob, result = convert_bytes(buf.getvalue(), chunk_size=1000, min_chunk_size=700, external_toc=external)
        plain, _ = convert_bytes(buf.getvalue(), chunk_size=1000, external_toc=external)
        data_end = len(blob) - 46 if external else internal_toc_offset(blob)
        plain_end = len(plain) - 46 if external else internal_toc_offset(plain)
        ours, theirs = member_plain_starts(blob[:data_end]), member_plain_starts(plain[:plain_end])
        assert set(ours) < set(theirs) and len(theirs) - len(ours) == 1
        toc = external_toc(result.external_toc) if external else internal_toc(blob)
        first = next(e for e in toc["entries"] if e["name"] == "etc")
        assert first["innerOffset"] == 2 * BLOCK  # the landmark's byte and padding, then the file's header
        with estargz.open(blob, toc=result.external_toc) as reader:
            reader.verify()
            assert reader.read("etc") == payload


def test_keep_diff_id_option_errors():
    with pytest.raises(ValueError, match="external_toc"):
        convert_bytes(INPUT, keep_diff_id=True)
    with pytest.raises(ValueError):
        convert_bytes(INPUT, keep_diff_id=True, external_toc=True, prioritized_files=["foo/big.bin"])


@pytest.mark.parametrize("toc_name", ["stargz.index.json", "./stargz.index.json", "/stargz.index.json"])
def test_keep_diff_id_refuses_an_estargz_layer(toc_name):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("a")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"a"))
        info = tarfile.TarInfo(toc_name)
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    with pytest.raises(estargz.UnsupportedInputError):
        convert_bytes(buf.getvalue(), external_toc=True, keep_diff_id=True)
    # Go's own keep-diff-id output unpacks to a tar without the TOC, which converts again.
    with estargz.open(GO / "keepdiffid.esgz", toc=GO / "keepdiffid.toc.tar.gz") as reader:
        out = io.BytesIO()
        reader.unpack(out)
    assert convert_bytes(out.getvalue(), external_toc=True, keep_diff_id=True)[1].diff_id == sha256(INPUT)


def test_keep_diff_id_of_an_internal_toc_blob_is_refused():
    """A whole eStargz blob given as (gzip) input holds stargz.index.json."""
    blob = (GO / "build_chunk4.esgz").read_bytes()
    with pytest.raises(estargz.UnsupportedInputError):
        convert_bytes(blob, external_toc=True, keep_diff_id=True)


# --------------------------------------------------------------------------------------------
# 4. CLI
# --------------------------------------------------------------------------------------------

@pytest.fixture
def input_tar(tmp_path):
    path = tmp_path / "input.tar"
    path.write_bytes(INPUT)
    return path


def run_main(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def usage_exit(capsys, *args) -> str:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    assert info.value.code == 2
    return capsys.readouterr().err


def assert_one_error_line(stderr: str, *fragments: str) -> None:
    assert stderr.startswith("estargz: error: "), stderr
    assert stderr.count("\n") == 1 and stderr.endswith("\n"), stderr
    for fragment in fragments:
        assert fragment in stderr


def test_cli_convert_external_toc_default_toc_path(tmp_path, input_tar, capsys):
    out = tmp_path / "out.esgz"
    code, stdout, _ = run_main(capsys, "convert", input_tar, out, "--estargz-external-toc",
                               "--estargz-chunk-size", "4", "-q")
    assert code == 0
    summary = json.loads(stdout)
    toc_path = tmp_path / "out.esgz.toc.tar.gz"
    assert summary["tocBlobPath"] == str(toc_path)
    toc_blob, blob = toc_path.read_bytes(), out.read_bytes()
    assert summary["tocDescriptor"] == {"mediaType": GZIP_MEDIA_TYPE, "digest": sha256(toc_blob),
                                        "size": len(toc_blob), "annotations": {LAYER_DIGEST_KEY: sha256(blob)}}
    assert summary["tocDigest"] == sha256(toc_tar_json(gunzip(toc_blob)))
    assert blob[-46:] == EXTERNAL_FOOTER
    expected_blob, expected = external_input_tar()
    assert blob == expected_blob and toc_blob == expected.external_toc  # same as convert()
    assert "tocImageManifestDigest" not in summary
    assert not list(tmp_path.glob("*.part"))


def test_cli_convert_toc_output_toc_image_min_chunk(tmp_path, input_tar, capsys):
    out, toc_out, layout = tmp_path / "out.esgz", tmp_path / "custom.toc", tmp_path / "layout"
    code, stdout, _ = run_main(capsys, "convert", input_tar, out, "--estargz-external-toc",
                               "--estargz-toc-output", toc_out, "--estargz-toc-image", layout,
                               "--estargz-chunk-size", "4", "--estargz-min-chunk-size", "64000", "-q")
    assert code == 0
    summary = json.loads(stdout)
    assert summary["tocBlobPath"] == str(toc_out)
    assert not (tmp_path / "out.esgz.toc.tar.gz").exists()
    toc_blob = toc_out.read_bytes()
    toc = external_toc(toc_blob)
    assert any("innerOffset" in e for e in toc["entries"])
    index = json.loads((layout / "index.json").read_text())
    assert index["manifests"][0]["digest"] == summary["tocImageManifestDigest"]
    manifest = json.loads((layout / "blobs" / "sha256" / summary["tocImageManifestDigest"][7:]).read_bytes())
    assert manifest["layers"] == [summary["tocDescriptor"]]
    assert (layout / "blobs" / "sha256" / sha256(toc_blob)[7:]).read_bytes() == toc_blob
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    with estargz.open(out, toc=toc_out) as reader:
        reader.verify(summary["tocDigest"])


def test_cli_convert_min_chunk_size_internal(tmp_path, input_tar, capsys):
    out = tmp_path / "out.esgz"
    code, stdout, _ = run_main(capsys, "convert", input_tar, out, "--estargz-chunk-size", "4",
                               "--estargz-min-chunk-size", "64000", "--prioritized-file", "foo/big.bin",
                               "--prioritized-file", "hl", "-q")
    assert code == 0
    assert out.read_bytes() == minchunk_input_tar()[0]
    assert "tocDescriptor" not in json.loads(stdout) and "tocBlobPath" not in json.loads(stdout)
    assert "must not be negative" in usage_exit(capsys, "convert", input_tar, out, "--estargz-min-chunk-size", "-1")


def test_cli_convert_keep_diff_id(tmp_path, input_tar, capsys):
    out = tmp_path / "out.esgz"
    code, stdout, _ = run_main(capsys, "convert", input_tar, out, "--estargz-external-toc",
                               "--estargz-keep-diff-id", "--estargz-chunk-size", "4", "-q")
    assert code == 0
    summary = json.loads(stdout)
    assert summary["diffID"] == sha256(INPUT)
    assert gunzip(out.read_bytes()) == INPUT


def test_cli_convert_usage_errors(tmp_path, input_tar, capsys):
    out = tmp_path / "out.esgz"
    err = usage_exit(capsys, "convert", input_tar, out, "--estargz-keep-diff-id")
    assert "--estargz-keep-diff-id needs --estargz-external-toc" in err
    err = usage_exit(capsys, "convert", input_tar, out, "--estargz-keep-diff-id", "--estargz-external-toc",
                     "--prioritized-file", "foo/big.bin")
    assert "--estargz-keep-diff-id" in err
    err = usage_exit(capsys, "convert", input_tar, "-", "--estargz-external-toc")
    assert "--estargz-toc-output" in err
    assert not out.exists() and not list(tmp_path.glob("*.toc.tar.gz"))


def test_cli_keep_diff_id_usage_error_process(tmp_path, input_tar):
    proc = subprocess.run([sys.executable, "-m", "estargz", "convert", str(input_tar), str(tmp_path / "o"),
                           "--estargz-keep-diff-id"], capture_output=True, timeout=60)
    assert proc.returncode == 2 and b"--estargz-external-toc" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_cli_convert_external_toc_to_stdout(tmp_path, input_tar, capsysbinary):
    toc_out = tmp_path / "toc.tar.gz"
    assert main(["convert", str(input_tar), "-", "--estargz-external-toc", "--estargz-toc-output",
                 str(toc_out), "--estargz-chunk-size", "4", "-q"]) == 0
    captured = capsysbinary.readouterr()
    summary = json.loads(captured.err)
    assert captured.out == external_input_tar()[0]
    assert toc_out.read_bytes() == external_input_tar()[1].external_toc
    assert summary["tocBlobPath"] == str(toc_out)


@pytest.fixture
def external_files(tmp_path):
    blob, result = external_input_tar()
    blob_path, toc_path = tmp_path / "layer.esgz", tmp_path / "layer.toc.tar.gz"
    blob_path.write_bytes(blob)
    toc_path.write_bytes(result.external_toc)
    return blob_path, toc_path, result


def test_cli_readers_with_toc(tmp_path, external_files, capsysbinary):
    blob_path, toc_path, result = external_files

    def run(*args) -> bytes:
        assert main([str(a) for a in args]) == 0
        return capsysbinary.readouterr().out

    info = json.loads(run("info", blob_path, "--toc", toc_path))
    assert info["footer"] == {"kind": "estargz-external-toc", "size": 46}
    assert info["tocOffset"] is None and info["tocDigest"] == result.toc_digest
    assert info["blobSize"] == blob_path.stat().st_size and info["landmark"] == ".no.prefetch.landmark"
    report = json.loads(run("verify", blob_path, "--toc", toc_path, "--toc-digest", result.toc_digest))
    assert report["ok"] is True and report["files"] == 6 and report["tocDigest"] == result.toc_digest
    assert "foo/big.bin" in run("ls", blob_path, "--toc", toc_path).decode().splitlines()
    assert run("cat", blob_path, "--toc", toc_path, "foo/big.bin", "hl") == b"0123456789hello"
    unpacked = tmp_path / "unpacked.tar"
    run("unpack", blob_path, unpacked, "--toc", toc_path)
    assert unpacked.read_bytes() == gunzip(blob_path.read_bytes()) + bytes(1024)
    assert run("unpack", blob_path, "-", "--toc", toc_path) == unpacked.read_bytes()
    run("extract", blob_path, tmp_path / "root", "--toc", toc_path)
    assert (tmp_path / "root" / "foo" / "big.bin").read_bytes() == b"0123456789"
    assert (tmp_path / "root" / "weird<&>\u2028name").read_bytes() == b"x"


def test_cli_go_keepdiffid_unpack(tmp_path, capsys):
    out = tmp_path / "out.tar"
    assert main(["unpack", str(GO / "keepdiffid.esgz"), str(out), "--toc", str(GO / "keepdiffid.toc.tar.gz")]) == 0
    assert out.read_bytes() == INPUT
    code, stdout, _ = run_main(capsys, "info", GO / "build_externaltoc.esgz",
                               "--toc", GO / "build_externaltoc.toc.tar.gz")
    assert code == 0 and json.loads(stdout)["tocDigest"] == MANIFEST["build_externaltoc.esgz"]["tocDigest"]


@pytest.mark.parametrize("command", [["info"], ["ls"], ["verify"], ["cat", "foo/big.bin"], ["unpack", "OUT"],
                                     ["extract", "DIR"]])
def test_cli_readers_without_toc_fail(tmp_path, external_files, capsys, command):
    blob_path, _, _ = external_files
    args = [command[0], str(blob_path)] + [str(tmp_path / a) if a in ("OUT", "DIR") else a for a in command[1:]]
    code, stdout, stderr = run_main(capsys, *args)
    assert code == 1 and stdout == ""
    assert_one_error_line(stderr, "external TOC", "--toc")
    assert not (tmp_path / "OUT").exists()


def test_cli_readers_without_toc_fail_process(external_files):
    blob_path, _, _ = external_files
    proc = subprocess.run([sys.executable, "-m", "estargz", "info", str(blob_path)], capture_output=True,
                          timeout=60)
    assert proc.returncode == 1 and proc.stdout == b""
    assert_one_error_line(proc.stderr.decode(), "--toc")


# --------------------------------------------------------------------------------------------
# 5. footers
# --------------------------------------------------------------------------------------------

def test_footer_sizes():
    assert len(gzip_footer(0)) == 51
    assert len(legacy_gzip_footer(0)) == 47
    assert len(external_toc_footer()) == 46
    assert sorted(footer_mod.FOOTER_SIZES) == [46, 47, 51]


@pytest.mark.parametrize("name,kind,size,offset", [
    ("writer_chunk4.esgz", ESTARGZ, 51, 930),
    ("writer_chunk4_legacyfooter.esgz", ESTARGZ_LEGACY, 47, 930),
    ("build_externaltoc.esgz", ESTARGZ_EXTERNAL_TOC, 46, None),
    ("keepdiffid.esgz", ESTARGZ_EXTERNAL_TOC, 46, None),
])
def test_parse_footer_recognizes_go_footers(name, kind, size, offset):
    blob = (GO / name).read_bytes()
    assert parse_footer(blob[-51:], len(blob)) == Footer(kind, size, offset)
    assert parse_footer(blob, len(blob)) == Footer(kind, size, offset)
    assert parse_footer(blob[-size:], len(blob)) == Footer(kind, size, offset)


def test_parse_footer_recognizes_all_three_after_junk():
    for junk in (b"", b"\x00" * 60, b"\x1f\x8b\x08\x04" * 20):
        assert parse_footer((junk + gzip_footer(5))[-51:], 1000) == Footer(ESTARGZ, 51, 5)
        assert parse_footer((junk + legacy_gzip_footer(5))[-51:], 1000) == Footer(ESTARGZ_LEGACY, 47, 5)
        assert parse_footer((junk + external_toc_footer())[-51:], 1000) == Footer(ESTARGZ_EXTERNAL_TOC, 46, None)


def test_footers_are_empty_gzip_members():
    for data in (gzip_footer(12345), legacy_gzip_footer(12345), external_toc_footer()):
        inflater = zlib.decompressobj(31)
        assert inflater.decompress(data) == b"" and inflater.eof and inflater.unused_data == b""


def test_footer_round_trip():
    for offset in range(0, 200001, 1023):
        modern, legacy = gzip_footer(offset), legacy_gzip_footer(offset)
        assert len(modern) == 51 and len(legacy) == 47
        assert modern[16:32] == b"%016x" % offset and legacy[12:28] == b"%016x" % offset
        assert parse_footer(modern, offset + 51) == Footer(ESTARGZ, 51, offset)
        assert parse_footer(legacy, offset + 47) == Footer(ESTARGZ_LEGACY, 47, offset)
        assert parse_footer(b"\x00" * 9 + modern, offset + 51 + 9) == Footer(ESTARGZ, 51, offset)
        assert parse_footer((b"\x00" * 9 + legacy)[-51:], offset + 47 + 9) == Footer(ESTARGZ_LEGACY, 47, offset)


def test_footer_offset_must_lie_before_the_footer():
    assert parse_footer(gzip_footer(100), 151) == Footer(ESTARGZ, 51, 100)
    with pytest.raises(estargz.FormatError):
        parse_footer(gzip_footer(100), 150)
    with pytest.raises(estargz.FormatError):
        parse_footer(legacy_gzip_footer(100), 146)
    with pytest.raises(estargz.FormatError):
        parse_footer(gzip_footer(0), 50)  # blob smaller than the footer


def _empty_member_with_extra(extra: bytes) -> bytes:
    return (bytes.fromhex("1f8b08040000000000ff") + struct.pack("<H", len(extra)) + extra
            + bytes.fromhex("010000ffff") + bytes(8))


@pytest.mark.parametrize("extra", [b"", b"SG", b"SG\x16\x00", b"SG\x11\x00STARGZEXTERNALTOd",
                                   b"SG\x15\x00" + b"0" * 16 + b"STARGZ", b"SG\x16\x00" + b"0" * 16 + b"STARGz"])
def test_malformed_footer_extra_is_rejected(extra):
    member = _empty_member_with_extra(extra)
    assert zlib.decompress(member, 31) == b""  # a valid gzip member all the same
    for tail in (member, b"\x00" * 60 + member, (b"\x00" * 60 + member)[-51:]):
        with pytest.raises(estargz.FormatError):
            parse_footer(tail, 10000)


@pytest.mark.parametrize("xlen", [0, 2])
def test_51_byte_buffer_with_short_extra_is_rejected(xlen):
    """A 51-byte tail whose gzip header claims an empty or 2-byte extra field."""
    tail = bytes.fromhex("1f8b08040000000000ff") + struct.pack("<H", xlen) + b"SG"[:xlen]
    tail += bytes(51 - len(tail))
    assert len(tail) == 51
    with pytest.raises(estargz.FormatError):
        parse_footer(tail, 10000)


def test_uppercase_hex_offset_is_accepted():
    modern = gzip_footer(0xABCDEF)
    upper = modern.replace(b"0000000000abcdef", b"0000000000ABCDEF")
    assert upper != modern and len(upper) == 51
    assert parse_footer(upper, 1 << 30) == Footer(ESTARGZ, 51, 0xABCDEF)
    legacy = legacy_gzip_footer(0xABCDEF).replace(b"abcdef", b"ABCDEF")
    assert parse_footer(legacy, 1 << 30) == Footer(ESTARGZ_LEGACY, 47, 0xABCDEF)


@pytest.mark.parametrize("digits", [b"+00000000000003a", b"-00000000000003a", b"+000000000000000",
                                    b" 00000000000003a", b"0x0000000000003a", b"0000_00000000003",
                                    b"00000000000003ag"])
def test_signed_or_non_hex_offset_is_rejected(digits):
    assert len(digits) == 16
    modern = gzip_footer(0x3A).replace(b"000000000000003a", digits)
    legacy = legacy_gzip_footer(0x3A).replace(b"000000000000003a", digits)
    assert len(modern) == 51 and len(legacy) == 47
    for tail in (modern, legacy):
        with pytest.raises(estargz.FormatError):
            parse_footer(tail, 10000)


# --------------------------------------------------------------------------------------------
# 6. the TOC's level
# --------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def many_files_tar() -> bytes:
    """300 small files in nested directories: a TOC of about 100 KB of JSON."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(300):
            info = tarfile.TarInfo(f"usr/lib/module{i % 7}/part{i}.py")
            content = b"value = %d\n" % i
            info.size, info.mtime = len(content), 1_700_000_000 + i
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


@pytest.mark.parametrize("external", [False, True])
def test_toc_member_is_dense_whatever_the_chunk_level(external):
    """A lazy open fetches the TOC: at every chunk level it is at least as dense as zlib's level 9
    of the same bytes; its XFL follows the chunks' level, as every member of a blob agrees on it."""
    for level in (0, 1, 4, 9):
        blob, result = convert_bytes(many_files_tar(), compression_level=level, external_toc=external)
        member = result.external_toc if external else blob[internal_toc_offset(blob):-51]
        assert member[8] == {9: 2, 1: 4}.get(level, 0) == blob[8]
        assert len(member) <= len(gzip.compress(gunzip(member), 9, mtime=0))
        with estargz.open(blob, toc=result.external_toc, toc_digest=result.toc_digest) as reader:
            reader.verify()


def test_zstd_toc_frame_is_dense_whatever_the_chunk_level():
    """At every chunk level the TOC frame is at least as dense as zstd's fastest level of the same
    JSON, which packs TOC JSON denser than the middle levels."""
    for level in (1, 3, 19):
        blob, result = convert_bytes(many_files_tar(), format=estargz.FORMAT_ZSTD_CHUNKED_STARGZ,
                                     compression_level=level)
        offset, length, size, _ = map(int, result.annotations[
            "io.containers.zstd-chunked.manifest-position"].split(":"))
        frame = blob[offset:offset + length]
        toc_json = zstandard.ZstdDecompressor().decompress(frame)
        assert len(toc_json) == size and "sha256:" + hashlib.sha256(toc_json).hexdigest() == result.toc_digest
        assert length <= len(zstandard.ZstdCompressor(level=1, write_checksum=True).compress(toc_json))
        with estargz.open(blob, toc_digest=result.toc_digest) as reader:
            reader.verify()
