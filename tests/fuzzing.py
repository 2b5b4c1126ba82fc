"""A fuzz harness for every blob format estargz reads.

Valid blobs of each variant (``VARIANTS``) are built from one small layer, then mutated: byte
flips, insertions, deletions and truncations, footer (or annotation) fields, TOC JSON fields and
entries (re-encoded, recompressed, with the footer fixed so that the change reaches the code
behind the TOC parser), and containers/storage tar-split records (with the TOC's
``tarSplitDigest`` fixed). Each mutated blob goes through every read operation (open, iterate,
read every file, verify, unpack, extract) in a long-lived worker subprocess with resource limits.

The invariant, per operation: it raises an :class:`estargz.EStargzError` (one line of message),
or every byte it returns is verified content:

- *pinned*: the blob is opened with the original TOC digest (for containers/storage
  annotations, the original manifest checksum). Any file content read, unpacked or extracted
  must equal the original layer's content for that name, and the entries must be the original's.
- *unpinned*: when the pinned open is refused (the TOC changed), the blob is opened again without
  a digest. Then the TOC is the user's; any content returned must match that TOC's digests for
  the entry (its file digest, or the digest of every chunk).

Each case must finish within ``CPU_BUDGET`` seconds of CPU and ``RSS_BUDGET`` bytes of resident
memory (the address space is capped too). A case that breaks the invariant, raises anything else,
exceeds a budget or kills the worker is a failure, reported with its case (variant and mutations
as JSON) to replay: ``python3 tests/fuzzing.py --replay CASE``. Run the fuzzer for longer with
``python3 tests/fuzzing.py --seconds 600`` or ``ESTARGZ_FUZZ_SECONDS=600 python3 -m pytest
tests/test_fuzz.py``.
"""

from __future__ import annotations

import argparse
import base64
import collections
import hashlib
import io
import json
import math
import os
import resource
import select
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import zstandard

import estargz
from estargz.testing import clean_name

#: CPU seconds one case (all operations, pinned and unpinned) may take.
CPU_BUDGET = 2.0
#: Resident memory the worker may reach.
RSS_BUDGET = 256 << 20
#: Address space the worker may add to what it holds after warming up.
AS_HEADROOM = 256 << 20
#: Largest file extraction may write.
FILE_SIZE_LIMIT = 64 << 20
#: Wall-clock seconds without an answer after which the worker counts as hung (the machine may be busy).
WALL_TIMEOUT = 30.0
#: Cases per variant in the test suite: the same cases on every machine (about a minute in all).
SUITE_CASES = 500
#: The suite's cap on the whole run, for slow or busy machines (then fewer cases run).
SUITE_MAX_SECONDS = 180.0
#: A total time (seconds) that replaces the suite's fixed cases, for longer runs.
SECONDS_ENV = "ESTARGZ_FUZZ_SECONDS"
#: Total time of ``python3 tests/fuzzing.py`` without ``--seconds`` or ``ESTARGZ_FUZZ_SECONDS``.
DEFAULT_SECONDS = 60.0
#: Cases per hypothesis run; each run has its own fixed seed.
BATCH = 100
CHUNK_SIZE = 1024

TOC_NAME = "stargz.index.json"
_BLOCK = 512
_SKIPPABLE_MAGIC = b"\x50\x2a\x4d\x18"
_MAGIC_40 = b"GnUlInUx"
_MAGIC_64 = b"GNUlInUx"
_GZIP_EXTRA_HEADER = b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff"
_EMPTY_DEFLATE = b"\x01\x00\x00\xff\xff" + bytes(8)
_NEST = "\x00nest\x00"
_CS_CHECKSUM = "io.github.containers.zstd-chunked.manifest-checksum"
_CS_POSITION = "io.github.containers.zstd-chunked.manifest-position"
_CS_TARSPLIT = "io.github.containers.zstd-chunked.tarsplit-position"


# --------------------------------------------------------------------------------------------
# the layer and the variants
# --------------------------------------------------------------------------------------------

#: Regular files of the layer (name -> content); chunked, single-chunk, empty and zero-filled.
FILES = {
    "dir/a.txt": b"hello world\n" * 50,
    "dir/b.bin": bytes(range(256)) * 10,
    "dir/sub/" + "long-name-" * 12: b"pax named\n",
    "empty": b"",
    "c": b"x" * 3000,
    "zeros": bytes(6000),
}
SYMLINKS = {"link": "dir/a.txt", "dangling": "nowhere"}
HARDLINKS = {"hard": "c"}


