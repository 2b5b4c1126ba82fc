"""tar-split JSON lines (estargz.tarsplit) against the containers/storage vectors and Go's output.

Expected bytes come from tests/data/zstd-chunked-cs/ (a copy of the project's vectors: the
tar-split of input.tar written by the current containers/storage writer with go1.19) and from
GO_LINES below, printed by tar-split 0.11.2's JSON packer built with Debian's go1.19.8.
"""

from __future__ import annotations

import base64
import json
import os
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from estargz.errors import (
    FormatError,
    LimitError,
    UnsupportedInputError,
    VerificationError,
)
from estargz.gojson import quote
from estargz.tarsplit import (
    FILE_TYPE,
    MAX_TRAILING_SEGMENT,
    SEGMENT_TYPE,
    TarSplitEntry,
    TarSplitWriter,
    crc64_iso,
    decode_entries,
    encode_entry,
    go_clean,
    iter_tar,
    rebuild_tar,
)
from estargz.tarstream import iter_entries

DATA = Path(__file__).parent / "data" / "zstd-chunked-cs"
INPUT = (DATA / "input.tar").read_bytes()
LATEST = (DATA / "latest.tarsplit.jsonl").read_bytes()
SCALE = float(os.environ.get("ESTARGZ_PROPERTY_SCALE", "1"))
PROPERTY = settings(max_examples=max(1, round(100 * SCALE)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# storage.NewJSONPacker (tar-split 0.11.2, go1.19.8): file records named GO_NAMES[i] with size i and
# payload 01..07 i (nil for i = 0), then segments b"\x00\xff<>" and b"", then a nameless empty file.
GO_NAMES = [b"plain", b'a"b\\c', b"\x00\x01\x07\x08\x09\x0a\x0b\x0c\x0d\x1b\x1f", b"<&>",
            "\u2028\u2029".encode(), "\x7f/é€😀\ufffd".encode(), b"bad\xff\xfe\xc3", b"\xed\xa0\x80",
            b"tab\there"]
GO_LINES = [
    b'{"type":1,"name":"plain","payload":null,"position":0}\n',
    b'{"type":1,"name":"a\\"b\\\\c","size":1,"payload":"AQIDBAUGBwE=","position":1}\n',
    b'{"type":1,"name":"\\u0000\\u0001\\u0007\\u0008\\t\\n\\u000b\\u000c\\r\\u001b\\u001f","size":2,'
    b'"payload":"AQIDBAUGBwI=","position":2}\n',
    b'{"type":1,"name":"\\u003c\\u0026\\u003e","size":3,"payload":"AQIDBAUGBwM=","position":3}\n',
    b'{"type":1,"name":"\\u2028\\u2029","size":4,"payload":"AQIDBAUGBwQ=","position":4}\n',
    b'{"type":1,"name":"\x7f/\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xef\xbf\xbd","size":5,'
    b'"payload":"AQIDBAUGBwU=","position":5}\n',
    b'{"type":1,"name_raw":"YmFk//7D","size":6,"payload":"AQIDBAUGBwY=","position":6}\n',
    b'{"type":1,"name_raw":"7aCA","size":7,"payload":"AQIDBAUGBwc=","position":7}\n',
    b'{"type":1,"name":"tab\\there","size":8,"payload":"AQIDBAUGBwg=","position":8}\n',
    b'{"type":2,"payload":"AP88Pg==","position":9}\n',
    b'{"type":2,"payload":"","position":10}\n',
    b'{"type":1,"payload":null,"position":11}\n',
]


def _go_entries() -> list[TarSplitEntry]:
    entries = [TarSplitEntry(FILE_TYPE, bytes([1, 2, 3, 4, 5, 6, 7, i]) if i else None,
                             name=name, size=i, position=i) for i, name in enumerate(GO_NAMES)]
    entries.append(TarSplitEntry(SEGMENT_TYPE, b"\x00\xff<>", position=9))
    entries.append(TarSplitEntry(SEGMENT_TYPE, b"", position=10))
    entries.append(TarSplitEntry(FILE_TYPE, None, position=11))
    return entries


def crc64_reference(data: bytes, crc: int = 0) -> int:
    """Bitwise CRC-64/ISO as Go's hash/crc64 computes it (reflected 0xD800000000000000)."""
    crc ^= 0xFFFFFFFFFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xD800000000000000 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFFFFFFFFFF


# --- CRC-64/ISO ------------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "expected"), [
    (b"", 0),
    (b"hello world\n", 0x44E9CF3F572AD9AC),  # spec §6.2 check value
    (b"123456789", 0xB90956C775A41001),  # CRC-64/GO-ISO catalogue check value
    (bytes(1000), 0x3FDF09CF356ACF35),  # go1.19 crc64.Checksum
])
def test_crc64_check_values(data: bytes, expected: int) -> None:
    assert crc64_iso(data) == expected
    assert crc64_iso(memoryview(data)) == crc64_iso(bytearray(data)) == expected
    assert crc64_reference(data) == expected


