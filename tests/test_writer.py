"""Entry order (estargz.ordering.order_entries) and the writer's options and output layout.

The ordering cases reproduce the expected orders of the Go reference's ``TestSort``
(estargz/build_test.go); the writer cases convert small tars made with :mod:`tarfile` and check the
blob member by member.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import stat
import tarfile
import zlib

import pytest
import zstandard
from helpers import sha256

import estargz
from estargz import FormatError, NotFoundError, read_workload_record
from estargz.ordering import NO_PREFETCH_LANDMARK as NOLM
from estargz.ordering import PREFETCH_LANDMARK as LM
from estargz.ordering import order_entries
from estargz.tarstream import READ_AHEAD, ReadAhead, TarEntry
from estargz.toc import EMPTY_DIGEST, TOC_NAME

MTIME = 1700000000  # 2023-11-14T22:13:20Z
MTIME_TEXT = "2023-11-14T22:13:20Z"


# --------------------------------------------------------------------------------------------
# order_entries: the Go reference's TestSort
# --------------------------------------------------------------------------------------------

def reg(name: str, size: int = 0) -> TarEntry:
    return TarEntry(name=name, kind="reg", size=size)


def dir_(name: str) -> TarEntry:
    return TarEntry(name=name, kind="dir")


def link(name: str, target: str) -> TarEntry:
    return TarEntry(name=name, kind="hardlink", linkname=target)


def symlink(name: str, target: str) -> TarEntry:
    return TarEntry(name=name, kind="symlink", linkname=target)


def names(entries) -> list[str]:
    return [e.name for e in entries]


def order(entries, prioritized=(), **kwargs) -> list[str]:
    ordered, missing = order_entries(entries, prioritized, **kwargs)
    assert missing == []
    return names(ordered)


def test_sort_nolog():
    entries = [reg("foo.txt"), dir_("bar/"), reg("bar/baz.txt"), reg("bar/bar.txt")]
    assert order(entries) == [NOLM, "foo.txt", "bar/", "bar/baz.txt", "bar/bar.txt"]


def test_sort_identical():
    entries = [reg("foo.txt"), dir_("bar/"), reg("bar/baz.txt"), reg("bar/bar.txt"), reg("bar/baa.txt")]
    assert order(entries, ["foo.txt", "bar/baz.txt"]) == [
        "foo.txt", "bar/", "bar/baz.txt", LM, "bar/bar.txt", "bar/baa.txt"]


def test_sort_shuffle_reg():
    entries = [reg("baa.txt"), reg("bar.txt"), reg("baz.txt"), reg("foo.txt")]
    assert order(entries, ["baa.txt", "bar.txt", "baz.txt"]) == [
        "baa.txt", "bar.txt", "baz.txt", LM, "foo.txt"]
    # the log's order wins over the tar's
    assert order(entries, ["baz.txt", "baa.txt"]) == ["baz.txt", "baa.txt", LM, "bar.txt", "foo.txt"]


def test_sort_shuffle_directory():
    entries = [
        dir_("bar/"), reg("bar/bar.txt"), reg("bar/baa.txt"),
        dir_("baz/"), reg("baz/baz1.txt"), dir_("baz/bazbaz/"),
        reg("baz/bazbaz/bazbaz_a.txt"), reg("baz/bazbaz/bazbaz_b.txt"), reg("baz/baz2.txt"),
        reg("foo.txt"),
    ]
    log = ["baz/bazbaz/bazbaz_a.txt", "baz/baz2.txt", "foo.txt"]
    assert order(entries, log) == [
        "baz/", "baz/bazbaz/", "baz/bazbaz/bazbaz_a.txt", "baz/baz2.txt", "foo.txt", LM,
        "bar/", "bar/bar.txt", "bar/baa.txt", "baz/baz1.txt", "baz/bazbaz/bazbaz_b.txt",
    ]


def test_sort_shuffle_link():
    entries = [reg("foo.txt"), reg("baz.txt"), link("bar.txt", "baz.txt"), reg("baa.txt")]
    assert order(entries, ["baz.txt"]) == ["baz.txt", LM, "foo.txt", "bar.txt", "baa.txt"]


def test_sort_hardlink_brings_its_target():
    entries = [reg("baz.txt"), link("bazlink", "baz.txt")]
    assert order(entries, ["bazlink"]) == ["baz.txt", "bazlink", LM]


def test_sort_hardlink_target_in_a_directory():
    entries = [reg("a.txt"), dir_("d/"), reg("d/t.txt"), link("h", "d/t.txt")]
    assert order(entries, ["h"]) == ["d/", "d/t.txt", "h", LM, "a.txt"]


def test_sort_root_relative():
    entries = [dir_("./"), reg("./foo"), reg("./baz"), reg("./baa"), link("./bazlink", "./baz")]
    assert order(entries, ["baa", "bazlink"]) == ["./", "./baa", "./baz", "./bazlink", LM, "./foo"]


def test_sort_root_absolute():
    entries = [dir_("/"), reg("/foo"), reg("/baz"), reg("/baa"), link("/bazlink", "/baz")]
    assert order(entries, ["baa", "bazlink"]) == ["/", "/baa", "/baz", "/bazlink", LM, "/foo"]


@pytest.mark.parametrize("prefix", ["", "./", "/", "../", "./../"])
def test_prioritized_prefixes_are_equivalent(prefix):
    entries = [reg("foo.txt"), dir_("bar/"), reg("bar/baz.txt"), reg("bar/bar.txt")]
    assert order(entries, [prefix + "bar/baz.txt"]) == ["bar/", "bar/baz.txt", LM, "foo.txt", "bar/bar.txt"]
    entries = [dir_("./"), reg("./foo.txt"), dir_("./bar/"), reg("./bar/baz.txt")]
    assert order(entries, [prefix + "bar/baz.txt"]) == ["./", "./bar/", "./bar/baz.txt", LM, "./foo.txt"]


def test_sort_removes_existing_landmarks_without_log():
    entries = [reg(LM, 1), reg("foo.txt"), reg(NOLM, 1), dir_("bar/"), reg("bar/baz.txt"),
               reg("./" + LM, 1), reg(TOC_NAME, 10)]
    assert order(entries) == [NOLM, "foo.txt", "bar/", "bar/baz.txt"]


def test_sort_removes_existing_landmarks_with_log():
    entries = [reg(LM, 1), reg("foo.txt"), reg(NOLM, 1), dir_("bar/"), reg("bar/baz.txt"), reg("bar/bar.txt")]
    ordered, missing = order_entries(entries, ["foo.txt", "bar/baz.txt"])
    assert names(ordered) == ["foo.txt", "bar/", "bar/baz.txt", LM, "bar/bar.txt"]
    assert missing == []
    # the landmark is a new 1-byte file with no bytes in the input tar
    landmark = ordered[3]
    assert (landmark.kind, landmark.size, landmark.header_offset) == ("reg", 1, -1)
    assert landmark is not entries[0]


def test_sort_not_existing_file():
    entries = [reg("foo.txt"), reg("baa.txt"), reg("bar.txt"), reg("baz.txt")]
    with pytest.raises(NotFoundError, match="dummy"):
        order_entries(entries, ["baa.txt", "bar.txt", "dummy"])


def test_sort_allow_missing():
    entries = [reg("foo.txt"), reg("baa.txt"), reg("bar.txt"), reg("baz.txt")]
    ordered, missing = order_entries(entries, ["baa.txt", "./dummy1", "bar.txt", "/dummy2"], allow_missing=True)
    assert names(ordered) == ["baa.txt", "bar.txt", LM, "foo.txt", "baz.txt"]
    assert missing == ["./dummy1", "/dummy2"]  # as given, not cleaned


def test_sort_only_missing_still_gets_prefetch_landmark():
    entries = [reg("foo.txt")]
    ordered, missing = order_entries(entries, ["nope"], allow_missing=True)
    assert names(ordered) == [LM, "foo.txt"]
    assert missing == ["nope"]


def test_sort_duplicated_entry():
    first = reg("bar/baz.txt", size=1)
    second = reg("bar/baz.txt", size=2)
    first_dir, second_dir = dir_("bar/"), dir_("bar/")
    entries = [reg("foo.txt"), first_dir, first, second_dir, second]
    ordered, _ = order_entries(entries, ["bar/baz.txt"])
    assert names(ordered) == ["bar/", "bar/baz.txt", LM, "foo.txt"]
    assert ordered[0] is second_dir and ordered[1] is second


def test_sort_duplicate_takes_the_later_position():
    entries = [reg("a"), reg("b"), reg("./a", size=5)]
    ordered, _ = order_entries(entries)
    assert names(ordered) == [NOLM, "b", "./a"]
    assert ordered[2].size == 5


def test_sort_prioritized_twice_and_directory_after_its_file():
    entries = [dir_("d/"), reg("d/f"), reg("g")]
    assert order(entries, ["d/f", "d/f", "d"]) == ["d/", "d/f", LM, "g"]


def test_sort_missing_ancestor_directory_is_skipped():
    # documented difference from Go: ancestors that are not entries are skipped, not "missing"
    entries = [reg("a/b/c.txt"), reg("z")]
    assert order(entries, ["a/b/c.txt"]) == ["a/b/c.txt", LM, "z"]


def test_sort_hardlink_cycle_terminates():
    entries = [link("a", "b"), link("b", "a"), reg("c")]
    assert order(entries, ["a"]) == ["a", "b", LM, "c"]


def test_sort_long_hardlink_chain_moves_every_link_after_its_target():
    count = 20_000  # deeper than Python's recursion limit
    entries = [reg("f"), *(link(f"h{i}", f"h{i - 1}" if i else "f") for i in range(count)), reg("z")]
    assert order(entries, [f"h{count - 1}"]) == ["f", *(f"h{i}" for i in range(count)), LM, "z"]


def test_sort_symlink_target_is_not_moved():
    entries = [reg("target"), symlink("s", "target")]
    assert order(entries, ["s"]) == ["s", LM, "target"]


# --------------------------------------------------------------------------------------------
# convert: helpers
# --------------------------------------------------------------------------------------------

def make_tar(specs, fmt=tarfile.PAX_FORMAT) -> bytes:
    """specs: list of (TarInfo kwargs..., data) as dicts with 'name' and optional 'data'."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for spec in specs:
            spec = dict(spec)
            data = spec.pop("data", None)
            pax = spec.pop("pax_headers", None)
            info = tarfile.TarInfo(spec.pop("name"))
            info.mtime = MTIME
            info.mode = 0o644
            for key, value in spec.items():
                setattr(info, key, value)
            if pax:
                info.pax_headers = pax
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def convert_bytes(tar: bytes, **kwargs) -> tuple[bytes, estargz.BuildResult]:
    out = io.BytesIO()
    kwargs.setdefault("compression_level", 1)
    result = estargz.convert(io.BytesIO(tar), out, **kwargs)
    return out.getvalue(), result