def layer_tar() -> bytes:
    """The layer every variant is built from, as a PAX tar."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("dir", "dir/sub"):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1700000000
            tar.addfile(info)
        for name, content in FILES.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(content), 0o644, 1700000000
            if name == "c":
                info.pax_headers = {"SCHILY.xattr.user.k": "v"}
            tar.addfile(info, io.BytesIO(content))
        for links, kind in ((SYMLINKS, tarfile.SYMTYPE), (HARDLINKS, tarfile.LNKTYPE)):
            for name, target in links.items():
                info = tarfile.TarInfo(name)
                info.type, info.linkname, info.mtime = kind, target, 1700000000
                tar.addfile(info)
        fifo = tarfile.TarInfo("pipe")
        fifo.type = tarfile.FIFOTYPE
        tar.addfile(fifo)
    return buf.getvalue()


@dataclass(frozen=True)
class Variant:
    """A blob flavour: how it is converted and how its tail (TOC, footer) is laid out."""

    format: str
    options: tuple[tuple[str, Any], ...] = ()
    tail: str = "gzip"
    """gzip (TOC member + 51-byte footer), legacy (47-byte footer), external (TOC blob),
    zstd40 (stargz zstd:chunked), zstd64 (containers/storage), annotations (zstd64 located by
    the layer annotations)."""


VARIANTS = {
    "estargz": Variant("estargz"),
    "estargz-min-chunk-size": Variant("estargz", (("min_chunk_size", 700),)),
    "estargz-external-toc": Variant("estargz", (("external_toc", True),), "external"),
    "estargz-keep-diff-id": Variant("estargz", (("external_toc", True), ("keep_diff_id", True)), "external"),
    "estargz-legacy-footer": Variant("estargz", (), "legacy"),
    "zstd-chunked-stargz": Variant("zstd:chunked-stargz", (), "zstd40"),
    "zstd-chunked": Variant("zstd:chunked", (), "zstd64"),
    "zstd-chunked-annotations": Variant("zstd:chunked", (), "annotations"),
}


# --------------------------------------------------------------------------------------------
# blob parts: data, TOC, tar-split, and the tail rebuilt around them
# --------------------------------------------------------------------------------------------

def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _gzip(data: bytes) -> bytes:
    deflater = zlib.compressobj(6, zlib.DEFLATED, 31)
    return deflater.compress(data) + deflater.flush()


def _zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=3, write_checksum=True).compress(data)


def _unzstd(frame: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompressobj().decompress(frame)


def _skippable(payload: bytes) -> bytes:
    return _SKIPPABLE_MAGIC + len(payload).to_bytes(4, "little") + payload


def _gzip_extra_member(extra: bytes) -> bytes:
    return _GZIP_EXTRA_HEADER + len(extra).to_bytes(2, "little") + extra + _EMPTY_DEFLATE


def _hex16(value: int) -> bytes:
    return b"%016x" % (value % (1 << 64))


def _toc_member(toc_json: bytes) -> bytes:
    """The gzip member holding the TOC as the tar entry ``stargz.index.json``."""
    info = tarfile.TarInfo(TOC_NAME)
    info.size = len(toc_json)
    header = info.tobuf(tarfile.USTAR_FORMAT)
    return _gzip(header + toc_json + bytes(-len(toc_json) % _BLOCK + 2 * _BLOCK))


def _u64(values: list[int]) -> bytes:
    return b"".join((v % (1 << 64)).to_bytes(8, "little") for v in values)


@dataclass
class Parts:
    """A blob taken apart: its data region, TOC JSON and tar-split, and field overrides."""

    variant: Variant
    data: bytes
    toc_json: bytes
    toc_packed: bytes | None
    """The compressed TOC as the blob had it (None once the TOC changed: it is recompressed)."""
    tar_split: bytes = b""
    tar_split_packed: bytes | None = None
    tar_split_digest: str = ""
    """The digest of the compressed tar-split, as the TOC's ``tarSplitDigest`` gives it."""
    overrides: dict[int, Any] = field(default_factory=dict)
    """Footer (or annotation) field index -> value replacing what the tail would say."""


@dataclass(frozen=True)
class Blob:
    """A serialized blob, the TOC blob of an external TOC, and the layer annotations to pass."""

    blob: bytes
    toc: bytes | None
    annotations: dict[str, str] | None


def split_blob(variant: Variant, blob: bytes, toc_blob: bytes | None) -> Parts:
    """Take a blob written by estargz.convert apart (using estargz to find the pieces)."""
    reader = estargz.open(blob, toc=toc_blob)
    if variant.tail in ("gzip", "legacy"):
        packed = blob[reader.toc_offset:len(blob) - reader.footer.size]
        return Parts(variant, blob[:reader.toc_offset], _toc_json(packed), packed)
    if variant.tail == "external":
        assert toc_blob is not None
        return Parts(variant, blob[:len(blob) - reader.footer.size], _toc_json(toc_blob), toc_blob)
    footer = reader.footer
    packed = blob[footer.toc_offset:footer.toc_offset + footer.toc_length]
    parts = Parts(variant, blob[:footer.toc_offset - 8], _unzstd(packed), packed)
    if footer.tar_split is not None:
        offset, length, _ = footer.tar_split
        parts.tar_split_packed = blob[offset:offset + length]
        parts.tar_split = _unzstd(parts.tar_split_packed)
        parts.tar_split_digest = _sha256(parts.tar_split_packed)
    return parts


def _toc_json(member: bytes) -> bytes:
    tar = zlib.decompressobj(31).decompress(member)
    size = int(tar[124:136].rstrip(b"\0 ") or b"0", 8)
    return tar[_BLOCK:_BLOCK + size]


def serialize(parts: Parts) -> Blob:
    """The blob for ``parts``: the tail rebuilt around the (possibly changed) TOC and tar-split."""
    tail = parts.variant.tail
    toc_packed = parts.toc_packed
    if tail in ("gzip", "legacy", "external"):
        toc_packed = toc_packed or _toc_member(parts.toc_json)
        if tail == "external":
            footer = _gzip_extra_member(b"SG\x11\x00STARGZEXTERNALTOC")
            return Blob(parts.data + footer, toc_packed, None)
        offset = _override(parts, [len(parts.data)])[0]
        footer = (_gzip_extra_member(b"SG\x16\x00" + _hex16(offset) + b"STARGZ") if tail == "gzip"
                  else _gzip_extra_member(_hex16(offset) + b"STARGZ"))
        return Blob(parts.data + toc_packed + footer, None, None)
    toc_json = parts.toc_json
    tar_split_packed = parts.tar_split_packed
    if tail != "zstd40" and tar_split_packed is None:
        tar_split_packed = _zstd(parts.tar_split)
        toc_json = toc_json.replace(parts.tar_split_digest.encode(), _sha256(tar_split_packed).encode())
        toc_packed = None if toc_json != parts.toc_json else toc_packed
    toc_packed = toc_packed or _zstd(toc_json)
    start = len(parts.data) + 8
    fields = [start, len(toc_packed), len(toc_json), 1]
    if tail == "zstd40":
        footer = _skippable(_u64(_override(parts, fields)) + _MAGIC_40)
        return Blob(parts.data + _skippable(toc_packed) + footer, None, None)
    assert tar_split_packed is not None
    fields += [start + len(toc_packed) + 8, len(tar_split_packed), len(parts.tar_split)]
    body = parts.data + _skippable(toc_packed) + _skippable(tar_split_packed)
    if tail == "zstd64":
        return Blob(body + _skippable(_u64(_override(parts, fields)) + _MAGIC_64), None, None)
    values = [str(v) for v in _override(parts, fields, text=True)]
    annotations = {_CS_CHECKSUM: _sha256(toc_packed), _CS_POSITION: ":".join(values[:4]),
                   _CS_TARSPLIT: ":".join(values[4:])}
    return Blob(body + _skippable(_u64(fields) + _MAGIC_64), None, annotations)


