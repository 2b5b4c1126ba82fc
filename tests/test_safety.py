"""Data safety of every output: never over an input, whole or not at all (also on SIGTERM), under
unguessable temporary names; bounded descriptors when extracting; escaped names in ``ls``; typed
one-line errors for entries and image documents that cannot be represented."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from helpers import sha256
from test_extract import _crafted_blob
from test_image import Layout

import estargz
from estargz import FormatError, LimitError, TOCEntry
from estargz.cli import main
from estargz.image import convert_image
from estargz.reader import open_blob

PROJECT = Path(__file__).resolve().parents[1]
MTIME = 1700000000
#: Descriptors a process may open in the extraction test, as with ``ulimit -n 256``.
FD_LIMIT = 256
#: CPU seconds a conversion of a small but widely shared image index may take.
CPU_BUDGET = 60
#: How long to wait for a subprocess to reach a state (not a measurement: a failure guard).
PATIENCE = 120


def make_tar(files: dict[str, bytes], directories: list[str] = ()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in directories:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, MTIME
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, MTIME
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def run_cli(*args: object, cwd: Path | None = None, **kwargs: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "estargz", *map(str, args)], capture_output=True,
                          cwd=cwd, env=project_env(), timeout=PATIENCE, **kwargs)


def project_env() -> dict[str, str]:
    """The environment of a subprocess that imports this checkout's estargz."""
    return {**os.environ, "PYTHONPATH": str(PROJECT)}


def one_error_line(stderr: bytes, *fragments: str) -> None:
    text = stderr.decode()
    assert text.startswith("estargz: error: ") and text.count("\n") == 1, text
    for fragment in fragments:
        assert fragment in text, text


@pytest.fixture
def layer(tmp_path: Path) -> Path:
    path = tmp_path / "layer.tar"
    path.write_bytes(make_tar({"etc/hostname": b"box\n", "bin/tool": os.urandom(5000)}))
    return path


# -- never over an input -------------------------------------------------------------------------

@pytest.mark.parametrize("alias", ["same", "symlink", "hardlink"])
def test_convert_refuses_its_input_as_output(tmp_path: Path, layer: Path, alias: str, capsys) -> None:
    before = layer.read_bytes()
    output = {"same": layer, "symlink": tmp_path / "link.tar", "hardlink": tmp_path / "hard.tar"}[alias]
    if alias == "symlink":
        output.symlink_to(layer.name)
    elif alias == "hardlink":
        os.link(layer, output)
    assert main(["convert", str(layer), str(output)]) == 1
    one_error_line(capsys.readouterr().err.encode(), "refusing to overwrite")
    assert layer.read_bytes() == before
    assert output.is_symlink() == (alias == "symlink") and output.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"layer.tar", output.name})


def test_convert_refuses_toc_output_over_the_input(tmp_path: Path, layer: Path, capsys) -> None:
    before = layer.read_bytes()
    assert main(["convert", "--estargz-external-toc", "--estargz-toc-output", str(layer),
                 str(layer), str(tmp_path / "out.esgz")]) == 1
    one_error_line(capsys.readouterr().err.encode(), "refusing to overwrite")
    assert layer.read_bytes() == before and not (tmp_path / "out.esgz").exists()


def test_convert_refuses_toc_output_over_the_output(tmp_path: Path, layer: Path, capsys) -> None:
    out = tmp_path / "out.esgz"
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", "--estargz-external-toc", "--estargz-toc-output", str(out), str(layer), str(out)])
    assert exit_info.value.code == 2
    assert "--estargz-toc-output must differ from the output" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layer.tar"]


def test_unpack_refuses_its_blob_as_output(tmp_path: Path, layer: Path, capsys) -> None:
    blob = tmp_path / "layer.esgz"
    estargz.convert(layer, blob)
    before = blob.read_bytes()
    (tmp_path / "alias.tar").symlink_to(blob.name)
    for output in (blob, tmp_path / "alias.tar"):
        assert main(["unpack", str(blob), str(output)]) == 1
        one_error_line(capsys.readouterr().err.encode(), "refusing to overwrite")
        assert blob.read_bytes() == before


