"""Golden vectors: blobs written by the Go reference implementation, read with estargz.

tests/data/estargz-go-v0.15.1/  estargz v0.15.1 (Writer and Build), input.tar, MANIFEST.json
tests/data/debian-v0.12/        estargz 0.12.0 from Debian, with the oracle's verify.json per blob

The README.md in each folder states what every blob pins down; the facts checked here are
quoted from there. Every expected value comes from those files (or from an independent decoding
with gzip/tarfile/json), never from estargz itself.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import io
import json
import math
import tarfile
from pathlib import Path

import pytest
from helpers import gzip_members, sha256

import estargz
from estargz.footer import parse_footer
from estargz.toc import clean_name

DATA = Path(__file__).parent / "data"
GO = DATA / "estargz-go-v0.15.1"
DEB = DATA / "debian-v0.12"
DEB_GZIP = DEB / "estargz-gzip"

MANIFEST = {item["file"]: item for item in json.loads((GO / "MANIFEST.json").read_text())}
EXTERNAL_TOC = ["build_externaltoc.esgz", "keepdiffid.esgz"]
GO_BLOBS = sorted(p.name for p in GO.glob("*.esgz") if p.name not in EXTERNAL_TOC)
DEB_BLOBS = sorted(p.stem for p in DEB_GZIP.glob("*.blob"))
ALL_BLOBS = [GO / n for n in GO_BLOBS] + [DEB_GZIP / f"{n}.blob" for n in DEB_BLOBS]
ALL_IDS = [f"go:{n}" for n in GO_BLOBS] + [f"debian:{n}" for n in DEB_BLOBS]

LANDMARK = b"\x0f"
EMPTY_SHA256 = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
TAR_KINDS = {
    tarfile.REGTYPE: "reg", tarfile.AREGTYPE: "reg", tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink", tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block", tarfile.FIFOTYPE: "fifo",
}


def is_go(path: Path) -> bool:
    return path.parent == GO


def build_json(path: Path) -> dict:
    return json.loads(path.with_suffix(".build.json").read_text())


def verify_json(name: str) -> dict:
    return json.loads((DEB_GZIP / f"{name}.verify.json").read_text())


def expected_toc_digest(path: Path) -> str:
    return MANIFEST[path.name]["tocDigest"] if is_go(path) else build_json(path)["tocDigest"]


def raw_toc(blob: bytes) -> bytes:
    """The TOC JSON bytes, found with struct/gzip/tarfile only: footer offset -> gunzip -> tar entry."""
    # Both footers end with: 16 hex digits of the offset, "STARGZ", an empty stored block (5 bytes)
    # and the gzip trailer (8 bytes). The 51-byte one has an "SG" subfield header before the digits.
    assert blob[-19:-13] == b"STARGZ"
    offset = int(blob[-35:-19], 16)
    footer_size = 51 if blob[-39:-37] == b"SG" else 47
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob[offset:-footer_size]))) as tar:
        member = tar.next()
        assert member is not None and member.name == "stargz.index.json"
        return tar.extractfile(member).read()


def toc_mtime(seconds: float) -> str:
    """The TOC modtime for a tar mtime: RFC 3339 UTC, rounded half up, empty for the epoch."""
    if seconds == 0:
        return ""
    rounded = dt.datetime.fromtimestamp(math.floor(seconds + 0.5), dt.timezone.utc)
    return rounded.strftime("%Y-%m-%dT%H:%M:%SZ")


def open_vector(path: Path) -> estargz.Reader:
    return estargz.open(path, toc_digest=expected_toc_digest(path))


@pytest.fixture(params=ALL_BLOBS, ids=ALL_IDS)
def vector(request):
    return request.param


# --------------------------------------------------------------------------------------------
# the data itself
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("folder", [GO, DEB], ids=["go", "debian"])
def test_data_matches_sha256sums(folder):
    checked = 0
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        if folder == GO and name == "README.md":
            # The README was edited after SHA256SUMS was written; it is documentation, not data.
            continue
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
        checked += 1
    assert checked == (13 if folder == GO else 51)


def test_manifest_sizes_and_digests():
    for name, item in MANIFEST.items():
        data = (GO / name).read_bytes()
        assert len(data) == item["size"], name
        assert sha256(data) == item["sha256"], name


# --------------------------------------------------------------------------------------------
# every gzip blob: TOC digest, verify, diffID, TOC bytes
# --------------------------------------------------------------------------------------------

def test_toc_digest(vector):
    blob = vector.read_bytes()
    with estargz.open(vector) as reader:
        assert reader.toc_digest == expected_toc_digest(vector)
        assert reader.toc_digest == sha256(raw_toc(blob))
        assert reader.version == 1
        assert reader.footer.kind == ("estargz-legacy" if "legacy" in vector.name else "estargz")
        assert reader.footer.size == (47 if "legacy" in vector.name else 51)
    # the same blob opened from bytes and from a file object
    assert estargz.open(blob, toc_digest=expected_toc_digest(vector)).toc_digest == expected_toc_digest(vector)
    with open(vector, "rb") as f:
        assert estargz.open(f).toc_digest == expected_toc_digest(vector)


def test_footer_offset_is_a_gzip_member_boundary(vector):
    blob = vector.read_bytes()
    with open_vector(vector) as reader:
        members = gzip_members(blob)
        footer_size = 47 if "legacy" in vector.name else 51
        assert members[-1] == len(blob) - footer_size == len(blob) - reader.footer.size
        assert reader.footer.toc_offset == reader.toc_offset == members[-2]


def test_verify_passes(vector):
    with open_vector(vector) as reader:
        report = reader.verify(expected_toc_digest(vector))
        regs = [e for e in reader.toc_entries if e.type == "reg"]
        assert report.toc_digest == expected_toc_digest(vector)
        assert report.files == len(regs)
        assert report.chunks == sum(1 for e in reader.toc_entries
                                    if e.type == "chunk" or (e.type == "reg" and e.size > 0))
        assert report.bytes == sum(e.size for e in regs)


def test_diff_id_is_sha256_of_gunzipped_blob(vector):
    blob = vector.read_bytes()
    stream = gzip.decompress(blob)
    if is_go(vector):
        if "diffID" not in MANIFEST[vector.name]:  # the legacy-footer copy: same data members
            assert vector.name == "writer_chunk4_legacyfooter.esgz"
            assert sha256(stream) == MANIFEST["writer_chunk4.esgz"]["diffID"]
            return
        assert sha256(stream) == MANIFEST[vector.name]["diffID"]
    else:
        build, verify = build_json(vector), verify_json(vector.stem)
        assert sha256(stream) == build["diffID"] == verify["stream"]["diffID"]
        assert len(stream) == build["uncompressedSize"] == verify["stream"]["uncompressedSize"]
        assert build["annotations"] == {
            "containerd.io/snapshot/stargz/toc.digest": build["tocDigest"],
            "io.containers.estargz.uncompressed-size": str(build["uncompressedSize"]),
        }


def test_toc_reencodes_to_the_same_bytes(vector):
    """encode_toc(decode_toc(x)) == x: the TOC serialization is byte-exact with Go's MarshalIndent."""
    toc_json = raw_toc(vector.read_bytes())
    if not is_go(vector):
        assert toc_json == vector.with_suffix(".toc.json").read_bytes()
    version, entries = estargz.decode_toc(toc_json)
    assert estargz.encode_toc(entries, version) == toc_json
    with open_vector(vector) as reader:
        assert reader.toc_entries == entries
        assert estargz.encode_toc(reader.toc_entries, reader.version) == toc_json