def members(blob: bytes) -> list[tuple[int, bytes]]:
    """(compressed offset, inflated data) of every gzip member of ``blob``, in order."""
    out = []
    pos = 0
    while pos < len(blob):
        inflater = zlib.decompressobj(31)
        data = inflater.decompress(blob[pos:])
        assert inflater.eof, f"member at {pos} is truncated"
        out.append((pos, data))
        pos = len(blob) - len(inflater.unused_data)
    return out


def raw_toc(blob: bytes) -> list[estargz.TOCEntry]:
    with estargz.open(blob) as reader:
        return list(reader.toc_entries)


SMALL = [
    {"name": "dir", "type": tarfile.DIRTYPE, "mode": 0o755},
    {"name": "dir/eight", "data": b"01234567"},
    {"name": "dir/three", "data": b"abc"},
    {"name": "four", "data": b"wxyz"},
    {"name": "empty", "data": b""},
    {"name": "five", "data": b"12345"},
]


# --------------------------------------------------------------------------------------------
# convert: TOC and members
# --------------------------------------------------------------------------------------------

def test_convert_toc_order_and_landmark():
    blob, _ = convert_bytes(make_tar(SMALL), chunk_size=4)
    entries = raw_toc(blob)
    assert [(e.name, e.type) for e in entries] == [
        (NOLM, "reg"), ("dir/", "dir"),  # names written raw, as tarfile wrote them
        ("dir/eight", "reg"), ("dir/eight", "chunk"),
        ("dir/three", "reg"), ("four", "reg"), ("empty", "reg"),
        ("five", "reg"), ("five", "chunk"),
    ]
    blob, _ = convert_bytes(make_tar(SMALL), chunk_size=4, prioritized_files=["four", "dir/three"])
    assert [e.name for e in raw_toc(blob) if e.type != "chunk"] == [
        "four", "dir/", "dir/three", LM, "dir/eight", "empty", "five"]