def small_layout(root: Path) -> Layout:
    layout = Layout(root)
    layout.tag((layout.image([layout.layer({"etc/hostname": b"box\n"}, "gzip")]), "v1"))
    return layout


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("destination", ["images", "images/src", "alias"])
def test_image_convert_refuses_a_destination_holding_its_source(tmp_path: Path, destination: str) -> None:
    source = tmp_path / "images" / "src"
    source.mkdir(parents=True)
    small_layout(source)
    (tmp_path / "alias").symlink_to(source)
    before = snapshot(tmp_path / "images")
    with pytest.raises(ValueError, match="input"):
        convert_image(source, tmp_path / destination, overwrite=True)
    assert snapshot(tmp_path / "images") == before


def test_image_convert_refuses_its_archive_as_destination(tmp_path: Path) -> None:
    small_layout(tmp_path / "src")
    archive = tmp_path / "image.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tmp_path / "src", arcname=".")
    before = archive.read_bytes()
    proc = run_cli("image", "convert", "--overwrite", archive, archive)
    assert proc.returncode == 1
    one_error_line(proc.stderr, "refusing to overwrite")
    assert archive.read_bytes() == before


# -- whole or not at all -------------------------------------------------------------------------

def _converted(tar: bytes) -> bytes:
    out = io.BytesIO()
    estargz.convert(io.BytesIO(tar), out, compression_level=1)
    return out.getvalue()


def test_failed_unpack_leaves_nothing(tmp_path: Path, capsys) -> None:
    blob = bytearray(_converted(make_tar({"big": os.urandom(200_000)})))
    with estargz.open(bytes(blob)) as reader:
        chunk = reader.lookup("big").chunks[0]
    blob[chunk.offset + 100] ^= 0xFF  # inside the file's compressed data; the TOC stays intact
    (tmp_path / "bad.esgz").write_bytes(blob)
    assert main(["unpack", str(tmp_path / "bad.esgz"), str(tmp_path / "out.tar")]) == 1
    one_error_line(capsys.readouterr().err.encode())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.esgz"]


def test_failed_extract_leaves_no_partial_file(tmp_path: Path) -> None:
    blob = bytearray(_converted(make_tar({"first": b"complete", "big": os.urandom(200_000)})))
    with estargz.open(bytes(blob)) as reader:
        chunk = reader.lookup("big").chunks[0]
    blob[chunk.offset + 100] ^= 0xFF
    with estargz.open(bytes(blob)) as reader, pytest.raises(estargz.EStargzError):
        reader.extract(tmp_path / "dest")
    assert sorted(os.listdir(tmp_path / "dest")) == [".no.prefetch.landmark", "first"]
    assert (tmp_path / "dest" / "first").read_bytes() == b"complete"


def test_toc_output_ignores_a_planted_symlink(tmp_path: Path, layer: Path, capsys) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    out = tmp_path / "out.esgz"
    toc_blob = Path(f"{out}.toc.tar.gz")
    for planted in (Path(f"{toc_blob}.part"), toc_blob):
        planted.symlink_to(victim)
    assert main(["convert", "--estargz-external-toc", str(layer), str(out)]) == 0
    assert victim.read_bytes() == b"precious"
    assert not toc_blob.is_symlink()
    with open_blob(out, toc=toc_blob) as reader:
        assert reader.read("etc/hostname") == b"box\n"


def test_no_umask_change(tmp_path: Path, layer: Path, monkeypatch) -> None:
    """The umask is process-wide: changing it while other threads create files is a race."""
    def forbidden(mask: int) -> int:
        raise AssertionError("os.umask called")

    small_layout(tmp_path / "src")
    monkeypatch.setattr(os, "umask", forbidden)
    estargz.convert(layer, tmp_path / "layer.esgz")
    convert_image(tmp_path / "src", tmp_path / "dst")
    assert (tmp_path / "dst" / "index.json").exists()