@PROPERTY
@given(st.binary(max_size=300), st.binary(max_size=300))
def test_crc64_is_incremental(a: bytes, b: bytes) -> None:
    assert crc64_iso(b, crc64_iso(a)) == crc64_iso(a + b) == crc64_reference(a + b)
    assert crc64_reference(b, crc64_reference(a)) == crc64_reference(a + b)


def test_crc_of_the_vector_files() -> None:
    entries = decode_entries(LATEST)
    assert entries[3].name == b"dir/hello.txt"
    assert entries[3].payload == bytes.fromhex("44e9cf3f572ad9ac")  # "hello world\n"
    assert entries[3].crc == crc64_iso(b"hello world\n")


# --- encoding --------------------------------------------------------------------------------


def test_encoding_matches_go119() -> None:
    entries = _go_entries()
    assert [encode_entry(e, short_bf=False) for e in entries] == GO_LINES


def test_go122_short_escapes() -> None:
    entries = _go_entries()
    modern = [encode_entry(e) for e in entries]
    assert modern[2] == GO_LINES[2].replace(b"\\u0008", b"\\b").replace(b"\\u000c", b"\\f")
    assert modern[:2] + modern[3:] == GO_LINES[:2] + GO_LINES[3:]


def test_decoding_go_lines() -> None:
    entries = decode_entries(b"".join(GO_LINES))
    assert entries == _go_entries()[:10] + [TarSplitEntry(SEGMENT_TYPE, b"", position=10),
                                            TarSplitEntry(FILE_TYPE, None, position=11)]


def test_latest_vector_round_trips_byte_for_byte() -> None:
    entries = decode_entries(LATEST)
    assert len(entries) == 25
    assert b"".join(encode_entry(e) for e in entries) == LATEST
    assert b"".join(encode_entry(e, short_bf=False) for e in entries) == LATEST
    assert sum(len(e.payload) if e.type == SEGMENT_TYPE else e.size for e in entries) == len(INPUT)


names = st.binary(min_size=1, max_size=40) | st.text(max_size=20).map(
    lambda s: s.encode("utf-8", "surrogatepass"))


@st.composite
def entry_lists(draw: st.DrawFn) -> list[TarSplitEntry]:
    out: list[TarSplitEntry] = []
    seen: set[bytes] = set()
    for _ in range(draw(st.integers(0, 8))):
        if draw(st.booleans()):
            out.append(TarSplitEntry(SEGMENT_TYPE, draw(st.binary(max_size=600)), position=len(out)))
            continue
        name = draw(names)
        if go_clean(name) in seen:
            continue
        seen.add(go_clean(name))
        size = draw(st.integers(0, 1 << 40))
        crc = draw(st.integers(0, (1 << 64) - 1)).to_bytes(8, "big") if size else None
        out.append(TarSplitEntry(FILE_TYPE, crc, name=name, size=size, position=len(out)))
    return out


@PROPERTY
@given(entry_lists(), st.booleans())
def test_encode_decode_round_trip(entries: list[TarSplitEntry], short_bf: bool) -> None:
    data = b"".join(encode_entry(e, short_bf=short_bf) for e in entries)
    assert decode_entries(data) == entries
    for entry, line in zip(entries, data.splitlines()):
        record = json.loads(line)  # any JSON reader agrees on the meaning
        assert list(record)[0] == "type" and list(record)[-2:] == ["payload", "position"]
        if entry.type == FILE_TYPE and entry.name:
            try:
                text = entry.name.decode("utf-8")
            except UnicodeDecodeError:
                assert base64.b64decode(record["name_raw"]) == entry.name
            else:
                assert record["name"] == text
                if short_bf:  # Go >= 1.22 = Python's escaping plus the HTML-safe and U+2028/9 ones
                    expected = json.dumps(text, ensure_ascii=False)
                    for char in "<>&\u2028\u2029":
                        expected = expected.replace(char, f"\\u{ord(char):04x}")
                    assert quote(text, short_bf=True) == expected


# --- the records of input.tar ------------------------------------------------------------------