def test_convert_chunk_size_rule_and_digests():
    blob, _ = convert_bytes(make_tar(SMALL), chunk_size=4)
    entries = raw_toc(blob)
    got = [(e.name, e.type, e.size, e.chunk_offset, e.chunk_size, e.digest, e.chunk_digest) for e in entries
           if e.type in ("reg", "chunk")]
    assert got == [
        (NOLM, "reg", 1, 0, 0, sha256(b"\x0f"), sha256(b"\x0f")),
        # exactly 2 x chunk: chunkSize on both chunks
        ("dir/eight", "reg", 8, 0, 4, sha256(b"01234567"), sha256(b"0123")),
        ("dir/eight", "chunk", 0, 4, 4, "", sha256(b"4567")),
        # shorter than a chunk: no chunkSize
        ("dir/three", "reg", 3, 0, 0, sha256(b"abc"), sha256(b"abc")),
        # exactly one chunk: chunkSize (Go: remain >= chunkSize)
        ("four", "reg", 4, 0, 4, sha256(b"wxyz"), sha256(b"wxyz")),
        # empty: digest of b"", no chunk
        ("empty", "reg", 0, 0, 0, EMPTY_DIGEST, ""),
        ("five", "reg", 5, 0, 4, sha256(b"12345"), sha256(b"1234")),
        ("five", "chunk", 0, 4, 0, "", sha256(b"5")),
    ]
    assert EMPTY_DIGEST == sha256(b"")
    assert next(e for e in entries if e.name == "empty").offset == 0


