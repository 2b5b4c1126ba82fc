"""Hostile and broken inputs: every one must end in a typed estargz error, quickly, in bounded memory.

Blobs are built here, either by estargz.convert of a small tar made with tarfile, or assembled by
hand from gzip members, a TOC and a footer (see ``assemble`` and ``craft``), so that exactly one
thing is wrong in each.
"""

from __future__ import annotations

import dataclasses
import io
import os
import signal
import tarfile
import tracemalloc
import zlib

import pytest
from helpers import sha256

import estargz
from estargz import (
    EStargzError,
    FormatError,
    LimitError,
    NotFoundError,
    TOCEntry,
    UnsupportedInputError,
    VerificationError,
)
from estargz.footer import external_toc_footer, gzip_footer, legacy_gzip_footer
from estargz.framing import GzipCompressor
from estargz.tarstream import BLOCK, padding, ustar_header
from estargz.toc import MAX_TOC_SIZE, TOC_NAME

MiB = 1 << 20


@pytest.fixture(autouse=True)
def no_hang():
    """Fail a test that runs for more than 60 s instead of letting it hang the suite."""
    def on_alarm(signum, frame):
        raise TimeoutError("test ran for more than 60 s; a hostile input made estargz hang?")
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# --------------------------------------------------------------------------------------------
# building blobs
# --------------------------------------------------------------------------------------------

def gz(data: bytes, level: int = 6) -> bytes:
    return GzipCompressor(level).compress(data)


def zeros_member(size: int, prefix: bytes = b"", suffix: bytes = b"") -> bytes:
    """One gzip member holding prefix + ``size`` zero bytes + suffix, compressed piecewise (a "bomb")."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [deflater.compress(prefix)]
    block = bytes(MiB)
    for start in range(0, size, MiB):
        parts.append(deflater.compress(block[:min(MiB, size - start)]))
    parts.append(deflater.compress(suffix))
    parts.append(deflater.flush())
    return b"".join(parts)


def toc_member(toc_json: bytes, *, name: str = TOC_NAME, header: bytes | None = None) -> bytes:
    """The gzip member holding the TOC tar: one entry, padding, end-of-archive marker."""
    header = ustar_header(name, len(toc_json)) if header is None else header
    return gz(header + toc_json + bytes(padding(len(toc_json)) + 2 * BLOCK))


def assemble(members: list[bytes], toc: list[TOCEntry] | bytes, *, toc_name: str = TOC_NAME,
             toc_header: bytes | None = None, footer=gzip_footer) -> bytes:
    """A blob: the given (already compressed) members, then the TOC member, then the footer."""
    data = b"".join(members)
    toc_json = toc if isinstance(toc, bytes) else estargz.encode_toc(toc)
    return data + toc_member(toc_json, name=toc_name, header=toc_header) + footer(len(data))


@dataclasses.dataclass
class Crafted:
    """A hand-made layer: gzip members and the TOC entries that describe them, ready to be tampered with."""

    members: list[bytes]
    entries: list[TOCEntry]

    @property
    def data_size(self) -> int:
        return sum(len(m) for m in self.members)

    def blob(self) -> bytes:
        return assemble(self.members, self.entries)

    def entry(self, name: str, type_: str = "reg", index: int = 0) -> TOCEntry:
        return [e for e in self.entries if e.name == name and e.type == type_][index]


def craft(files: dict[str, bytes], chunk_size: int = 4) -> Crafted:
    """A valid layer laid out as Go's writer does: a header member, one member per chunk, padding."""
    members: list[bytes] = []
    entries: list[TOCEntry] = []
    offset = 0

    def add(data: bytes) -> int:
        nonlocal offset
        member = gz(data)
        members.append(member)
        offset += len(member)
        return offset - len(member)

    for name, content in files.items():
        add(ustar_header(name, len(content)))
        if not content:
            entries.append(TOCEntry(name=name, type="reg", digest=sha256(b"")))
        for start in range(0, len(content), chunk_size):
            piece = content[start:start + chunk_size]
            at = add(piece)
            if start == 0:
                entries.append(TOCEntry(
                    name=name, type="reg", size=len(content), offset=at, digest=sha256(content),
                    chunk_size=len(piece) if len(content) > chunk_size else 0, chunk_digest=sha256(piece)))
            else:
                entries.append(TOCEntry(name=name, type="chunk", offset=at, chunk_offset=start,
                                        chunk_size=len(piece), chunk_digest=sha256(piece)))
        if padding(len(content)):
            add(bytes(padding(len(content))))
    return Crafted(members, entries)


FILES = {"a.txt": b"hello, world!", "dir/b.bin": bytes(range(10))}


def make_tar(files: dict[str, bytes], fmt: int = tarfile.USTAR_FORMAT, **kwargs) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, **kwargs) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1700000000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def converted(files: dict[str, bytes] = FILES, *, chunk_size: int = 4, level: int = 9) -> bytes:
    out = io.BytesIO()
    estargz.convert(io.BytesIO(make_tar(files)), out, chunk_size=chunk_size, compression_level=level)
    return out.getvalue()