def _override(parts: Parts, fields: list[Any], *, text: bool = False) -> list[Any]:
    values = list(fields)
    for index, value in parts.overrides.items():
        if isinstance(value, int) or text:
            values[index % len(values)] = value
    return values


# --------------------------------------------------------------------------------------------
# mutations (JSON-serializable dicts, so that a case can be printed and replayed)
# --------------------------------------------------------------------------------------------

TOC_FIELDS = ("name", "type", "size", "modtime", "linkName", "mode", "uid", "gid", "userName", "groupName",
              "offset", "devMajor", "devMinor", "xattrs", "digest", "chunkOffset", "chunkSize",
              "chunkDigest", "innerOffset", "endOffset", "chunkType", "accesstime", "changetime")
TOC_TOP_FIELDS = ("version", "entries", "tarSplitDigest")
TAR_SPLIT_FIELDS = ("type", "name", "name_raw", "size", "payload", "position")
ENTRY_ACTIONS = ("delete", "duplicate", "swap", "move")


def _value(spec: dict[str, Any], items: list[Any], current: Any) -> Any:
    """The value a mutation puts in a field: literal, another item's field, or the current value + delta."""
    if "ref" in spec:
        index, name = spec["ref"]
        other = items[index % len(items)] if items else {}
        return other.get(name) if isinstance(other, dict) else None
    if "delta" in spec:
        return current + spec["delta"] if isinstance(current, int) and not isinstance(current, bool) else spec["delta"]
    return spec["v"]


def _mutate_items(items: list[Any], mutation: dict[str, Any]) -> bool:
    """Change one field of one item, or the list itself; return whether a placeholder for deep
    nesting was put in (the encoder replaces it)."""
    what = mutation["what"]
    if not items or (what == "entries" and not all(isinstance(i, dict) for i in items)):
        return False
    if what == "entries":
        i, j = mutation["i"] % len(items), mutation["j"] % len(items)
        action = mutation["action"]
        if action == "delete":
            del items[i]
        elif action == "duplicate":
            items.insert(j, json.loads(json.dumps(items[i])))
        elif action == "swap":
            items[i], items[j] = items[j], items[i]
        else:
            items.insert(j, items.pop(i))
        return False
    item = items[mutation["entry"] % len(items)]
    if not isinstance(item, dict):
        return False
    name = mutation["field"]
    if what == "nest":
        item[name] = _NEST
        return True
    if mutation["value"].get("delete"):
        item.pop(name, None)
    else:
        item[name] = _value(mutation["value"], items, item.get(name))
    return False


def _load(text: bytes) -> Any:
    """The JSON value of ``text``, or None when an earlier mutation left it unparsable."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _encode(doc: Any, compact: bool, depth: int) -> bytes:
    text = json.dumps(doc, separators=(",", ":")) if compact else json.dumps(doc, indent="\t")
    return text.replace(json.dumps(_NEST), "[" * depth + "]" * depth).encode()


def _flip_text(text: bytes, mutation: dict[str, Any]) -> bytes:
    if not text:
        return text
    at = mutation["at"] % len(text)
    return text[:at] + bytes([text[at] ^ mutation["xor"]]) + text[at + 1:]


def mutate_toc(parts: Parts, mutation: dict[str, Any]) -> None:
    """A change to the TOC JSON; the TOC is recompressed and the footer rebuilt around it."""
    compact = parts.variant.tail in ("zstd64", "annotations")
    if mutation["what"] == "text":
        parts.toc_json = _flip_text(parts.toc_json, mutation)
    else:
        doc = _load(parts.toc_json)
        if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list):
            return
        if mutation["what"] == "top":
            value = mutation["value"]
            if value.get("delete"):
                doc.pop(mutation["field"], None)
            else:
                doc[mutation["field"]] = _value(value, [], doc.get(mutation["field"]))
            nested = False
        else:
            nested = _mutate_items(doc["entries"], mutation)
        parts.toc_json = _encode(doc, compact, mutation.get("depth", 0) if nested else 0)
    parts.toc_packed = None


def mutate_tar_split(parts: Parts, mutation: dict[str, Any]) -> None:
    """A change to the tar-split records; recompressed, with the TOC's tarSplitDigest fixed."""
    if not parts.tar_split:
        return
    if mutation["what"] == "text":
        parts.tar_split = _flip_text(parts.tar_split, mutation)
    else:
        records = [_load(line) for line in parts.tar_split.splitlines()]
        nested = _mutate_items(records, mutation)
        depth = mutation.get("depth", 0) if nested else 0
        parts.tar_split = b"".join(_encode(r, True, depth) + b"\n" for r in records)
    parts.tar_split_packed = None


