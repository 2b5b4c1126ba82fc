"""Property tests: random layers from estargz.testing, converted and read back."""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import posixpath
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from typing import Iterator

import pytest
import zstandard
from helpers import sha256
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import estargz
from estargz import NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TOC_NAME, NotFoundError, toc
from estargz.testing import (
    RESERVED_NAMES,
    ExpectedEntry,
    Layer,
    LayerEntry,
    clean_name,
    expected_entries,
    layers,
    layers_with_duplicates,
    tar_bytes,
)

#: ESTARGZ_PROPERTY_SCALE=10 runs ten times as many examples (e.g. in a nightly job).
SCALE = float(os.environ.get("ESTARGZ_PROPERTY_SCALE", "1"))


def examples(n: int) -> int:
    return max(1, round(n * SCALE))


PROPERTY = settings(max_examples=examples(60), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FIELDS = ("type", "size", "mode", "uid", "gid", "user_name", "group_name", "modtime",
          "link_name", "dev_major", "dev_minor", "xattrs")

chunk_sizes = st.one_of(st.sampled_from((1, 3, 7, 512, 4096, 64 << 10)), st.integers(1, 64 << 10))
levels = st.integers(0, 9)


def _budget(chunk_size: int) -> int:
    """Content budget: at most ~200 chunks per layer, so tiny chunk sizes stay fast."""
    return min(64 << 10, 200 * chunk_size)


def random_layers(chunk_size: int, **kwargs: object) -> st.SearchStrategy[Layer]:
    return layers(chunk_size=chunk_size, max_content=_budget(chunk_size), **kwargs)


def convert_bytes(tar: bytes, **options: object) -> tuple[bytes, estargz.BuildResult]:
    options.setdefault("threads", 1)
    out = io.BytesIO()
    result = estargz.convert(io.BytesIO(tar), out, **options)  # type: ignore[arg-type]
    return out.getvalue(), result


def explicit_order(expected: dict[str, ExpectedEntry]) -> list[str]:
    """Declared paths in writer order, without the root (readers do not list it)."""
    return [n for n, e in expected.items() if not e.implicit and n]


def link_counts(expected: dict[str, ExpectedEntry]) -> dict[str, int]:
    """num_link per resolved path: names of a file; 2 + subdirectories of a directory."""
    counts = {n: 2 if e.resolved_type == "dir" else 0 for n, e in expected.items() if e.type != "hardlink"}
    for name, e in expected.items():
        if e.resolved_type == "dir":
            if name:
                counts[posixpath.dirname(name)] += 1
        else:
            counts[e.target or name] += 1
    return counts


def check_reader(reader: estargz.Reader, expected: dict[str, ExpectedEntry],
                 data: st.DataObject | None = None) -> None:
    """Every expected path is there with its metadata and contents; hardlinks share their target."""
    listed = {e.name: e for e in reader}
    for name, count in link_counts(expected).items():
        assert reader.lookup(name).num_link == count, (name, reader.lookup(name).num_link, count)
    for name, want in expected.items():
        assert name in reader, name
        got = reader.lookup(name)
        if want.implicit:
            assert got.type == "dir" and got.mode == 0o755, (name, got)
            continue
        own = listed[name] if name else got
        for f in FIELDS:
            assert getattr(own, f) == getattr(want, f), (name, f, getattr(own, f), getattr(want, f))
        if want.type == "hardlink":
            assert want.target is not None
            assert got is reader.lookup(want.target), name
            assert got.type == expected[want.target].type
        if want.content is None:
            continue
        assert got.type == "reg" and got.size == len(want.content)
        assert got.digest == sha256(want.content), name
        assert reader.read(name) == want.content, name
        if data is not None and want.content:
            size = len(want.content)
            with reader.open(name) as f:
                for _ in range(data.draw(st.integers(0, 3), label="reads")):
                    offset = data.draw(st.integers(0, size + 2), label="offset")
                    length = data.draw(st.integers(0, size + 2), label="length")
                    assert f.seek(offset) == offset
                    assert f.read(length) == want.content[offset:offset + length], (name, offset, length)
                    assert f.tell() == offset + len(want.content[offset:offset + length])
                    assert f.pread(length, offset) == want.content[offset:offset + length]


def tar_members(raw: bytes) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        return [(m, tar.extractfile(m).read() if m.isreg() else None) for m in tar]  # type: ignore[union-attr]


def header_fields(m: tarfile.TarInfo) -> tuple[object, ...]:
    return (m.name, m.type, m.size, m.mode, m.uid, m.gid, m.uname, m.gname, m.mtime,
            m.linkname, m.devmajor, m.devminor, m.pax_headers, m.chksum)


def check_plain_stream(blob: bytes, result: estargz.BuildResult, tar: bytes,
                       landmark: str = NO_PREFETCH_LANDMARK, order: list[str] | None = None) -> None:
    """gunzip(blob) is a tar holding the input's entries (last wins), the landmark and the TOC."""
    assert result.blob_digest == sha256(blob) and result.blob_size == len(blob)
    raw = gzip.decompress(blob)
    assert result.diff_id == sha256(raw)
    assert result.uncompressed_size == len(raw)

    kept: dict[str, tuple[tarfile.TarInfo, bytes | None]] = {}
    for member, payload in tar_members(tar):
        path = clean_name(member.name)
        if path in RESERVED_NAMES:
            continue
        kept.pop(path, None)
        kept[path] = (member, payload)
    out = tar_members(raw)
    names = [clean_name(m.name) for m, _ in out]
    if order is None:
        assert names == [landmark, *kept, TOC_NAME]
    else:  # the order readers list: without the root
        assert [n for n in names if n] == [*order, TOC_NAME]
        assert names.count("") == int("" in kept)
    for (member, payload) in out[:-1]:
        path = clean_name(member.name)
        if path == landmark:
            assert member.isreg() and payload == b"\x0f" and member.name == landmark
            continue
        want_member, want_payload = kept[path]
        assert header_fields(member) == header_fields(want_member), path
        assert payload == want_payload, path
    toc, toc_json = out[-1]
    assert toc.name == TOC_NAME and toc.isreg()
    assert sha256(toc_json or b"") == result.toc_digest
    # TOC entries follow the tar entries; a user or group name is written only when it differs
    # from the last one written for the same id (Go's rule, which readers undo).
    _, toc_entries = estargz.decode_toc(toc_json or b"")
    files = [e for e in toc_entries if e.type != "chunk"]
    assert [clean_name(e.name) for e in files] == names[:-1]
    last: tuple[dict[int, str], dict[int, str]] = ({}, {})
    for entry, (member, _) in zip(files, out):
        for seen, ident, name, written in ((last[0], member.uid, member.uname, entry.user_name),
                                           (last[1], member.gid, member.gname, entry.group_name)):
            assert written == (name if name and seen.get(ident) != name else ""), (member.name, written)
            if written:
                seen[ident] = written


# -- 1. reader round trip --------------------------------------------------------------------
@PROPERTY
@given(data=st.data())
def test_convert_then_read_matches_layer(data: st.DataObject) -> None:
    chunk_size = data.draw(chunk_sizes, label="chunk_size")
    layer = data.draw(random_layers(chunk_size, reserved_names=True), label="layer")
    level = data.draw(levels, label="level")
    blob, result = convert_bytes(tar_bytes(layer), chunk_size=chunk_size, compression_level=level)
    expected = expected_entries(layer)
    with estargz.open(blob, toc_digest=result.toc_digest) as reader:
        check_reader(reader, expected, data)
        assert [e.name for e in reader] == [NO_PREFETCH_LANDMARK, *explicit_order(expected)]
        landmark = reader.lookup(NO_PREFETCH_LANDMARK)
        assert landmark.type == "reg" and reader.read(NO_PREFETCH_LANDMARK) == b"\x0f"
        assert PREFETCH_LANDMARK not in reader
        report = reader.verify(result.toc_digest)
        files = [e for e in expected.values() if e.type == "reg"]
        assert report.files == len(files) + 1
        assert report.bytes == sum(e.size for e in files) + 1
        assert report.chunks == sum(-(-e.size // chunk_size) for e in files) + 1


# -- 2. the blob is a gzip'd tar --------------------------------------------------------------
@PROPERTY
@given(data=st.data())
def test_gunzipped_blob_is_the_layer_tar(data: st.DataObject) -> None:
    chunk_size = data.draw(chunk_sizes, label="chunk_size")
    layer = data.draw(random_layers(chunk_size, reserved_names=True), label="layer")
    tar = tar_bytes(layer)
    blob, result = convert_bytes(tar, chunk_size=chunk_size, compression_level=data.draw(levels))
    check_plain_stream(blob, result, tar)


# -- 3. reproducible output -------------------------------------------------------------------
@contextlib.contextmanager
def timezone(name: str) -> Iterator[None]:
    saved = os.environ.get("TZ")
    os.environ["TZ"] = name
    time.tzset()
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()


@settings(PROPERTY, max_examples=examples(40))
@given(data=st.data())
def test_output_is_reproducible(data: st.DataObject) -> None:
    chunk_size = data.draw(chunk_sizes, label="chunk_size")
    layer = data.draw(random_layers(chunk_size), label="layer")
    level = data.draw(levels, label="level")
    tar = tar_bytes(layer)
    options = dict(chunk_size=chunk_size, compression_level=level)
    first, first_result = convert_bytes(tar, threads=1, **options)
    assert convert_bytes(tar, threads=2, **options) == (first, first_result)
    assert convert_bytes(tar, threads=1, **options) == (first, first_result)
    for zone in ("Asia/Kathmandu", "America/St_Johns", "Pacific/Kiritimati"):
        with timezone(zone):
            assert convert_bytes(tar, threads=2, **options) == (first, first_result), zone
    with tempfile.TemporaryDirectory() as tmp:  # path in, path out
        src, dst = os.path.join(tmp, "layer.tar"), os.path.join(tmp, "layer.esgz")
        with open(src, "wb") as f:
            f.write(tar)
        assert estargz.convert(src, dst, threads=2, **options) == first_result  # type: ignore[arg-type]
        with open(dst, "rb") as f:
            assert f.read() == first
        assert sorted(os.listdir(tmp)) == ["layer.esgz", "layer.tar"]  # no temporary left


# -- 4. compressed and streamed inputs ----------------------------------------------------------
class Unseekable(io.RawIOBase):
    """A pipe-like stream: not seekable, and at most ``piece`` bytes per read."""

    def __init__(self, data: bytes, piece: int | None = None) -> None:
        super().__init__()
        self._data = io.BytesIO(data)
        self._piece = piece

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer)
        if self._piece is not None:
            view = view[:self._piece]
        return self._data.readinto(view)


@settings(PROPERTY, max_examples=examples(40))
@given(data=st.data())
def test_plain_gzip_and_zstd_inputs_give_the_same_blob(data: st.DataObject) -> None:
    chunk_size = data.draw(chunk_sizes, label="chunk_size")
    layer = data.draw(random_layers(chunk_size), label="layer")
    tar = tar_bytes(layer)
    options = dict(chunk_size=chunk_size, compression_level=data.draw(levels, label="level"))
    want = convert_bytes(tar, **options)
    inputs = {
        "gzip": gzip.compress(tar, compresslevel=data.draw(st.integers(1, 9))),
        "zstd": zstandard.ZstdCompressor(level=data.draw(st.integers(1, 19))).compress(tar),
    }
    for kind, packed in inputs.items():
        assert convert_bytes(packed, **options) == want, kind
    for kind, packed in {"plain": tar, **inputs}.items():
        out = io.BytesIO()
        result = estargz.convert(Unseekable(packed), out, threads=1, **options)  # type: ignore[arg-type]
        assert (out.getvalue(), result) == want, f"unseekable {kind}"


def _packed(kind: str) -> tuple[bytes, bytes]:
    layer = Layer((LayerEntry("etc/hostname", content=b"box\n", mtime=1700000000),), "pax")
    tar = tar_bytes(layer)
    return tar, {"plain": tar, "gzip": gzip.compress(tar), "zstd": zstandard.ZstdCompressor().compress(tar)}[kind]


@pytest.mark.parametrize("kind", ["plain", "gzip", "zstd"])
def test_unseekable_input(kind: str) -> None:
    """A layer read from a pipe (e.g. ``docker save | estargz convert -``).

    Regression: gzip input from a pipe once failed with AttributeError (the stream wrapper that
    puts the sniffed magic bytes back had no ``readinto``, which the gzip reader needs).
    """
    tar, packed = _packed(kind)
    read_fd, write_fd = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(write_fd, packed), os.close(write_fd)))
    writer.start()
    try:
        with os.fdopen(read_fd, "rb") as pipe:
            out = io.BytesIO()
            result = estargz.convert(pipe, out, threads=1)
    finally:
        writer.join()
    assert (out.getvalue(), result) == convert_bytes(tar)


