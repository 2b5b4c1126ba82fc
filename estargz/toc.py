"""The eStargz TOC: entries, Go-exact JSON encoding, and validated decoding."""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
import sys
from dataclasses import dataclass, field
from collections.abc import Callable, Generator, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

from .digests import EMPTY_DIGEST
from .errors import FormatError, LimitError
from .gojson import format_rfc3339nano, go_escape_dumped

__all__ = [
    "TOC_NAME", "TOCEntry", "TOCEncoder", "encode_toc", "decode_toc", "format_modtime", "clean_name",
    "iter_toc", "scan_toc_object", "NO_XATTRS", "EMPTY_DIGEST", "MAX_TOC_SIZE", "MAX_TAR_SPLIT_SIZE",
    "check_encoded_size",
]

TOC_NAME = "stargz.index.json"
#: Largest uncompressed TOC accepted by the reader (the cap containers/storage uses).
MAX_TOC_SIZE = 150 << 20
#: Largest uncompressed tar-split (containers/storage zstd:chunked) accepted by the reader.
MAX_TAR_SPLIT_SIZE = 1 << 30

# JSON key, attribute, type; in Go struct order, which is the serialization order.
_FIELDS: tuple[tuple[str, str, type], ...] = (
    ("name", "name", str),
    ("type", "type", str),
    ("size", "size", int),
    ("modtime", "modtime", str),
    ("linkName", "link_name", str),
    ("mode", "mode", int),
    ("uid", "uid", int),
    ("gid", "gid", int),
    ("userName", "user_name", str),
    ("groupName", "group_name", str),
    ("offset", "offset", int),
    ("innerOffset", "inner_offset", int),
    ("devMajor", "dev_major", int),
    ("devMinor", "dev_minor", int),
    ("xattrs", "xattrs", dict),
    ("digest", "digest", str),
    ("chunkOffset", "chunk_offset", int),
    ("chunkSize", "chunk_size", int),
    ("chunkDigest", "chunk_digest", str),
)
_BY_KEY = {key.lower(): (key, attr, kind) for key, attr, kind in _FIELDS}
#: The same by key as spelled in the specification, which is how writers spell it.
_BY_EXACT_KEY = {key: (key, attr, kind) for key, attr, kind in _FIELDS}
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
#: The extended attributes of every decoded entry that has none: one shared, read-only mapping.
NO_XATTRS: Mapping[str, bytes] = MappingProxyType({})


@dataclass(slots=True, eq=True)
class TOCEntry:
    """One entry of the TOC, with the JSON fields of the eStargz specification.

    ``name`` is the raw name as written; readers use :func:`clean_name` on it.
    ``xattrs`` maps attribute names to raw bytes (base64 in the JSON).
    """

    name: str
    type: str
    size: int = 0
    modtime: str = ""
    link_name: str = ""
    mode: int = 0
    uid: int = 0
    gid: int = 0
    user_name: str = ""
    group_name: str = ""
    offset: int = 0
    inner_offset: int = 0
    dev_major: int = 0
    dev_minor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)
    digest: str = ""
    chunk_offset: int = 0
    chunk_size: int = 0
    chunk_digest: str = ""

    def to_json_object(self) -> dict[str, Any]:
        """The entry as a JSON object, with Go's ``omitempty`` rules applied."""
        out: dict[str, Any] = {"name": self.name, "type": self.type}
        for key, attr, _ in _FIELDS[2:]:
            value = getattr(self, attr)
            if value:
                if key == "xattrs":
                    value = {k: base64.b64encode(value[k]).decode() for k in sorted(value)}
                out[key] = value
        return out


_E = TypeVar("_E", bound=TOCEntry)


def clean_name(name: str) -> str:
    """Clean a TOC or tar name the way readers do: ``path.Clean("/" + name)`` without the slash."""
    if (not name.startswith(("/", "./", "../")) and name not in (".", "..") and "//" not in name
            and "/./" not in name and "/../" not in name and not name.endswith(("/.", "/.."))):
        # No empty, "." or ".." component but perhaps the last one: at most a trailing slash to drop.
        return name[:-1] if name.endswith("/") else name
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    cleaned = "/".join(parts)
    return name if cleaned == name else cleaned


def format_modtime(seconds: int, nanos: int = 0) -> str:
    """RFC 3339 UTC time rounded to the nearest second (halves up); "" for time zero (Unix epoch)."""
    if seconds == 0:
        return ""
    return _format_second(seconds + (1 if nanos >= 500_000_000 else 0))


#: The files of a layer share few distinct seconds: each is formatted once.
_format_second = functools.lru_cache(maxsize=4096)(format_rfc3339nano)


#: A surrogate left alone by the JSON decoder (an unpaired ``\\ud800``-style escape).
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


#: The flat fields after name and type: what precedes each value in the JSON, attribute, is a string.
_FLAT_FIELDS = tuple((f',\n\t\t\t"{key}": ', attr, kind is str) for key, attr, kind in _FIELDS[2:] if kind is not dict)
#: A JSON string literal as ``json.dumps(..., ensure_ascii=False)`` writes it.
_json_string: Callable[[str], str] = json.encoder.encode_basestring