def data_members(data: bytes, zstd: bool) -> list[bytes]:
    """The data region cut into its gzip members or zstd frames (the rest as one piece)."""
    members, pos = [], 0
    while pos < len(data):
        inflater = zstandard.ZstdDecompressor().decompressobj() if zstd else zlib.decompressobj(31)
        try:
            inflater.decompress(data[pos:])
        except (zlib.error, zstandard.ZstdError):
            break
        end = len(data) - len(inflater.unused_data) if inflater.eof else len(data)
        members.append(data[pos:end])
        pos = end
    return members + ([data[pos:]] if pos < len(data) else [])


def mutate_members(parts: Parts, mutation: dict[str, Any]) -> None:
    """Delete, duplicate, swap or move whole gzip members or zstd frames of the data region: every
    one stays intact, so only the TOC's digests can tell."""
    members = data_members(parts.data, parts.variant.tail not in ("gzip", "legacy", "external"))
    if not members:
        return
    i, j = mutation["i"] % len(members), mutation["j"] % len(members)
    action = mutation["action"]
    if action == "delete":
        del members[i]
    elif action == "duplicate":
        members.insert(j, members[i])
    elif action == "swap":
        members[i], members[j] = members[j], members[i]
    else:
        members.insert(j, members.pop(i))
    parts.data = b"".join(members)


def _position(length: int, mutation: dict[str, Any]) -> int:
    """A byte position in ``[0, length)``: anywhere, or among the first or last 96 bytes."""
    region = mutation.get("region", "any")
    span = min(length, 96) if region != "any" else length
    if span == 0:
        return 0
    at = mutation["at"] % span
    return length - 1 - at if region == "tail" else at


def mutate_bytes(data: bytes, mutation: dict[str, Any]) -> bytes:
    """A byte-level change: flip, insert, delete, or truncate."""
    op = mutation["op"]
    if not data and op != "insert":
        return data
    at = _position(len(data), mutation)
    if op == "flip":
        return data[:at] + bytes([data[at] ^ mutation["xor"]]) + data[at + 1:]
    if op == "insert":
        return data[:at] + bytes.fromhex(mutation["data"]) + data[at:]
    if op == "delete":
        return data[:at] + data[at + mutation["length"]:]
    return data[:at] if not mutation.get("from_start") else data[at:]


BYTE_OPS = ("flip", "insert", "delete", "truncate")


def apply(parts: Parts, mutations: list[dict[str, Any]]) -> Blob:
    """The blob ``mutations`` make of ``parts`` (which is left as it was)."""
    parts = replace(parts, overrides=dict(parts.overrides))
    for mutation in mutations:
        op = mutation["op"]
        if op == "footer":
            parts.overrides[mutation["field"]] = mutation["value"]["v"]
        elif op == "toc":
            mutate_toc(parts, mutation)
        elif op == "tar_split":
            mutate_tar_split(parts, mutation)
        elif op == "member":
            mutate_members(parts, mutation)
    result = serialize(parts)
    blob, toc = result.blob, result.toc
    for mutation in mutations:
        if mutation["op"] in BYTE_OPS:
            if mutation.get("target") == "toc" and toc is not None:
                toc = mutate_bytes(toc, mutation)
            else:
                blob = mutate_bytes(blob, mutation)
    return Blob(blob, toc, result.annotations)


# --------------------------------------------------------------------------------------------
# the operations and their invariant (run in the worker)
# --------------------------------------------------------------------------------------------

class InvariantError(Exception):
    """An operation returned bytes or entries it must not have returned (``kind`` names how)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class BudgetExceeded(BaseException):
    """The case used more CPU time than ``CPU_BUDGET`` (raised from the SIGXCPU handler)."""


@dataclass
class Base:
    """A variant's valid blob, taken apart, and what reading it must give."""

    parts: Parts
    toc_digest: str
    manifest_checksum: str | None
    names: frozenset[str]
    expected: dict[str, bytes]
    """Every name that reads as a file (symlinks and hardlinks followed) -> its content."""


def build_base(name: str) -> Base:
    """Convert the layer into variant ``name`` and record what its blob holds."""
    variant = VARIANTS[name]
    out = io.BytesIO()
    result = estargz.convert(io.BytesIO(layer_tar()), out, format=variant.format, chunk_size=CHUNK_SIZE,
                             **dict(variant.options))
    blob, toc_blob = out.getvalue(), result.external_toc
    if variant.tail == "legacy":  # the same blob closed by the 47-byte stargz footer
        offset = estargz.open(blob).toc_offset
        blob = blob[:-51] + _gzip_extra_member(_hex16(offset) + b"STARGZ")
    parts = split_blob(variant, blob, toc_blob)
    rebuilt = serialize(parts)
    assert rebuilt.blob == blob and rebuilt.toc in (toc_blob, None), f"{name}: the blob does not rebuild"
    reader = estargz.open(blob, toc=toc_blob, annotations=rebuilt.annotations)
    reader.verify()
    expected = {}
    for entry in reader:
        try:
            expected[entry.name] = reader.read(entry.name)
        except estargz.EStargzError:
            continue
    for file_name, content in FILES.items():
        assert expected[file_name] == content, f"{name}: {file_name} does not read back"
    return Base(parts, reader.toc_digest, reader.manifest_checksum, frozenset(e.name for e in reader), expected)