def test_convert_members_start_at_chunk_offsets():
    blob, result = convert_bytes(make_tar(SMALL), chunk_size=4)
    parts = members(blob)
    by_offset = dict(parts)
    entries = raw_toc(blob)
    contents = {"dir/eight": b"01234567", "dir/three": b"abc", "four": b"wxyz", "five": b"12345", NOLM: b"\x0f"}
    chunk_members = 0
    for entry in entries:
        if entry.type not in ("reg", "chunk") or entry.offset == 0:
            continue
        payload = contents[entry.name]
        length = entry.chunk_size or (len(payload) - entry.chunk_offset)
        piece = payload[entry.chunk_offset:entry.chunk_offset + length]
        assert entry.offset in by_offset, f"{entry.name}@{entry.chunk_offset} does not start a member"
        assert by_offset[entry.offset][:len(piece)] == piece
        chunk_members += 1
    assert chunk_members == 7  # landmark, eight x 2, three, four, five x 2
    # the first member holds the headers before the first payload; the last two are TOC and footer
    assert parts[0][0] == 0 and parts[0][1][:len(NOLM)] == NOLM.encode()
    toc_offset, toc_data = parts[-2]
    assert toc_data[:len(TOC_NAME)] == TOC_NAME.encode()
    assert parts[-1] == (len(blob) - 51, b"")
    assert blob[-51:] == estargz.footer.gzip_footer(toc_offset)
    # the inflated members are the uncompressed layer
    assert sum(len(d) for _, d in parts) == result.uncompressed_size


