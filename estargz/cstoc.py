"""The containers/storage zstd:chunked TOC ("manifest"): entries, exact JSON, validated decoding.

The writer serializes with json-iterator (``ConfigCompatibleWithStandardLibrary``): compact,
``{"version":1,"entries":[...],"tarSplitDigest":"sha256:..."}``, entry keys in the order of
:data:`FIELDS`, every key but ``type`` and ``name`` omitted when zero, ``"entries":null`` for an
empty layer. Times are RFC 3339 with nanoseconds; this module writes them in UTC, from integer
(seconds, nanoseconds) pairs, since Python's datetime has no nanoseconds.

The reader matches keys case-insensitively, skips unknown keys and rejects data after the object.
"""

from __future__ import annotations

import base64
import functools
import binascii
import json
import operator
import re
import sys
from dataclasses import dataclass, field
from collections.abc import Callable, Generator, Mapping
from typing import Any, TypeVar

from .digests import is_digest
from .errors import FormatError, LimitError
from .gojson import Time, format_rfc3339nano, parse_rfc3339, quote, raw_decode_strict
from .toc import EMPTY_DIGEST, MAX_TOC_SIZE, NO_XATTRS, TOCEntry, scan_toc_object

__all__ = [
    "TOC_VERSION", "ENTRY_TYPES", "CHUNK_TYPE_ZEROS", "GO_ZERO_TIME", "FIELDS", "CSTOCEntry",
    "CSTOCEncoder", "encode_cs_toc", "decode_cs_toc", "iter_cs_toc", "iter_cs_toc_as_toc_entries", "as_toc_entry",
    "format_rfc3339nano", "parse_rfc3339",
]

TOC_VERSION = 1
ENTRY_TYPES = frozenset({"reg", "dir", "symlink", "hardlink", "char", "block", "fifo", "chunk"})
CHUNK_TYPE_ZEROS = "zeros"
#: Go's zero ``time.Time`` (0001-01-01T00:00:00Z), which containers/storage <= 1.54 wrote for a
#: missing atime/ctime; newer writers omit the key.
GO_ZERO_TIME = (-62135596800, 0)

# JSON key, attribute, kind (s: string, i: integer, n: non-negative integer, t: time, x: xattrs),
# in Go struct order, which is the serialization order.
FIELDS: tuple[tuple[str, str, str], ...] = (
    ("type", "type", "s"),
    ("name", "name", "s"),
    ("linkName", "link_name", "s"),
    ("mode", "mode", "i"),
    ("size", "size", "n"),
    ("uid", "uid", "i"),
    ("gid", "gid", "i"),
    ("modtime", "modtime", "t"),
    ("accesstime", "accesstime", "t"),
    ("changetime", "changetime", "t"),
    ("devMajor", "dev_major", "i"),
    ("devMinor", "dev_minor", "i"),
    ("xattrs", "xattrs", "x"),
    ("digest", "digest", "s"),
    ("offset", "offset", "n"),
    ("endOffset", "end_offset", "n"),
    ("chunkSize", "chunk_size", "n"),
    ("chunkOffset", "chunk_offset", "n"),
    ("chunkDigest", "chunk_digest", "s"),
    ("chunkType", "chunk_type", "s"),
)
_BY_KEY = {key.lower(): (key, attr, kind) for key, attr, kind in FIELDS}
#: The same by key as spelled in :data:`FIELDS`, which is how writers spell it.
_BY_EXACT_KEY = {key: (key, attr, kind) for key, attr, kind in FIELDS}
_INT64 = (-(1 << 63), (1 << 63) - 1)
_T = TypeVar("_T")
_E = TypeVar("_E", bound=TOCEntry)
#: The decoder whose ``raw_decode`` is :func:`~estargz.gojson.raw_decode_strict`.
_STRICT_DECODER: json.JSONDecoder = raw_decode_strict.__self__  # type: ignore[attr-defined]
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(slots=True, eq=True)
class CSTOCEntry:
    """One TOC entry with the containers/storage fields (see the module docstring for the JSON).

    ``name``/``link_name`` are raw tar names; ``xattrs`` maps names to raw values (base64 in the
    JSON); times are :data:`Time` pairs or None (omitted). ``chunk_type`` is "" or "zeros".
    """

    type: str
    name: str
    link_name: str = ""
    mode: int = 0
    size: int = 0
    uid: int = 0
    gid: int = 0
    modtime: Time | None = None
    accesstime: Time | None = None
    changetime: Time | None = None
    dev_major: int = 0
    dev_minor: int = 0
    xattrs: Mapping[str, bytes] = field(default_factory=lambda: NO_XATTRS)
    digest: str = ""
    offset: int = 0
    end_offset: int = 0
    chunk_size: int = 0
    chunk_offset: int = 0
    chunk_digest: str = ""
    chunk_type: str = ""


