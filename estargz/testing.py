"""Container layers for tests: hypothesis strategies, a tar renderer, and what a reader must show.

A :class:`Layer` is the ordered list of :class:`LayerEntry` records a layer tar holds.
:func:`tar_bytes` renders it with Python's :mod:`tarfile`; :func:`expected_entries` describes what
an eStargz reader must return for it after conversion. The strategies (:func:`layers`,
:func:`layers_with_duplicates`, :func:`layer_entries`) need hypothesis, the ``testing`` extra
(``pip install 'estargz[testing]'``); the model, :func:`tar_bytes` and :func:`expected_entries`
do not, and ``import estargz`` never imports this module.

>>> import io, estargz                                             # doctest: +SKIP
>>> from hypothesis import given
>>> from estargz.testing import layers, tar_bytes, expected_entries
>>> @given(layers(chunk_size=5))
... def test_roundtrip(layer):
...     blob = io.BytesIO()
...     estargz.convert(io.BytesIO(tar_bytes(layer)), blob, chunk_size=5)
...     reader = estargz.open(blob.getvalue())
...     for name, want in expected_entries(layer).items():
...         assert reader.lookup(name).type == ("dir" if want.implicit else want.resolved_type)
"""

from __future__ import annotations

import io
import itertools
import math
import posixpath
import random
import struct
import tarfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

__all__ = [
    "TAR_FORMATS",
    "KINDS",
    "RESERVED_NAMES",
    "ExpectedEntry",
    "Layer",
    "LayerEntry",
    "check_blob",
    "clean_name",
    "expected_entries",
    "expected_modtime",
    "layer_entries",
    "layers",
    "layers_with_duplicates",
    "tar_bytes",
    "unrepresentable",
]

KINDS = ("reg", "dir", "symlink", "hardlink", "char", "block", "fifo")
#: The tar formats a generated :class:`Layer` comes in (not the layer formats of ``estargz.FORMATS``).
TAR_FORMATS = ("ustar", "pax", "gnu")
#: Root-level names an eStargz writer drops from its input (it writes its own landmark and TOC).
RESERVED_NAMES = frozenset({".prefetch.landmark", ".no.prefetch.landmark", "stargz.index.json"})
#: The default total of file contents in one generated layer (hypothesis-friendly).
MAX_CONTENT = 64 << 10

_TARFILE_FORMATS = {"ustar": tarfile.USTAR_FORMAT, "pax": tarfile.PAX_FORMAT, "gnu": tarfile.GNU_FORMAT}
_TAR_TYPES = {
    "reg": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE, "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}
_XATTR_PREFIX = "SCHILY.xattr."


# -- model -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerEntry:
    """One tar entry. ``name`` and ``linkname`` are raw (``./a``, ``/a`` and ``a`` name one path).

    ``mtime`` is whole seconds, or a float with a fractional part (kept only by the PAX format;
    ustar and GNU store its floor). ``content`` is for regular files only; ``devmajor`` and
    ``devminor`` for char and block devices; ``xattrs`` (PAX only) become ``SCHILY.xattr.`` records.
    """

    name: str
    kind: str = "reg"
    content: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    uname: str = ""
    gname: str = ""
    mtime: int | float = 0
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: Mapping[str, bytes] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown entry kind {self.kind!r}")
        if self.content and self.kind != "reg":
            raise ValueError(f"a {self.kind} entry has no content")
        if self.kind in ("symlink", "hardlink") and not self.linkname:
            raise ValueError(f"a {self.kind} entry needs a linkname")

    @property
    def path(self) -> str:
        """The cleaned name, as readers index it ("" is the root directory)."""
        return clean_name(self.name)


@dataclass(frozen=True)
class Layer:
    """A layer: entries in tar order, and the tar format they are written in."""

    entries: tuple[LayerEntry, ...] = ()
    format: str = "pax"

    def __post_init__(self) -> None:
        if self.format not in TAR_FORMATS:
            raise ValueError(f"unknown tar format {self.format!r}")

    @property
    def content_size(self) -> int:
        """Total bytes of file contents."""
        return sum(len(e.content) for e in self.entries)


@dataclass(frozen=True)
class ExpectedEntry:
    """What a reader must return for one path after conversion.

    Field names follow :class:`estargz.Entry`. For a hardlink the fields describe the hardlink's
    own TOC entry (what iteration yields); ``target`` names the regular file it resolves to (what
    ``lookup`` returns) and ``content`` is that file's content. ``implicit`` marks a directory no
    entry declares (only ``type`` is meaningful; readers make it mode 0o755).
    """

    name: str
    type: str
    size: int = 0
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    user_name: str = ""
    group_name: str = ""
    modtime: str = ""
    link_name: str = ""
    dev_major: int = 0
    dev_minor: int = 0
    xattrs: Mapping[str, bytes] = field(default_factory=dict, hash=False)
    content: bytes | None = None
    target: str | None = None
    resolved_type: str = ""
    """The type ``lookup`` returns: the target's for a hardlink, else ``type``."""
    implicit: bool = False
    raw_name: str = ""

    def __post_init__(self) -> None:
        if not self.resolved_type:
            object.__setattr__(self, "resolved_type", self.type)


def clean_name(name: str) -> str:
    """``path.Clean("/" + name)`` without the leading slash: the name readers index."""
    return posixpath.normpath("/" + name).lstrip("/")


def expected_modtime(mtime: int | float, format: str = "pax") -> str:
    """The TOC ``modtime`` of an entry: RFC 3339 UTC rounded to the second, "" in the epoch's second.

    Go's rule: empty when ``floor(mtime) == 0``, else rounded half up. Only PAX keeps fractions.
    """
    value = Fraction(mtime) if format == "pax" else Fraction(math.floor(mtime))
    if math.floor(value) == 0:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(math.floor(value + Fraction(1, 2))))


