"""The containers/storage TOC (estargz.cstoc) against the vectors and json-iterator's output.

tests/data/zstd-chunked-cs/ holds the TOCs written by containers/storage HEAD and 1.43.0 for
input.tar (exact bytes). GO_TOC and the time tables below were printed by Debian's go1.19.8 with
json-iterator 1.1.12 (``ConfigCompatibleWithStandardLibrary``, the writer's configuration) and
``time.Parse(time.RFC3339, ...)`` (the reader's parser).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from estargz import cstoc
from estargz.cstoc import (
    GO_ZERO_TIME,
    CSTOCEntry,
    decode_cs_toc,
    encode_cs_toc,
    format_rfc3339nano,
    parse_rfc3339,
)
from estargz.errors import FormatError, LimitError

DATA = Path(__file__).parent / "data" / "zstd-chunked-cs"
LATEST = (DATA / "latest.toc.json").read_bytes()
V143 = (DATA / "v1.43.toc.json").read_bytes()
SCALE = float(os.environ.get("ESTARGZ_PROPERTY_SCALE", "1"))
PROPERTY = settings(max_examples=max(1, round(100 * SCALE)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
D1 = "sha256:" + "1" * 64


def _esc(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


# --- the vectors -----------------------------------------------------------------------------


@pytest.mark.parametrize("data", [LATEST, V143], ids=["latest", "v1.43"])
def test_vectors_round_trip_byte_for_byte(data: bytes) -> None:
    version, entries, tar_split_digest = decode_cs_toc(data)
    assert version == 1 and len(entries) == 16
    assert encode_cs_toc(entries, tar_split_digest) == data


def test_latest_vector_values() -> None:
    _, entries, tar_split_digest = decode_cs_toc(LATEST)
    assert tar_split_digest == "sha256:48d0d07c0527524fcd3404e3a56d4b77ca5d2736be8d16a190eccf3e16e61514"
    by_name = {(e.name, e.type, e.chunk_offset): e for e in entries}
    xattr = by_name[("dir/xattr<&>.txt", "reg", 0)]
    assert xattr.modtime == (1700000000, 123456789)
    assert xattr.xattrs == {"user.a": b"first", "user.b": b"second"}
    assert xattr.accesstime is None and xattr.changetime is None
    chunked = by_name[("dir/chunked.bin", "reg", 0)]
    assert (chunked.size, chunked.offset, chunked.end_offset, chunked.chunk_size) == (51000, 273, 48366, 1525)
    zeros = by_name[("dir/chunked.bin", "chunk", 24000)]
    assert (zeros.chunk_type, zeros.chunk_size, zeros.offset) == ("zeros", 3000, 24315)
    device = by_name[("dir/null", "char", 0)]
    assert (device.dev_major, device.dev_minor, device.mode) == (1, 3, 0o666)
    assert by_name[("dir/link", "symlink", 0)].link_name == "chunked.bin"
    assert by_name[("dir/café", "reg", 0)].name == "dir/café"


def test_v143_vector_values() -> None:
    _, entries, tar_split_digest = decode_cs_toc(V143)
    assert tar_split_digest == ""
    assert entries[0].accesstime == entries[0].changetime == GO_ZERO_TIME
    assert all(e.accesstime == GO_ZERO_TIME for e in entries if e.type != "chunk")
    # Apart from the zero times and the digest the two TOCs hold the same entries.
    _, latest, _ = decode_cs_toc(LATEST)
    for entry in entries:
        if entry.type != "chunk":
            entry.accesstime = entry.changetime = None
    assert entries == latest


# --- json-iterator's exact bytes -------------------------------------------------------------

GO_TOC = (
    b'{"version":1,"entries":[{"type":"reg","name":"\\u0000\\u0001\\u0007\\u0008\\t\\n\\u000b\\u000c\\r'
    b'\\u001b\\u001f\\u003c\\u0026\\u003ebad\\ufffd\\ufffd\\ufffd","linkName":"\\u2028\\u2029","mode":2541,'
    b'"size":5,"uid":-1,"gid":7,"modtime":"2023-11-14T22:13:20.123456789Z","accesstime":'
    b'"1970-01-01T00:00:00Z","changetime":"0001-01-01T00:00:00Z","devMajor":1,"devMinor":2,"xattrs":'
    b'{"\\u0000":"AA==","security.\\u003cx\\u003e":"eA==","user.a\\ufffd":"","user.b":"Yg==",'
    b'"\xc3\xa9a":"Ag==","\\ufffdx":"AQ==","\xef\xbf\xbdz":"Aw=="},"digest":"sha256:00","offset":1,'
    b'"endOffset":2,"chunkSize":3,"chunkOffset":4,"chunkDigest":"sha256:11","chunkType":"zeros"},'
    b'{"type":"dir","name":""},{"type":"reg","name":"t","modtime":"0000-01-01T00:00:00Z",'
    b'"accesstime":"9999-12-31T23:59:59.999999999Z","changetime":"2023-11-14T22:13:20.5Z"},'
    b'{"type":"reg","name":"n","modtime":"1969-12-31T23:59:59.0000001Z"}],"tarSplitDigest":"sha256:ab"}'
)


def test_encoding_matches_json_iterator() -> None:
    entries = [
        CSTOCEntry(
            "reg", _esc(b"\x00\x01\x07\x08\x09\x0a\x0b\x0c\x0d\x1b\x1f<&>bad\xff\xfe\xc3"),
            link_name="\u2028\u2029", mode=0o4755, size=5, uid=-1, gid=7,
            modtime=(1700000000, 123456789), accesstime=(0, 0), changetime=GO_ZERO_TIME,
            dev_major=1, dev_minor=2,
            xattrs={"user.b": b"b", _esc(b"user.a\xff"): b"", "security.<x>": b"x", "\x00": b"\x00",
                    _esc(b"\x80x"): b"\x01", "éa": b"\x02", "\ufffdz": b"\x03"},
            digest="sha256:00", offset=1, end_offset=2, chunk_size=3, chunk_offset=4,
            chunk_digest="sha256:11", chunk_type="zeros"),
        CSTOCEntry("dir", ""),
        CSTOCEntry("reg", "t", modtime=(-62167219200, 0), accesstime=(253402300799, 999999999),
                   changetime=(1700000000, 500000000)),
        CSTOCEntry("reg", "n", modtime=(-1, 100), xattrs={}),
    ]
    assert encode_cs_toc(entries, "sha256:ab") == GO_TOC


def test_empty_toc_is_null() -> None:
    assert encode_cs_toc([]) == b'{"version":1,"entries":null}'
    assert encode_cs_toc([], D1) == b'{"version":1,"entries":null,"tarSplitDigest":"%s"}' % D1.encode()
    assert decode_cs_toc(b'{"version":1,"entries":null}') == (1, [], "")


def test_names_with_invalid_utf8_become_replacement_characters() -> None:
    data = encode_cs_toc([CSTOCEntry("reg", _esc(b"a\xffb"))])
    assert data == b'{"version":1,"entries":[{"type":"reg","name":"a\\ufffdb"}]}'
    assert decode_cs_toc(data)[1][0].name == "a\ufffdb"
    # Raw invalid bytes in the JSON itself are kept as surrogate escapes.
    assert decode_cs_toc(b'{"entries":[{"type":"reg","name":"a\xffb"}]}')[1][0].name == _esc(b"a\xffb")


# --- times -----------------------------------------------------------------------------------

GO_TIMES = [  # time.Unix(s, ns).UTC().MarshalJSON(), go1.19.8
    (0, 0, "1970-01-01T00:00:00Z"),
    (1700000000, 10, "2023-11-14T22:13:20.00000001Z"),
    (1700000000, 120000000, "2023-11-14T22:13:20.12Z"),
    (-62135596800, 0, "0001-01-01T00:00:00Z"),
    (-62167219200, 0, "0000-01-01T00:00:00Z"),
    (253402300799, 999999999, "9999-12-31T23:59:59.999999999Z"),
    (951782400, 0, "2000-02-29T00:00:00Z"),
    (-2208988800, 1, "1900-01-01T00:00:00.000000001Z"),
]


@pytest.mark.parametrize(("seconds", "nanos", "text"), GO_TIMES)
def test_format_rfc3339nano(seconds: int, nanos: int, text: str) -> None:
    assert format_rfc3339nano(seconds, nanos) == text
    assert parse_rfc3339(text) == (seconds, nanos)


def test_format_normalizes_nanoseconds() -> None:
    assert format_rfc3339nano(1, 1_500_000_000) == "1970-01-01T00:00:02.5Z"
    assert format_rfc3339nano(0, -1) == "1969-12-31T23:59:59.999999999Z"


@pytest.mark.parametrize("seconds", [-62167219201, 253402300800])
def test_years_outside_0_9999_are_refused(seconds: int) -> None:
    with pytest.raises(LimitError):
        format_rfc3339nano(seconds)
    with pytest.raises(LimitError):
        encode_cs_toc([CSTOCEntry("reg", "a", modtime=(seconds, 0))])


GO_PARSE = [  # time.Parse(time.RFC3339, s), go1.19.8: (s, unix seconds, nanoseconds) or None
    ("2023-11-14T22:13:20Z", 1700000000, 0),
    ("2023-11-14T17:13:20-05:00", 1700000000, 0),
    ("2023-11-14T22:13:20.1234567891Z", 1700000000, 123456789),
    ("2024-02-29T00:00:00Z", 1709164800, 0),
    ("2023-11-14T22:13:20+24:00", 1699913600, 0),
    ("2023-11-14T22:13:20+23:59", 1699913660, 0),
    ("0000-01-01T00:00:00Z", -62167219200, 0),
    ("2023-11-14T22:13:20,5Z", 1700000000, 500000000),
    ("2023-11-14T22:13:20.5+01:00", 1699996400, 500000000),
    ("2023-11-14t22:13:20Z", None, None),
    ("2023-11-14T22:13:20z", None, None),
    ("2023-02-29T00:00:00Z", None, None),
    ("2023-11-14T24:00:00Z", None, None),
    ("2023-11-14T22:13:60Z", None, None),
    ("2023-11-14T22:13:20.Z", None, None),
    ("2023-11-14 22:13:20Z", None, None),
    ("2023-11-14T22:13:20+0500", None, None),
    ("+2023-11-14T22:13:20Z", None, None),
    ("2023-1-14T22:13:20Z", None, None),
]


@pytest.mark.parametrize(("text", "seconds", "nanos"), GO_PARSE)
def test_parse_rfc3339_like_go(text: str, seconds: int | None, nanos: int | None) -> None:
    if seconds is None:
        with pytest.raises(FormatError):
            parse_rfc3339(text)
    else:
        assert parse_rfc3339(text) == (seconds, nanos)


def test_parse_refuses_non_ascii_digits() -> None:
    with pytest.raises(FormatError):
        parse_rfc3339("２023-11-14T22:13:20Z")


times = st.tuples(st.integers(-62167219200, 253402300799), st.integers(0, 999_999_999))


@PROPERTY
@given(times)
def test_time_round_trip_and_datetime_agreement(when: tuple[int, int]) -> None:
    seconds, nanos = when
    text = format_rfc3339nano(seconds, nanos)
    assert parse_rfc3339(text) == when
    if seconds >= -62135596800:  # datetime starts at year 1
        moment = dt.datetime(1970, 1, 1) + dt.timedelta(seconds=seconds)
        assert text[:19] == moment.isoformat()
    fraction = text[19:-1]
    assert fraction == ("." + f"{nanos:09d}".rstrip("0") if nanos else "")


@PROPERTY
@given(times, st.integers(-24 * 60, 24 * 60))
def test_parse_applies_zone_offsets(when: tuple[int, int], offset_minutes: int) -> None:
    seconds, nanos = when
    try:
        local = format_rfc3339nano(seconds + offset_minutes * 60, nanos)
    except LimitError:
        return
    sign = "-" if offset_minutes < 0 else "+"
    hours, minutes = divmod(abs(offset_minutes), 60)
    assert parse_rfc3339(f"{local[:-1]}{sign}{hours:02d}:{minutes:02d}") == when


# --- round trips -----------------------------------------------------------------------------

plain_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
digests = st.sampled_from(["", D1, "sha512:" + "a" * 128])
ints = st.integers(-(1 << 63), (1 << 63) - 1)
naturals = st.integers(0, (1 << 63) - 1)
optional_times = st.none() | times


@st.composite
def toc_entries(draw: st.DrawFn) -> list[CSTOCEntry]:
    out = []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["reg", "dir", "symlink", "hardlink", "char", "block", "fifo"]))
        out.append(CSTOCEntry(
            kind, draw(plain_text), draw(plain_text), draw(ints), draw(naturals), draw(ints),
            draw(ints), draw(optional_times), draw(optional_times), draw(optional_times), draw(ints),
            draw(ints), draw(st.dictionaries(plain_text, st.binary(max_size=8), max_size=3)),
            draw(digests), draw(naturals), draw(naturals), draw(naturals), draw(naturals),
            draw(digests), draw(st.sampled_from(["", "zeros"]))))
        if kind == "reg":
            for _ in range(draw(st.integers(0, 2))):
                out.append(CSTOCEntry("chunk", out[-1].name, offset=draw(naturals),
                                      chunk_size=draw(naturals), chunk_offset=draw(naturals),
                                      chunk_digest=draw(digests)))
    return out


@PROPERTY
@given(toc_entries(), digests)
def test_encode_decode_round_trip(entries: list[CSTOCEntry], tar_split_digest: str) -> None:
    data = encode_cs_toc(entries, tar_split_digest)
    assert decode_cs_toc(data) == (1, entries, tar_split_digest)
    document = json.loads(data)  # plain JSON, keys in Go order, omitempty
    for raw, entry in zip(document["entries"] or [], entries):
        keys = list(raw)
        assert keys[:2] == ["type", "name"]
        assert keys == [k for k, _, _ in cstoc.FIELDS if k in raw]
        assert ("xattrs" in raw) == bool(entry.xattrs)
        assert list(raw.get("xattrs", {})) == sorted(raw.get("xattrs", {}), key=lambda k: k.encode())


# --- reading leniency and hostile input ------------------------------------------------------


def test_keys_are_case_insensitive_and_unknown_keys_ignored() -> None:
    data = (b' {"VERSION":1,"Entries":[{"TYPE":"reg","Name":"a","LINKNAME":"b","devmajor":3,'
            b'"ModTime":"2023-11-14T17:13:20-05:00","unknown":{"x":[1,2,{"y":null}]},'
            b'"XATTRS":{"k":"dg==","n":null},"linkName":"c"}],"other":[],'
            b'"TARSPLITDIGEST":"%s"}\n\t' % D1.encode())
    version, entries, tar_split_digest = decode_cs_toc(data)
    assert (version, tar_split_digest) == (1, D1)
    assert entries == [CSTOCEntry("reg", "a", link_name="c", dev_major=3, modtime=(1700000000, 0),
                                  xattrs={"k": b"v", "n": b""})]


def test_null_strings_read_as_empty() -> None:
    _, entries, _ = decode_cs_toc(b'{"entries":[{"type":"dir","name":null,"digest":null}]}')
    assert entries == [CSTOCEntry("dir", "")]


def _toc(entry: str) -> bytes:
    return b'{"version":1,"entries":[' + entry.encode() + b"]}"


@pytest.mark.parametrize("data", [
    b"",
    b"[]",
    b"null",
    b'{"version":1,"entries":[]',
    b'{"version":1,"entries":[]} {}',
    b'{"version":1,"entries":[]}x',
    b'{"version":"1","entries":[]}',
    b'{"version":1.0,"entries":[]}',
    b'{"version":null,"entries":[]}',
    b'{"version":1,"entries":{}}',
    b'{"version":1,"entries":[1]}',
    b'{"version":1,"entries":[],"tarSplitDigest":""}',
    b'{"version":1,"entries":[],"tarSplitDigest":"sha256:xyz"}',
    b'{"version":1,"entries":[],"tarSplitDigest":null}',
    b'{"version":1,"entries":[],"tarSplitDigest":"sha256:' + b"A" * 64 + b'"}',
    b'{"version":NaN}',
    b'{"a":' * 100000 + b"1" + b"}" * 100000,
    _toc('{"type":"reg","name":"a","size":"1"}'),
    _toc('{"type":"reg","name":"a","size":-1}'),
    _toc('{"type":"reg","name":"a","offset":-5}'),
    _toc('{"type":"reg","name":"a","size":null}'),
    _toc('{"type":"reg","name":"a","size":true}'),
    _toc('{"type":"reg","name":"a","size":1e3}'),
    _toc('{"type":"reg","name":1}'),
    _toc('{"type":"reg","name":"a","modtime":"yesterday"}'),
    _toc('{"type":"reg","name":"a","modtime":null}'),
    _toc('{"type":"reg","name":"a","modtime":1700000000}'),
    _toc('{"type":"reg","name":"a","xattrs":[]}'),
    _toc('{"type":"reg","name":"a","xattrs":{"k":"!!"}}'),
    _toc('{"type":"reg","name":"a","xattrs":{"k":"dg"}}'),
    _toc('{"type":"reg","name":"a","xattrs":{"k":1}}'),
    _toc('{"type":"reg","name":"a","digest":"md5:00"}'),
    _toc('{"type":"reg","name":"a","chunkDigest":"sha256:00"}'),
    _toc('{"type":"reg","name":"a","chunkType":"holes"}'),
    _toc('{"type":"socket","name":"a"}'),
    _toc('{"name":"a"}'),
    _toc('{"type":"chunk","name":"a"}'),
    _toc('{"type":"dir","name":"d"},{"type":"chunk","name":"a"}'),
])
def test_hostile_tocs(data: bytes) -> None:
    with pytest.raises(FormatError):
        decode_cs_toc(data)


def test_integers_beyond_64_bits() -> None:
    with pytest.raises(LimitError):
        decode_cs_toc(_toc('{"type":"reg","name":"a","size":9223372036854775808}'))
    with pytest.raises(LimitError):
        decode_cs_toc(_toc('{"type":"reg","name":"a","uid":-9223372036854775809}'))
    with pytest.raises(LimitError):
        encode_cs_toc([CSTOCEntry("reg", "a", size=1 << 63)])


def test_size_limit() -> None:
    with mock.patch.object(cstoc, "MAX_TOC_SIZE", 100):
        with pytest.raises(LimitError):
            decode_cs_toc(b'{"version":1,"entries":null}' + b" " * 100)
        assert decode_cs_toc(b'{"version":1,"entries":null}')[0] == 1


def test_chunks_may_follow_chunks() -> None:
    data = _toc(f'{{"type":"reg","name":"a","size":2,"digest":"{D1}","chunkSize":1,"chunkDigest":"{D1}"}},'
                f'{{"type":"chunk","name":"a","chunkSize":1,"chunkOffset":1,"chunkDigest":"{D1}"}}')
    _, entries, _ = decode_cs_toc(data)
    assert [e.type for e in entries] == ["reg", "chunk"]
    assert encode_cs_toc(entries) == data