# --- encoding --------------------------------------------------------------------------------


def _key_order(name: str) -> bytes:
    # json-iterator sorts map keys as they read back from its own output: invalid UTF-8 is U+FFFD.
    return _SURROGATE.sub("\ufffd", name).encode("utf-8")


def _int(value: int, where: str) -> str:
    if not _INT64[0] <= value <= _INT64[1]:
        raise LimitError(f"{where} {value} does not fit in 64 bits")
    return str(int(value))


#: The fields after ``type`` and ``name``: their values read at once, and their keys as written.
_OPTIONAL_FIELDS = FIELDS[2:]
_OPTIONAL_VALUES = operator.attrgetter(*(attr for _, attr, _ in _OPTIONAL_FIELDS))
_OPTIONAL_KEYS = tuple(',"' + key + '":' for key, _, _ in _OPTIONAL_FIELDS)
#: Times of the entries written last, as JSON: neighbouring entries mostly share them.
_TIME_CACHE = 1024


@functools.lru_cache(maxsize=_TIME_CACHE)
def _time_json(value: tuple[int, int]) -> str:
    return '"' + format_rfc3339nano(*value) + '"'


def _entry_json(entry: CSTOCEntry) -> str:
    parts = ['{"type":', quote(entry.type), ',"name":', quote(entry.name)]
    for (key, _, kind), prefix, value in zip(_OPTIONAL_FIELDS, _OPTIONAL_KEYS, _OPTIONAL_VALUES(entry)):
        if not value:
            continue
        if kind == "s":
            text = quote(value)
        elif kind == "t":
            text = _time_json(value)
        elif kind == "x":
            text = "{" + ",".join(
                quote(name) + ':"' + base64.b64encode(value[name]).decode("ascii") + '"'
                for name in sorted(value, key=_key_order)) + "}"
        else:
            text = _int(value, key)
        parts += [prefix, text]
    parts.append("}")
    return "".join(parts)


class CSTOCEncoder:
    """Encodes a TOC entry by entry, byte for byte as :func:`encode_cs_toc` does in one go; the
    JSON accumulates in :attr:`buffer`, so entries can be dropped once added."""

    def __init__(self, version: int = TOC_VERSION) -> None:
        self.buffer = bytearray(f'{{"version":{_int(version, "version")},"entries":'.encode())
        self.count = 0

    def add(self, entry: CSTOCEntry) -> None:
        """Append one entry."""
        self.buffer += b"," if self.count else b"["
        self.buffer += _entry_json(entry).encode("utf-8")
        self.count += 1

    def finish(self, tar_split_digest: str = "") -> None:
        """Close the JSON; an empty ``tar_split_digest`` is omitted."""
        self.buffer += b"]" if self.count else b"null"
        if tar_split_digest:
            self.buffer += (',"tarSplitDigest":' + quote(tar_split_digest)).encode("utf-8")
        self.buffer += b"}"


def encode_cs_toc(entries: list[CSTOCEntry], tar_split_digest: str = "", *,
                  version: int = TOC_VERSION) -> bytes:
    """Serialize a TOC byte for byte as containers/storage does (times in UTC).

    No entries give ``"entries":null``; an empty ``tar_split_digest`` is omitted. Names holding
    undecodable bytes (surrogate escapes) are written as ``\\ufffd`` per byte, as Go does.
    """
    encoder = CSTOCEncoder(version)
    for entry in entries:
        encoder.add(entry)
    encoder.finish(tar_split_digest)
    return bytes(encoder.buffer)


# --- decoding --------------------------------------------------------------------------------


def _where(index: int, key: str) -> str:
    return f"TOC entry {index}: {key}"


def _string(index: int, key: str, value: Any) -> str:
    if value is None:  # json-iterator reads null as ""
        return ""
    if not isinstance(value, str):
        raise FormatError(f"{_where(index, key)} must be a string")
    return value


def _integer(index: int, key: str, value: Any) -> int:
    if type(value) is not int:
        raise FormatError(f"{_where(index, key)} must be an integer")
    if not _INT64[0] <= value <= _INT64[1]:
        raise LimitError(f"{_where(index, key)} does not fit in 64 bits")
    return value


def _non_negative(index: int, key: str, value: Any) -> int:
    if _integer(index, key, value) < 0:
        raise FormatError(f"{_where(index, key)} must not be negative")
    return int(value)