def peak_memory(fn) -> tuple[object, int]:
    """(result or raised EStargzError, peak bytes allocated through Python while running fn)."""
    tracemalloc.start()
    try:
        try:
            result = fn()
        except EStargzError as exc:
            result = exc
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# --------------------------------------------------------------------------------------------
# the starting points are valid
# --------------------------------------------------------------------------------------------

def test_error_hierarchy():
    for cls in (FormatError, LimitError, VerificationError, UnsupportedInputError, NotFoundError):
        assert issubclass(cls, EStargzError)
    assert issubclass(LimitError, FormatError)
    assert issubclass(NotFoundError, KeyError)


def test_crafted_blob_is_valid():
    layer = craft(FILES)
    with estargz.open(layer.blob()) as reader:
        assert [e.name for e in reader] == ["a.txt", "dir/b.bin"]
        assert reader.read("a.txt") == FILES["a.txt"]
        assert [c.chunk_size for c in reader.lookup("a.txt").chunks] == [4, 4, 4, 1]
        assert reader.read("dir/b.bin") == FILES["dir/b.bin"]
        assert reader.verify().bytes == 23
        with tarfile.open(fileobj=io.BytesIO(_unpacked(reader))) as tar:
            assert [(m.name, tar.extractfile(m).read()) for m in tar] == list(FILES.items())


def test_converted_blob_is_valid():
    with estargz.open(converted()) as reader:
        assert [e.name for e in reader] == [".no.prefetch.landmark", "a.txt", "dir/b.bin"]
        assert reader.read("a.txt") == FILES["a.txt"]
        assert reader.verify().files == 3


# --------------------------------------------------------------------------------------------
# corrupted data
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("level", [0, 9], ids=["stored", "deflated"])
def test_corrupted_byte_in_chunk_member(level):
    """Any flipped byte of a chunk member's magic, deflate data or trailer is detected.

    (Bytes 4-9 of a gzip header, MTIME, XFL and OS, carry nothing and are not checked.)
    """
    blob = converted({"f.bin": bytes(range(48))}, chunk_size=16, level=level)
    chunk = estargz.open(blob).lookup("f.bin").chunks[1]
    member = range(chunk.offset, chunk.next_offset)
    assert len(member) > 18
    for pos in [*member[:4], *member[10:]]:
        bad = bytearray(blob)
        bad[pos] ^= 0xFF
        with estargz.open(bytes(bad)) as reader:  # the TOC is intact
            assert reader.read(".no.prefetch.landmark") == b"\x0f"
            with pytest.raises((FormatError, VerificationError)):
                reader.read("f.bin")
            with pytest.raises((FormatError, VerificationError)):
                reader.verify()
            with reader.open("f.bin") as f:  # the chunks before the damaged one still read
                assert f.read(16) == bytes(range(16))
                with pytest.raises((FormatError, VerificationError)):
                    f.read(1)


def test_corrupted_byte_in_toc_member():
    blob = converted()
    reader = estargz.open(blob)
    digest, start, end = reader.toc_digest, reader.toc_offset, len(blob) - reader.footer.size
    for pos in [*range(start, start + 4), *range(start + 10, end)]:
        bad = bytearray(blob)
        bad[pos] ^= 0xFF
        with pytest.raises(FormatError):
            estargz.open(bytes(bad))
        with pytest.raises((FormatError, VerificationError)):
            estargz.open(bytes(bad), toc_digest=digest)


# --------------------------------------------------------------------------------------------
# footer
# --------------------------------------------------------------------------------------------

def test_every_truncation_of_a_blob_is_a_format_error():
    blob = converted()
    for size in range(len(blob)):
        with pytest.raises(FormatError):
            estargz.open(blob[:size])


@pytest.mark.parametrize("data", [
    b"", b"\x1f", b"\x1f\x8b\x08\x04", bytes(50), gzip_footer(0)[:-1], gzip_footer(0)[1:],
    legacy_gzip_footer(0)[:-1],
], ids=["empty", "1-byte", "gzip-magic", "50-zeros", "footer-minus-last", "footer-minus-first", "legacy-minus-last"])
def test_blob_shorter_than_a_footer(data):
    with pytest.raises(FormatError, match="footer"):
        estargz.open(data)


def test_footer_alone():
    with pytest.raises(FormatError, match="TOC"):
        estargz.open(gzip_footer(0))  # offset 0 is valid, but there is no TOC member before it
    with pytest.raises(FormatError, match="external TOC"):
        estargz.open(external_toc_footer())


def with_offset_field(blob: bytes, field: bytes, legacy: bool = False) -> bytes:
    """``blob`` with the 16 characters of its footer's offset replaced by ``field``."""
    assert len(field) == 16
    size = 47 if legacy else 51
    footer = blob[-size:]
    return blob[:-size] + footer[:-35] + field + footer[-19:]


