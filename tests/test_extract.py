"""Reader.extract and the extract command: what lands on disk, and that nothing lands outside.

Layers are made with :mod:`tarfile` and converted, or assembled by hand from gzip members and a
TOC (the writer does not validate names, the reader and the extractor must).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import stat
import tarfile

import pytest
from helpers import sha256

import estargz
from estargz import FormatError, TOCEntry
from estargz.cli import main
from estargz.footer import gzip_footer
from estargz.framing import GzipCompressor
from estargz.tarstream import BLOCK, padding, ustar_header
from estargz.toc import TOC_NAME

MTIME = 1700000000
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
CAPABILITY = bytes.fromhex("01000002" "00200000" "00000000" "00000000" "00000000")  # cap_net_raw+ep


def make_tar(specs) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for spec in specs:
            spec = dict(spec)
            data = spec.pop("data", None)
            pax = spec.pop("pax_headers", None)
            info = tarfile.TarInfo(spec.pop("name"))
            info.mtime, info.mode = MTIME, 0o644
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


def convert(specs, **kwargs) -> bytes:
    out = io.BytesIO()
    kwargs.setdefault("compression_level", 1)
    estargz.convert(io.BytesIO(make_tar(specs)), out, **kwargs)
    return out.getvalue()


def tree(root) -> dict[str, str]:
    """Every path below ``root`` (not following symlinks) -> a short description."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = "-> " + os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    out[rel] = "file " + hashlib.sha256(f.read()).hexdigest()[:12]
            else:
                out[rel] = "mode " + oct(st.st_mode)
    return out


def xattrs_supported(directory) -> bool:
    probe = os.path.join(directory, ".xattr-probe")
    open(probe, "wb").close()
    try:
        os.setxattr(probe, "user.probe", b"1")
        return os.getxattr(probe, "user.probe") == b"1"
    except OSError:
        return False
    finally:
        os.unlink(probe)


CONTENT = b"hello, world\n" * 40  # 520 bytes: several chunks at chunk size 128

LAYER = [
    {"name": "dir", "type": tarfile.DIRTYPE, "mode": 0o750, "uid": 1000, "gid": 1001},
    {"name": "dir/sgid", "type": tarfile.DIRTYPE, "mode": 0o2755, "mtime": MTIME - 86400},
    {"name": "dir/file", "data": CONTENT, "mode": 0o640, "uid": 1234, "gid": 5678, "mtime": MTIME + 0.6},
    {"name": "dir/empty", "data": b"", "mode": 0o600},
    {"name": "dir/suid", "data": b"#!/bin/sh\n", "mode": 0o4755},
    {"name": "dir/rel", "type": tarfile.SYMTYPE, "linkname": "file", "mode": 0o777, "uid": 42, "gid": 43},
    {"name": "abs", "type": tarfile.SYMTYPE, "linkname": "/etc/passwd", "mode": 0o777},
    {"name": "up", "type": tarfile.SYMTYPE, "linkname": "../../outside", "mode": 0o777},
    {"name": "dir/hard", "type": tarfile.LNKTYPE, "linkname": "dir/file"},
    {"name": "fifo", "type": tarfile.FIFOTYPE, "mode": 0o640, "uid": 7, "gid": 8},
    {"name": "xattr", "data": b"x", "pax_headers": {"SCHILY.xattr.user.comment": "hi there"}},
    {"name": ".wh.gone", "data": b""},
    {"name": "dir/.wh..wh..opq", "data": b""},
    {"name": "chr", "type": tarfile.CHRTYPE, "mode": 0o666, "devmajor": 1, "devminor": 3, "uid": 5},
]


def convert_refused(specs, monkeypatch) -> bytes:
    """The blob of a layer whose tree readers reject: the writer refuses it, so it is converted
    with the writer's tree check switched off."""
    with pytest.raises(estargz.UnsupportedInputError):
        convert(specs)
    with monkeypatch.context() as patch:
        patch.setattr(estargz.dialects.stargz, "check_readable", lambda entries: None)
        return convert(specs)


@pytest.fixture(scope="module")
def layer_blob() -> bytes:
    return convert(LAYER, chunk_size=128)


@pytest.fixture
def extracted(tmp_path, layer_blob):
    dest = tmp_path / "dest"
    with estargz.open(layer_blob) as reader:
        report = reader.extract(dest)
        toc = {e.name: e for e in reader}
    return dest, report, toc