class Check:
    """Whether bytes an operation returned for a name are verified content: the original's when
    the TOC is pinned; else the original's or bytes the opened TOC's digests match."""

    def __init__(self, base: Base, reader: estargz.Reader, *, pinned: bool) -> None:
        self.original = base.expected
        self.base_names = base.names
        self.reader = reader
        self.pinned = pinned

    def content(self, op: str, name: str, data: bytes) -> None:
        name = clean_name(name)
        original = self.original.get(name)
        if self.pinned or original == data:
            if original != data:
                raise InvariantError("altered content",
                                     f"{op} returned {len(data)} bytes for {name!r} that are not its content")
            return
        try:
            entry = self.reader.resolve(name)
        except estargz.EStargzError:
            raise InvariantError("content of no entry",
                                 f"{op} returned bytes for {name!r}, which the TOC does not resolve") from None
        if not _verified(entry, data):
            raise InvariantError("unverified content",
                                 f"{op} returned {len(data)} bytes for {name!r} that its TOC digests do not match")

    def names(self, names: list[str]) -> None:
        if self.pinned and set(names) != self.base_names:
            differ = sorted(set(names) ^ self.base_names)[:3]
            raise InvariantError("entries differ", f"the pinned TOC lists other entries: {differ}")


def _verified(entry: estargz.Entry, data: bytes) -> bool:
    """Whether ``data`` matches the entry's file digest, or each of its chunks its chunk digest."""
    if entry.digest and _sha256(data) == entry.digest:
        return True
    chunks = entry.chunks
    if not chunks:
        return not data and not entry.digest
    return all(
        c.chunk_digest and _sha256(data[c.chunk_offset:c.chunk_offset + c.chunk_size]) == c.chunk_digest
        for c in chunks) and sum(c.chunk_size for c in chunks) == len(data)


def op_iterate(reader: estargz.Reader, check: Check, scratch: Path) -> None:
    names = []
    for entry in reader:
        names.append(entry.name)
        _ = entry.mtime, entry.permissions  # properties derived from TOC fields must not raise
        reader.lookup(entry.name)
    check.names(names)


def op_read(reader: estargz.Reader, check: Check, scratch: Path) -> None:
    first_error: estargz.EStargzError | None = None
    for entry in list(reader):
        if entry.type not in ("reg", "symlink", "hardlink"):
            continue
        try:
            reader.resolve(entry.name)
        except estargz.NotFoundError:
            continue  # a dangling link: nothing to read
        try:
            data = reader.read(entry.name)
            check.content("read", entry.name, data)
            with reader.open(entry.name) as f:
                middle = len(data) // 2
                f.seek(middle)
                if f.read(100) != data[middle:middle + 100]:
                    raise InvariantError("partial read differs",
                                         f"a read at offset {middle} of {entry.name!r} differs from the whole read")
        except estargz.EStargzError as exc:
            first_error = first_error or exc
    if first_error is not None:
        raise first_error


def op_verify(reader: estargz.Reader, check: Check, scratch: Path) -> None:
    reader.verify(threads=2)


def op_unpack(reader: estargz.Reader, check: Check, scratch: Path) -> None:
    out = io.BytesIO()
    reader.unpack(out)
    try:
        with tarfile.open(fileobj=io.BytesIO(out.getvalue()), mode="r:") as tar:
            for member in tar:
                if member.isfile() and member.size:
                    check.content("unpack", member.name, tar.extractfile(member).read())  # type: ignore[union-attr]
    except tarfile.TarError as exc:
        raise InvariantError("unreadable tar", f"unpack wrote a tar that tarfile cannot read: {exc}") from None


def op_extract(reader: estargz.Reader, check: Check, scratch: Path) -> None:
    dest = scratch / "root"
    reader.extract(dest)
    escaped = [p.name for p in scratch.iterdir() if p.name != "root"]
    if escaped:
        raise InvariantError("wrote outside", f"extract wrote outside its destination: {escaped}")
    for directory, _, files in os.walk(dest):
        for file_name in files:
            path = Path(directory, file_name)
            if stat.S_ISREG(path.lstat().st_mode):
                check.content("extract", str(path.relative_to(dest)), path.read_bytes())


OPERATIONS: dict[str, Callable[[estargz.Reader, Check, Path], None]] = {
    "iterate": op_iterate, "read": op_read, "verify": op_verify, "unpack": op_unpack, "extract": op_extract,
}


def _failure(op: str, exc: BaseException) -> dict[str, Any]:
    """A failure record: its class (operation, exception, where it was raised) and traceback head."""
    frames = traceback.extract_tb(exc.__traceback__)
    inside = [f for f in frames if f"{os.sep}estargz{os.sep}" in f.filename] or frames
    where = f"{Path(inside[-1].filename).name}:{inside[-1].name}" if inside else "?"
    message = str(exc).splitlines()[0][:200] if str(exc) else ""
    lines = traceback.format_exception(exc)
    name = f"{op}: {exc.kind}" if isinstance(exc, InvariantError) else f"{op}: {type(exc).__name__} in {where}"
    return {"class": name, "op": op, "error": f"{type(exc).__name__}: {message}",
            "traceback": "".join(lines[-6:])[-1500:]}


def _run_operations(reader_factory: Callable[[], estargz.Reader], base: Base, pinned: bool, scratch: Path,
                    outcome: dict[str, Any]) -> bool:
    """Open and run every operation; record rejections and failures. Return whether it opened."""
    def attempt(op: str, action: Callable[[], Any]) -> Any:
        try:
            return action()
        except estargz.EStargzError as exc:
            outcome["rejections"].append(f"{op}: {type(exc).__name__}")
            if "\n" in str(exc) or not str(exc):
                message = f"{type(exc).__name__} without a one-line message: {str(exc)[:80]!r}"
                outcome["failures"].append(_failure(op, InvariantError("error message", message)))
        except (BudgetExceeded, KeyboardInterrupt):
            raise
        except BaseException as exc:  # noqa: BLE001 - every other exception is a finding
            outcome["failures"].append(_failure(op, exc))
        return None

    reader = attempt("open", reader_factory)
    if reader is None:
        return False
    check = Check(base, reader, pinned=pinned)
    with reader:
        for op, function in OPERATIONS.items():
            op_dir = scratch / op
            op_dir.mkdir(parents=True)
            attempt(op, lambda: function(reader, check, op_dir))  # noqa: B023
    return True