def test_five_byte_file_chunk_four_members():
    tar = make_tar([{"name": "five", "data": b"12345"}])
    blob, _ = convert_bytes(tar, chunk_size=4)
    entries = raw_toc(blob)
    first = next(e for e in entries if e.name == "five" and e.type == "reg")
    second = next(e for e in entries if e.name == "five" and e.type == "chunk")
    parts = dict(members(blob))
    assert parts[first.offset] == b"1234"
    assert parts[second.offset] == b"5" + bytes(507)  # last chunk + its tar padding, then the TOC member
    order = [offset for offset, _ in members(blob)]
    assert order.index(second.offset) == order.index(first.offset) + 1
    with estargz.open(blob) as reader:
        assert reader.read("five") == b"12345"
        assert [(c.chunk_offset, c.chunk_size) for c in reader.lookup("five").chunks] == [(0, 4), (4, 1)]


def test_large_last_chunk_keeps_its_padding_in_its_member():
    """docs/format.md: a last chunk's member holds the payload + its tar padding + following headers.

    With a chunk size above 4 MiB, a last chunk of 4 MiB + 1 bytes gets its padding and the next
    header put into a separate member (the header-run limit counts the payload as header bytes).
    """
    data = b"x" * ((4 << 20) + 1)
    tar = make_tar([{"name": "big", "data": data}, {"name": "small", "data": b"y"}], fmt=tarfile.USTAR_FORMAT)
    blob, _ = convert_bytes(tar, chunk_size=8 << 20)
    entries = raw_toc(blob)
    big = next(e for e in entries if e.name == "big")
    small = next(e for e in entries if e.name == "small")
    parts = members(blob)
    offsets = [offset for offset, _ in parts]
    big_member = dict(parts)[big.offset]
    assert offsets[offsets.index(big.offset) + 1] == small.offset, "padding/header split into an extra member"
    assert len(big_member) == len(data) + 511 + 512


def test_uname_gname_written_only_when_they_change():
    tar = make_tar([
        {"name": "a", "data": b"", "uid": 1000, "gid": 100, "uname": "alice", "gname": "users"},
        {"name": "b", "data": b"", "uid": 1000, "gid": 100, "uname": "alice", "gname": "users"},
        {"name": "c", "data": b"", "uid": 1000, "gid": 100, "uname": "bob", "gname": "users"},
        {"name": "d", "data": b"", "uid": 1001, "gid": 100, "uname": "bob", "gname": "staff"},
        {"name": "e", "data": b"", "uid": 1000, "gid": 100, "uname": "bob", "gname": "staff"},
        {"name": "f", "data": b"", "uid": 1000, "gid": 100, "uname": "", "gname": ""},
    ])
    blob, _ = convert_bytes(tar)
    got = [(e.name, e.uid, e.gid, e.user_name, e.group_name) for e in raw_toc(blob)][1:]
    assert got == [
        ("a", 1000, 100, "alice", "users"),
        ("b", 1000, 100, "", ""),
        ("c", 1000, 100, "bob", ""),
        ("d", 1001, 100, "bob", "staff"),
        ("e", 1000, 100, "", ""),
        ("f", 1000, 100, "", ""),
    ]
    with estargz.open(blob) as reader:  # readers inherit the names per id
        assert [(reader.lookup(n).user_name, reader.lookup(n).group_name) for n in "abcdef"] == [
            ("alice", "users"), ("alice", "users"), ("bob", "users"), ("bob", "staff"),
            ("bob", "staff"), ("bob", "staff")]


@pytest.mark.parametrize("mtime, expected", [
    (MTIME, MTIME_TEXT),
    (MTIME + 0.5, "2023-11-14T22:13:21Z"),
    (MTIME + 0.4, MTIME_TEXT),
    (MTIME + 0.999, "2023-11-14T22:13:21Z"),
    (0, ""),
    (0.7, ""),   # Go: omitted when t.Unix() == 0, before rounding
    (1, "1970-01-01T00:00:01Z"),
])
def test_modtime_rounding_and_epoch(mtime, expected):
    tar = make_tar([{"name": "f", "data": b"x", "mtime": mtime}])
    blob, _ = convert_bytes(tar)
    toc = raw_toc(blob)
    assert toc[1].modtime == expected
    toc_json = json.loads(_toc_json(blob))
    assert ("modtime" in toc_json["entries"][1]) == bool(expected)


def _toc_json(blob: bytes) -> bytes:
    parts = members(blob)
    data = parts[-2][1]
    size = int(data[124:136].rstrip(b"\0"), 8)
    return data[512:512 + size]