def test_unpack_gives_the_layer_tar(vector):
    blob = vector.read_bytes()
    with open_vector(vector) as reader:
        out = io.BytesIO()
        written = reader.unpack(out)
        expected = gzip.decompress(blob[:reader.toc_offset]) + bytes(1024)
        assert out.getvalue() == expected
        assert written == len(expected)
        if expected.strip(b"\0"):
            with tarfile.open(fileobj=io.BytesIO(expected)) as tar:
                assert [clean_name(m.name) for m in tar] == [e.name for e in reader]


def test_random_access(vector):
    """seek+read of 1..3 bytes at every offset equals the slice of the whole content.

    Every regular file is probed, multi-chunk files included. Files above 64 KiB (those of
    compressible-default: 1 MiB in one chunk, and big.bin, 5 MiB in two) are probed at every
    offset within 8 bytes of each chunk boundary and at a stride of 4099 bytes elsewhere.
    """
    with open_vector(vector) as reader:
        files = [e for e in reader if e.type == "reg" and e.size > 0]
        multi = [e for e in files if len(e.chunks) > 1]
        if "chunk4" in vector.name or "minchunk" in vector.name or "prio" in vector.name \
                or "compressible" in vector.name:
            assert multi
        for entry in files:
            content = reader.read(entry.name)
            assert len(content) == entry.size
            assert sha256(content) == entry.digest
            if entry.size <= 64 << 10:
                offsets = range(entry.size + 1)
            else:
                near = {c.chunk_offset + d for c in entry.chunks for d in range(-8, 9)}
                near |= {entry.size + d for d in range(-8, 1)}
                offsets = sorted({o for o in near if 0 <= o <= entry.size} | set(range(0, entry.size, 4099)))
            with reader.open(entry.name) as f:
                assert f.seekable() and f.readable()
                for offset in offsets:
                    for n in (1, 2, 3):
                        assert f.seek(offset) == offset
                        assert f.read(n) == content[offset:offset + n], (entry.name, offset, n)
                        assert f.tell() == min(offset + n, entry.size)
                        assert f.pread(n, offset) == content[offset:offset + n]
                assert f.seek(0, io.SEEK_END) == entry.size
                assert f.read(1) == b""
                tail = min(3, entry.size)
                assert f.seek(-tail, io.SEEK_END) == entry.size - tail
                assert f.read() == content[-tail:]