@pytest.mark.parametrize("kind", ["plain", "gzip", "zstd"])
def test_unseekable_input_with_short_reads(kind: str) -> None:
    """An unbuffered pipe or socket may return fewer bytes than asked; format detection must not
    depend on the first read returning all four magic bytes (regression: compressed input read
    one byte at a time was once taken for a plain tar)."""
    tar, packed = _packed(kind)
    out = io.BytesIO()
    result = estargz.convert(Unseekable(packed, piece=1), out, threads=1)
    assert (out.getvalue(), result) == convert_bytes(tar)


# -- 5. prioritized files ---------------------------------------------------------------------
def prioritized_order(expected: dict[str, ExpectedEntry], prioritized: list[str]) -> list[str]:
    """TOC order: each prioritized path after its declared ancestors and its hardlink target."""
    remaining = dict.fromkeys(n for n, e in expected.items() if not e.implicit)
    moved: dict[str, None] = {}

    def take(name: str) -> None:
        del remaining[name]
        moved[name] = None

    def move(name: str) -> bool:
        if name in moved:
            return True
        if name == "":
            if "" in remaining:
                take("")
            return True
        if name not in remaining:
            return False
        ancestors = []
        parent = name
        while parent:
            parent = posixpath.dirname(parent)
            ancestors.append(parent)
        for ancestor in reversed(ancestors):
            if ancestor in remaining:
                take(ancestor)
        entry = expected[name]
        if entry.type == "hardlink" and not move(clean_name(entry.link_name)):
            return False
        if name in remaining:
            take(name)
        return True

    for path in prioritized:
        move(clean_name(path))
    if not prioritized:
        return [NO_PREFETCH_LANDMARK, *(n for n in remaining if n)]
    return [*(n for n in moved if n), PREFETCH_LANDMARK, *(n for n in remaining if n)]