def test_report(extracted, layer_blob):
    dest, report, toc = extracted
    assert report.entries == len(LAYER) + 1  # + .no.prefetch.landmark
    assert report.bytes == 1 + len(CONTENT) + len(b"#!/bin/sh\n") + 1  # hardlink not copied
    assert report.skipped == []
    assert sorted(tree(dest)) == sorted([
        ".no.prefetch.landmark", "dir", "dir/sgid", "dir/file", "dir/empty", "dir/suid", "dir/rel",
        "abs", "up", "dir/hard", "fifo", "xattr", ".wh.gone", "dir/.wh..wh..opq", "chr"])


def test_files(extracted):
    dest, _, toc = extracted
    assert (dest / "dir/file").read_bytes() == CONTENT
    assert (dest / "dir/empty").read_bytes() == b""
    assert (dest / ".no.prefetch.landmark").read_bytes() == b"\x0f"
    assert stat.S_IMODE(os.stat(dest / "dir/file").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(dest / "dir/empty").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(dest / "dir/suid").st_mode) == 0o4755
    assert stat.S_IMODE(os.stat(dest / "xattr").st_mode) == 0o644


def test_modes_of_directories(extracted):
    dest, _, _ = extracted
    assert stat.S_IMODE(os.stat(dest / "dir").st_mode) == 0o750
    assert stat.S_IMODE(os.stat(dest / "dir/sgid").st_mode) == 0o2755
    assert stat.S_ISDIR(os.stat(dest / "dir/sgid").st_mode)


def test_mtimes(extracted):
    dest, _, toc = extracted
    assert toc["dir/file"].modtime == "2023-11-14T22:13:21Z"  # .6 rounds up
    assert os.stat(dest / "dir/file").st_mtime == MTIME + 1
    assert os.stat(dest / "dir/file").st_mtime == toc["dir/file"].mtime.timestamp()
    assert os.stat(dest / "dir/empty").st_mtime == MTIME
    # directories get their times after everything below them is written
    assert os.stat(dest / "dir").st_mtime == MTIME
    assert os.stat(dest / "dir/sgid").st_mtime == MTIME - 86400
    assert os.lstat(dest / "dir/rel").st_mtime == MTIME
    assert os.lstat(dest / "fifo").st_mtime == MTIME
    assert os.stat(dest / ".no.prefetch.landmark").st_mtime != MTIME  # no modtime in the TOC


def test_symlinks_kept_raw_and_not_followed(extracted, tmp_path):
    dest, _, _ = extracted
    assert os.readlink(dest / "dir/rel") == "file"
    assert os.readlink(dest / "abs") == "/etc/passwd"
    assert os.readlink(dest / "up") == "../../outside"
    assert all(stat.S_ISLNK(os.lstat(dest / n).st_mode) for n in ("dir/rel", "abs", "up"))
    assert (dest / "dir/rel").read_bytes() == CONTENT
    assert not os.path.lexists(tmp_path.parent / "outside")
    assert sorted(os.listdir(tmp_path)) == ["dest"]


def test_hardlink_shares_the_inode(extracted):
    dest, _, _ = extracted
    target, link = os.stat(dest / "dir/file"), os.stat(dest / "dir/hard")
    assert (link.st_ino, link.st_dev) == (target.st_ino, target.st_dev)
    assert target.st_nlink == 2
    assert (dest / "dir/hard").read_bytes() == CONTENT