@pytest.mark.parametrize("legacy", [False, True], ids=["footer", "legacy-footer"])
@pytest.mark.parametrize("field", [
    b"zzzzzzzzzzzzzzzz", b"00000000000004g0", b"-000000000000001", b"-00000000000001a",
    b"+00000000000001a", b" 00000000000001a", b"0x0000000000001a", b"00000000000001a\0",
    b"ffffffffffffffff", b"7fffffffffffffff",
])
def test_footer_with_bad_offset_field(field, legacy):
    blob = converted()
    toc_offset = estargz.open(blob).toc_offset
    if legacy:
        blob = blob[:-51] + legacy_gzip_footer(toc_offset)
        assert estargz.open(blob).footer.kind == "estargz-legacy"
    with pytest.raises(FormatError):
        estargz.open(with_offset_field(blob, field, legacy))


@pytest.mark.parametrize("where", ["blob-size", "footer-start+1", "into-footer", "toc+1", "zero"])
def test_footer_offset_pointing_to_the_wrong_place(where):
    blob = converted()
    toc_offset = estargz.open(blob).toc_offset
    offset = {
        "blob-size": len(blob) + 1000,
        "footer-start+1": len(blob) - 50,
        "into-footer": len(blob) - 51,   # allowed as a position, but there is no TOC there
        "toc+1": toc_offset + 1,         # the middle of the TOC member: not a gzip header
        "zero": 0,                       # the first member: a tar header, not the TOC entry
    }[where]
    with pytest.raises(FormatError):
        estargz.open(with_offset_field(blob, b"%016x" % offset))


# --------------------------------------------------------------------------------------------
# TOC digest
# --------------------------------------------------------------------------------------------

def test_wrong_expected_toc_digest():
    blob = converted()
    right = estargz.open(blob).toc_digest
    wrong = "sha256:" + "0" * 64
    with pytest.raises(VerificationError, match="expected"):
        estargz.open(blob, toc_digest=wrong)
    with pytest.raises(VerificationError):
        estargz.open(blob, toc_digest=right[:-1])
    with estargz.open(blob, toc_digest=right) as reader:
        with pytest.raises(VerificationError):
            reader.verify(wrong)
        assert reader.verify(right).toc_digest == right


def test_toc_digest_covers_the_toc_json():
    """A TOC that differs by one byte of JSON whitespace has another digest."""
    layer = craft(FILES)
    toc_json = estargz.encode_toc(layer.entries)
    digest = sha256(toc_json)
    assert estargz.open(assemble(layer.members, toc_json), toc_digest=digest).toc_digest == digest
    with pytest.raises(VerificationError):
        estargz.open(assemble(layer.members, toc_json + b"\n"), toc_digest=digest)


# --------------------------------------------------------------------------------------------
# the TOC member and the TOC JSON
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["stargz.index.jsonx", "other.json", "./stargz.index.json",
                                  "/stargz.index.json", "STARGZ.INDEX.JSON", ".prefetch.landmark"])
def test_toc_entry_named_differently(name):
    layer = craft(FILES)
    with pytest.raises(FormatError, match="named"):
        estargz.open(assemble(layer.members, layer.entries, toc_name=name))


def test_toc_member_that_is_not_a_tar():
    layer = craft(FILES)
    data = b"".join(layer.members)
    toc_json = estargz.encode_toc(layer.entries)
    with pytest.raises(FormatError):
        estargz.open(data + gz(toc_json) + gzip_footer(len(data)))
    with pytest.raises(FormatError, match="shorter than a tar header"):
        estargz.open(data + gz(b"tiny") + gzip_footer(len(data)))
    with pytest.raises(FormatError, match="gzip"):
        estargz.open(data + toc_json + gzip_footer(len(data)))  # not compressed at all


def test_toc_member_cut_short():
    layer = craft(FILES)
    data = b"".join(layer.members)
    member = toc_member(estargz.encode_toc(layer.entries))
    with pytest.raises(FormatError, match="gzip"):
        estargz.open(data + member[:-20] + gzip_footer(len(data)))


def test_toc_tar_entry_shorter_than_declared():
    layer = craft(FILES)
    toc_json = estargz.encode_toc(layer.entries)
    data = b"".join(layer.members)
    tar = ustar_header(TOC_NAME, 10_000) + toc_json  # no padding, no end-of-archive marker
    with pytest.raises(FormatError, match="truncated"):
        estargz.open(data + gz(tar) + gzip_footer(len(data)))


@pytest.mark.parametrize("size_field", [b"0000000001x\0", b"\x80" + bytes(10) + b"\x10", b"zzzzzzzzzzz\0"])
def test_toc_tar_header_with_bad_size_field(size_field):
    layer = craft(FILES)
    header = bytearray(ustar_header(TOC_NAME, 100))
    header[124:136] = size_field
    with pytest.raises(FormatError):
        estargz.open(assemble(layer.members, layer.entries, toc_header=bytes(header)))