def _base(bases: dict[str, Base], variant: str) -> Base:
    if variant not in bases:
        bases[variant] = build_base(variant)
    return bases[variant]


def run_case(bases: dict[str, Base], case: dict[str, Any], scratch_root: Path) -> dict[str, Any]:
    """Mutate the variant's blob as ``case`` says and run every operation, pinned then unpinned."""
    base = _base(bases, case["variant"])
    outcome: dict[str, Any] = {"rejections": [], "failures": [], "mode": "pinned"}
    try:
        blob = apply(base.parts, case["mutations"])
    except Exception as exc:  # noqa: BLE001 - a bug of the harness, reported as a failure of its own class
        outcome["failures"].append(_failure("mutate", exc))
        return outcome
    pinned_annotations = dict(blob.annotations or {})
    if pinned_annotations:
        pinned_annotations[_CS_CHECKSUM] = base.toc_digest
    scratch = Path(tempfile.mkdtemp(dir=scratch_root))
    try:
        opened = _run_operations(
            lambda: estargz.open(blob.blob, toc=blob.toc, annotations=pinned_annotations or None,
                                 toc_digest=None if pinned_annotations else base.toc_digest),
            base, True, scratch / "pinned", outcome)
        if not opened and not outcome["failures"]:
            outcome["mode"] = "unpinned"
            outcome["rejections"].clear()
            _run_operations(lambda: estargz.open(blob.blob, toc=blob.toc, annotations=blob.annotations),
                            base, False, scratch / "unpinned", outcome)
    finally:
        _remove(scratch)
    return outcome


def _remove(path: Path) -> None:
    """Remove a scratch tree, whatever modes extraction left on it."""
    for directory, dirs, _ in os.walk(path):
        for name in dirs:
            target = os.path.join(directory, name)
            if not os.path.islink(target):
                os.chmod(target, 0o700)
    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# the worker process
# --------------------------------------------------------------------------------------------

def _on_cpu_limit(signum: int, frame: Any) -> None:
    raise BudgetExceeded(f"the case used more than {CPU_BUDGET} s of CPU")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _status_bytes(field: str) -> int:
    """A size from /proc/self/status: ``VmSize`` (address space) or ``VmHWM`` (peak resident)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) << 10
    raise RuntimeError(f"no {field} in /proc/self/status")


def _budget_failure(kind: str, message: str) -> dict[str, Any]:
    return {"class": f"budget: {kind}", "op": "case", "error": message, "traceback": ""}


def _run_budgeted(bases: dict[str, Base], case: dict[str, Any], scratch: Path) -> tuple[dict[str, Any], bool]:
    """Run one case under the CPU limit; return its outcome and whether the worker must restart."""
    start = time.process_time()
    resource.setrlimit(resource.RLIMIT_CPU, (math.ceil(_cpu_seconds() + CPU_BUDGET) + 1, resource.RLIM_INFINITY))
    restart = False
    try:
        outcome = run_case(bases, case, scratch)
    except BudgetExceeded as exc:
        outcome = {"rejections": [], "failures": [_failure("case", exc)], "mode": "pinned"}
        restart = True
    finally:
        resource.setrlimit(resource.RLIMIT_CPU, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    outcome["cpu"] = cpu = time.process_time() - start
    if cpu > CPU_BUDGET and not restart:
        outcome["failures"].append(_budget_failure("CPU", f"the case took {cpu:.2f} s of CPU"))
    # The worker's own peak: ru_maxrss would start from the parent's size at the fork.
    rss = _status_bytes("VmHWM")
    if rss > RSS_BUDGET:
        outcome["failures"].append(_budget_failure("RSS", f"the worker reached {rss >> 20} MiB resident"))
        restart = True
    restart = restart or any("MemoryError" in f["class"] for f in outcome["failures"])
    return outcome, restart


def worker_main() -> None:
    """Answer cases (one JSON line each on stdin) with outcomes (one JSON line each on stdout)."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    signal.signal(signal.SIGXCPU, _on_cpu_limit)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    bases: dict[str, Base] = {}
    with tempfile.TemporaryDirectory(prefix="estargz-fuzz-") as scratch_dir:
        scratch = Path(scratch_dir)
        for name in VARIANTS:
            run_case(bases, {"variant": name, "mutations": []}, scratch)
        resource.setrlimit(resource.RLIMIT_AS, (_status_bytes("VmSize") + AS_HEADROOM,) * 2)
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT,) * 2)
        protocol.write(json.dumps({"ready": True}) + "\n")
        for line in sys.stdin:
            outcome, restart = _run_budgeted(bases, json.loads(line), scratch)
            outcome["restart"] = restart
            protocol.write(json.dumps(outcome) + "\n")
            if restart:
                return


# --------------------------------------------------------------------------------------------
# the parent: a restartable worker, the case generator, statistics
# --------------------------------------------------------------------------------------------

#: Seconds a fresh worker may take to import estargz and build the base blobs.
START_TIMEOUT = 120.0