# --------------------------------------------------------------------------------------------
# Go v0.15.1 vectors against input.tar
# --------------------------------------------------------------------------------------------

def tar_members(path: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(path) as tar:
        return [(m, tar.extractfile(m).read() if m.isreg() else None) for m in tar]


def check_against_tar(reader: estargz.Reader, tar_path: Path, landmarks: set[str]) -> None:
    """Every tar entry is in the layer with the same metadata and contents; nothing else but landmarks."""
    members = tar_members(tar_path)
    entries = {e.name: e for e in reader}
    assert set(entries) == {clean_name(m.name) for m, _ in members} | landmarks
    contents = {clean_name(m.name): data for m, data in members if data is not None}
    for member, data in members:
        name = clean_name(member.name)
        entry = entries[name]
        kind = TAR_KINDS[member.type]
        assert entry.type == kind, name
        assert entry.size == (member.size if kind == "reg" else 0), name
        assert entry.mode == member.mode, name
        assert (entry.uid, entry.gid) == (member.uid, member.gid), name
        assert (entry.user_name, entry.group_name) == (member.uname, member.gname), name
        assert entry.modtime == toc_mtime(member.mtime), name
        assert entry.link_name == (member.linkname if kind in ("symlink", "hardlink") else ""), name
        if kind in ("char", "block"):
            assert (entry.dev_major, entry.dev_minor) == (member.devmajor, member.devminor), name
        xattrs = {k[len("SCHILY.xattr."):]: v.encode("utf-8", "surrogateescape")
                  for k, v in member.pax_headers.items() if k.startswith("SCHILY.xattr.")}
        assert entry.xattrs == xattrs, name
        if kind == "reg":
            assert reader.read(name) == data, name
            assert entry.digest == sha256(data), name
        elif kind == "hardlink":
            target = clean_name(member.linkname)
            assert reader.lookup(name) is reader.lookup(target)
            assert reader.read(name) == contents[target]
    for name in landmarks:
        entry = entries[name]
        assert (entry.type, entry.size, entry.mode, entry.modtime) == ("reg", 1, 0, "")
        assert reader.read(name) == LANDMARK


GO_LANDMARKS = {
    "writer_chunk4.esgz": set(),
    "writer_chunk4_legacyfooter.esgz": set(),
    "build_chunk4.esgz": {".no.prefetch.landmark"},
    "build_prio.esgz": {".prefetch.landmark"},
    "build_minchunk.esgz": {".prefetch.landmark"},
}


@pytest.mark.parametrize("name", sorted(GO_LANDMARKS))
def test_go_vector_matches_input_tar(name):
    with open_vector(GO / name) as reader:
        check_against_tar(reader, GO / "input.tar", GO_LANDMARKS[name])


INPUT_ORDER = ["foo", "foo/bar.txt", "foo/big.bin", "foo/exact.bin", "link", "hl", "empty",
               "dev/null", "fifo", "weird<&>\u2028name"]
PRIO_ORDER = ["foo", "foo/big.bin", "foo/bar.txt", "hl", ".prefetch.landmark",
              "foo/exact.bin", "link", "empty", "dev/null", "fifo", "weird<&>\u2028name"]


@pytest.mark.parametrize("name, order", [
    ("writer_chunk4.esgz", INPUT_ORDER),
    ("build_chunk4.esgz", [".no.prefetch.landmark", *INPUT_ORDER]),
    ("build_prio.esgz", PRIO_ORDER),
    ("build_minchunk.esgz", PRIO_ORDER),
])
def test_go_entry_order(name, order):
    with open_vector(GO / name) as reader:
        assert [e.name for e in reader] == order
        assert len(reader) == len(order)


def test_go_tree_details():
    with open_vector(GO / "writer_chunk4.esgz") as reader:
        bar = reader.lookup("foo/bar.txt")
        assert bar.modtime == "2020-01-02T03:04:06Z"  # 03:04:05.5 rounds up
        assert bar.mtime == dt.datetime(2020, 1, 2, 3, 4, 6, tzinfo=dt.timezone.utc)
        assert bar.xattrs == {"user.a": b"v\xff", "security.capability": b"cap"}
        assert reader.lookup("hl") is bar and reader.lookup("/./foo//bar.txt") is bar
        assert bar.num_link == 2
        assert reader.lookup("empty").modtime == "" and reader.lookup("empty").mtime is None
        assert reader.read("empty") == b""
        # no ./dev/ entry in the tar: the reader makes an implicit directory
        dev = reader.lookup("dev")
        assert dev.is_dir() and "dev" in reader and "dev" not in [e.name for e in reader]
        assert list(dev.children) == ["null"]
        null = reader.lookup("dev/null")
        assert (null.type, null.dev_major, null.dev_minor, null.permissions) == ("char", 1, 3, 0o666)
        assert reader.lookup("link").link_name == "foo/bar.txt"
        assert sorted(reader.lookup("").children) == sorted(
            ["foo", "link", "hl", "empty", "dev", "fifo", "weird<&>\u2028name"])
        assert reader.read("weird<&>\u2028name") == b"x"
        with pytest.raises(estargz.NotFoundError):
            reader.lookup("foo/missing")


# --------------------------------------------------------------------------------------------
# facts listed in estargz-go-v0.15.1/README.md
# --------------------------------------------------------------------------------------------

def test_writer_chunk4_layout():
    blob = (GO / "writer_chunk4.esgz").read_bytes()
    members = gzip_members(blob)
    assert len(members) == 11
    with open_vector(GO / "writer_chunk4.esgz") as reader:
        assert reader.footer == estargz.Footer("estargz", 51, 930)
        assert reader.toc_offset == 930
    for start in members[:-1]:  # every data member and the TOC member
        assert blob[start:start + 10] == bytes.fromhex("1f8b08000000000002ff")
    assert members[-2] == 930 and members[-1] == len(blob) - 51


def test_last_full_chunk_keeps_its_chunk_size():
    """exact.bin (8 B, chunk size 4): the last chunk says "chunkSize": 4; big.bin's short last chunk omits it."""
    for name in GO_LANDMARKS:
        toc = json.loads(raw_toc((GO / name).read_bytes()))
        exact = [e for e in toc["entries"] if e["name"] == "./foo/exact.bin"]
        assert [(e["type"], e.get("chunkOffset", 0), e["chunkSize"]) for e in exact] == [
            ("reg", 0, 4), ("chunk", 4, 4)], name
        big = [e for e in toc["entries"] if e["name"] == "./foo/big.bin"]
        assert [(e.get("chunkOffset", 0), e.get("chunkSize")) for e in big] == [(0, 4), (4, 4), (8, None)]
        with open_vector(GO / name) as reader:
            assert [(c.chunk_offset, c.chunk_size) for c in reader.lookup("foo/exact.bin").chunks] == [(0, 4), (4, 4)]
            assert [(c.chunk_offset, c.chunk_size) for c in reader.lookup("foo/big.bin").chunks] == [
                (0, 4), (4, 4), (8, 2)]
            assert reader.read("foo/exact.bin") == b"abcdefgh"
            assert reader.read("foo/big.bin") == b"0123456789"


def test_build_chunk4_starts_with_no_prefetch_landmark_header():
    blob = (GO / "build_chunk4.esgz").read_bytes()
    first = gzip_members(blob)[1]
    header = gzip.decompress(blob[:first])
    assert len(header) == 512
    assert header[:100].rstrip(b"\0") == b".no.prefetch.landmark"
    with open_vector(GO / "build_chunk4.esgz") as reader:
        landmark = next(iter(reader))
        assert landmark.name == estargz.NO_PREFETCH_LANDMARK
        assert landmark.chunks[0].offset == first
        assert reader.read(estargz.NO_PREFETCH_LANDMARK) == LANDMARK


def test_build_minchunk_inner_offsets():
    """Entries of the first gzip member have no "offset" key, only innerOffset; all read correctly."""
    path = GO / "build_minchunk.esgz"
    toc = json.loads(raw_toc(path.read_bytes()))
    first_member = [(e["name"], e.get("chunkOffset", 0), e["innerOffset"])
                    for e in toc["entries"] if "innerOffset" in e and "offset" not in e]
    assert first_member == [
        ("./foo/big.bin", 0, 1024), ("./foo/big.bin", 4, 1028), ("./foo/big.bin", 8, 1032),
        ("./foo/bar.txt", 0, 3072), ("./foo/bar.txt", 4, 3076),
    ]
    shared = [(e["name"], e["innerOffset"]) for e in toc["entries"] if e.get("offset") == 406 and "innerOffset" in e]
    assert shared == [("./foo/exact.bin", 1024), ("./foo/exact.bin", 1028), ("./weird<&>\u2028name", 5120)]
    with open_vector(path) as reader:
        big = reader.lookup("foo/big.bin")
        assert [(c.offset, c.inner_offset, c.chunk_offset, c.chunk_size) for c in big.chunks] == [
            (0, 1024, 0, 4), (0, 1028, 4, 4), (0, 1032, 8, 2)]
        assert reader.read("foo/big.bin") == b"0123456789"
        assert reader.read("foo/bar.txt") == b"hello"
        assert reader.read("hl") == b"hello"
        assert reader.read("foo/exact.bin") == b"abcdefgh"
        assert reader.read("weird<&>\u2028name") == b"x"
        assert reader.read(".prefetch.landmark") == LANDMARK
        with reader.open("foo/big.bin") as f:
            assert f.pread(4, 3) == b"3456"
        report = reader.verify()
        assert (report.files, report.chunks, report.bytes) == (6, 9, 25)


def test_legacy_footer():
    with open_vector(GO / "writer_chunk4_legacyfooter.esgz") as legacy, \
            open_vector(GO / "writer_chunk4.esgz") as modern:
        assert legacy.footer == estargz.Footer("estargz-legacy", 47, 930)
        assert legacy.toc_digest == modern.toc_digest == MANIFEST["writer_chunk4_legacyfooter.esgz"]["tocDigest"]
        assert legacy.toc_entries == modern.toc_entries
        for entry in modern:
            if entry.type == "reg":
                assert legacy.read(entry.name) == modern.read(entry.name)


def test_writer_empty():
    path = GO / "writer_empty.esgz"
    toc = raw_toc(path.read_bytes())
    assert toc == b'{\n\t"version": 1,\n\t"entries": null\n}' and len(toc) == 35
    assert estargz.encode_toc([]) == toc
    with open_vector(path) as reader:
        assert reader.toc_entries == [] and list(reader) == [] and len(reader) == 0
        assert reader.toc_offset == 0
        root = reader.lookup("")
        assert root.is_dir() and root.children == {}
        assert reader.verify() == estargz.VerifyReport(MANIFEST["writer_empty.esgz"]["tocDigest"], 0, 0, 0)


def test_go_html_safe_escaping_in_toc():
    toc = raw_toc((GO / "writer_chunk4.esgz").read_bytes())
    assert b'"name": "./weird\\u003c\\u0026\\u003e\\u2028name"' in toc
    assert b'"user.a": "dv8="' in toc  # b"v\xff" in base64


@pytest.mark.parametrize("name", EXTERNAL_TOC)
def test_external_toc_blobs_need_their_toc_blob(name):
    """The TOC of these blobs lives in a separate blob: without it, opening is a clear error."""
    blob = (GO / name).read_bytes()
    assert parse_footer(blob[-51:], len(blob)) == estargz.Footer("estargz-external-toc", 46, None)
    with pytest.raises(estargz.FormatError, match="external TOC"):
        estargz.open(GO / name)
    with pytest.raises(estargz.FormatError, match="external TOC"):
        estargz.open(blob)
    stream = gzip.decompress(blob)
    assert sha256(stream) == MANIFEST[name]["diffID"]
    if name == "keepdiffid.esgz":
        assert stream == (GO / "input.tar").read_bytes()
    else:  # no TOC entry and no end-of-archive marker in the blob
        assert b"stargz.index.json" not in stream and not stream.endswith(bytes(1024))


# --------------------------------------------------------------------------------------------
# Debian 0.12.0 vectors against the oracle's verify.json
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", DEB_BLOBS)
def test_debian_entries_match_oracle(name):
    oracle = verify_json(name)
    assert oracle["ok"] and oracle["format"] == "gzip" and oracle["tocVersion"] == 1
    path = DEB_GZIP / f"{name}.blob"
    blob = path.read_bytes()
    assert (len(blob), sha256(blob)) == (oracle["blobSize"], oracle["blobDigest"])
    with estargz.open(path, toc_digest=oracle["tocDigest"]) as reader:
        entries = list(reader)
        assert len(entries) == len(oracle["entries"]) == oracle["treeNodes"] - 1
        raw_names = [e.name for e in reader.toc_entries if e.type != "chunk"]
        assert raw_names == [e["name"] for e in oracle["entries"]]
        for entry, want in zip(entries, oracle["entries"]):
            name_ = want["name"]
            assert entry.name == clean_name(name_)
            assert (entry.type, entry.size, entry.mode) == (want["type"], want["size"], want["mode"]), name_
            assert (entry.uid, entry.gid) == (want["uid"], want["gid"]), name_
            if "uname" in want:
                assert (entry.user_name, entry.group_name) == (want["uname"], want["gname"]), name_
            assert entry.modtime == want.get("modtime", ""), name_
            assert entry.link_name == want.get("linkName", ""), name_
            assert (entry.dev_major, entry.dev_minor) == (want.get("devMajor", 0), want.get("devMinor", 0))
            assert entry.xattrs == {k: v.encode() for k, v in want.get("xattrs", {}).items()}, name_
            assert entry.digest == want.get("digest", ""), name_
            assert entry.num_link == want["numLink"], name_
            if entry.type == "reg":
                assert sha256(reader.read(name_)) == want["sha256"], name_
                chunks = [(c.offset, c.chunk_offset, c.chunk_size, c.chunk_digest) for c in entry.chunks]
                assert chunks == [(c["offset"], c["chunkOffset"], c["chunkSize"], c["chunkDigest"])
                                  for c in want.get("chunks", [])], name_
                assert all(c["verified"] for c in want.get("chunks", []))
            elif entry.type == "hardlink":
                assert reader.lookup(name_) is reader.lookup(want["linkName"])
        report = reader.verify(oracle["tocDigest"])
        assert report.chunks == sum(len(e.get("chunks", [])) for e in oracle["entries"])


@pytest.mark.parametrize("name, landmark", [
    ("small-default", ".no.prefetch.landmark"),
    ("small-level1-procs4", ".no.prefetch.landmark"),
    ("small-chunk4k-prio", ".prefetch.landmark"),
])
def test_debian_small_matches_input_tar(name, landmark):
    with open_vector(DEB_GZIP / f"{name}.blob") as reader:
        check_against_tar(reader, DEB / "inputs" / "sample-small.tar", {landmark})


def test_debian_chunking_facts():
    with open_vector(DEB_GZIP / "small-chunk4k-prio.blob") as reader:
        assert [e.name for e in reader][:4] == ["small.txt", "dir", "dir/xattr.txt", ".prefetch.landmark"]
        assert [c.chunk_size for c in reader.lookup("multi-chunk.txt").chunks] == [4096] * 4 + [4]
        assert [c.chunk_size for c in reader.lookup("zeros.bin").chunks] == [4096, 4096, 200]
    with open_vector(DEB_GZIP / "compressible-default.blob") as reader:
        big = reader.lookup("big.bin")
        assert [(c.chunk_offset, c.chunk_size) for c in big.chunks] == [(0, 4194304), (4194304, 1060921)]
        assert big.size == 5 * 2**20 + 12345
    with open_vector(DEB_GZIP / "small-default.blob") as reader:
        assert next(iter(reader)).name == ".no.prefetch.landmark"
        assert [c.chunk_size for c in reader.lookup("multi-chunk.txt").chunks] == [16388]