def _time(index: int, key: str, value: Any) -> Time:
    if not isinstance(value, str):
        raise FormatError(f"{_where(index, key)} must be an RFC 3339 string")
    return parse_rfc3339(value)


def _xattrs(index: int, key: str, value: Any) -> dict[str, bytes]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise FormatError(f"{_where(index, key)} must be an object")
    xattrs = {}
    for name, encoded in value.items():
        if encoded is None:
            encoded = ""
        if not isinstance(encoded, str):
            raise FormatError(f"{_where(index, key)}: {name!r} must be a base64 string")
        try:
            xattrs[name] = base64.b64decode(encoded.encode("ascii"), validate=True)
        except (binascii.Error, ValueError, UnicodeEncodeError):
            raise FormatError(f"{_where(index, key)}: {name!r} is not base64") from None
    return xattrs


def _chunk_type(index: int, key: str, value: Any) -> str:
    chunk_type = _string(index, key, value)
    if chunk_type not in ("", CHUNK_TYPE_ZEROS):
        raise FormatError(f"TOC entry {index}: unknown chunk type {chunk_type!r}")
    return chunk_type


def _time_text(index: int, key: str, value: Any) -> str:
    return format_rfc3339nano(*_time(index, key, value))


#: The decoder of each field kind of :data:`FIELDS` (and "c": the chunk type, "T": a time as
#: RFC 3339 text): (entry index, JSON key, value) -> value.
_DECODERS: dict[str, Callable[[int, str, Any], Any]] = {
    "s": _string, "i": _integer, "n": _non_negative, "t": _time, "x": _xattrs, "c": _chunk_type, "T": _time_text,
}
Fields = dict[str, tuple[str, "str | None", str]]
"""JSON key (lower case) -> (JSON key, attribute or None to check the value and drop it, kind)."""
#: The fields of :class:`CSTOCEntry`, by key as spelled in :data:`FIELDS` and in lower case.
_CS_FIELDS: tuple[Fields, Fields] = (
    {key: (key, attr, "c" if attr == "chunk_type" else kind) for key, attr, kind in FIELDS},
    {key.lower(): (key, attr, "c" if attr == "chunk_type" else kind) for key, attr, kind in FIELDS},
)
#: The same read into the eStargz model (:class:`~estargz.toc.TOCEntry`): what it lacks is
#: checked and dropped, the modification time becomes RFC 3339 text.
_MODEL_ONLY_CHECKED = frozenset({"accesstime", "changetime", "end_offset", "chunk_type"})
_MODEL_FIELDS: tuple[Fields, Fields] = tuple(  # type: ignore[assignment]
    {key: (json_key, None if attr in _MODEL_ONLY_CHECKED else attr, "T" if attr == "modtime" else kind)
     for key, (json_key, attr, kind) in fields.items()}
    for fields in _CS_FIELDS)


def _entry_decoder(entry_type: Callable[[str, str], _T], fields: tuple[Fields, Fields], model: bool
                   ) -> Callable[[int, Any], _T]:
    """The decoder of one TOC's entries, in order, into ``entry_type`` objects: each field of an
    entry's JSON object that ``fields`` knows, checked (keys match case-insensitively, unknown
    keys are skipped); a chunk must follow a regular file or a chunk. With ``model``, the entries
    follow the eStargz model's rules (see :func:`as_toc_entry`)."""
    exact, folded = fields
    previous = ""

    def decode_entry(index: int, raw: Any) -> _T:
        nonlocal previous
        if type(raw) is not dict:
            raise FormatError(f"TOC entry {index} is not an object")
        entry: Any = entry_type("", "")
        for key, value in raw.items():
            known = exact.get(key) or folded.get(key.lower())
            if known is None:
                continue
            json_key, attr, kind = known
            if kind != "s" or type(value) is not str:
                value = _DECODERS[kind](index, json_key, value)
            if attr is not None:
                setattr(entry, attr, value)
        previous = _check_decoded(index, entry, previous)
        if model and (previous == "reg" or entry.size):
            _apply_model_rules(entry)
        return entry  # type: ignore[no-any-return]

    return decode_entry


def _check_decoded(index: int, entry: Any, previous: str) -> str:
    """Check a decoded entry's type and digests, and that a chunk follows a regular file or a
    chunk (the type of the entry before it is ``previous``); return its type, interned."""
    entry.type = kind = sys.intern(entry.type)
    if kind not in ENTRY_TYPES:
        raise FormatError(f"TOC entry {index}: unknown type {kind!r}")
    if entry.digest and not is_digest(entry.digest):
        raise FormatError(f"TOC entry {index}: invalid digest {entry.digest!r}")
    if entry.chunk_digest and not is_digest(entry.chunk_digest):
        raise FormatError(f"TOC entry {index}: invalid chunk_digest {entry.chunk_digest!r}")
    if kind == "chunk" and previous not in ("reg", "chunk"):
        raise FormatError(f"TOC entry {index}: chunk type without a regular file")
    return kind