@pytest.mark.parametrize("command", ["convert", "image convert"])
def test_sigterm_removes_temporary_files(tmp_path: Path, command: str) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for number in range(64):
            info = tarfile.TarInfo(f"f{number}")
            info.size = 1 << 20
            tar.addfile(info, io.BytesIO(os.urandom(info.size)))
    source = tmp_path / "in" / "big.tar"
    source.parent.mkdir()
    source.write_bytes(buf.getvalue())
    if command == "image convert":
        source = tmp_path / "in" / "layout"
        layout = Layout(source)
        layer = layout.blob(buf.getvalue(), "application/vnd.oci.image.layer.v1.tar")
        layout.diff_ids[layer["digest"]] = layer["digest"]
        layout.tag((layout.image([layer]), "v1"))
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "estargz", *command.split(), "--threads", "1",
                             "--estargz-compression-level", "9", str(source), str(out / "big")],
                            env=project_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + PATIENCE
    while not any(out.iterdir()) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the conversion ended before it could be terminated"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=PATIENCE)
    assert list(out.iterdir()) == []
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert stderr == b"estargz: terminated\n"


# -- TOC image into an existing layout -----------------------------------------------------------

def test_toc_image_joins_an_existing_layout(tmp_path: Path, layer: Path, capsys) -> None:
    layout_dir = tmp_path / "layout"
    small_layout(layout_dir)
    before = json.loads((layout_dir / "index.json").read_text())["manifests"]
    assert main(["convert", "--estargz-external-toc", "--estargz-toc-image", str(layout_dir),
                 str(layer), str(tmp_path / "out.esgz")]) == 0
    digest = json.loads(capsys.readouterr().out)["tocImageManifestDigest"]
    manifests = json.loads((layout_dir / "index.json").read_text())["manifests"]
    assert manifests[:-1] == before
    assert manifests[-1]["digest"] == digest
    assert manifests[-1]["annotations"] == {"org.opencontainers.image.ref.name": "latest"}
    for descriptor in manifests:
        blob = layout_dir / "blobs" / "sha256" / descriptor["digest"].split(":")[1]
        assert sha256(blob.read_bytes()) == descriptor["digest"]


# -- extraction ----------------------------------------------------------------------------------

_EXTRACT_WITH_FD_LIMIT = """
import resource, sys
import estargz
resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, {limit}))
with estargz.open(sys.argv[1]) as reader:
    report = reader.extract(sys.argv[2])
print(report.entries)
"""


def test_extract_many_directories_under_a_descriptor_limit(tmp_path: Path) -> None:
    directories = [f"usr/share/doc/pkg{n}" for n in range(3000)]
    deep = "/".join(f"d{n}" for n in range(400))
    files = {f"{d}/copyright": d.encode() for d in directories} | {f"{deep}/leaf": b"deep"}
    blob = tmp_path / "doc.esgz"
    blob.write_bytes(_converted(make_tar(files, ["usr", "usr/share", "usr/share/doc", *directories])))
    proc = subprocess.run([sys.executable, "-c", _EXTRACT_WITH_FD_LIMIT.format(limit=FD_LIMIT),
                           str(blob), str(tmp_path / "root")],
                          capture_output=True, env=project_env(), timeout=PATIENCE)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    root = tmp_path / "root"
    for directory in directories[::97]:
        assert (root / directory / "copyright").read_bytes() == directory.encode()
    assert (root / deep / "leaf").read_bytes() == b"deep"
    assert oct((root / directories[-1]).stat().st_mode & 0o777) == oct(0o755)


@pytest.mark.parametrize(("entry", "error", "fragment"), [
    (TOCEntry(name="f", type="reg", mode=0o644, uid=2**32), LimitError, "uid"),
    (TOCEntry(name="f", type="reg", mode=0o644, gid=-2), LimitError, "gid"),
    (TOCEntry(name="a\x00b", type="reg", mode=0o644), FormatError, "NUL"),
    (TOCEntry(name="l", type="symlink", link_name="a\x00b"), FormatError, "NUL"),
    (TOCEntry(name="f", type="reg", mode=0o644, xattrs={"user.a\x00": b"v"}), FormatError, "NUL"),
])
def test_extract_refuses_unrepresentable_entries(tmp_path: Path, entry: TOCEntry, error: type,
                                                 fragment: str, capsys) -> None:
    blob = tmp_path / "bad.esgz"
    blob.write_bytes(_crafted_blob([(entry, b"x" if entry.type == "reg" else b"")]))
    with pytest.raises(error, match=fragment), estargz.open(blob) as reader:
        reader.extract(tmp_path / "dest")
    assert main(["extract", str(blob), str(tmp_path / "dest2")]) == 1
    one_error_line(capsys.readouterr().err.encode(), fragment)