def _split_ustar(raw: bytes) -> bool:
    """Whether a long name fits USTAR's prefix (155) + name (100) split at a slash."""
    parts = raw.split(b"/")
    return any(len(b"/".join(parts[:i])) <= 155 and len(b"/".join(parts[i:])) <= 100
               for i in range(1, len(parts)))


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _pax_unrepresentable(entry: LayerEntry) -> str | None:
    if not 0 <= entry.devmajor < 8 ** 7 or not 0 <= entry.devminor < 8 ** 7:
        return "device numbers too large"
    if entry.uid < 0 or entry.gid < 0:
        return "negative owner"
    return None


def unrepresentable(entry: LayerEntry, format: str) -> str | None:
    """Why ``entry`` cannot be written in ``format`` by :func:`tar_bytes`, or None if it can."""
    if format == "pax":
        return _pax_unrepresentable(entry)
    name = _raw(entry.name + ("/" if entry.kind == "dir" and not entry.name.endswith("/") else ""))
    octal7, base256_7 = 8 ** 7, 256 ** 7
    if entry.xattrs:
        return "xattrs need PAX"
    if len(_raw(entry.uname)) > 32 or len(_raw(entry.gname)) > 32:
        return "owner name longer than 32 bytes"
    if format == "gnu":
        limit, mtime_ok = base256_7, -(256 ** 11) <= math.floor(entry.mtime) < 256 ** 11
    else:
        limit, mtime_ok = octal7, 0 <= math.floor(entry.mtime) < 8 ** 11
        if len(name) > 100 and not _split_ustar(name):
            return "name does not fit USTAR"
        if len(_raw(entry.linkname)) > 100:
            return "linkname longer than 100 bytes"
    if not mtime_ok:
        return "mtime out of range"
    if not all(0 <= v < limit for v in (entry.uid, entry.gid, entry.devmajor, entry.devminor)):
        return "numeric field out of range"
    return None