@settings(PROPERTY, max_examples=examples(80))
@given(data=st.data())
def test_prioritized_files_come_first(data: st.DataObject) -> None:
    chunk_size = data.draw(chunk_sizes, label="chunk_size")
    layer = data.draw(random_layers(chunk_size, reserved_names=True), label="layer")
    expected = expected_entries(layer)
    files = sorted(n for n, e in expected.items() if e.type in ("reg", "hardlink"))
    chosen = data.draw(st.lists(st.sampled_from(files), unique=True, max_size=6) if files else st.just([]),
                       label="chosen")
    spelled = [data.draw(st.sampled_from((n, "./" + n, "/" + n)), label="spelling") for n in chosen]
    absent = sorted({"missing", "no/such/file", "etc/../nope", *RESERVED_NAMES,
                     *(n for n, e in expected.items() if e.implicit and n)} - set(expected))
    missing = data.draw(st.lists(st.sampled_from(absent), unique=True, max_size=2), label="missing")
    prioritized = data.draw(st.permutations(spelled + missing), label="prioritized")
    allow = data.draw(st.booleans(), label="allow_missing")
    tar = tar_bytes(layer)
    options = dict(chunk_size=chunk_size, prioritized_files=prioritized, allow_missing_prioritized=allow)
    if missing and not allow:
        with pytest.raises(NotFoundError):
            convert_bytes(tar, **options)
        return
    blob, result = convert_bytes(tar, **options)
    assert result.missing_prioritized == tuple(p for p in prioritized if p in missing)
    with estargz.open(blob) as reader:
        names = [e.name for e in reader]
        assert names == prioritized_order(expected, prioritized)
        # The same, stated without the model: what precedes the landmark is exactly the
        # prioritized files, their declared ancestors and their hardlink targets (transitively).
        landmark = PREFETCH_LANDMARK if prioritized else NO_PREFETCH_LANDMARK
        head = set(names[:names.index(landmark)])
        assert NO_PREFETCH_LANDMARK not in names if prioritized else PREFETCH_LANDMARK not in names
        needed: set[str] = set()
        pending = list(chosen)
        while pending:
            name = pending.pop()
            if name in needed:
                continue
            needed.add(name)
            parent = name
            while parent:
                parent = posixpath.dirname(parent)
                if parent and not expected[parent].implicit:
                    needed.add(parent)
            if expected[name].type == "hardlink":
                pending.append(clean_name(expected[name].link_name))
        assert head == needed
        for name in chosen:
            parent = posixpath.dirname(name)
            if parent and not expected[parent].implicit:
                assert names.index(parent) < names.index(name)
            if expected[name].type == "hardlink":
                assert names.index(clean_name(expected[name].link_name)) < names.index(name)
        check_reader(reader, expected)
        reader.verify(result.toc_digest)
    check_plain_stream(blob, result, tar, landmark=landmark, order=names)