BAD_TOCS = {
    "not-json": b"this is not json",
    "empty": b"",
    "truncated": b'{"version": 1, "entries": [{"name": "a", "type": "reg"',
    "invalid-utf8": b'{"version": 1, "entries": [{"name": "\xff", "type": "dir"}]}',
    "array": b'[{"name": "a", "type": "dir"}]',
    "string": b'"stargz"',
    "null": b"null",
    "version-string": b'{"version": "1", "entries": []}',
    "entries-object": b'{"version": 1, "entries": {"name": "a"}}',
    "entries-string": b'{"version": 1, "entries": "a"}',
    "entry-number": b'{"version": 1, "entries": [1]}',
    "entry-list": b'{"version": 1, "entries": [["a", "dir"]]}',
    "name-number": b'{"version": 1, "entries": [{"name": 1, "type": "dir"}]}',
    "type-bool": b'{"version": 1, "entries": [{"name": "a", "type": true}]}',
    "size-string": b'{"version": 1, "entries": [{"name": "a", "type": "reg", "size": "5"}]}',
    "size-fraction": b'{"version": 1, "entries": [{"name": "a", "type": "reg", "size": 1.5}]}',
    "size-bool": b'{"version": 1, "entries": [{"name": "a", "type": "reg", "size": true}]}',
    "size-negative": b'{"version": 1, "entries": [{"name": "a", "type": "reg", "size": -1}]}',
    "offset-object": b'{"version": 1, "entries": [{"name": "a", "type": "reg", "offset": {}}]}',
    "mode-too-big": b'{"version": 1, "entries": [{"name": "a", "type": "dir", "mode": 9223372036854775808}]}',
    "uid-too-small": b'{"version": 1, "entries": [{"name": "a", "type": "dir", "uid": -9223372036854775809}]}',
    "xattrs-list": b'{"version": 1, "entries": [{"name": "a", "type": "dir", "xattrs": ["x"]}]}',
    "xattr-number": b'{"version": 1, "entries": [{"name": "a", "type": "dir", "xattrs": {"user.x": 1}}]}',
    "xattr-not-base64": b'{"version": 1, "entries": [{"name": "a", "type": "dir", "xattrs": {"user.x": "!!"}}]}',
    "xattr-bad-padding": b'{"version": 1, "entries": [{"name": "a", "type": "dir", "xattrs": {"user.x": "dv8"}}]}',
    "digest-number": b'{"version": 1, "entries": [{"name": "a", "type": "reg", "digest": 5}]}',
    "chunk-first": b'{"version": 1, "entries": [{"name": "a", "type": "chunk", "chunkOffset": 4}]}',
    "chunk-after-dir": b'{"version": 1, "entries": [{"name": "d", "type": "dir"}, {"name": "d", "type": "chunk"}]}',
    "root-is-file": b'{"version": 1, "entries": [{"name": "./", "type": "reg"}]}',
    "dotdot-is-file": b'{"version": 1, "entries": [{"name": "..", "type": "symlink", "linkName": "x"}]}',
    "below-a-file": b'{"version": 1, "entries": [{"name": "f", "type": "reg", "digest": "'
                    + sha256(b"").encode() + b'"}, {"name": "f/g", "type": "dir"}]}',
}


@pytest.mark.parametrize("toc_json", BAD_TOCS.values(), ids=BAD_TOCS.keys())
def test_malformed_toc_json(toc_json):
    with pytest.raises(FormatError):
        estargz.open(assemble([], toc_json))
    with pytest.raises(FormatError):  # the digest is checked first, and it matches
        estargz.open(assemble([], toc_json), toc_digest=sha256(toc_json))


@pytest.mark.parametrize("toc_json", [
    b'{"version": 1, "entries": [{"name": "a", "type": "dir", "uid": 1e30}]}',
    b'{"version": 1, "entries": [{"name": "a", "type": "dir", "mode": 9.3e18}]}',
    b'{"version": 1, "entries": [{"name": "a", "type": "reg", "offset": -1e19}]}',
], ids=["uid-1e30", "mode-9.3e18", "offset--1e19"])
def test_toc_integral_float_out_of_int64_range(toc_json):
    """An integral float is range-checked like an integer: out of int64 is refused however spelled."""
    with pytest.raises(LimitError):
        estargz.open(assemble([], toc_json))


def test_huge_declared_toc_size():
    layer = craft(FILES)
    toc_json = estargz.encode_toc(layer.entries)
    for declared in (MAX_TOC_SIZE + 1, 1 << 33, 8**11 - 1):
        header = ustar_header(TOC_NAME, declared)
        with pytest.raises(LimitError, match="exceeds"):
            estargz.open(assemble(layer.members, toc_json, toc_header=header))


@pytest.fixture(scope="module")
def toc_bomb() -> bytes:
    """A 160 KB blob whose TOC member inflates to 160 MiB: a header declaring 1 GiB, then zeros."""
    member = zeros_member(MAX_TOC_SIZE + 10 * MiB, prefix=ustar_header(TOC_NAME, 1 << 30))
    assert len(member) < 200_000
    return member + gzip_footer(0)


def test_toc_gzip_bomb_is_refused(toc_bomb):
    with pytest.raises(LimitError):
        estargz.open(toc_bomb)