def test_fifo(extracted):
    dest, _, _ = extracted
    st = os.lstat(dest / "fifo")
    assert stat.S_ISFIFO(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o640


def test_whiteouts_are_ordinary_files(extracted):
    dest, _, _ = extracted
    for name in (".wh.gone", "dir/.wh..wh..opq"):
        st = os.lstat(dest / name)
        assert stat.S_ISREG(st.st_mode) and st.st_size == 0


def test_xattrs(extracted):
    dest, _, toc = extracted
    assert toc["xattr"].xattrs == {"user.comment": b"hi there"}
    if not xattrs_supported(dest):
        pytest.skip("user.* xattrs not supported on this filesystem")
    assert os.getxattr(dest / "xattr", "user.comment") == b"hi there"
    assert os.listxattr(dest / "dir/file") == []


@pytest.mark.skipif(not IS_ROOT, reason="ownership is applied only as root")
def test_ownership_as_root(extracted):
    dest, _, _ = extracted
    owners = {name: (os.lstat(dest / name).st_uid, os.lstat(dest / name).st_gid)
              for name in ("dir", "dir/file", "dir/empty", "dir/rel", "fifo", "chr", "abs")}
    assert owners == {
        "dir": (1000, 1001), "dir/file": (1234, 5678), "dir/empty": (0, 0), "dir/rel": (42, 43),
        "fifo": (7, 8), "chr": (5, 0), "abs": (0, 0),
    }
    # setuid survives chown (mode is applied after the owner)
    assert stat.S_IMODE(os.stat(dest / "dir/suid").st_mode) == 0o4755


@pytest.mark.skipif(not IS_ROOT, reason="device nodes need root")
def test_char_device_as_root(extracted):
    dest, report, _ = extracted
    st = os.lstat(dest / "chr")
    assert stat.S_ISCHR(st.st_mode)
    assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3)
    assert os.lstat(dest / "chr").st_mtime == MTIME


def test_special_file_modes_ignore_umask(tmp_path):
    """os.mkfifo and os.mknod apply the process umask; the TOC mode must be applied as is, as it is
    for files and directories (fchmod). With umask 022 a 0o666 fifo becomes 0o644."""
    specs = [{"name": "fifo", "type": tarfile.FIFOTYPE, "mode": 0o666}]
    if IS_ROOT:
        specs.append({"name": "null", "type": tarfile.CHRTYPE, "mode": 0o666, "devmajor": 1, "devminor": 3})
    blob = convert(specs)
    umask = os.umask(0o022)
    try:
        with estargz.open(blob) as reader:
            reader.extract(tmp_path / "dest")
    finally:
        os.umask(umask)
    modes = {spec["name"]: stat.S_IMODE(os.lstat(tmp_path / "dest" / spec["name"]).st_mode) for spec in specs}
    assert modes == {spec["name"]: 0o666 for spec in specs}


def test_char_device_skipped_when_not_root(tmp_path, layer_blob, monkeypatch):
    def no_mknod(*args, **kwargs):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(os, "mknod", no_mknod)
    dest = tmp_path / "dest"
    with estargz.open(layer_blob) as reader:
        report = reader.extract(dest)
    assert report.skipped == [("chr", "Operation not permitted")]
    assert report.entries == len(LAYER) + 1
    assert not os.path.lexists(dest / "chr")
    assert (dest / "dir/file").read_bytes() == CONTENT
    if IS_ROOT:  # really root: the non-root path must not have chowned anything
        assert os.stat(dest / "dir/file").st_uid == 0


@pytest.mark.skipif(not IS_ROOT, reason="security.capability needs root (CAP_SETFCAP)")
def test_file_capability_survives_extraction_as_root(tmp_path):
    """chown(2) drops security.capability, so the owner must be set before the xattrs.

    estargz.extract._write_file calls os.setxattr and then _set_attributes (fchown): as root, every
    file capability of the layer (ping's cap_net_raw, ...) is silently lost.
    """
    probe = tmp_path / "probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "security.capability", CAPABILITY)
    except OSError as exc:
        pytest.skip(f"cannot set security.capability here: {exc}")
    blob = convert([{"name": "bin/ping", "data": b"\x7fELF", "mode": 0o755, "uid": 0, "gid": 0,
                     "pax_headers": {"SCHILY.xattr.security.capability": CAPABILITY.decode("latin-1")}}])
    with estargz.open(blob) as reader:
        assert reader.lookup("bin/ping").xattrs == {"security.capability": CAPABILITY}
        reader.extract(tmp_path / "dest")
    assert os.getxattr(tmp_path / "dest/bin/ping", "security.capability") == CAPABILITY


def test_extract_twice_replaces_existing_files(tmp_path, layer_blob):
    dest = tmp_path / "dest"
    with estargz.open(layer_blob) as reader:
        first = reader.extract(dest)
        before = tree(dest)
        (dest / "dir/file").write_bytes(b"changed")
        os.chmod(dest / "dir/file", 0o600)
        os.unlink(dest / "dir/rel")
        os.symlink("elsewhere", dest / "dir/rel")
        (dest / "extra").write_bytes(b"left alone")
        second = reader.extract(dest)
    assert (first.entries, first.bytes) == (second.entries, second.bytes)
    after = tree(dest)
    assert after.pop("extra") == "file " + hashlib.sha256(b"left alone").hexdigest()[:12]
    assert after == before
    assert (dest / "dir/file").read_bytes() == CONTENT
    assert stat.S_IMODE(os.stat(dest / "dir/file").st_mode) == 0o640
    assert os.stat(dest / "dir/hard").st_ino == os.stat(dest / "dir/file").st_ino
    assert os.readlink(dest / "dir/rel") == "file"