def tar_bytes(layer: Layer, format: str | None = None) -> bytes:
    """Render ``layer`` as an uncompressed tar with :mod:`tarfile` (``format`` defaults to the layer's).

    Raises ValueError if an entry cannot be represented in the format (see :func:`unrepresentable`).
    """
    format = format or layer.format
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=_TARFILE_FORMATS[format],
                      encoding="utf-8", errors="surrogateescape") as tar:
        for entry in layer.entries:
            problem = unrepresentable(entry, format)
            if problem:
                raise ValueError(f"{entry.name!r} cannot be written as {format}: {problem}")
            info = tarfile.TarInfo(entry.name)
            info.type = _TAR_TYPES[entry.kind]
            info.mode = entry.mode
            info.uid, info.gid = entry.uid, entry.gid
            info.uname, info.gname = entry.uname, entry.gname
            info.mtime = entry.mtime if format == "pax" else math.floor(entry.mtime)
            info.linkname = entry.linkname
            info.devmajor, info.devminor = entry.devmajor, entry.devminor
            info.pax_headers = {_XATTR_PREFIX + k: v.decode("utf-8", "surrogateescape")
                                for k, v in entry.xattrs.items()}
            info.size = len(entry.content)
            tar.addfile(info, io.BytesIO(entry.content) if entry.kind == "reg" else None)
    return buf.getvalue()


def expected_entries(layer: Layer, format: str | None = None) -> dict[str, ExpectedEntry]:
    """Cleaned path -> what a reader must return, in the order a converter writes the entries.

    ``format`` is the one the layer was rendered in by :func:`tar_bytes` (default: the layer's).

    The last entry of a duplicated path wins and takes the later position; root-level
    :data:`RESERVED_NAMES` are dropped; missing ancestors appear as ``implicit`` directories
    (after the explicit entries); the root ``""`` is always present. User and group names are as
    written: the TOC omits a name equal to the previous one for the same id, so a layer where an
    id has an empty name after a non-empty one reads back differently (the strategies avoid that).
    Raises ValueError for hardlinks to missing paths, hardlink cycles and non-directory parents.
    """
    last: dict[str, LayerEntry] = {}
    for entry in layer.entries:
        path = entry.path
        if path in RESERVED_NAMES:
            continue
        last.pop(path, None)
        last[path] = entry
    out: dict[str, ExpectedEntry] = {}
    for path, e in last.items():
        target = _link_target(last, path) if e.kind == "hardlink" else None
        content = None
        if e.kind == "reg":
            content = e.content
        elif target is not None and last[target].kind == "reg":
            content = last[target].content
        out[path] = ExpectedEntry(
            name=path, type=e.kind, size=len(e.content) if e.kind == "reg" else 0,
            mode=e.mode & 0o7777, uid=e.uid, gid=e.gid, user_name=e.uname, group_name=e.gname,
            modtime=expected_modtime(e.mtime, format or layer.format),
            link_name=e.linkname if e.kind in ("symlink", "hardlink") else "",
            dev_major=e.devmajor if e.kind in ("char", "block") else 0,
            dev_minor=e.devminor if e.kind in ("char", "block") else 0,
            xattrs=dict(e.xattrs), content=content, target=target,
            resolved_type=last[target].kind if target is not None else e.kind, raw_name=e.name)
    _add_parents(out)
    return out


def _link_target(last: dict[str, LayerEntry], path: str) -> str:
    """The path a hardlink resolves to, through other hardlinks."""
    seen = {path}
    while last[path].kind == "hardlink":
        path = clean_name(last[path].linkname)
        if path not in last:
            raise ValueError(f"hardlink to missing {path!r}")
        if path in seen:
            raise ValueError(f"hardlink cycle through {path!r}")
        seen.add(path)
    return path


def _add_parents(out: dict[str, ExpectedEntry]) -> None:
    """Add the missing ancestors as implicit directories; refuse a non-directory parent."""
    for path in list(out):
        parent = path
        while parent:
            parent = posixpath.dirname(parent)
            known = out.get(parent)
            if known is None:
                out[parent] = ExpectedEntry(name=parent, type="dir", implicit=True)
            elif known.resolved_type != "dir":
                raise ValueError(f"{parent!r} is a {known.type} but has entries below it")


# -- strategies ------------------------------------------------------------------------------
_CHECKED_FIELDS = ("type", "size", "mode", "uid", "gid", "link_name", "dev_major", "dev_minor", "xattrs")
_ESTARGZ_FIELDS = ("user_name", "group_name", "modtime")