def test_toc_gzip_bomb_memory_is_bounded_by_the_header():
    """The TOC member is read header first: a huge declared size is refused without inflating it,
    and megabytes of zeros after a small TOC are refused after reading a bounded amount."""
    refused = zeros_member(32 * MiB, prefix=ustar_header(TOC_NAME, 1 << 30)) + gzip_footer(0)
    error, peak = peak_memory(lambda: estargz.open(refused))
    assert isinstance(error, LimitError)
    assert peak < 8 * MiB, f"refusing a 1 GiB TOC declaration took {peak / MiB:.0f} MiB"

    toc_json = estargz.encode_toc([TOCEntry(name="a", type="dir")])
    padded = zeros_member(32 * MiB, prefix=ustar_header(TOC_NAME, len(toc_json)) + toc_json) + gzip_footer(0)
    error, peak = peak_memory(lambda: estargz.open(padded))
    assert isinstance(error, FormatError) and "after the TOC" in str(error)
    assert peak < 8 * MiB, f"refusing a padded {len(toc_json)}-byte TOC took {peak / MiB:.0f} MiB"


# --------------------------------------------------------------------------------------------
# the chunk table
# --------------------------------------------------------------------------------------------

def tampered(change) -> bytes:
    """The crafted FILES layer with ``change(layer)`` applied to its TOC entries."""
    layer = craft(FILES)
    change(layer)
    return layer.blob()


@pytest.mark.parametrize("where", ["toc-offset", "past-toc", "past-blob", "negative", "chunk-past-toc",
                                   "negative-inner-offset"])
def test_chunk_offset_outside_the_data(where):
    def change(layer: Crafted) -> None:
        end = layer.data_size
        if where == "toc-offset":
            layer.entry("a.txt").offset = end
        elif where == "past-toc":
            layer.entry("a.txt").offset = end + 40
        elif where == "past-blob":
            layer.entry("dir/b.bin").offset = 1 << 40
        elif where == "negative":
            layer.entry("a.txt").offset = -1
        elif where == "chunk-past-toc":
            layer.entry("a.txt", "chunk", 1).offset = end + 1
        else:
            layer.entry("a.txt", "chunk", 0).inner_offset = -4
    with pytest.raises(FormatError, match="outside the data"):
        estargz.open(tampered(change))


def set_chunks(name: str, *chunks: tuple[int, int]):
    """Re-describe file ``name`` (13 bytes) with (chunkOffset, chunkSize) pairs, keeping its members."""
    def change(layer: Crafted) -> None:
        entries = [e for e in layer.entries if e.name == name]
        offsets = [e.offset for e in entries]
        first = layer.entries.index(entries[0])
        rest = [TOCEntry(name=name, type="chunk", offset=offsets[min(i, len(offsets) - 1)],
                         chunk_offset=off, chunk_size=size) for i, (off, size) in enumerate(chunks[1:], 1)]
        head = dataclasses.replace(entries[0], chunk_size=chunks[0][1], chunk_offset=chunks[0][0], chunk_digest="")
        layer.entries[first:first + len(entries)] = [head, *rest]
    return change


@pytest.mark.parametrize("chunks", [
    [(0, 4), (4, 4), (8, 4)],                 # 12 bytes for a 13-byte file
    [(0, 4), (4, 4), (8, 4), (12, 4)],        # 16 bytes
    [(0, 20)],                                # one chunk larger than the file
    [(0, 4), (5, 4), (9, 4)],                 # a gap
    [(0, 4), (2, 4), (6, 4), (10, 3)],        # overlap
    [(0, 4), (8, 4), (4, 4), (12, 1)],        # out of order
    [(0, 4), (4, 4), (8, 4), (12, 1), (14, 0)],  # a chunk past the end (its size would be -1)
    [(1, 4), (5, 4), (9, 4)],                 # the first chunk does not start at 0
    [(0, -4), (4, 4), (8, 4), (12, 1)],       # negative size
], ids=["short", "long", "one-too-big", "gap", "overlap", "unordered", "past-end", "first-at-1", "negative"])
def test_chunk_sizes_disagree_with_file_size(chunks):
    with pytest.raises(FormatError, match="chunks of"):
        estargz.open(tampered(set_chunks("a.txt", *chunks)))


def test_chunk_too_large_to_inflate():
    layer = craft(FILES, chunk_size=64)
    assert layer.entry("dir/b.bin").chunk_size == 0  # one chunk: the whole file
    layer.entry("dir/b.bin").size = 1 << 40
    with pytest.raises(LimitError, match="too large"):
        estargz.open(layer.blob())


def test_chunk_member_inflates_to_fewer_bytes_than_chunk_size():
    head = gz(ustar_header("f", 8))
    short, second = gz(b"ab"), gz(b"efgh")  # the first chunk should hold "abcd"
    entries = [
        TOCEntry(name="f", type="reg", size=8, offset=len(head), chunk_size=4, digest=sha256(b"abcdefgh")),
        TOCEntry(name="f", type="chunk", offset=len(head) + len(short), chunk_offset=4, chunk_size=4),
    ]
    with estargz.open(assemble([head, short, second], entries)) as reader:
        with pytest.raises(FormatError, match="fewer bytes"):
            reader.read("f")
        with pytest.raises(VerificationError, match="lies at"):
            reader.verify()
        with reader.open("f") as f:  # no chunk digests: the whole file is checked first
            f.seek(4)
            with pytest.raises(FormatError, match="fewer bytes"):
                f.read()
    # the last chunk before the TOC: nothing follows it to make up the difference
    entries = [TOCEntry(name="g", type="reg", size=4, offset=len(head), digest=sha256(b"abcd"))]
    with estargz.open(assemble([head, short], entries)) as reader:
        with pytest.raises(FormatError, match="fewer bytes"):
            reader.read("g")