def _records_for(tar: bytes, **kwargs: object) -> TarSplitWriter:
    """Feed a TarSplitWriter from the raw layout of ``tar`` (header groups, contents, the rest)."""
    import io

    writer = TarSplitWriter(**kwargs)
    end = 0
    for entry in iter_entries(io.BytesIO(tar)):
        content = tar[entry.data_offset:entry.data_offset + entry.size]
        writer.segment(tar[end:entry.data_offset])
        writer.file(entry.name.encode("utf-8", "surrogateescape"), entry.size,
                    crc64_iso(content) if entry.size else None)
        end = entry.data_offset + entry.size
    eoa = end + (-end % 512) + 1024  # the Go reader consumes the padding and two zero blocks
    writer.segment(tar[end:eoa])
    writer.trailing(tar[eoa:])
    return writer


def test_records_for_input_tar() -> None:
    ours = _records_for(INPUT).getvalue().splitlines(keepends=True)
    theirs = LATEST.splitlines(keepends=True)
    # Identical up to the end-of-archive segment; Go split the 8704 trailing bytes 2560 + 6144.
    assert ours[:23] == theirs[:23]
    assert ours[23] == b'{"type":2,"payload":"%s","position":23}\n' % base64.b64encode(INPUT[62976:])
    assert len(ours) == 24
    ours_entries, theirs_entries = decode_entries(b"".join(ours)), decode_entries(LATEST)
    assert b"".join(e.payload for e in ours_entries[23:]) == b"".join(e.payload for e in theirs_entries[23:])


def test_writer_counters_and_streaming() -> None:
    lines: list[bytes] = []
    streamed = _records_for(INPUT, write=lines.append)
    streamed.close()
    buffered = _records_for(INPUT)
    data = buffered.getvalue()
    assert b"".join(lines) == data
    assert streamed.size == buffered.size == len(data)
    assert streamed.tar_size == len(INPUT)
    assert streamed.position == 24


def test_trailing_is_cut_in_mib_pieces_whatever_the_feeding() -> None:
    trailing = random.Random(2).randbytes(2 * MAX_TRAILING_SEGMENT + 1000)
    a = TarSplitWriter()
    a.trailing(trailing)
    b = TarSplitWriter()
    for i in range(0, len(trailing), 300_001):
        b.trailing(memoryview(trailing)[i:i + 300_001])
    assert a.getvalue() == b.getvalue()
    entries = decode_entries(a.getvalue())
    assert [len(e.payload) for e in entries] == [MAX_TRAILING_SEGMENT, MAX_TRAILING_SEGMENT, 1000]


def test_writer_misuse() -> None:
    writer = TarSplitWriter()
    writer.segment(b"x" * 512)
    writer.file(b"./a/", 0)
    with pytest.raises(UnsupportedInputError, match="duplicates"):
        writer.file(b"a", 3, 7)
    with pytest.raises(ValueError):
        writer.file(b"b", 3)  # a CRC is needed
    with pytest.raises(LimitError):
        writer.file(b"c", -1)
    writer.trailing(b"\0")
    with pytest.raises(ValueError):
        writer.segment(b"y")
    assert writer.getvalue().count(b"\n") == 3
    with pytest.raises(ValueError):
        writer.trailing(b"z")


def test_empty_segments_are_skipped() -> None:
    writer = TarSplitWriter()
    writer.segment(b"")
    writer.trailing(b"")
    assert writer.getvalue() == b""


# --- rebuilding ------------------------------------------------------------------------------


def _contents(tar: bytes) -> dict[bytes, bytes]:
    import io

    return {e.name.encode("utf-8", "surrogateescape"): tar[e.data_offset:e.data_offset + e.size]
            for e in iter_entries(io.BytesIO(tar))}


def test_rebuild_input_tar_from_latest_vector() -> None:
    contents = _contents(INPUT)
    asked: list[bytes] = []

    def content(entry: TarSplitEntry) -> bytes:
        asked.append(entry.name)
        return contents[entry.name]

    assert rebuild_tar(decode_entries(LATEST), content) == INPUT
    assert asked == [name for name, data in contents.items() if data]


def test_rebuild_from_pieces() -> None:
    contents = _contents(INPUT)

    def content(entry: TarSplitEntry) -> list[memoryview]:
        data = memoryview(contents[entry.name])
        return [data[i:i + 1000] for i in range(0, len(data), 1000)]

    assert b"".join(iter_tar(decode_entries(LATEST), content)) == INPUT