def test_toc_digest_is_sha256_of_toc_json():
    blob, result = convert_bytes(make_tar(SMALL))
    assert result.toc_digest == sha256(_toc_json(blob))
    with estargz.open(blob) as reader:
        assert reader.toc_digest == result.toc_digest


# --------------------------------------------------------------------------------------------
# read_workload_record
# --------------------------------------------------------------------------------------------

RECORD = "\n".join([
    json.dumps({"path": "etc/a", "manifestDigest": "sha256:aa", "layerIndex": 0}),
    json.dumps({"path": "bin/sh", "manifestDigest": "sha256:aa", "layerIndex": 1}),
    "",
    json.dumps({"path": "etc/a", "manifestDigest": "sha256:aa", "layerIndex": 1}),
    json.dumps({"path": "lib/c.so", "manifestDigest": "sha256:aa", "layerIndex": 1}),
    json.dumps({"path": "bin/sh", "manifestDigest": "sha256:aa", "layerIndex": 0}),
    json.dumps({"path": "usr/x"}),
    "   ",
])


def test_read_workload_record_order_and_dedup():
    assert read_workload_record(RECORD) == ["etc/a", "bin/sh", "lib/c.so", "usr/x"]
    assert read_workload_record(io.BytesIO(RECORD.encode())) == ["etc/a", "bin/sh", "lib/c.so", "usr/x"]
    assert read_workload_record(RECORD.splitlines()) == ["etc/a", "bin/sh", "lib/c.so", "usr/x"]


def test_read_workload_record_layer_index():
    assert read_workload_record(RECORD, 0) == ["etc/a", "bin/sh"]
    assert read_workload_record(RECORD, 1) == ["bin/sh", "etc/a", "lib/c.so"]
    assert read_workload_record(RECORD, 7) == []
    assert read_workload_record("") == []


@pytest.mark.parametrize("text, line", [
    ('{"path": "a"}\nnot json\n', 2),
    ('{"path": "a"}\n\n{"nopath": 1}\n', 3),
    ('["a"]\n', 1),
    ('{"path": 5}\n', 1),
])
def test_read_workload_record_bad_lines(text, line):
    with pytest.raises(FormatError, match=f"line {line}"):
        read_workload_record(text)


# --------------------------------------------------------------------------------------------
# convert: options and outputs
# --------------------------------------------------------------------------------------------