def test_extract_skips_what_tar_skips(tmp_path: Path, capsys) -> None:
    long_name = "n" * 300
    blob = tmp_path / "odd.esgz"
    blob.write_bytes(_crafted_blob([
        (TOCEntry(name=long_name, type="reg", mode=0o644), b"long"),
        (TOCEntry(name=f"{long_name}x", type="dir", mode=0o755), b""),
        (TOCEntry(name=f"{long_name}x/below", type="reg", mode=0o644), b"below"),
        (TOCEntry(name="empty", type="symlink", link_name=""), b""),
        (TOCEntry(name="kept", type="reg", mode=0o644), b"kept"),
    ]))
    with estargz.open(blob) as reader:
        report = reader.extract(tmp_path / "dest")
    assert [name for name, _ in report.skipped] == [long_name, f"{long_name}x", f"{long_name}x/below", "empty"]
    assert os.listdir(tmp_path / "dest") == ["kept"]
    assert (tmp_path / "dest" / "kept").read_bytes() == b"kept"
    assert main(["extract", str(blob), str(tmp_path / "dest2")]) == 0
    assert capsys.readouterr().err.count("estargz: skipped ") == 4


NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="without root, mknod fails before checking the number")


@pytest.mark.parametrize(("major", "minor"), [
    (2**40, 0), (0, 2**40),
    pytest.param(4096, 0, marks=NEEDS_ROOT), pytest.param(0, 2**20, marks=NEEDS_ROOT),
])
def test_extract_skips_devices_out_of_range(tmp_path: Path, major: int, minor: int) -> None:
    blob = tmp_path / "dev.esgz"
    blob.write_bytes(_crafted_blob([
        (TOCEntry(name="dev", type="char", mode=0o600, dev_major=major, dev_minor=minor), b""),
        (TOCEntry(name="kept", type="reg", mode=0o644), b"kept"),
    ]))
    with estargz.open(blob) as reader:
        report = reader.extract(tmp_path / "dest")
    assert report.skipped == [("dev", "device number out of range")]
    assert os.listdir(tmp_path / "dest") == ["kept"]


# -- ls ------------------------------------------------------------------------------------------