def as_toc_entry(entry: CSTOCEntry) -> TOCEntry:
    """A containers/storage TOC entry in the eStargz model the reader's tree is built from (what
    :func:`iter_cs_toc_as_toc_entries` gives).

    A regular file's digest is that of the empty file when missing, and a file in one chunk has
    no chunk digest here: its file digest checks its one chunk. Only regular files have a size.
    """
    model = TOCEntry(entry.name, entry.type, entry.size, format_rfc3339nano(*entry.modtime) if entry.modtime else "",
                     entry.link_name, entry.mode, entry.uid, entry.gid, "", "", entry.offset, 0, entry.dev_major,
                     entry.dev_minor, dict(entry.xattrs), entry.digest, entry.chunk_offset, entry.chunk_size,
                     entry.chunk_digest)
    _apply_model_rules(model)
    return model


def _apply_model_rules(entry: TOCEntry) -> None:
    """The rules of :func:`as_toc_entry`, applied to an entry holding the TOC's values."""
    if entry.type == "reg":
        if entry.size > 0 and not entry.chunk_size:
            entry.chunk_digest = entry.digest
        if not entry.digest:
            entry.digest = EMPTY_DIGEST
    elif entry.size:
        entry.size = 0


def decode_cs_toc(data: bytes) -> tuple[int, list[CSTOCEntry], str]:
    """Parse TOC JSON into ``(version, entries, tar_split_digest)``, validating it.

    Keys match case-insensitively and unknown keys are ignored (at any level); anything but
    whitespace after the object, wrong JSON types, bad times, base64 or digests, unknown entry
    or chunk types and a ``chunk`` entry that does not follow a ``reg`` raise
    :class:`FormatError`. Bytes that are not UTF-8 are kept as surrogate escapes.
    """
    entries: list[CSTOCEntry] = []
    scan = iter_cs_toc(data)
    while True:
        try:
            entries.append(next(scan))
        except StopIteration as stop:
            version, tar_split_digest = stop.value
            return version, entries, tar_split_digest


def iter_cs_toc(data: bytes) -> Generator[CSTOCEntry, None, tuple[int, str]]:
    """Parse TOC JSON entry by entry, as :func:`decode_cs_toc` does; the generator returns
    ``(version, tar_split_digest)``. Only one entry's JSON object exists at a time."""
    return _iter_entries(data, _entry_decoder(CSTOCEntry, _CS_FIELDS, model=False))


def iter_cs_toc_as_toc_entries(data: bytes, entry_type: type[_E] = TOCEntry  # type: ignore[assignment]
                               ) -> Generator[_E, None, tuple[int, str]]:
    """:func:`iter_cs_toc` with each entry in the eStargz model the reader's tree is built from,
    as an ``entry_type`` (:class:`~estargz.toc.TOCEntry` or a subclass): the same fields, times
    as RFC 3339 text, the containers/storage ones it lacks checked and dropped."""
    return _iter_entries(data, _entry_decoder(entry_type, _MODEL_FIELDS, model=True))


def _iter_entries(data: bytes, decode: Callable[[int, Any], _T]) -> Generator[_T, None, tuple[int, str]]:
    if len(data) > MAX_TOC_SIZE:
        raise LimitError(f"TOC of {len(data)} bytes exceeds the {MAX_TOC_SIZE}-byte limit")
    text = bytes(data).decode("utf-8", "surrogateescape")
    members, end = yield from scan_toc_object(text, _STRICT_DECODER, "TOC is not a JSON object", decode)
    if end != len(text):
        raise FormatError("unexpected data after the TOC")
    version, tar_split_digest = _document_fields(members)
    return version, tar_split_digest


def _document_fields(members: dict[str, Any]) -> tuple[int, str]:
    """``version`` and ``tarSplitDigest`` of a TOC object's members (keys lowercased), checked;
    ``entries`` must be an array or null."""
    version = members.get("version", 0)
    if type(version) is not int or not _INT64[0] <= version <= _INT64[1]:
        raise FormatError("TOC version must be an integer")
    if members.get("entries") is not None and not isinstance(members["entries"], list):
        raise FormatError("TOC entries must be an array")
    tar_split_digest = members.get("tarsplitdigest", "")
    if "tarsplitdigest" in members and not is_digest(tar_split_digest):
        raise FormatError(f"invalid tarSplitDigest {tar_split_digest!r}")
    return version, tar_split_digest