def test_chunk_digest_mismatch():
    def change(layer: Crafted) -> None:
        layer.entry("a.txt", "chunk", 1).chunk_digest = sha256(b"nope")
    with estargz.open(tampered(change)) as reader:
        with reader.open("a.txt") as f:
            assert f.read(4) == b"hell"
            f.seek(8)
            with pytest.raises(VerificationError, match="chunk digest"):
                f.read(1)
        with pytest.raises(VerificationError):
            reader.read("a.txt")
        with pytest.raises(VerificationError):
            reader.verify()
        assert reader.read("dir/b.bin") == FILES["dir/b.bin"]


def test_first_chunk_digest_mismatch():
    def change(layer: Crafted) -> None:
        layer.entry("dir/b.bin", "reg").chunk_digest = sha256(b"other")
    with estargz.open(tampered(change)) as reader:
        with pytest.raises(VerificationError):
            reader.read("dir/b.bin")


def test_file_digest_mismatch():
    def change(layer: Crafted) -> None:
        layer.entry("a.txt").digest = sha256(b"something else")
    with estargz.open(tampered(change)) as reader:
        assert reader.read("a.txt") == FILES["a.txt"]  # each chunk is fine on its own
        with pytest.raises(VerificationError, match="digest mismatch"):
            reader.verify()


def test_empty_file_digest_mismatch():
    layer = craft({"e": b""})
    layer.entry("e").digest = sha256(b"x")
    with pytest.raises(VerificationError):
        estargz.open(layer.blob()).verify()


def test_file_without_any_digest_cannot_be_verified():
    def change(layer: Crafted) -> None:
        for entry in layer.entries:
            entry.digest = entry.chunk_digest = ""
    with estargz.open(tampered(change)) as reader:
        with pytest.raises(VerificationError, match="no digest"):
            reader.read("a.txt")
        with pytest.raises(VerificationError, match="no digest"):
            reader.verify()


def test_member_larger_than_its_chunk_is_read_only_up_to_the_chunk():
    """A chunk member that inflates to 64 MiB is not inflated past the 4 bytes the TOC asks for."""
    head = gz(ustar_header("z", 4))
    bomb = zeros_member(64 * MiB)
    entries = [TOCEntry(name="z", type="reg", size=4, offset=len(head), digest=sha256(bytes(4)))]
    with estargz.open(assemble([head, bomb], entries)) as reader:
        data, peak = peak_memory(lambda: reader.read("z"))
        assert data == bytes(4)
        assert peak < 4 * MiB


def test_huge_inner_offset_into_a_small_member():
    head = gz(ustar_header("f", 4))
    entries = [TOCEntry(name="f", type="reg", size=4, offset=len(head), inner_offset=1 << 50,
                        digest=sha256(b"abcd"))]
    with estargz.open(assemble([head, gz(b"abcd")], entries)) as reader:
        with pytest.raises(LimitError, match="inner offset"):
            reader.read("f")


def test_inner_offset_read_memory_is_bounded():
    """Reading a chunk at innerOffset N discards the N skipped bytes as they stream by: memory is
    bounded by the chunk size, not by the offset (here 32 MiB in a 32 KB blob)."""
    member = zeros_member(32 * MiB, suffix=b"abcd")
    entries = [TOCEntry(name="f", type="reg", size=4, offset=0, inner_offset=32 * MiB,
                        digest=sha256(b"abcd"))]
    with estargz.open(assemble([member], entries)) as reader:
        data, peak = peak_memory(lambda: reader.read("f"))
        assert data == b"abcd"
        assert peak < 8 * MiB, f"reading 4 bytes took {peak / MiB:.0f} MiB"


def test_two_chunks_claiming_the_same_member():
    """Go's VerifyTOC says "offset found twice"; here the first chunk's member run is empty."""
    def change(layer: Crafted) -> None:
        layer.entry("a.txt", "chunk", 0).offset = layer.entry("a.txt").offset
    with estargz.open(tampered(change)) as reader:
        with pytest.raises((FormatError, VerificationError)):
            reader.read("a.txt")
        with pytest.raises((FormatError, VerificationError)):
            reader.verify()


# --------------------------------------------------------------------------------------------
# names and links
# --------------------------------------------------------------------------------------------