# -- 6. duplicates ----------------------------------------------------------------------------
@PROPERTY
@given(data=st.data())
def test_last_duplicate_wins(data: st.DataObject) -> None:
    chunk_size = data.draw(chunk_sizes, label="chunk_size")
    layer = data.draw(layers_with_duplicates(chunk_size=chunk_size, max_content=_budget(chunk_size),
                                             reserved_names=True), label="layer")
    tar = tar_bytes(layer)
    blob, result = convert_bytes(tar, chunk_size=chunk_size, compression_level=data.draw(levels))
    expected = expected_entries(layer)
    assert len(expected) < len(layer.entries) + sum(e.implicit for e in expected.values())
    with estargz.open(blob) as reader:
        check_reader(reader, expected, data)
        assert [e.name for e in reader] == [NO_PREFETCH_LANDMARK, *explicit_order(expected)]
        reader.verify(result.toc_digest)
    check_plain_stream(blob, result, tar)


# -- the testing module itself -----------------------------------------------------------------
@settings(PROPERTY, max_examples=examples(100))
@given(layer=layers(reserved_names=True))
def test_layers_render_as_consistent_tars(layer: Layer) -> None:
    assert len({e.path for e in layer.entries}) == len(layer.entries)
    assert layer.content_size <= 64 << 10
    members = tar_members(tar_bytes(layer))
    assert [clean_name(m.name) for m, _ in members] == [e.path for e in layer.entries]
    for (member, payload), entry in zip(members, layer.entries):
        assert payload == (entry.content if entry.kind == "reg" else None)
        assert {k[len("SCHILY.xattr."):]: v.encode("utf-8", "surrogateescape")
                for k, v in member.pax_headers.items() if k.startswith("SCHILY.xattr.")} == entry.xattrs
    expected_entries(layer)  # consistent: no dangling hardlinks, parents are directories