def _entry_json(entry: TOCEntry) -> str:
    if entry.xattrs:  # nested object: let the encoder indent it, then shift it two levels in
        text = json.dumps(entry.to_json_object(), indent="\t", separators=(",", ": "), ensure_ascii=False)
        return "\t\t" + text.replace("\n", "\n\t\t")
    parts = ['\t\t{\n\t\t\t"name": ', _json_string(entry.name), ',\n\t\t\t"type": ', _json_string(entry.type)]
    for prefix, attr, is_string in _FLAT_FIELDS:
        value = getattr(entry, attr)
        if value:
            parts += (prefix, _json_string(value) if is_string else str(value))
    parts.append("\n\t\t}")
    return "".join(parts)


class TOCEncoder:
    """Encodes a TOC entry by entry, byte for byte as :func:`encode_toc` does in one go.

    The JSON accumulates in :attr:`buffer` after whatever it held (room for a tar header, say);
    entries can be dropped once added, so only the JSON is kept.
    """

    def __init__(self, buffer: bytearray | None = None, version: int = 1) -> None:
        self.buffer = bytearray() if buffer is None else buffer
        self.start = len(self.buffer)
        """Where the JSON starts in :attr:`buffer`."""
        self.count = 0
        self.buffer += f'{{\n\t"version": {int(version)},\n\t"entries": '.encode()

    def add(self, entry: TOCEntry) -> None:
        """Append one entry."""
        self.buffer += b",\n" if self.count else b"[\n"
        self.buffer += go_escape_dumped(_entry_json(entry)).encode("utf-8")
        self.count += 1

    def finish(self) -> None:
        """Close the JSON, which is ``buffer[start:]``."""
        self.buffer += b"\n\t]\n}" if self.count else b"null\n}"


def encode_toc(entries: list[TOCEntry], version: int = 1) -> bytes:
    """Serialize a TOC exactly as Go's ``json.MarshalIndent(toc, "", "\\t")`` does.

    Names holding undecodable bytes (surrogate escapes) are written as ``\\ufffd`` per byte, as Go
    does for invalid UTF-8.
    """
    encoder = TOCEncoder(version=version)
    for entry in entries:
        encoder.add(entry)
    encoder.finish()
    return bytes(encoder.buffer)


def check_encoded_size(what: str, size: int, limit: int) -> None:
    """Refuse to write a TOC (or tar-split) of ``size`` bytes that readers would reject as too large."""
    if size > limit:
        raise LimitError(f"{what} of {size} bytes exceeds the {limit}-byte limit readers accept "
                         "(too many entries in one layer)")


def _field_value(entry_index: int, key: str, kind: type, value: Any) -> Any:
    if kind is str:
        if type(value) is not str:
            raise FormatError(f"TOC entry {entry_index}: {key} must be a string")
        return value if value.isascii() else _LONE_SURROGATE.sub("\ufffd", value)
    if kind is int:
        if type(value) is not int:
            if not (isinstance(value, float) and value.is_integer()):
                raise FormatError(f"TOC entry {entry_index}: {key} must be an integer")
            value = int(value)
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise LimitError(f"TOC entry {entry_index}: {key} out of range")
        return value
    return _xattrs(entry_index, value)


def _xattrs(entry_index: int, value: Any) -> dict[str, bytes]:
    if not isinstance(value, dict):
        raise FormatError(f"TOC entry {entry_index}: xattrs must be an object")
    xattrs = {}
    for name, encoded in value.items():
        if not isinstance(encoded, str):
            raise FormatError(f"TOC entry {entry_index}: xattr {name!r} must be base64 text")
        try:
            xattrs[name] = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise FormatError(f"TOC entry {entry_index}: xattr {name!r} is not base64") from None
    return xattrs


def decode_toc(data: bytes) -> tuple[int, list[TOCEntry]]:
    """Parse TOC JSON into (version, entries). Keys match case-insensitively; unknown keys are ignored."""
    entries: list[TOCEntry] = []
    scan: Generator[TOCEntry, None, int] = iter_toc(data)
    while True:
        try:
            entries.append(next(scan))
        except StopIteration as stop:
            return stop.value, entries


def iter_toc(data: bytes, entry_type: type[_E] = TOCEntry) -> Generator[_E, None, int]:  # type: ignore[assignment]
    """Parse TOC JSON entry by entry, as :func:`decode_toc` does, each as an ``entry_type`` (a
    :class:`TOCEntry`, or a subclass whose instances the reader keeps); the generator returns
    the version.

    Only one entry's JSON object exists at a time, so memory follows the entries kept, not the
    parsed document. Text after the document is ignored.
    """
    if len(data) > MAX_TOC_SIZE:
        raise LimitError(f"TOC of {len(data)} bytes exceeds the {MAX_TOC_SIZE}-byte limit")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"TOC is not valid JSON: {exc}") from None
    members, _ = yield from scan_toc_object(text, _JSON, "TOC JSON is not an object", _entry_decoder(entry_type))
    version = members.get("version", 0)
    if type(version) is not int:
        raise FormatError("TOC version must be an integer")
    if members.get("entries") is not None and not isinstance(members["entries"], list):
        raise FormatError("TOC entries must be a list")
    return version