@pytest.mark.parametrize(("change", "message"), [
    (lambda data: data[:-1] + bytes([data[-1] ^ 1]), "CRC-64"),
    (lambda data: data[:-1], "bytes"),
    (lambda data: data + b"!", "more than"),
])
def test_rebuild_verifies_each_file(change, message: str) -> None:  # noqa: ANN001
    contents = _contents(INPUT)

    def content(entry: TarSplitEntry) -> bytes:
        data = contents[entry.name]
        return change(data) if entry.name == b"dir/chunked.bin" else data

    with pytest.raises(VerificationError, match=message):
        rebuild_tar(decode_entries(LATEST), content)


def test_rebuild_refuses_a_file_without_crc() -> None:
    with pytest.raises(FormatError):
        rebuild_tar([TarSplitEntry(FILE_TYPE, None, name=b"a", size=3)], lambda e: b"abc")
    with pytest.raises(FormatError):
        rebuild_tar([TarSplitEntry(7, b"")], lambda e: b"")


# --- hostile input ---------------------------------------------------------------------------


@pytest.mark.parametrize("line", [
    b"{",
    b"[]",
    b'"x"',
    b"",  # an empty line in the middle
    b'{"type":1,"name":"a","payload":null,"position":0} x',
    b'{"type":3,"payload":null,"position":0}',
    b'{"type":"1","payload":null,"position":0}',
    b'{"type":true,"payload":null,"position":0}',
    b'{"type":1.0,"payload":null,"position":0}',
    b'{"payload":null,"position":0}',
    b'{"type":2,"payload":"@@@","position":0}',
    b'{"type":2,"payload":"AA","position":0}',
    b'{"type":2,"payload":7,"position":0}',
    b'{"type":2,"payload":"","position":1}',
    b'{"type":2,"payload":"","position":"0"}',
    b'{"type":1,"name":"a","size":-1,"payload":null,"position":0}',
    b'{"type":1,"name":"a","size":1.5,"payload":null,"position":0}',
    b'{"type":1,"name":"a","size":3,"payload":null,"position":0}',
    b'{"type":1,"name":"a","size":3,"payload":"AAEC","position":0}',
    b'{"type":1,"name":7,"payload":null,"position":0}',
    b'{"type":1,"name_raw":"!","payload":null,"position":0}',
    b'{"type":1,"name":"a","size":NaN,"payload":null,"position":0}',
    b'\xff{"type":2,"payload":"","position":0}',
])
def test_hostile_records(line: bytes) -> None:
    with pytest.raises(FormatError):
        decode_entries(line + b"\n" + b'{"type":2,"payload":"","position":1}\n')


def test_out_of_range_size() -> None:
    with pytest.raises(LimitError):
        decode_entries(b'{"type":1,"name":"a","size":9223372036854775808,"payload":"AAAAAAAAAAA=","position":0}')


def test_duplicate_paths_are_rejected() -> None:
    data = (b'{"type":1,"name":"./dir/","payload":null,"position":0}\n'
            b'{"type":1,"name":"dir","payload":null,"position":1}\n')
    with pytest.raises(FormatError, match="duplicate"):
        decode_entries(data)


def test_lenient_forms_go_accepts() -> None:
    data = (b' {"TYPE":2,"Payload":"AA==","position":0} \n'
            b'{"type":1,"name":"x","size":1,"payload":"AAAAAAAAAAE=","position":1,"extra":[1,{}]}')
    entries = decode_entries(data)  # case-insensitive keys, unknown keys, no final newline
    assert entries == [TarSplitEntry(SEGMENT_TYPE, b"\0", position=0),
                       TarSplitEntry(FILE_TYPE, bytes(7) + b"\1", name=b"x", size=1, position=1)]
    assert decode_entries(b"") == []


@pytest.mark.parametrize(("path", "cleaned"), [
    (b"", b"."), (b"./a/", b"a"), (b"a//b/./c/..", b"a/b"), (b"/../a", b"/a"), (b"a/../..", b".."),
    (b"../../a", b"../../a"), (b"/", b"/"), (b"root/.pyenv/a.py", b"root/.pyenv/a.py"), (b"..a/b..", b"..a/b.."),
    (b"a/.", b"a"), (b"a/..", b"."), (b"a/b/", b"a/b"), (b"//a", b"/a"), (b"/a", b"/a"), (b".", b"."),
    (b"..", b".."), (b"a/./b", b"a/b"), (b".a/..b/...", b".a/..b/..."),
])
def test_go_clean(path: bytes, cleaned: bytes) -> None:
    assert go_clean(path) == cleaned