def test_importing_estargz_does_not_import_hypothesis() -> None:
    code = "import sys, estargz; sys.exit('hypothesis' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# -- regressions -------------------------------------------------------------------------------
def test_gnu_base256_negative_mtime() -> None:
    """GNU tar stores pre-1970 mtimes in base-256 two's complement (0xff, then 11 bytes).

    tarstream._number once masked the first byte with 0x3F before subtracting 2**95, dropping
    the 0x40 bit that belongs to the value: -1 decoded as -1 - 2**94 and convert failed with
    LimitError. Go's archive/tar and Python's tarfile decode -1.
    """
    layer = Layer((LayerEntry("old", content=b"x", mtime=-1), LayerEntry("older", mtime=-86400 * 365)), "gnu")
    blob, _ = convert_bytes(tar_bytes(layer))
    with estargz.open(blob) as reader:
        assert reader.lookup("old").modtime == "1969-12-31T23:59:59Z"
        assert reader.lookup("older").modtime == "1969-01-01T00:00:00Z"


@settings(max_examples=int(500 * SCALE))
@given(name=st.text(alphabet="/.a", max_size=12))
def test_clean_name_is_go_path_clean_below_the_root(name: str) -> None:
    assert toc.clean_name(name) == clean_name(name)


@pytest.mark.parametrize("name, cleaned", [
    (".hidden/.pyenv/a", ".hidden/.pyenv/a"), ("a/..b/.c/", "a/..b/.c"), ("...", "..."),
    ("a/./b", "a/b"), ("a/b/..", "a"), ("./a", "a"), ("../a", "a"), ("a//b/", "a/b"), ("a/.", "a"), ("..", ""),
])
def test_clean_name_of_hidden_and_dotted_components(name: str, cleaned: str) -> None:
    assert toc.clean_name(name) == cleaned == clean_name(name)