def check_blob(blob: Any, layer: Layer, *, format: str | None = None, **open_options: Any) -> None:
    """Check that a blob (written by any implementation) holds ``layer``: a conformance test.

    ``blob`` is anything :func:`estargz.open` takes, with ``open_options`` (``toc``,
    ``annotations``, ``toc_digest``). Every path of the layer must be there with its metadata and
    contents, hardlinks must resolve to their target, and every chunk and file digest must verify.
    Owner names and rounded modification times are checked for the eStargz TOC schema only
    (containers/storage's TOC has no names and keeps nanoseconds). Raises AssertionError.
    """
    import estargz

    expected = expected_entries(layer, format)
    with estargz.open(blob, **open_options) as reader:
        fields = _CHECKED_FIELDS + (() if reader.format == estargz.FORMAT_ZSTD_CHUNKED else _ESTARGZ_FIELDS)
        listed = {entry.name: entry for entry in reader}
        for name, want in expected.items():
            assert name in reader, f"{name!r} is missing"
            got = reader.lookup(name)
            if want.implicit:
                assert got.type == "dir", f"{name!r}: {got.type}, expected an implicit directory"
                continue
            own = listed.get(name, got)
            for field_name in fields:
                have, should = getattr(own, field_name), getattr(want, field_name)
                assert have == should, f"{name!r}: {field_name} is {have!r}, expected {should!r}"
            if want.type == "hardlink" and want.target is not None:
                assert got is reader.lookup(want.target), f"{name!r} does not resolve to {want.target!r}"
            if want.content is not None:
                assert reader.read(name) == want.content, f"{name!r}: contents differ"
        reader.verify()


def _hypothesis() -> Any:
    try:
        from hypothesis import strategies
    except ImportError:  # pragma: no cover
        raise ImportError("estargz.testing strategies need hypothesis: "
                          "pip install 'estargz[testing]'") from None
    return strategies


_WORDS = (
    "etc", "usr", "bin", "lib", "a", "b", "file.txt", "README", "libc.so.6", "config.json",
    ".hidden", "...", "a b", "tab\tname", "new\nline", "q?", "star*", "<>&", "100%", "#hash",
    "~tilde", "-dash", "é", "ünïcödé", "日本語", "😀", "Ω≈ç", "\u2028sep", "stargz.index.json",
    ".prefetch.landmark", ".no.prefetch.landmark",
)
_USER_NAMES = ("root", "daemon", "nobody", "alice", "bob", "ünïcödé", "user_with_a_32_byte_long_name_x")
_XATTR_NAMES = ("user.comment", "user.ünïcödé", "user.empty", "security.capability",
                "security.selinux", "trusted.overlay.opaque")
#: A VFS_CAP_REVISION_2 capability set: cap_net_bind_service, effective.
_CAPABILITY = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)
_XATTR_VALUES = (b"", b"y", _CAPABILITY, b"system_u:object_r:bin_t:s0\x00",
                 "ünï".encode(), b"\x00\xff\x80\xfe binary \x00")
_BIG_IDS = (2 ** 21 - 1, 2 ** 21, 2 ** 24 + 7, 2 ** 31 - 1, 2 ** 32 - 1, 2 ** 40 + 3)
_MODES = (0o644, 0o755, 0o600, 0o4755, 0o2755, 0o1777, 0o000, 0o777, 0o7777)
_CHUNK_UNIT = 4096  # sizes near multiples of this when no chunk size is given


def _id_strategy(st: Any, format: str) -> Any:
    limit = 8 ** 7 if format == "ustar" else 256 ** 7
    special = [i for i in (0, 1, 33, 1000, 65534) + _BIG_IDS if i < limit]
    return st.one_of(st.sampled_from(special), st.integers(0, limit - 1))


def _mtime_strategy(st: Any, format: str) -> Any:
    top = 8 ** 11 - 1 if format == "ustar" else 2 ** 34
    special = (1700000000, 0, 1, 2 ** 31 - 1, 2 ** 31, 8 ** 11 - 1, 2 ** 34)
    whole = st.one_of(st.sampled_from([t for t in special if t <= top]), st.integers(0, top))
    if format != "ustar":  # before 1970: PAX decimal or GNU base-256
        whole = st.one_of(whole, st.integers(-(2 ** 34), -1))
    if format != "pax":
        return whole
    eighths = st.tuples(whole, st.integers(1, 7)).map(lambda t: t[0] + t[1] / 8)
    return st.one_of(whole, eighths)