def test_extract_into_existing_dir_replaces_file_with_directory(tmp_path):
    dest = tmp_path / "dest"
    (dest).mkdir()
    (dest / "d").write_bytes(b"was a file")
    blob = convert([{"name": "d", "type": tarfile.DIRTYPE, "mode": 0o755}, {"name": "d/f", "data": b"x"}])
    with estargz.open(blob) as reader:
        reader.extract(dest)
    assert (dest / "d/f").read_bytes() == b"x"


def test_extract_refuses_to_replace_directory_with_file(tmp_path):
    dest = tmp_path / "dest"
    (dest / "d").mkdir(parents=True)
    (dest / "d/keep").write_bytes(b"keep")
    blob = convert([{"name": "d", "data": b"now a file"}])
    with estargz.open(blob) as reader:
        with pytest.raises(FormatError, match="refusing to replace directory"):
            reader.extract(dest)
    assert (dest / "d/keep").read_bytes() == b"keep"


def test_extract_creates_missing_parents(tmp_path):
    blob = convert([{"name": "a/b/c/file", "data": b"deep"}])
    with estargz.open(blob) as reader:
        report = reader.extract(tmp_path / "new" / "dest")
    assert report.entries == 2
    assert (tmp_path / "new/dest/a/b/c/file").read_bytes() == b"deep"
    assert stat.S_IMODE(os.stat(tmp_path / "new/dest/a/b").st_mode) == 0o755 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_hardlink_to_symlink_links_the_symlink_itself(tmp_path):
    blob = convert([
        {"name": "s", "type": tarfile.SYMTYPE, "linkname": "/etc/passwd"},
        {"name": "h", "type": tarfile.LNKTYPE, "linkname": "s"},
    ])
    with estargz.open(blob) as reader:
        reader.extract(tmp_path / "dest")
    st = os.lstat(tmp_path / "dest/h")
    assert stat.S_ISLNK(st.st_mode)
    assert st.st_ino == os.lstat(tmp_path / "dest/s").st_ino
    assert os.readlink(tmp_path / "dest/h") == "/etc/passwd"


def test_extract_into_symlink_to_directory(tmp_path):
    """The destination is the caller's choice: a symlink to a directory (like /var/run -> /run) is
    a valid target, as it is for ``tar -C``. _Tree opens the root itself with O_NOFOLLOW and fails
    with NotADirectoryError."""
    (tmp_path / "real").mkdir()
    os.symlink("real", tmp_path / "alias")
    blob = convert([{"name": "f", "data": b"x"}])
    with estargz.open(blob) as reader:
        reader.extract(tmp_path / "alias")
    assert (tmp_path / "real/f").read_bytes() == b"x"