def test_path_traversal_names_are_confined():
    files = {"../../etc/passwd": b"root:x:0:0", "/abs": b"absolute", "a/../../../b": b"b",
             "./c/./d//e": b"e", "x/../../y/..//z": b"z"}
    layer = craft(files)
    layer.entries.append(TOCEntry(name="../../hl", type="hardlink", link_name="../../../../etc/passwd"))
    with estargz.open(layer.blob()) as reader:
        names = [e.name for e in reader]
        assert names == ["etc/passwd", "abs", "b", "c/d/e", "z", "hl"]
        for name in names:
            assert not name.startswith("/") and ".." not in name.split("/")
        assert sorted(reader.lookup("").children) == ["abs", "b", "c", "etc", "hl", "z"]
        assert reader.read("etc/passwd") == b"root:x:0:0"
        assert reader.lookup("../../etc/passwd") is reader.lookup("/etc/passwd") is reader.lookup("etc/passwd")
        assert reader.read("abs") == b"absolute" and reader.read("/abs") == b"absolute"
        assert reader.read("c/d/e") == b"e" and reader.read("z") == b"z" and reader.read("b") == b"b"
        assert reader.lookup("hl") is reader.lookup("etc/passwd")
        assert reader.lookup("etc").is_dir() and list(reader.lookup("etc").children) == ["passwd"]
        assert "../etc" in reader and "etc/../../abs" in reader
        with pytest.raises(NotFoundError):
            reader.lookup("../../passwd")
        with pytest.raises(VerificationError, match="not in the tar stream"):
            reader.verify()  # the hardlink is in the TOC only


def test_dotdot_directory_becomes_the_root():
    entries = [TOCEntry(name="../", type="dir", mode=0o700), TOCEntry(name="../../x", type="dir")]
    with estargz.open(assemble([], entries)) as reader:
        assert reader.lookup("").mode == 0o700
        assert list(reader.lookup("").children) == ["x"]
        assert [e.name for e in reader] == ["x"]


@pytest.mark.parametrize("links", [
    [("a", "b"), ("b", "a")],
    [("a", "a")],
    [("a", "./b"), ("b", "/c"), ("c", "../a")],
], ids=["two", "self", "three"])
def test_hardlink_cycle(links):
    entries = [TOCEntry(name=name, type="hardlink", link_name=target) for name, target in links]
    with pytest.raises(FormatError, match="cycle"):
        estargz.open(assemble([], entries))


def test_hardlink_cycle_below_a_directory_name():
    entries = [TOCEntry(name="a", type="hardlink", link_name="b"),
               TOCEntry(name="b", type="hardlink", link_name="a"),
               TOCEntry(name="a/x", type="dir")]
    with pytest.raises(FormatError):
        estargz.open(assemble([], entries))


@pytest.mark.parametrize("target", ["missing", "dir/c.bin", "../../nothere", "a.txt/x"])
def test_hardlink_to_a_missing_target(target):
    def change(layer: Crafted) -> None:
        layer.entries.append(TOCEntry(name="hl", type="hardlink", link_name=target))
    with pytest.raises(FormatError, match="missing"):
        estargz.open(tampered(change))


def test_hardlink_chain_resolves():
    def change(layer: Crafted) -> None:
        layer.entries += [TOCEntry(name="h1", type="hardlink", link_name="h2"),
                          TOCEntry(name="h2", type="hardlink", link_name="./dir/b.bin")]
    with estargz.open(tampered(change)) as reader:
        assert reader.lookup("h1") is reader.lookup("dir/b.bin")
        assert reader.read("h1") == FILES["dir/b.bin"]
        assert reader.lookup("dir/b.bin").num_link == 3


def test_deeply_nested_name():
    """A name 5000 directories deep (in a 1 KB blob) gets its implicit parents without recursion."""
    name = "d/" * 5000 + "f"
    blob = assemble([], [TOCEntry(name=name, type="reg", digest=sha256(b""))])
    try:
        reader = estargz.open(blob)
    except LimitError:
        return
    assert reader.lookup(name).is_file()
    assert reader.read(name) == b""


# --------------------------------------------------------------------------------------------
# the writer's input
# --------------------------------------------------------------------------------------------

def gnu_sparse_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("ok.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"ok"))
        info = tarfile.TarInfo("sparse.img")
        info.type = tarfile.GNUTYPE_SPARSE
        tar.addfile(info)
    data = buf.getvalue()
    assert data[512 + 512 + 156:512 + 512 + 157] == b"S"
    return data


def pax_sparse_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("GNUSparseFile.0/sparse.img")
        info.size = 3
        info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                            "GNU.sparse.name": "sparse.img", "GNU.sparse.realsize": "3"}
        tar.addfile(info, io.BytesIO(b"abc"))
    return buf.getvalue()


def pax_global_tar(records: dict[str, str]) -> bytes:
    return make_tar(FILES, tarfile.PAX_FORMAT, pax_headers=records)


def git_archive_tar(files: dict[str, bytes]) -> bytes:
    """What ``git archive`` writes: a first 'g' entry named pax_global_header with one comment record."""
    record = b"52 comment=" + b"0123456789abcdef0123456789abcdef01234567" + b"\n"
    assert len(record) == 52
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("pax_global_header")
        info.type, info.size, info.mode = tarfile.XGLTYPE, len(record), 0o666
        tar.addfile(info, io.BytesIO(record))
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1700000000
            tar.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    assert data[156:157] == b"g" and data[:17] == b"pax_global_header"
    return data