class Worker:
    """A long-lived worker subprocess, restarted when it dies, hangs or exceeds a budget."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: Any = None
        self._buffer = b""
        self.restarts = 0

    def _start(self) -> None:
        package_root = str(Path(estargz.__file__).resolve().parent.parent)
        env = {**os.environ, "MALLOC_ARENA_MAX": "2", "OPENBLAS_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - kept open for the worker's life
        self._buffer = b""
        self._proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                      env=env, cwd=package_root)
        ready = self._readline(START_TIMEOUT)
        if not ready or not json.loads(ready).get("ready"):
            raise RuntimeError(f"the fuzz worker did not start:\n{self._stderr_tail()}")

    def _readline(self, timeout: float) -> str | None:
        """The next line from the worker; "" if it exited, None if it stayed silent for ``timeout``."""
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            block = os.read(fd, 1 << 16)
            if not block:
                return ""
            self._buffer += block
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-1500:]

    def _stop(self) -> str:
        """Kill the worker; return the end of what it wrote to stderr."""
        assert self._proc is not None
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        for pipe in (self._proc.stdin, self._proc.stdout):
            if pipe is not None:
                pipe.close()
        tail = self._stderr_tail()
        self._stderr.close()
        self._proc = None
        return tail

    def run(self, case: dict[str, Any]) -> dict[str, Any]:
        """Run one case; a hang or a dead worker is reported as a failure of the case."""
        if self._proc is None:
            self._start()
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(json.dumps(case).encode() + b"\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            pass
        line = self._readline(WALL_TIMEOUT)
        if line:
            outcome = json.loads(line)
            if outcome.pop("restart"):
                self._stop()
                self.restarts += 1
            return outcome
        if line == "":
            self._proc.wait()
        returncode = self._proc.poll()
        tail = self._stop()
        self.restarts += 1
        if line is None:
            failure = _budget_failure("hang", f"no answer within {WALL_TIMEOUT:.0f} s")
        else:
            failure = {"class": f"worker died ({_describe_exit(returncode)})", "op": "case",
                       "error": f"exit status {returncode}", "traceback": tail}
        return {"rejections": [], "failures": [failure], "mode": "pinned", "cpu": None}

    def close(self) -> None:
        if self._proc is not None:
            self._stop()


def _describe_exit(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        return signal.Signals(-returncode).name
    return f"status {returncode}"


def outcome_class(outcome: dict[str, Any]) -> str:
    """``failure``, the first EStargzError subclass an operation raised, or ``ok`` (``-unpinned``
    when only a blob opened without the original TOC digest passed)."""
    if outcome["failures"]:
        return "failure"
    suffix = "-unpinned" if outcome["mode"] == "unpinned" else ""
    if outcome["rejections"]:
        return outcome["rejections"][0].split(": ")[1] + suffix
    return "ok" + suffix


@dataclass
class Stats:
    """Cases run for one variant, outcomes by class, and each failure class with a reproducer."""

    variant: str
    cases: int = 0
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    failures: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, case: dict[str, Any], outcome: dict[str, Any]) -> None:
        self.cases += 1
        self.outcomes[outcome_class(outcome)] += 1
        for failure in outcome["failures"]:
            known = self.failures.setdefault(failure["class"], {**failure, "case": case, "count": 0})
            known["count"] += 1
            if _case_size(case) < _case_size(known["case"]):
                known.update(failure, case=case)

    def report(self) -> str:
        """The failure classes, each with its smallest case, as a replayable description."""
        lines = []
        for name, failure in sorted(self.failures.items()):
            lines += [f"[{self.variant}] {name} ({failure['count']} cases): {failure['error']}",
                      f"  replay: python3 tests/fuzzing.py --replay '{json.dumps(failure['case'])}'",
                      *("  | " + line for line in failure["traceback"].rstrip().splitlines()[-4:])]
        return "\n".join(lines)


def _case_size(case: dict[str, Any]) -> tuple[int, int]:
    """How small a reproducer is: fewer mutations first, then shorter."""
    return len(case["mutations"]), len(json.dumps(case))


def table(all_stats: list[Stats]) -> str:
    """A markdown table of cases and outcome classes per variant."""
    classes = sorted({c for s in all_stats for c in s.outcomes}, key=lambda c: (c != "ok", c == "failure", c))
    rows = ["| variant | cases | " + " | ".join(classes) + " |", "|---|---:|" + "---:|" * len(classes)]
    for s in all_stats:
        rows.append(f"| {s.variant} | {s.cases} | " + " | ".join(str(s.outcomes[c]) for c in classes) + " |")
    return "\n".join(rows)


# --------------------------------------------------------------------------------------------
# generating cases with hypothesis
# --------------------------------------------------------------------------------------------

INTERESTING_INTS = (0, 1, -1, 2, 7, 8, 9, 511, 512, 513, 1023, 1024, 1025, 4096, 65535, 2**31 - 1, 2**31,
                    2**32 - 1, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63), 10**30)
_HUGE_HEADER = tarfile.TarInfo("x")
_HUGE_HEADER.size = 8**11 - 1
INTERESTING_STRINGS = (
    "", ".", "..", "/", "./", "../x", "../../etc/passwd", "/etc/passwd", "dir", "dir/", "dir/a.txt", "c", "link",
    "hard", "empty", "zeros", "dangling", "pipe", "dir/a.txt/x", "dir//a.txt", "./dir/../c", "a" * 300, "\x00",
    "reg", "symlink", "hardlink", "chunk", "char", "block", "fifo", "bogus",
    "sha256:" + "0" * 64, "sha256:", "sha512:" + "0" * 128, "sha256:XYZ", "md5:00",
    "1970-01-01T00:00:00Z", "2023-11-14T22:13:20.123456789Z", "9999-99-99T99:99:99Z", "yesterday",
    "zeros", "AAAA", "not base64!", base64.b64encode(bytes(1024)).decode(),
    base64.b64encode(_HUGE_HEADER.tobuf(tarfile.USTAR_FORMAT)).decode(), TOC_NAME,
)
OTHER_VALUES = (None, True, False, 1.5, 1e308, -0.0, [], {}, [1], {"a": 1}, {"user.k": "dg=="})
DEPTHS = (1, 10, 1000, 100_000)


def mutation_lists(variant: Variant) -> Any:
    """A hypothesis strategy for the mutations of one case of ``variant``."""
    from hypothesis import strategies as st

    ints = st.one_of(st.sampled_from(INTERESTING_INTS), st.integers(-(2**64), 2**65))
    strings = st.one_of(st.sampled_from(INTERESTING_STRINGS), st.text(max_size=12))
    fields = TAR_SPLIT_FIELDS + TOC_FIELDS
    values = st.one_of(
        ints.map(lambda v: {"v": v}), strings.map(lambda v: {"v": v}), st.sampled_from(OTHER_VALUES).map(lambda v: {"v": v}),
        st.tuples(st.integers(0, 40), st.sampled_from(fields)).map(lambda r: {"ref": list(r)}),
        st.integers(-1100, 1100).map(lambda d: {"delta": d}), st.just({"delete": True}))
    index = st.integers(0, 1 << 20)
    external = variant.tail == "external"
    where = {"target": st.sampled_from(("blob", "toc")) if external else st.just("blob"),
             "region": st.sampled_from(("any", "head", "tail")), "at": index}
    choices = [
        st.fixed_dictionaries({"op": st.just("flip"), **where, "xor": st.integers(1, 255)}),
        st.fixed_dictionaries({"op": st.just("insert"), **where, "data": st.binary(min_size=1, max_size=16).map(bytes.hex)}),
        st.fixed_dictionaries({"op": st.just("delete"), **where, "length": st.integers(1, 64)}),
        st.fixed_dictionaries({"op": st.just("truncate"), **where, "from_start": st.booleans()}),
    ]
    choices.append(st.fixed_dictionaries({"op": st.just("member"), "action": st.sampled_from(ENTRY_ACTIONS),
                                          "i": st.integers(0, 40), "j": st.integers(0, 40)}))
    if not external:
        footer_values = st.one_of(ints, strings) if variant.tail == "annotations" else ints
        choices.append(st.fixed_dictionaries({"op": st.just("footer"), "field": st.integers(0, 6),
                                              "value": footer_values.map(lambda v: {"v": v})}))
    for op, item_fields, top in (("toc", TOC_FIELDS, True), ("tar_split", TAR_SPLIT_FIELDS, False)):
        if op == "tar_split" and variant.format != "zstd:chunked":
            continue
        item = {"op": st.just(op), "entry": st.integers(0, 40), "field": st.sampled_from(item_fields)}
        choices += [
            st.fixed_dictionaries({**item, "what": st.just("field"), "value": values}),
            st.fixed_dictionaries({**item, "what": st.just("nest"), "depth": st.sampled_from(DEPTHS)}),
            st.fixed_dictionaries({"op": st.just(op), "what": st.just("entries"),
                                   "action": st.sampled_from(ENTRY_ACTIONS), "i": st.integers(0, 40),
                                   "j": st.integers(0, 40)}),
            st.fixed_dictionaries({"op": st.just(op), "what": st.just("text"), "at": index,
                                   "xor": st.integers(1, 255)}),
        ]
        if top:
            choices.append(st.fixed_dictionaries({"op": st.just(op), "what": st.just("top"),
                                                  "field": st.sampled_from(TOC_TOP_FIELDS), "value": values}))
    return st.lists(st.one_of(choices), min_size=1, max_size=3)


def fuzz(variant: str, seconds: float, worker: Worker, max_cases: int | None = None) -> Stats:
    """Run cases of ``variant`` for ``seconds`` or until ``max_cases``: hypothesis runs of
    ``BATCH`` cases with seeds 0, 1, 2, ..., so the n-th case is the same in every run."""
    from hypothesis import HealthCheck, Phase, given, seed, settings

    stats = Stats(variant)
    strategy = mutation_lists(VARIANTS[variant])
    deadline = time.monotonic() + seconds

    def more() -> bool:
        return time.monotonic() < deadline and (max_cases is None or stats.cases < max_cases)

    run = 0
    while more():
        @seed(run)
        @settings(max_examples=BATCH, database=None, deadline=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(strategy)
        def batch(mutations: list[dict[str, Any]]) -> None:
            if more():
                case = {"variant": variant, "mutations": mutations}
                stats.add(case, worker.run(case))

        batch()
        run += 1
    return stats


def suite_budget() -> tuple[float, int | None]:
    """Total seconds and cases per variant for the test suite: ``SUITE_CASES`` (within
    ``SUITE_MAX_SECONDS``), or as many cases as ``ESTARGZ_FUZZ_SECONDS`` allows."""
    seconds = os.environ.get(SECONDS_ENV)
    return (float(seconds), None) if seconds else (SUITE_MAX_SECONDS, SUITE_CASES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fuzz estargz's readers with mutated blobs of every format.")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=None,
                        help=f"total time, split across the variants (default: ${SECONDS_ENV} or {DEFAULT_SECONDS:.0f})")
    parser.add_argument("--cases", type=int, default=None,
                        help=f"stop each variant after this many cases (the suite runs {SUITE_CASES})")
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS), help="only these variants")
    parser.add_argument("--replay", metavar="CASE", help="run one case (JSON, as a failure report prints it)")
    args = parser.parse_args(argv)
    if args.worker:
        worker_main()
        return 0
    worker = Worker()
    try:
        if args.replay:
            print(json.dumps(worker.run(json.loads(args.replay)), indent=2))
            return 0
        variants = args.variant or list(VARIANTS)
        seconds = args.seconds if args.seconds is not None else float(os.environ.get(SECONDS_ENV) or DEFAULT_SECONDS)
        all_stats = [fuzz(name, seconds / len(variants), worker, args.cases) for name in variants]
    finally:
        worker.close()
    print(table(all_stats))
    print(f"\nworker restarts: {worker.restarts}")
    reports = [s.report() for s in all_stats if s.failures]
    print("\n".join(reports) if reports else "no failures")
    return 1 if reports else 0


if __name__ == "__main__":
    sys.exit(main())