def test_extract_cli(tmp_path, layer_blob, capsys):
    blob = tmp_path / "layer.esgz"
    blob.write_bytes(layer_blob)
    assert main(["extract", str(blob), str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"entries": len(LAYER) + 1, "bytes": 1 + len(CONTENT) + 10 + 1,
                                        "skipped": 0}
    assert captured.err == ""
    assert (tmp_path / "out/dir/file").read_bytes() == CONTENT


def test_extract_cli_reports_skipped(tmp_path, layer_blob, capsys, monkeypatch):
    monkeypatch.setattr(os, "mknod", lambda *a, **k: (_ for _ in ()).throw(PermissionError(1, "denied")))
    blob = tmp_path / "layer.esgz"
    blob.write_bytes(layer_blob)
    assert main(["extract", str(blob), str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["skipped"] == 1
    assert captured.err == "estargz: skipped chr: denied\n"


# --------------------------------------------------------------------------------------------
# hostile layers: nothing may be written outside the destination
# --------------------------------------------------------------------------------------------

@pytest.fixture
def sandbox(tmp_path):
    """tmp_path/dest (empty) next to tmp_path/sibling (with a file); returns (dest, check)."""
    dest = tmp_path / "dest"
    sibling = tmp_path / "sibling"
    sibling.mkdir()
    (sibling / "keep").write_bytes(b"precious")
    outside_before = tree(tmp_path)

    def unchanged() -> None:
        outside = {k: v for k, v in tree(tmp_path).items() if k != "dest" and not k.startswith("dest/")}
        assert outside == outside_before
        assert not os.path.lexists("/etc/evil") and not os.path.lexists("/abs/evil")
        assert not os.path.lexists("/tmp/evil") and not os.path.lexists("/evil")

    return dest, unchanged


def test_dotdot_and_absolute_names_stay_inside(sandbox):
    dest, unchanged = sandbox
    blob = convert([
        {"name": "../../etc/evil", "data": b"1"},
        {"name": "/abs/evil", "data": b"2"},
        {"name": "../sibling/keep", "data": b"3"},
        {"name": "a/../../../../b", "data": b"4"},
    ])
    with estargz.open(blob) as reader:
        assert [e.name for e in reader][1:] == ["etc/evil", "abs/evil", "sibling/keep", "b"]
        reader.extract(dest)
    unchanged()
    assert (dest / "etc/evil").read_bytes() == b"1"
    assert (dest / "abs/evil").read_bytes() == b"2"
    assert (dest / "sibling/keep").read_bytes() == b"3"
    assert (dest / "b").read_bytes() == b"4"


@pytest.mark.parametrize("target", ["/tmp", "..", "../sibling", ".", "/"])
def test_file_below_symlink_is_refused(sandbox, target, monkeypatch):
    dest, unchanged = sandbox
    blob = convert_refused([
        {"name": "link", "type": tarfile.SYMTYPE, "linkname": target},
        {"name": "link/evil", "data": b"evil"},
    ], monkeypatch)
    with pytest.raises(FormatError):
        with estargz.open(blob) as reader:
            reader.extract(dest)
    unchanged()
    assert not os.path.lexists(dest / "evil")  # the "." case


def test_hardlink_through_symlink_is_refused(sandbox, monkeypatch):
    dest, unchanged = sandbox
    blob = convert_refused([
        {"name": "link", "type": tarfile.SYMTYPE, "linkname": "../sibling"},
        {"name": "h", "type": tarfile.LNKTYPE, "linkname": "link/keep"},
    ], monkeypatch)
    with pytest.raises(FormatError):
        with estargz.open(blob) as reader:
            reader.extract(dest)
    unchanged()


def test_later_symlink_replacing_a_directory_is_refused(sandbox, monkeypatch):
    dest, unchanged = sandbox
    blob = convert_refused([
        {"name": "d", "type": tarfile.DIRTYPE, "mode": 0o755},
        {"name": "d/evil", "data": b"evil"},
        {"name": "d", "type": tarfile.SYMTYPE, "linkname": "../sibling"},
    ], monkeypatch)
    with pytest.raises(FormatError):
        with estargz.open(blob) as reader:
            reader.extract(dest)
    unchanged()


def _crafted_blob(entries: list[tuple[TOCEntry, bytes]]) -> bytes:
    """A blob assembled by hand: a header member, then one member per file payload, TOC, footer."""
    gz = GzipCompressor(6).compress
    data = b""
    toc = []
    for entry, content in entries:
        data += gz(ustar_header(entry.name.lstrip("/")[-100:], len(content)))
        if entry.type == "reg" and content:
            entry.offset = len(data)
            entry.digest = entry.chunk_digest = sha256(content)
            entry.size = len(content)
            data += gz(content + bytes(padding(len(content))))
        elif entry.type == "reg":
            entry.digest = sha256(b"")
        toc.append(entry)
    toc_json = estargz.encode_toc(toc)
    toc_tar = ustar_header(TOC_NAME, len(toc_json)) + toc_json + bytes(padding(len(toc_json)) + 2 * BLOCK)
    return data + gz(toc_tar) + gzip_footer(len(data))


def test_crafted_blob_is_readable(tmp_path):
    blob = _crafted_blob([(TOCEntry(name="d", type="dir", mode=0o755), b""),
                          (TOCEntry(name="d/f", type="reg", mode=0o644), b"payload")])
    with estargz.open(blob) as reader:
        assert reader.read("d/f") == b"payload"
        reader.extract(tmp_path / "dest")
    assert (tmp_path / "dest/d/f").read_bytes() == b"payload"


@pytest.mark.parametrize("target", ["/tmp", "..", "../sibling"])
def test_crafted_file_below_symlink_is_refused(sandbox, target):
    dest, unchanged = sandbox
    blob = _crafted_blob([
        (TOCEntry(name="link", type="symlink", link_name=target, mode=0o777), b""),
        (TOCEntry(name="link/evil", type="reg", mode=0o644), b"evil"),
    ])
    with pytest.raises(FormatError):
        with estargz.open(blob) as reader:
            reader.extract(dest)
    unchanged()


def test_crafted_hostile_names_stay_inside(sandbox):
    dest, unchanged = sandbox
    blob = _crafted_blob([
        (TOCEntry(name="../../etc/evil", type="reg", mode=0o644), b"1"),
        (TOCEntry(name="/abs/evil", type="reg", mode=0o644), b"2"),
        (TOCEntry(name="./../sibling/keep", type="reg", mode=0o644), b"3"),
        (TOCEntry(name="s", type="symlink", link_name="../sibling/keep"), b""),
        (TOCEntry(name="h", type="hardlink", link_name="../../../s"), b""),
    ])
    with estargz.open(blob) as reader:
        reader.extract(dest)
    unchanged()
    assert (dest / "etc/evil").read_bytes() == b"1"
    assert (dest / "abs/evil").read_bytes() == b"2"
    assert (dest / "sibling/keep").read_bytes() == b"3"
    assert os.lstat(dest / "h").st_ino == os.lstat(dest / "s").st_ino


def test_crafted_hardlink_through_symlink_is_refused(sandbox):
    dest, unchanged = sandbox
    blob = _crafted_blob([
        (TOCEntry(name="link", type="symlink", link_name="../sibling"), b""),
        (TOCEntry(name="h", type="hardlink", link_name="link/keep"), b""),
    ])
    with pytest.raises(FormatError):
        with estargz.open(blob) as reader:
            reader.extract(dest)
    unchanged()


def test_symlink_left_by_an_earlier_layer_is_not_followed(sandbox):
    dest, unchanged = sandbox
    first = convert([{"name": "x", "type": tarfile.SYMTYPE, "linkname": "../sibling"},
                     {"name": "y", "type": tarfile.SYMTYPE, "linkname": "../sibling/keep"}])
    with estargz.open(first) as reader:
        reader.extract(dest)
    unchanged()
    # a file below the planted symlink, with no directory entry: refused
    second = convert([{"name": "x/evil", "data": b"evil"}])
    with estargz.open(second) as reader:
        with pytest.raises(FormatError, match="not a directory"):
            reader.extract(dest)
    unchanged()
    # a hardlink below it: refused too
    third = convert([{"name": "x/keep2", "type": tarfile.LNKTYPE, "linkname": "y"},
                     {"name": "y", "data": b"y"}])
    with pytest.raises(FormatError):
        with estargz.open(third) as reader:
            reader.extract(dest)
    unchanged()
    # a file over the planted symlink replaces the symlink, it does not write through it
    fourth = convert([{"name": "y", "data": b"overwritten?"}])
    with estargz.open(fourth) as reader:
        reader.extract(dest)
    unchanged()
    assert (dest / "y").read_bytes() == b"overwritten?" and not os.path.islink(dest / "y")
    # a directory over it replaces it; what follows goes into the new directory
    fifth = convert([{"name": "x", "type": tarfile.DIRTYPE, "mode": 0o755},
                     {"name": "x/evil", "data": b"inside"}])
    with estargz.open(fifth) as reader:
        reader.extract(dest)
    unchanged()
    assert not os.path.islink(dest / "x") and (dest / "x/evil").read_bytes() == b"inside"


def test_extract_cli_refuses_hostile_layer(tmp_path, capsys, monkeypatch):
    (tmp_path / "sibling").mkdir()
    blob = tmp_path / "evil.esgz"
    blob.write_bytes(convert_refused([{"name": "link", "type": tarfile.SYMTYPE, "linkname": "../sibling"},
                                      {"name": "link/evil", "data": b"evil"}], monkeypatch))
    assert main(["extract", str(blob), str(tmp_path / "dest")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("estargz: error: ") and err.count("\n") == 1
    assert os.listdir(tmp_path / "sibling") == []