def convert_bytes(tar: bytes, **options) -> bytes:
    out = io.BytesIO()
    estargz.convert(io.BytesIO(tar), out, **options)
    return out.getvalue()


def test_gnu_sparse_file_is_unsupported():
    with pytest.raises(UnsupportedInputError, match="sparse"):
        convert_bytes(gnu_sparse_tar())


def test_pax_sparse_file_is_unsupported():
    with pytest.raises(UnsupportedInputError, match="sparse"):
        convert_bytes(pax_sparse_tar())


@pytest.mark.parametrize("records", [{"foo": "bar"}, {"comment": "x", "mtime": "1700000000"},
                                     {"path": "renamed"}, {"SCHILY.xattr.user.a": "b"}])
def test_pax_global_header_with_other_records_is_unsupported(records):
    tar = pax_global_tar(records)
    assert tarfile.open(fileobj=io.BytesIO(tar)).pax_headers == records
    with pytest.raises(UnsupportedInputError, match="global"):
        convert_bytes(tar)


def test_git_archive_comment_header_converts():
    tar = git_archive_tar(FILES)
    with estargz.open(convert_bytes(tar)) as reader:
        assert [e.name for e in reader] == [".no.prefetch.landmark", "a.txt", "dir/b.bin"]
        assert reader.read("a.txt") == FILES["a.txt"]
        assert reader.read("dir/b.bin") == FILES["dir/b.bin"]
        assert "pax_global_header" not in reader
        reader.verify()
    with estargz.open(convert_bytes(pax_global_tar({"comment": "made by tarfile"}))) as reader:
        assert reader.read("a.txt") == FILES["a.txt"]


def truncated_tar(where: str) -> bytes:
    tar = make_tar({"small": b"x" * 100, "big": bytes(range(256)) * 8})
    if where == "payload":      # inside the 2048 payload bytes of "big"
        return tar[:512 + 512 + 512 + 1000]
    if where == "header":       # inside the header block of "big"
        return tar[:512 + 512 + 300]
    return tar[:512 + 512 + 512 + 2048 - 1]  # the last byte of the payload is missing


@pytest.mark.parametrize("where", ["payload", "header", "last-byte"])
def test_truncated_input_tar(where):
    with pytest.raises(FormatError):
        convert_bytes(truncated_tar(where))


@pytest.mark.parametrize("where", ["payload", "header"])
def test_truncated_compressed_input_tar(where):
    import gzip
    whole = gzip.compress(make_tar({"small": b"x" * 100, "big": bytes(range(256)) * 8}))
    cut = whole[:len(whole) // 2] if where == "payload" else whole[:-4]
    with pytest.raises(FormatError):
        convert_bytes(cut)


def test_input_tar_with_bad_header_checksum():
    tar = bytearray(make_tar(FILES))
    tar[0] ^= 0x01  # the name of the first entry, which its checksum covers
    with pytest.raises(FormatError, match="checksum"):
        convert_bytes(bytes(tar))


@pytest.mark.parametrize("source, error", [
    (gnu_sparse_tar, UnsupportedInputError),
    (lambda: pax_global_tar({"foo": "bar"}), UnsupportedInputError),
    (lambda: truncated_tar("payload"), FormatError),
    (lambda: truncated_tar("header"), FormatError),
], ids=["sparse", "pax-global", "truncated-payload", "truncated-header"])
def test_failed_conversion_leaves_no_files(tmp_path, source, error):
    src_dir, out_dir = tmp_path / "in", tmp_path / "out"
    src_dir.mkdir()
    out_dir.mkdir()
    src = src_dir / "layer.tar"
    src.write_bytes(source())
    with pytest.raises(error):
        estargz.convert(src, out_dir / "layer.esgz", threads=2)
    assert os.listdir(out_dir) == []
    assert os.listdir(src_dir) == ["layer.tar"]

    # an existing output file is left as it was
    (out_dir / "layer.esgz").write_bytes(b"previous")
    with pytest.raises(error):
        estargz.convert(str(src), str(out_dir / "layer.esgz"))
    assert os.listdir(out_dir) == ["layer.esgz"]
    assert (out_dir / "layer.esgz").read_bytes() == b"previous"


def test_successful_conversion_to_a_path_leaves_only_the_output(tmp_path):
    src = tmp_path / "layer.tar"
    src.write_bytes(make_tar(FILES))
    result = estargz.convert(src, tmp_path / "layer.esgz", chunk_size=4)
    assert sorted(os.listdir(tmp_path)) == ["layer.esgz", "layer.tar"]
    blob = (tmp_path / "layer.esgz").read_bytes()
    assert (len(blob), sha256(blob)) == (result.blob_size, result.blob_digest)
    assert estargz.open(blob, toc_digest=result.toc_digest).read("a.txt") == FILES["a.txt"]


def _unpacked(reader: estargz.Reader) -> bytes:
    out = io.BytesIO()
    reader.unpack(out)
    return out.getvalue()