def _component_strategy(st: Any, format: str) -> Any:
    # Code points 1-0xD7FF: no NUL, no surrogates; "/" is replaced, so a component stays one.
    alphabet = st.characters(min_codepoint=1, max_codepoint=0xD7FF)
    random_text = st.text(alphabet, min_size=1, max_size=12).map(lambda s: s.replace("/", "_"))
    top = 130 if format != "ustar" else 99  # a single ustar name field holds 100 bytes
    long = st.integers(60, top).map(lambda n: ("long-" * 30)[:n])
    # Mostly words, often random text, sometimes a long component (shrinks towards words).
    pick = st.integers(0, 9).flatmap(lambda i: st.sampled_from(_WORDS) if i < 6 else
                                     random_text if i < 9 else long)
    return pick.filter(lambda c: c not in (".", ".."))


class _Builder:
    """Draws one consistent layer, entry by entry, tracking paths, directories and link targets."""

    def __init__(self, draw: Callable[[Any], Any], format: str, *, chunk_size: int | None,
                 max_content: int, implicit_dirs: bool, reserved_names: bool,
                 kinds: Sequence[str] = KINDS) -> None:
        st = self.st = _hypothesis()
        self.draw = draw
        self.format = format
        self.unit = chunk_size or _CHUNK_UNIT
        self.budget = max_content
        self.implicit_dirs = implicit_dirs
        self.reserved_names = reserved_names
        weighted = ("reg",) * 4 + ("dir",) * 2 + ("symlink", "hardlink", "char", "block", "fifo",
                                                  "whiteout", "opaque")
        self.kinds = [k for k in weighted if k in kinds or
                      (k in ("whiteout", "opaque") and "reg" in kinds)]
        self.entries: list[LayerEntry] = []
        self.taken: set[str] = {""}
        self.dirs: list[str] = [""]
        self.implicit: list[str] = []
        self.link_targets: list[LayerEntry] = []
        self.style = draw(st.sampled_from(("plain", "dot", "mixed")))
        self.components = _component_strategy(st, format)
        self.users = self._owners()
        self.groups = self._owners()
        self.epoch = draw(_mtime_strategy(st, format))

    # -- small draws ---------------------------------------------------------------------
    def chance(self, n: int) -> bool:
        """True about once in ``n`` draws (shrinks to False)."""
        drawn: int = self.draw(self.st.integers(0, n - 1))
        return drawn == n - 1

    def _owners(self) -> list[tuple[int, tuple[str, ...]]]:
        st = self.st
        names = _USER_NAMES + (("a_pax_only_user_name_longer_than_32_bytes",) if self.format == "pax" else ())
        ids = self.draw(st.lists(_id_strategy(st, self.format), min_size=1, max_size=3, unique=True))
        # An id either never has a name or always has one: an empty name after a non-empty one
        # for the same id does not survive the TOC (see expected_entries).
        name_sets = st.one_of(st.just(("",)), st.lists(st.sampled_from(names), min_size=1,
                                                         max_size=2, unique=True).map(tuple))
        return [(i, self.draw(name_sets)) for i in ids]

    def _owner(self, table: list[tuple[int, tuple[str, ...]]]) -> tuple[int, str]:
        ident, names = self.draw(self.st.sampled_from(table))
        return ident, self.draw(self.st.sampled_from(names))

    def _meta(self, kind: str) -> dict[str, Any]:
        st, draw = self.st, self.draw
        uid, uname = self._owner(self.users)
        gid, gname = self._owner(self.groups)
        default_mode = 0o755 if kind == "dir" else 0o644
        mode = draw(st.one_of(st.just(default_mode), st.sampled_from(_MODES), st.integers(0, 0o7777)))
        mtime = self.epoch if not self.chance(3) else draw(_mtime_strategy(st, self.format))
        xattrs: dict[str, bytes] = {}
        if self.format == "pax" and self.chance(3):
            values = st.one_of(st.sampled_from(_XATTR_VALUES), st.binary(max_size=24))
            xattrs = draw(st.dictionaries(st.sampled_from(_XATTR_NAMES), values, min_size=1, max_size=3))
        return dict(mode=mode, uid=uid, gid=gid, uname=uname, gname=gname, mtime=mtime, xattrs=xattrs)

    def _content(self) -> bytes:
        st, draw, unit = self.st, self.draw, self.unit
        shape = draw(st.sampled_from(("small", "empty", "chunks", "large", "zeros")))
        if shape == "small":
            data: bytes = draw(st.binary(max_size=min(64, self.budget)))
            self.budget -= len(data)
            return data
        if shape == "empty":
            size = 0
        elif shape == "chunks":  # exactly k chunks, or one byte either side
            size = draw(st.integers(1, 4)) * unit + draw(st.sampled_from((0, -1, 1)))
        else:
            size = draw(st.integers(1, 16 << 10))
        size = max(0, min(size, self.budget))
        fill = "zeros" if shape == "zeros" else draw(st.sampled_from(("random", "zero-run", "text", "zeros")))
        rng = random.Random(draw(st.integers(0, 2 ** 32 - 1)))
        if fill == "zeros":
            data = bytes(size)
        elif fill == "text":
            pattern = rng.choice((b"hello, world\n", b"#!/bin/sh\nexit 0\n", b"\x00\x01\x02\x03"))
            data = (pattern * (size // len(pattern) + 1))[:size]
        elif fill == "zero-run":
            head, run = rng.randint(0, size), rng.randint(0, size)
            data = (rng.randbytes(head) + bytes(run) + rng.randbytes(size))[:size]
        else:
            data = rng.randbytes(size)
        self.budget -= len(data)
        return data

    # -- names ---------------------------------------------------------------------------
    def _fits(self, name: str, kind: str, linkname: str = "") -> bool:
        probe = LayerEntry(name=name, kind="dir" if kind == "dir" else "fifo")
        return unrepresentable(probe, self.format) is None and (
            self.format != "ustar" or len(linkname.encode()) <= 100)

    def _raw(self, path: str, kind: str) -> str:
        """A raw spelling of ``path`` in the layer's style."""
        if self.style == "plain":
            forms = [path]
        elif self.style == "dot":
            forms = ["./" + path]
        else:
            forms = [path, "./" + path, "/" + path]
        raw = self.draw(self.st.sampled_from(forms))
        return raw if self._fits(raw, kind) else path

    def _fresh(self, parent: str, component: str, kind: str) -> str:
        """An unused path for ``component`` under ``parent`` (else a plain one) the format can write."""
        if parent == "" and component in RESERVED_NAMES and not self.reserved_names:
            component += "_"
        fallback = f"n{len(self.entries)}"
        candidates = itertools.chain(
            (posixpath.join(parent, component + suffix) for suffix in ("", ".1", ".2", ".3")),
            (posixpath.join(where, f"{fallback}.{n}") for n in itertools.count() for where in (parent, "")))
        return next(p for p in candidates if p not in self.taken and self._fits(p, kind))

    def _parent(self) -> str:
        parent: str = self.draw(self.st.sampled_from(self.dirs))
        if self.implicit_dirs and self.chance(6):
            for _ in range(self.draw(self.st.integers(1, 2))):
                path = self._fresh(parent, self.draw(self.components), "dir")
                if path in RESERVED_NAMES:
                    break
                self.taken.add(path)
                self.dirs.append(path)
                self.implicit.append(path)
                parent = path
        return parent

    # -- entries -------------------------------------------------------------------------
    def add_root(self) -> None:
        self.entries.append(LayerEntry(name=self.draw(self.st.sampled_from((".", "./", "/"))),
                                       kind="dir", **self._meta("dir")))

    def add_one(self) -> None:
        st, draw = self.st, self.draw
        kind = draw(st.sampled_from(self.kinds))
        if kind == "hardlink" and not any(self._fits(t.name, "fifo", t.name) for t in self.link_targets):
            kind = "reg"
        kind, path = self._new_path(kind, self._parent())
        self.taken.add(path)
        extra = self._kind_fields(kind, path)
        entry = LayerEntry(name=self._raw(path, kind), kind=kind, **self._meta(kind), **extra)
        self.entries.append(entry)
        if kind in ("reg", "hardlink") and path not in RESERVED_NAMES:
            self.link_targets.append(entry)

    def _new_path(self, kind: str, parent: str) -> tuple[str, str]:
        """The tar kind and path of a new entry of ``kind`` (whiteouts and opaque markers are
        regular files)."""
        st, draw = self.st, self.draw
        if kind == "opaque":
            path = posixpath.join(parent, ".wh..wh..opq")
            if not parent or path in self.taken or not self._fits(path, "reg"):
                path = self._fresh(parent, ".wh." + draw(self.components), "reg")
            return "reg", path
        if kind == "whiteout":
            return "reg", self._fresh(parent, ".wh." + draw(self.components), "reg")
        if kind == "dir" and self.implicit and self.chance(3):
            return kind, self.implicit.pop(draw(st.integers(0, len(self.implicit) - 1)))
        return kind, self._fresh(parent, draw(self.components), kind)

    def _kind_fields(self, kind: str, path: str) -> dict[str, Any]:
        """The fields particular to the kind of a new entry: content, link target, devices."""
        st, draw = self.st, self.draw
        extra: dict[str, Any] = {}
        if kind == "reg" and not posixpath.basename(path).startswith(".wh."):
            extra["content"] = self._content()
        elif kind == "dir" and path not in RESERVED_NAMES:  # a converter drops it
            self.dirs.append(path)
        elif kind == "symlink":
            extra["linkname"] = self._symlink_target(path)
        elif kind == "hardlink":
            targets = [t for t in self.link_targets if self._fits(t.name, "fifo", t.name)]
            target = draw(st.sampled_from(targets))
            forms = [target.name, target.path, "./" + target.path]
            extra["linkname"] = next(f for f in (draw(st.sampled_from(forms)), target.name)
                                     if self.format != "ustar" or len(f.encode()) <= 100)
        elif kind in ("char", "block"):
            limit = 2 ** 32 if self.format == "gnu" else 8 ** 7
            devs = st.one_of(st.sampled_from((0, 1, 5, 8, 259, 4095)), st.integers(0, limit - 1))
            extra["devmajor"], extra["devminor"] = draw(devs), draw(devs)
        return extra

    def _symlink_target(self, path: str) -> str:
        st, draw = self.st, self.draw
        existing = sorted(self.taken - {""}) or ["etc"]
        relative = st.sampled_from(existing).map(
            lambda p: posixpath.relpath(p, posixpath.dirname(path) or "."))
        options = [relative, st.sampled_from(existing).map(lambda p: "/" + p),
                   st.sampled_from(("../../etc/passwd", "/bin/busybox", ".", "dangling/ü", "x" * 150)),
                   self.components]
        target = draw(st.one_of(*options))
        return target if self.format != "ustar" or len(target.encode()) <= 100 else "target"

    def add_duplicate(self) -> None:
        """Re-declare an existing path later in the layer, with new metadata (and content)."""
        st, draw = self.st, self.draw
        index = draw(st.integers(0, len(self.entries) - 1))
        old = self.entries[index]
        path = old.path
        name = draw(st.sampled_from((old.name, path or ".", "./" + path)))
        if not self._fits(name, old.kind):
            name = old.name
        meta = self._meta(old.kind)
        changes: dict[str, Any] = {}
        if old.kind == "reg" and not posixpath.basename(path).startswith(".wh."):
            changes["content"] = self._content()
        elif old.kind == "symlink":
            changes["linkname"] = self._symlink_target(path)
        elif old.kind in ("char", "block"):
            changes["devmajor"], changes["devminor"] = old.devminor, old.devmajor
        entry = LayerEntry(**{**old.__dict__, **meta, **changes, "name": name})
        self.entries.insert(draw(st.integers(index + 1, len(self.entries))), entry)


def _check(formats: Sequence[str], max_content: int) -> tuple[str, ...]:
    formats = tuple(formats)
    if not formats or any(f not in TAR_FORMATS for f in formats):
        raise ValueError(f"formats must be a non-empty subset of {TAR_FORMATS}")
    if max_content < 0:
        raise ValueError("max_content must not be negative")
    return formats


def layers(*, min_entries: int = 0, max_entries: int = 20, formats: Sequence[str] = TAR_FORMATS,
           chunk_size: int | None = None, max_content: int = MAX_CONTENT,
           implicit_dirs: bool = True, reserved_names: bool = False) -> SearchStrategy[Layer]:
    """Consistent layers whose cleaned names are unique.

    Parents are directories, declared before or after their children or left implicit
    (``implicit_dirs``); hardlinks point at earlier regular files or hardlinks; there are
    whiteouts, opaque markers, long and non-ASCII names, xattrs (PAX), big ids and mtimes beyond
    ustar range (PAX, GNU base-256). File sizes include 0, a few bytes, k * ``chunk_size`` and
    one byte either side, and multi-chunk files; contents total at most ``max_content`` bytes.
    With ``reserved_names`` a root-level landmark or ``stargz.index.json`` may appear (a
    converter drops it).
    """
    st = _hypothesis()
    formats = _check(formats, max_content)

    def draw_layer(draw: Callable[[Any], Any]) -> Layer:
        return _build(draw, draw(st.sampled_from(formats)), min_entries, max_entries, 0, 0,
                      chunk_size=chunk_size, max_content=max_content,
                      implicit_dirs=implicit_dirs, reserved_names=reserved_names)

    return cast("SearchStrategy[Layer]", st.composite(draw_layer)())


def layers_with_duplicates(*, min_duplicates: int = 1, max_duplicates: int = 4,
                           min_entries: int = 1, max_entries: int = 16,
                           formats: Sequence[str] = TAR_FORMATS, chunk_size: int | None = None,
                           max_content: int = MAX_CONTENT, implicit_dirs: bool = True,
                           reserved_names: bool = False) -> SearchStrategy[Layer]:
    """Like :func:`layers`, then some paths are declared again later (same kind, maybe spelled
    differently, new metadata and content): the last declaration must win."""
    st = _hypothesis()
    formats = _check(formats, max_content)

    def draw_layer(draw: Callable[[Any], Any]) -> Layer:
        return _build(draw, draw(st.sampled_from(formats)), max(1, min_entries), max_entries,
                      min_duplicates, max_duplicates, chunk_size=chunk_size,
                      max_content=max_content, implicit_dirs=implicit_dirs,
                      reserved_names=reserved_names)

    return cast("SearchStrategy[Layer]", st.composite(draw_layer)())


def _build(draw: Callable[[Any], Any], format: str, min_entries: int, max_entries: int,
           min_duplicates: int, max_duplicates: int, **options: Any) -> Layer:
    st = _hypothesis()
    builder = _Builder(draw, format, **options)
    count = draw(st.integers(min_entries, max_entries))
    if count and builder.chance(4):
        builder.add_root()
    while len(builder.entries) < count:
        builder.add_one()
    if builder.entries:
        for _ in range(draw(st.integers(min_duplicates, max_duplicates))):
            builder.add_duplicate()
    return Layer(tuple(builder.entries), format)


def layer_entries(*, format: str = "pax", kinds: Sequence[str] = ("reg", "dir", "symlink", "char", "block", "fifo"),
                  chunk_size: int | None = None, max_content: int = 16 << 10) -> SearchStrategy[LayerEntry]:
    """Single entries that ``format`` can write, of the given kinds (a lone hardlink has no target,
    so ``"hardlink"`` yields regular files)."""
    st = _hypothesis()
    _check((format,), max_content)
    if not kinds or any(k not in KINDS for k in kinds):
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}")

    def draw_entry(draw: Callable[[Any], Any]) -> LayerEntry:
        builder = _Builder(draw, format, chunk_size=chunk_size, max_content=max_content,
                           implicit_dirs=True, reserved_names=False, kinds=kinds)
        builder.add_one()
        return builder.entries[-1]

    return cast("SearchStrategy[LayerEntry]", st.composite(draw_entry)())