Decode = Callable[[str, int], tuple[Any, int]]
"""``json.JSONDecoder.raw_decode``: the JSON value at a position and the position after it."""
_T = TypeVar("_T")
_SPACE = re.compile(r"[ \t\n\r]*")
_JSON_SPACE = (" ", "\t", "\n", "\r")
#: What follows an array item: whitespace, then a comma or the closing bracket, then whitespace.
_ITEM_END = re.compile(r"[ \t\n\r]*([,\]])[ \t\n\r]*")
_JSON = json.JSONDecoder()


def scan_toc_object(text: str, decoder: json.JSONDecoder, not_object: str, convert: Callable[[int, Any], _T]
                    ) -> Generator[_T, None, tuple[dict[str, Any], int]]:
    """Walk the TOC object ``text`` holds, yielding ``convert(index, item)`` for each item of its
    ``entries`` array as soon as that item is parsed; return its other members (keys lowercased,
    the last of equal keys kept; ``entries`` as ``[]`` when it was an array, which it may be
    only once, as its items are gone by the next one) and the position
    after the object and its whitespace. Keys match case-insensitively, as Go's decoder does.
    FormatError for invalid JSON, or ``not_object`` for a JSON value that is not an object.
    ``decoder`` parses the values.
    """
    decode = decoder.raw_decode
    position = _skip_space(text, 0)
    if not text.startswith("{", position):
        _decode_value(text, position, decode)
        raise FormatError(not_object)
    members: dict[str, Any] = {}
    position = _skip_space(text, position + 1)
    if text.startswith("}", position):
        return members, _skip_space(text, position + 1)
    while True:
        if not text.startswith('"', position):
            raise _invalid(f"expected a key at character {position}")
        key, position = _decode_value(text, position, decode)
        position = _expect(text, position, ":")
        key = key.lower()
        if key == "entries" and text.startswith("[", position):
            if key in members:
                raise FormatError("TOC holds its entries array twice")
            position = yield from _scan_array(text, position, decoder.scan_once, convert)  # type: ignore[attr-defined]
            members[key] = []
        else:
            members[key], position = _decode_value(text, position, decode)
        if text.startswith("}", position):
            return members, _skip_space(text, position + 1)
        position = _expect(text, position, ",")


def _scan_array(text: str, position: int, scan: Decode, convert: Callable[[int, Any], _T]
                ) -> Generator[_T, None, int]:
    """The converted items of the array at ``position``, each parsed by ``scan`` (a decoder's
    ``scan_once``: StopIteration where no value starts); returns the position after the array."""
    position = _skip_space(text, position + 1)
    if text.startswith("]", position):
        return _skip_space(text, position + 1)
    index = 0
    item_end = _ITEM_END.match
    while True:
        try:
            item, position = scan(text, position)
        except StopIteration:
            raise _invalid(f"expected a value at character {position}") from None
        except (ValueError, RecursionError) as exc:
            raise _invalid(exc) from None
        yield convert(index, item)
        index += 1
        if text.startswith(",", position) and not text.startswith(_JSON_SPACE, position + 1):
            position += 1  # compact JSON: the next item follows the comma
            continue
        found = item_end(text, position)
        if found is None:
            raise _invalid(f"expected ',' or ']' at character {position}")
        position = found.end()
        if found.group(1) == "]":
            return position


def _skip_space(text: str, position: int) -> int:
    return _SPACE.match(text, position).end()  # type: ignore[union-attr]


def _invalid(detail: object) -> FormatError:
    return FormatError(f"TOC is not valid JSON: {detail}")


def _decode_value(text: str, position: int, decode: Decode) -> tuple[Any, int]:
    """The JSON value at ``position`` and the position after it and the whitespace that follows."""
    try:
        value, end = decode(text, position)
    except (ValueError, RecursionError) as exc:
        raise _invalid(exc) from None
    return value, _skip_space(text, end)


def _expect(text: str, position: int, char: str) -> int:
    """The position after ``char`` (and whitespace), which must stand at ``position``."""
    if not text.startswith(char, position):
        raise _invalid(f"expected {char!r} at character {position}")
    return _skip_space(text, position + 1)


def _entry_decoder(entry_type: type[_E]) -> Callable[[int, Any], _E]:
    """The function that makes the JSON object of an entry (and its index) an ``entry_type``."""

    def decode_entry(index: int, raw: Any) -> _E:
        if type(raw) is not dict:
            raise FormatError(f"TOC entry {index} is not an object")
        entry = entry_type("", "")
        for key, value in raw.items():
            known = _BY_EXACT_KEY.get(key) or _BY_KEY.get(key.lower())
            if known is None or value is None:
                continue
            json_key, attr, kind = known
            if kind is not str or type(value) is not str or not value.isascii():
                value = _field_value(index, json_key, kind, value)
            setattr(entry, attr, value)
        entry.type = sys.intern(entry.type)
        return entry

    return decode_entry