def _mixed_layer(size: int = 3 << 20) -> bytes:
    # compressible but not trivial: a few MiB crossing the 1 MiB batch size several times
    pattern = bytes((i * 7919 >> 3) & 0xFF for i in range(65536))
    big = (pattern * (size // len(pattern) + 1))[:size]
    specs = [{"name": "d", "type": tarfile.DIRTYPE, "mode": 0o755}]
    specs += [{"name": f"d/f{i}", "data": big[i * 1000:i * 1000 + 3000 + i]} for i in range(50)]
    specs.append({"name": "big", "data": big})
    specs.append({"name": "s", "type": tarfile.SYMTYPE, "linkname": "big"})
    return make_tar(specs)


@pytest.fixture(scope="module")
def mixed_tar() -> bytes:
    return _mixed_layer()


def test_output_identical_for_any_thread_count(mixed_tar):
    blobs = {t: convert_bytes(mixed_tar, chunk_size=64 << 10, threads=t)[0] for t in (1, 2, 4)}
    assert blobs[1] == blobs[2] == blobs[4]
    with estargz.open(blobs[1]) as reader:
        assert reader.verify().files == 52  # 50 + big + landmark


def test_output_to_stream_equals_output_to_path(tmp_path, mixed_tar):
    src = tmp_path / "layer.tar"
    src.write_bytes(mixed_tar)
    out = tmp_path / "out.esgz"
    result_path = estargz.convert(src, out, chunk_size=64 << 10, compression_level=1)
    stream = io.BytesIO()
    result_stream = estargz.convert(str(src), stream, chunk_size=64 << 10, compression_level=1)
    assert out.read_bytes() == stream.getvalue()
    assert result_path == result_stream
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layer.tar", "out.esgz"]  # no temp left


def test_compressed_inputs_give_identical_blobs(mixed_tar):
    plain, result = convert_bytes(mixed_tar)
    from_gzip, result_gzip = convert_bytes(gzip.compress(mixed_tar, 1))
    from_zstd, result_zstd = convert_bytes(zstandard.ZstdCompressor(level=1).compress(mixed_tar))
    assert from_gzip == plain and from_zstd == plain
    assert result_gzip == result == result_zstd


def test_non_seekable_input_gives_identical_blob(mixed_tar):
    class Pipe(io.RawIOBase):
        def __init__(self, data):
            self._data = io.BytesIO(data)

        def readable(self):
            return True

        def readinto(self, buffer):
            chunk = self._data.read(min(len(buffer), 1000))
            buffer[:len(chunk)] = chunk
            return len(chunk)

    plain, _ = convert_bytes(mixed_tar)
    out = io.BytesIO()
    estargz.convert(Pipe(mixed_tar), out, compression_level=1)
    assert out.getvalue() == plain
    out = io.BytesIO()
    estargz.convert(Pipe(gzip.compress(mixed_tar, 1)), out, compression_level=1)
    assert out.getvalue() == plain


@pytest.mark.parametrize("level", range(10))
def test_compression_levels_read_back(level):
    tar = make_tar(SMALL)
    blob, result = convert_bytes(tar, chunk_size=4, compression_level=level)
    parts = members(blob)
    xfl = {9: 2, 1: 4}.get(level, 0)
    assert all(blob[offset + 8] == xfl for offset, _ in parts[:-1])
    with estargz.open(blob, toc_digest=result.toc_digest) as reader:
        assert reader.read("dir/eight") == b"01234567"
        assert reader.verify().files == 6


def test_invalid_options():
    with pytest.raises(ValueError, match="chunk_size"):
        convert_bytes(make_tar(SMALL), chunk_size=0)
    with pytest.raises(ValueError, match="threads"):
        convert_bytes(make_tar(SMALL), threads=0)
    with pytest.raises(ValueError, match="0-9"):
        convert_bytes(make_tar(SMALL), compression_level=10)
    with pytest.raises(NotFoundError, match="nope"):
        convert_bytes(make_tar(SMALL), prioritized_files=["nope"])
    _, result = convert_bytes(make_tar(SMALL), prioritized_files=["nope", "four"], allow_missing_prioritized=True)
    assert result.missing_prioritized == ("nope",)


def test_header_run_longer_than_4_mib():
    count = 10000
    names = [f"{i:05d}-" + "n" * 90 for i in range(count)]  # fits USTAR: one 512-byte header each
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in names:
            tar.addfile(tarfile.TarInfo(name))
    tar_bytes = buf.getvalue()
    assert len(tar_bytes) > 4 << 20
    blob, result = convert_bytes(tar_bytes)
    parts = members(blob)
    # landmark header member, landmark payload (+ its padding and > 4 MiB of headers, split)
    header_members = [len(d) for _, d in parts[1:-2]]
    assert len(header_members) >= 2
    assert max(header_members) <= (4 << 20) + 512
    assert sum(len(d) for _, d in parts[:-2]) == 512 + 512 + count * 512
    with estargz.open(blob) as reader:
        assert len(reader) == count + 1
        assert [e.name for e in reader][1:] == names
        assert all(reader.lookup(n).digest == EMPTY_DIGEST for n in names[::997])
        assert reader.verify().files == count + 1
        with tarfile.open(fileobj=io.BytesIO(_unpacked(reader))) as unpacked:
            assert unpacked.getnames() == [NOLM] + names
    assert result.uncompressed_size == sum(len(d) for _, d in parts)


def test_build_result_json_consistent_with_annotations():
    blob, result = convert_bytes(make_tar(SMALL), chunk_size=4)
    doc = result.to_json()
    json.dumps(doc)  # JSON-ready
    raw = gzip.decompress(blob)
    assert doc == {
        "format": "estargz",
        "tocDigest": result.toc_digest,
        "diffID": sha256(raw),
        "uncompressedSize": len(raw),
        "blobDigest": sha256(blob),
        "blobSize": len(blob),
        "missingPrioritized": [],
        "descriptor": {
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": sha256(blob),
            "size": len(blob),
            "annotations": {
                "containerd.io/snapshot/stargz/toc.digest": result.toc_digest,
                "io.containers.estargz.uncompressed-size": str(len(raw)),
            },
        },
    }
    assert result.annotations == doc["descriptor"]["annotations"]
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        assert tar.getnames()[-1] == TOC_NAME


def test_headers_copied_byte_for_byte():
    tar = make_tar([
        {"name": "p", "data": b"pax", "pax_headers": {"SCHILY.xattr.user.k": "v", "comment": "kept"}},
        {"name": "l" * 150, "data": b"long"},
    ])
    blob, _ = convert_bytes(tar)
    raw = gzip.decompress(blob)
    # after the landmark's 1024 bytes, the input tar up to its end-of-archive marker
    body = tar[:tar.rindex(b"long") + 512]
    assert raw[1024:1024 + len(body)] == body
    with estargz.open(blob) as reader:
        assert reader.lookup("p").xattrs == {"user.k": b"v"}
        assert reader.read("l" * 150) == b"long"


def test_output_path_gets_default_file_mode(tmp_path):
    """A blob written to a path gets the mode open() would give it (0o666 & ~umask), as the Go
    tools (os.Create) do; a temporary file from mkstemp is 0o600, readable by its owner only."""
    src = tmp_path / "layer.tar"
    src.write_bytes(make_tar(SMALL))
    umask = os.umask(0o022)
    try:
        estargz.convert(src, tmp_path / "out.esgz")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "out.esgz").st_mode) == 0o644