def test_ls_escapes_control_characters(tmp_path: Path, capsys) -> None:
    names = {"a\nb": "a\\nb", "tab\there": "tab\\there", "\x1b[31mred": "\\033[31mred",
             "back\\slash": "back\\\\slash", "bell\x07\x7f": "bell\\a\\177", "ok é": "ok é"}
    blob = tmp_path / "names.esgz"
    blob.write_bytes(_converted(make_tar({name: b"x" for name in names})))
    assert main(["ls", str(blob)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sorted(lines[1:]) == sorted(names.values())
    assert main(["ls", "-l", str(blob)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and out.count("\n") == len(names) + 1


def test_error_messages_stay_on_one_line(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "no\nsuch\x1b[2J"
    assert main(["ls", str(missing)]) == 1
    err = capsys.readouterr().err
    one_error_line(err.encode(), "no\\nsuch\\033[2J: No such file or directory")


def test_ls_escapes_link_targets_and_times(tmp_path: Path, capsys) -> None:
    blob = tmp_path / "odd.esgz"
    blob.write_bytes(_crafted_blob([
        (TOCEntry(name="l", type="symlink", link_name="x\ny\x1b", modtime="2024-01-01T00:00:00Z\n"), b""),
    ]))
    assert main(["ls", "-l", str(blob)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "\x1b" not in out
    assert out.endswith(" l -> x\\ny\\033\n")


# -- image documents -----------------------------------------------------------------------------

def shared_index_layout(root: Path, fanout: int, depth: int) -> Layout:
    """An index whose entries all point to one index, ``depth`` times over, down to one image."""
    layout = Layout(root)
    node = layout.image([layout.layer({"etc/hostname": b"box\n"}, "gzip")])
    for _ in range(depth):
        node = layout.index([node] * fanout)
    layout.tag((node, "v1"))
    return layout


_CONVERT_WITH_CPU_BUDGET = """
import resource, sys
from estargz.image import convert_image
from estargz.reader import open_blob
resource.setrlimit(resource.RLIMIT_CPU, ({budget}, {budget}))
result = convert_image(sys.argv[1], sys.argv[2], external_toc=True)
print(len(result.manifests))
"""


def test_shared_index_entries_are_visited_once(tmp_path: Path) -> None:
    shared_index_layout(tmp_path / "src", fanout=30, depth=7)
    proc = subprocess.run([sys.executable, "-c", _CONVERT_WITH_CPU_BUDGET.format(budget=CPU_BUDGET),
                           str(tmp_path / "src"), str(tmp_path / "dst")],
                          capture_output=True, env=project_env(), timeout=PATIENCE * 5)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert proc.stdout.split() == [b"1"]
    index = json.loads((tmp_path / "dst" / "index.json").read_text())
    assert [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]] == ["v1", "v1-esgztoc"]


def _rewrite(layout: Layout, descriptor: dict, change) -> dict:
    """A copy of the JSON blob of ``descriptor`` changed by ``change``; its new descriptor."""
    document = json.loads((layout.root / "blobs" / "sha256" / descriptor["digest"][7:]).read_bytes())
    change(document)
    return layout.blob(json.dumps(document).encode(), descriptor["mediaType"],
                       **{k: v for k, v in descriptor.items() if k not in ("mediaType", "digest", "size")})


def _set(path: tuple, value: object):
    def change(document: dict) -> None:
        target = document
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


@pytest.mark.parametrize(("where", "path", "value"), [
    ("index", ("manifests", 0, "platform"), "linux/amd64"),
    ("index", ("manifests", 0, "mediaType"), ["x"]),
    ("index", ("manifests", 0, "annotations"), {"k": 1}),
    ("manifest", ("layers", 0, "mediaType"), {}),
    ("manifest", ("config", "mediaType"), 5),
    ("manifest", ("layers", 0, "annotations"), {"k": None}),
])
def test_wrong_json_types_are_format_errors(tmp_path: Path, where: str, path: tuple, value: object) -> None:
    layout = Layout(tmp_path / "src")
    image = layout.image([layout.layer({"etc/hostname": b"box\n"}, "gzip")])
    if where == "manifest":
        image = _rewrite(layout, image, _set(path, value))
    index = layout.index([image])
    if where == "index":
        index = _rewrite(layout, index, _set(path, value))
    layout.tag((index, "v1"))
    with pytest.raises(FormatError):
        convert_image(tmp_path / "src", tmp_path / "dst")
    assert not (tmp_path / "dst").exists()


# -- errors about the user's own paths -----------------------------------------------------------

@pytest.mark.parametrize(("command", "expected"), [
    (["convert", "{layer}", "{tmp}/outdir"], "{tmp}/outdir: Is a directory"),
    (["unpack", "{blob}", "{tmp}/outdir"], "{tmp}/outdir: Is a directory"),
    (["convert", "{layer}", "{tmp}/missing/out.esgz"], "{tmp}/missing: No such directory"),
])
def test_path_errors_are_one_line_about_the_users_path(tmp_path: Path, layer: Path, command: list[str],
                                                        expected: str, capsys) -> None:
    (tmp_path / "outdir").mkdir()
    blob = tmp_path / "layer.esgz"
    estargz.convert(layer, blob)
    names = {"layer": layer, "blob": blob, "tmp": tmp_path}
    assert main([part.format(**names) for part in command]) == 1
    one_error_line(capsys.readouterr().err.encode(), expected.format(**names))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layer.esgz", "layer.tar", "outdir"]
    assert list((tmp_path / "outdir").iterdir()) == []