def test_failed_conversion_to_path_leaves_nothing(tmp_path):
    src = tmp_path / "layer.tar"
    src.write_bytes(b"not a tar" * 100)
    with pytest.raises(FormatError):
        estargz.convert(src, tmp_path / "out.esgz")
    assert [p.name for p in tmp_path.iterdir()] == ["layer.tar"]


def _unpacked(reader: estargz.Reader) -> bytes:
    out = io.BytesIO()
    reader.unpack(out)
    return out.getvalue()


def test_read_ahead_reads_what_the_file_holds(tmp_path) -> None:
    """Reads through the read-ahead window, inside it, across its end, past the file's end and
    larger than it, give the file's bytes at each position."""
    data = os.urandom(3 * READ_AHEAD + 1234)
    path = tmp_path / "data"
    path.write_bytes(data)
    reads = [(0, 512), (100, 512), (READ_AHEAD - 10, 20), (READ_AHEAD - 10, 5), (5, READ_AHEAD + 7),
             (2 * READ_AHEAD, 3), (len(data) - 4, 100), (len(data) + 10, 5), (7, 0), (1, 2 * READ_AHEAD)]
    with open(path, "rb") as f:
        f.seek(3)
        reader = ReadAhead(f)
        assert reader.tell() == 3
        assert reader.seek(0, os.SEEK_END) == len(data)
        assert reader.fileno() == f.fileno()
        for offset, size in reads:
            assert reader.seek(offset) == offset
            got = reader.read(size)
            assert got == data[offset:offset + size], (offset, size)
            assert reader.tell() == offset + len(got)
        with pytest.raises(ValueError):
            reader.read(-1)


def test_conversion_through_read_ahead_matches_offset_start(tmp_path) -> None:
    """A layer that starts inside a stream (not at offset 0) converts as the layer alone does."""
    layer = make_tar([{"name": "a", "data": b"x" * 3000}, {"name": "b", "data": os.urandom(READ_AHEAD + 10)},
                      {"name": "c", "data": b""}])
    path = tmp_path / "prefixed.tar"
    path.write_bytes(b"\xff" * 777 + layer)
    alone, prefixed = io.BytesIO(), io.BytesIO()
    with open(path, "rb") as source:
        source.seek(777)
        assert estargz.convert(io.BytesIO(layer), alone) == estargz.convert(source, prefixed)
    assert alone.getvalue() == prefixed.getvalue()
