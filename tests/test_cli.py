"""The command line: ``estargz.cli.main`` in-process, and ``python -m estargz`` as a real process.

Every command exits 0 on success, 1 with exactly one line ``estargz: error: ...`` on bad input or
a failed check, and 2 on usage errors (docs/cli.md).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile

import pytest
from helpers import gunzip, gzip_members, sha256

import estargz
from estargz.cli import main
from estargz.ordering import NO_PREFETCH_LANDMARK as NOLM
from estargz.ordering import PREFETCH_LANDMARK as LM
from estargz.toc import TOC_NAME

MTIME = 1700000000
MTIME_TEXT = "2023-11-14T22:13:20Z"
BUSYBOX = bytes(range(256)) * 12 + b"tail"  # 3076 bytes
OS_RELEASE = b'NAME="Test Linux"\nID=test\n'
SU = b"\x7fELF su"


def make_tar(specs) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for spec in specs:
            spec = dict(spec)
            data = spec.pop("data", None)
            info = tarfile.TarInfo(spec.pop("name"))
            info.mtime, info.mode = MTIME, 0o644
            info.uname, info.gname = "root", "root"
            for key, value in spec.items():
                setattr(info, key, value)
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buf.getvalue()


LAYER = [
    {"name": "etc", "type": tarfile.DIRTYPE, "mode": 0o755},
    {"name": "etc/os-release", "data": OS_RELEASE},
    {"name": "bin", "type": tarfile.DIRTYPE, "mode": 0o755},
    {"name": "bin/busybox", "data": BUSYBOX, "mode": 0o755},
    {"name": "bin/sh", "type": tarfile.SYMTYPE, "linkname": "busybox", "mode": 0o777},
    {"name": "bin/su", "data": SU, "mode": 0o4755},
    {"name": "bin/ls", "type": tarfile.LNKTYPE, "linkname": "bin/busybox"},
    {"name": "tmp", "type": tarfile.DIRTYPE, "mode": 0o1777},
    {"name": "empty", "data": b"", "mtime": 0, "uid": 1000, "gid": 1000, "uname": "user", "gname": "users"},
]
TAR = make_tar(LAYER)


@pytest.fixture
def layer_tar(tmp_path):
    path = tmp_path / "layer.tar"
    path.write_bytes(TAR)
    return path


@pytest.fixture(scope="module")
def blob_file(tmp_path_factory):
    """The layer converted with the default options (a module-wide file, read only)."""
    directory = tmp_path_factory.mktemp("blob")
    (directory / "layer.tar").write_bytes(TAR)
    out = directory / "layer.esgz"
    result = estargz.convert(directory / "layer.tar", out)
    return out, result


def run_cli(*args, input=b"", cwd=None):
    """``python -m estargz ARGS`` as a process; returns the CompletedProcess (bytes)."""
    return subprocess.run([sys.executable, "-m", "estargz", *map(str, args)], input=input,
                          capture_output=True, cwd=cwd, timeout=60)


def assert_one_error_line(stderr: str | bytes, *fragments: str) -> str:
    text = stderr.decode() if isinstance(stderr, bytes) else stderr
    assert text.startswith("estargz: error: "), text
    assert text.endswith("\n") and text.count("\n") == 1, text
    assert "Traceback" not in text
    for fragment in fragments:
        assert fragment in text, text
    return text


def toc_names(path) -> list[str]:
    with estargz.open(path) as reader:
        return [e.name for e in reader.toc_entries if e.type != "chunk"]


def tar_members(data: bytes) -> list[tuple[str, str, int, bytes | None]]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(m.name, m.type.decode(), m.mode,
                 tar.extractfile(m).read() if m.isreg() else m.linkname.encode()) for m in tar]


# --------------------------------------------------------------------------------------------
# convert
# --------------------------------------------------------------------------------------------

def test_convert_prints_json_matching_the_blob(tmp_path, layer_tar, capsys):
    out = tmp_path / "out.esgz"
    assert main(["convert", str(layer_tar), str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    doc = json.loads(captured.out)
    blob = out.read_bytes()
    raw = gzip.decompress(blob)
    with estargz.open(out) as reader:
        toc_digest = reader.toc_digest
    assert doc == {
        "format": "estargz",
        "tocDigest": toc_digest,
        "diffID": sha256(raw),
        "uncompressedSize": len(raw),
        "blobDigest": sha256(blob),
        "blobSize": len(blob),
        "missingPrioritized": [],
        "descriptor": {
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": sha256(blob),
            "size": len(blob),
            "annotations": {
                "containerd.io/snapshot/stargz/toc.digest": toc_digest,
                "io.containers.estargz.uncompressed-size": str(len(raw)),
            },
        },
    }
    assert os.path.getsize(out) == doc["blobSize"]
    assert toc_names(out) == [NOLM, "etc/", "etc/os-release", "bin/", "bin/busybox", "bin/sh", "bin/su",
                              "bin/ls", "tmp/", "empty"]
    assert sorted(os.listdir(tmp_path)) == ["layer.tar", "out.esgz"]


def test_convert_stdin_to_stdout_process(tmp_path, layer_tar, blob_file):
    """``convert - -``: the blob on stdout, the JSON on stderr; same bytes as converting the path."""
    path, result = blob_file
    proc = run_cli("convert", "-", "-", input=TAR, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == path.read_bytes()
    doc = json.loads(proc.stderr)
    assert doc["blobDigest"] == sha256(proc.stdout) == result.blob_digest
    assert doc["tocDigest"] == result.toc_digest
    # stdin that is gzip-compressed gives the same blob
    proc = run_cli("convert", "-", str(tmp_path / "from-gzip.esgz"), input=gzip.compress(TAR), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["blobDigest"] == result.blob_digest
    assert proc.stderr == b""
    assert (tmp_path / "from-gzip.esgz").read_bytes() == path.read_bytes()


def test_convert_to_stdout_in_process(layer_tar, blob_file, capsysbinary):
    path, result = blob_file
    assert main(["convert", str(layer_tar), "-"]) == 0
    captured = capsysbinary.readouterr()
    assert captured.out == path.read_bytes()
    assert json.loads(captured.err)["tocDigest"] == result.toc_digest


def test_convert_chunk_size(tmp_path, layer_tar, capsys):
    out = tmp_path / "out.esgz"
    assert main(["convert", str(layer_tar), str(out), "--estargz-chunk-size", "1024"]) == 0
    capsys.readouterr()
    with estargz.open(out) as reader:
        chunks = reader.lookup("bin/busybox").chunks
        assert [(c.chunk_offset, c.chunk_size) for c in chunks] == [(0, 1024), (1024, 1024), (2048, 1024),
                                                                   (3072, 4)]
        assert reader.read("bin/busybox") == BUSYBOX
    # 0 is the default chunk size (4 MiB): one chunk
    assert main(["convert", str(layer_tar), str(out), "--estargz-chunk-size", "0"]) == 0
    capsys.readouterr()
    with estargz.open(out) as reader:
        assert len(reader.lookup("bin/busybox").chunks) == 1


def test_convert_negative_chunk_size_is_a_usage_error(tmp_path, layer_tar, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", str(layer_tar), str(tmp_path / "o"), "--estargz-chunk-size", "-1"])
    assert exit_info.value.code == 2
    assert "must not be negative" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_convert_compression_levels(tmp_path, layer_tar, capsys):
    sizes = {}
    for level in range(10):
        out = tmp_path / f"l{level}.esgz"
        assert main(["convert", str(layer_tar), str(out), "--estargz-compression-level", str(level)]) == 0
        doc = json.loads(capsys.readouterr().out)
        sizes[level] = doc["blobSize"]
        with estargz.open(out, toc_digest=doc["tocDigest"]) as reader:
            assert reader.read("bin/busybox") == BUSYBOX
            assert reader.verify().files == 5
        assert out.read_bytes()[8] == {9: 2, 1: 4}.get(level, 0)  # XFL of the first member
    assert sizes[0] > sizes[1] >= sizes[9]


@pytest.mark.parametrize("value", ["10", "-1", "x"])
def test_convert_invalid_compression_level(tmp_path, layer_tar, capsys, value):
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", str(layer_tar), str(tmp_path / "o"), "--estargz-compression-level", value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --estargz-compression-level" in err
    if value != "x":
        assert "must be 0-9" in err
    assert not (tmp_path / "o").exists()


def test_convert_invalid_compression_level_process(tmp_path, layer_tar):
    proc = run_cli("convert", layer_tar, tmp_path / "o", "--estargz-compression-level", "10")
    assert proc.returncode == 2
    assert proc.stdout == b""
    assert proc.stderr.decode().splitlines()[-1] == (
        "estargz convert: error: argument --estargz-compression-level: must be 0-9")
    assert not (tmp_path / "o").exists()


RECORD_LINES = [
    {"path": "bin/sh", "manifestDigest": "sha256:m", "layerIndex": 0},
    {"path": "etc/os-release", "manifestDigest": "sha256:m", "layerIndex": 1},
    {"path": "missing/file", "manifestDigest": "sha256:m", "layerIndex": 0},
    {"path": "bin/sh", "manifestDigest": "sha256:m", "layerIndex": 1},
    {"path": "empty", "manifestDigest": "sha256:m", "layerIndex": 1},
    {"path": "bin/su", "manifestDigest": "sha256:m", "layerIndex": 0},
]


@pytest.fixture
def record_file(tmp_path):
    path = tmp_path / "record.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in RECORD_LINES) + "\n\n")
    return path


def test_convert_record_in(tmp_path, layer_tar, record_file, capsys):
    out = tmp_path / "out.esgz"
    assert main(["convert", str(layer_tar), str(out), "--estargz-record-in", str(record_file)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["missingPrioritized"] == ["missing/file"]  # allowed: recorded workloads may miss
    assert toc_names(out) == ["bin/", "bin/sh", "etc/", "etc/os-release", "empty", "bin/su", LM,
                              "bin/busybox", "bin/ls", "tmp/"]


def test_convert_record_layer_index(tmp_path, layer_tar, record_file, capsys):
    out = tmp_path / "out.esgz"
    args = ["convert", str(layer_tar), str(out), "--estargz-record-in", str(record_file)]
    assert main(args + ["--record-layer-index", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["missingPrioritized"] == []
    assert toc_names(out) == ["etc/", "etc/os-release", "bin/", "bin/sh", "empty", LM,
                              "bin/busybox", "bin/su", "bin/ls", "tmp/"]
    assert main(args + ["--record-layer-index", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["missingPrioritized"] == ["missing/file"]
    assert toc_names(out)[:4] == ["bin/", "bin/sh", "bin/su", LM]
    # a layer index with no records: nothing is prioritized, .no.prefetch.landmark comes first
    assert main(args + ["--record-layer-index", "5"]) == 0
    capsys.readouterr()
    assert toc_names(out)[0] == NOLM


def test_convert_bad_record_file(tmp_path, layer_tar, capsys):
    record = tmp_path / "record.jsonl"
    record.write_text('{"path": "bin/sh"}\nnot json\n')
    assert main(["convert", str(layer_tar), str(tmp_path / "o"), "--estargz-record-in", str(record)]) == 1
    assert_one_error_line(capsys.readouterr().err, "line 2")
    assert not (tmp_path / "o").exists()


def test_convert_prioritized_files(tmp_path, layer_tar, capsys):
    listing = tmp_path / "list.txt"
    listing.write_text("# startup files\n\n  bin/su  \n   # indented comment\n./etc/os-release\n")
    out = tmp_path / "out.esgz"
    assert main(["convert", str(layer_tar), str(out), "--prioritized-file", "empty",
                 "--prioritized-file", "/bin/sh", "--prioritized-files-from", str(listing)]) == 0
    assert json.loads(capsys.readouterr().out)["missingPrioritized"] == []
    assert toc_names(out) == ["empty", "bin/", "bin/sh", "bin/su", "etc/", "etc/os-release", LM,
                              "bin/busybox", "bin/ls", "tmp/"]


def test_convert_prioritized_hardlink_brings_target(tmp_path, layer_tar, capsys):
    out = tmp_path / "out.esgz"
    assert main(["convert", str(layer_tar), str(out), "--prioritized-file", "bin/ls"]) == 0
    capsys.readouterr()
    assert toc_names(out)[:4] == ["bin/", "bin/busybox", "bin/ls", LM]


def test_convert_missing_prioritized(tmp_path, layer_tar, capsys):
    out = tmp_path / "out.esgz"
    assert main(["convert", str(layer_tar), str(out), "--prioritized-file", "nope",
                 "--prioritized-file", "bin/su"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert_one_error_line(captured.err, "prioritized file 'nope' is not in the layer")
    assert sorted(os.listdir(tmp_path)) == ["layer.tar"]
    assert main(["convert", str(layer_tar), str(out), "--prioritized-file", "nope",
                 "--prioritized-file", "bin/su", "--allow-missing-prioritized"]) == 0
    assert json.loads(capsys.readouterr().out)["missingPrioritized"] == ["nope"]
    assert toc_names(out)[:3] == ["bin/", "bin/su", LM]


def test_convert_threads_do_not_change_output(tmp_path, layer_tar, capsys):
    outputs = []
    for threads in ("1", "2"):
        out = tmp_path / f"t{threads}.esgz"
        assert main(["convert", str(layer_tar), str(out), "--threads", threads,
                     "--estargz-chunk-size", "512", "-q"]) == 0
        outputs.append((out.read_bytes(), json.loads(capsys.readouterr().out)))
    assert outputs[0] == outputs[1]


def test_convert_threads_zero_is_a_usage_error(tmp_path, layer_tar, capsys):
    """docs/cli.md: exit 2 on usage errors. ``--threads 0`` is an invalid option value, like
    ``--estargz-compression-level 10`` (exit 2), but it is only caught by convert() (exit 1)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", str(layer_tar), str(tmp_path / "o"), "--threads", "0"])
    assert exit_info.value.code == 2
    assert "--threads" in capsys.readouterr().err


def test_convert_corrupt_input_in_process(tmp_path, capsys):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(TAR[:512] + b"\xff" * 2048)  # first header fine, then garbage
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert main(["convert", str(bad), str(out_dir / "x.esgz")]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert_one_error_line(captured.err)
    assert os.listdir(out_dir) == []


@pytest.mark.parametrize("content, fragment", [
    (b"garbage!" * 200, "tar header: invalid checksum field"),
    (gzip.compress(TAR)[:200], "cannot decompress the input layer"),
    (TAR[:1024 + 10], "tar: unexpected end of archive at offset 1034"),  # inside os-release's payload
    (TAR[:1536 + 100], "tar: truncated header block"),
], ids=["garbage", "truncated-gzip", "truncated-payload", "truncated-header"])
def test_convert_corrupt_input_process(tmp_path, content, fragment):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(content)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = run_cli("convert", bad, out_dir / "x.esgz")
    assert proc.returncode == 1
    assert proc.stdout == b""
    assert_one_error_line(proc.stderr, fragment)
    assert os.listdir(out_dir) == []  # neither the blob nor its .part temporary


def test_convert_missing_input(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "nope.tar"), str(tmp_path / "o")]) == 1
    assert_one_error_line(capsys.readouterr().err, f"{tmp_path / 'nope.tar'}: No such file or directory")
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------------
# reading commands
# --------------------------------------------------------------------------------------------

def test_info(blob_file, capsys):
    path, result = blob_file
    assert main(["info", str(path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    with estargz.open(path) as reader:
        toc_offset = reader.toc_offset
    assert doc == {
        "format": "estargz",
        "footer": {"kind": "estargz", "size": 51},
        "tocOffset": toc_offset,
        "tocDigest": result.toc_digest,
        "tocVersion": 1,
        "blobSize": result.blob_size,
        "entries": 10,
        "types": {"dir": 3, "hardlink": 1, "reg": 5, "symlink": 1},
        "fileBytes": 1 + len(OS_RELEASE) + len(BUSYBOX) + len(SU),
        "chunks": 4,
        "landmark": NOLM,
        "prefetchBytes": None,
    }
    assert path.read_bytes()[-51:] == estargz.footer.gzip_footer(toc_offset)


def test_info_prefetch_landmark(tmp_path, layer_tar, capsys):
    out = tmp_path / "out.esgz"
    assert main(["convert", str(layer_tar), str(out), "--prioritized-file", "etc/os-release"]) == 0
    capsys.readouterr()
    assert main(["info", str(out), "--toc-digest", estargz.open(out).toc_digest]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["landmark"] == LM
    with estargz.open(out) as reader:
        assert doc["prefetchBytes"] == reader.lookup(LM).chunks[0].offset > reader.lookup("etc/os-release").chunks[0].offset


def test_info_of_plain_tar_fails(layer_tar):
    proc = run_cli("info", layer_tar)
    assert proc.returncode == 1
    assert proc.stdout == b""
    assert_one_error_line(proc.stderr, "no eStargz or zstd:chunked footer")


@pytest.mark.parametrize("content", [b"", b"x", gzip.compress(TAR)])
def test_info_of_non_estargz_fails_in_process(tmp_path, capsys, content):
    path = tmp_path / "not.esgz"
    path.write_bytes(content)
    assert main(["info", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert_one_error_line(captured.err, "no eStargz or zstd:chunked footer")


def test_ls(blob_file, capsys):
    path, _ = blob_file
    assert main(["ls", str(path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        NOLM, "etc/", "etc/os-release", "bin/", "bin/busybox", "bin/sh", "bin/su", "bin/ls", "tmp/", "empty"]


def test_ls_long(blob_file, capsys):
    path, _ = blob_file
    assert main(["ls", "-l", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()

    def line(mode, owner, size, time, name):
        return f"{mode} {owner:>15} {size:>10} {time:>20} {name}"

    assert lines == [
        line("----------", "0/0", 1, "-", NOLM),
        line("drwxr-xr-x", "root/root", 0, MTIME_TEXT, "etc/"),
        line("-rw-r--r--", "root/root", len(OS_RELEASE), MTIME_TEXT, "etc/os-release"),
        line("drwxr-xr-x", "root/root", 0, MTIME_TEXT, "bin/"),
        line("-rwxr-xr-x", "root/root", len(BUSYBOX), MTIME_TEXT, "bin/busybox"),
        line("lrwxrwxrwx", "root/root", 0, MTIME_TEXT, "bin/sh -> busybox"),
        line("-rwsr-xr-x", "root/root", len(SU), MTIME_TEXT, "bin/su"),
        line("hrw-r--r--", "root/root", 0, MTIME_TEXT, "bin/ls -> bin/busybox"),
        line("drwxrwxrwt", "root/root", 0, MTIME_TEXT, "tmp/"),
        line("-rw-r--r--", "user/users", 0, "-", "empty"),
    ]


def test_ls_mode_strings_special_bits(tmp_path, capsys):
    specs = [
        {"name": "a", "data": b"", "mode": 0o4644},   # setuid without x: S
        {"name": "b", "data": b"", "mode": 0o2755},   # setgid with x: s
        {"name": "c", "data": b"", "mode": 0o2640},   # setgid without x: S
        {"name": "d", "type": tarfile.DIRTYPE, "mode": 0o1770},  # sticky without other x: T
        {"name": "f", "type": tarfile.FIFOTYPE, "mode": 0o600},
        {"name": "c1", "type": tarfile.CHRTYPE, "mode": 0o666, "devmajor": 1, "devminor": 3},
        {"name": "b1", "type": tarfile.BLKTYPE, "mode": 0o660, "devmajor": 7, "devminor": 0},
    ]
    src = tmp_path / "l.tar"
    src.write_bytes(make_tar(specs))
    out = tmp_path / "l.esgz"
    estargz.convert(src, out)
    assert main(["ls", "-l", str(out)]) == 0
    modes = [line.split()[0] for line in capsys.readouterr().out.splitlines()][1:]
    assert modes == ["-rwSr--r--", "-rwxr-sr-x", "-rw-r-S---", "drwxrwx--T", "prw-------", "crw-rw-rw-",
                     "brw-rw----"]


def test_cat(blob_file, capsysbinary):
    path, _ = blob_file
    assert main(["cat", str(path), "bin/busybox"]) == 0
    assert capsysbinary.readouterr().out == BUSYBOX
    assert main(["cat", str(path), "etc/os-release", "/bin/su", "./etc/os-release", "bin/ls", "empty"]) == 0
    assert capsysbinary.readouterr().out == OS_RELEASE + SU + OS_RELEASE + BUSYBOX


def test_cat_process(blob_file):
    path, _ = blob_file
    proc = run_cli("cat", path, "bin/su", "etc/os-release")
    assert proc.returncode == 0
    assert proc.stdout == SU + OS_RELEASE
    assert proc.stderr == b""


@pytest.mark.parametrize("name, fragment", [
    ("nope", "'nope' is not in the layer"),
    ("etc", "'etc' is not a regular file (it is a dir)"),
])
def test_cat_failures(blob_file, capsysbinary, name, fragment):
    path, _ = blob_file
    assert main(["cat", str(path), name]) == 1
    captured = capsysbinary.readouterr()
    assert captured.out == b""
    assert_one_error_line(captured.err, fragment)


def test_cat_missing_name_process(blob_file):
    path, _ = blob_file
    proc = run_cli("cat", path, "etc/os-release", "missing")
    assert proc.returncode == 1
    assert proc.stdout == OS_RELEASE  # the names before the missing one were written
    assert_one_error_line(proc.stderr, "'missing' is not in the layer")


def test_verify(blob_file, capsys):
    path, result = blob_file
    blob = path.read_bytes()
    *data_members, toc_member, _footer = gzip_members(blob)
    data_area = gunzip(blob[:toc_member])
    with tarfile.open(fileobj=io.BytesIO(data_area)) as tar:
        tar_entries = len(tar.getmembers())
    for extra in ([], ["--toc-digest", result.toc_digest]):
        assert main(["verify", str(path), *extra]) == 0
        assert json.loads(capsys.readouterr().out) == {
            "ok": True, "tocDigest": result.toc_digest, "files": 5, "chunks": 4,
            "bytes": 1 + len(OS_RELEASE) + len(BUSYBOX) + len(SU),
            "covered": {"blobBytes": len(blob), "blobSize": len(blob), "blobDigest": sha256(blob),
                        "units": len(data_members), "tarEntries": tar_entries,
                        "uncompressedBytes": len(data_area)}}


def test_verify_wrong_toc_digest_process(blob_file):
    path, result = blob_file
    wrong = "sha256:" + "0" * 64
    proc = run_cli("verify", path, "--toc-digest", wrong)
    assert proc.returncode == 1
    assert proc.stdout == b""
    assert_one_error_line(proc.stderr, f"TOC digest is {result.toc_digest}, expected {wrong}")


@pytest.mark.parametrize("command", ["info", "ls", "verify", "unpack"])
def test_wrong_toc_digest_refused_by_every_command(blob_file, capsys, tmp_path, command):
    path, _ = blob_file
    extra = [str(tmp_path / "o.tar")] if command == "unpack" else []
    assert main([command, str(path), *extra, "--toc-digest", "sha256:" + "1" * 64]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert_one_error_line(captured.err, "TOC digest is")
    assert not (tmp_path / "o.tar").exists()


def test_verify_detects_corruption(blob_file, tmp_path, capsys):
    path, _ = blob_file
    data = bytearray(path.read_bytes())
    with estargz.open(path) as reader:
        offset = reader.lookup("bin/busybox").chunks[0].offset
    # flip a byte inside busybox's deflate stream: inflating or checking the chunk fails
    data[offset + 30] ^= 0xFF
    bad = tmp_path / "bad.esgz"
    bad.write_bytes(bytes(data))
    assert main(["verify", str(bad)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert_one_error_line(captured.err)


def test_extract(blob_file, tmp_path, capsys):
    path, _ = blob_file
    dest = tmp_path / "root"
    assert main(["extract", str(path), str(dest)]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "entries": 10, "bytes": 1 + len(OS_RELEASE) + len(BUSYBOX) + len(SU), "skipped": 0}
    assert (dest / "bin/busybox").read_bytes() == BUSYBOX
    assert os.readlink(dest / "bin/sh") == "busybox"
    assert os.stat(dest / "bin/ls").st_ino == os.stat(dest / "bin/busybox").st_ino
    assert oct(os.stat(dest / "bin/su").st_mode & 0o7777) == oct(0o4755)
    assert oct(os.stat(dest / "tmp").st_mode & 0o7777) == oct(0o1777)


def _expected_unpacked() -> list:
    members = tar_members(TAR)
    return [(NOLM, "0", 0, b"\x0f")] + members


def test_unpack_to_file(blob_file, tmp_path, capsys):
    path, _ = blob_file
    out = tmp_path / "layer.tar"
    assert main(["unpack", str(path), str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    data = out.read_bytes()
    assert tar_members(data) == _expected_unpacked()
    assert TOC_NAME.encode() not in data
    # the layer's bytes, from the diffID's point of view: the blob inflated up to the TOC
    with estargz.open(path) as reader:
        assert data[:-1024] == gzip.decompress(path.read_bytes()[:reader.toc_offset])
    assert data[-1024:] == bytes(1024)


def test_unpack_to_stdout_process(blob_file):
    path, _ = blob_file
    proc = run_cli("unpack", path, "-")
    assert proc.returncode == 0
    assert proc.stderr == b""
    assert tar_members(proc.stdout) == _expected_unpacked()
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
        assert TOC_NAME not in tar.getnames()


def test_unpack_to_stdout_in_process(blob_file, capsysbinary):
    path, _ = blob_file
    assert main(["unpack", str(path), "-"]) == 0
    assert tar_members(capsysbinary.readouterr().out) == _expected_unpacked()


# --------------------------------------------------------------------------------------------
# help, version, usage
# --------------------------------------------------------------------------------------------

HELP_FLAGS = {
    None: ["convert", "info", "ls", "cat", "verify", "extract", "unpack", "--version"],
    "convert": ["--estargz-compression-level", "--estargz-chunk-size", "--estargz-record-in",
                "--record-layer-index", "--prioritized-file", "--prioritized-files-from",
                "--allow-missing-prioritized", "--threads", "--quiet", "-q", "input", "output"],
    "info": ["--toc-digest", "blob"],
    "ls": ["--toc-digest", "--long", "-l", "blob"],
    "cat": ["--toc-digest", "NAME", "blob"],
    "verify": ["--toc-digest", "blob"],
    "extract": ["--toc-digest", "directory", "blob"],
    "unpack": ["--toc-digest", "output", "blob"],
}


@pytest.mark.parametrize("command", list(HELP_FLAGS))
def test_help(command, capsys):
    argv = ["--help"] if command is None else [command, "--help"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: estargz")
    for flag in HELP_FLAGS[command]:
        assert flag in text, f"{flag} missing from {command} --help"


def test_help_process():
    proc = run_cli("--help")
    assert proc.returncode == 0
    assert b"convert" in proc.stdout and proc.stderr == b""
    proc = run_cli("convert", "--help")
    assert proc.returncode == 0
    assert b"--estargz-record-in" in proc.stdout


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"estargz {estargz.__version__}\n"


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["cat", "x.esgz"], ["convert", "a"], ["ls", "--bogus", "b"]])
def test_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: estargz") and "error:" in err


def test_missing_blob(tmp_path, capsys):
    assert main(["ls", str(tmp_path / "none.esgz")]) == 1
    assert_one_error_line(capsys.readouterr().err, f"{tmp_path / 'none.esgz'}: No such file or directory")


def test_cat_follows_symlinks_inside_the_layer(blob_file, capsysbinary):
    path, _ = blob_file
    assert main(["cat", str(path), "bin/sh"]) == 0
    with estargz.open(path) as reader:
        assert capsysbinary.readouterr().out == reader.read("bin/busybox")


#: Modules only registry, image and mount work needs.
_REMOTE_MODULES = ("urllib3", "http.client", "estargz.registry", "estargz.image", "estargz.push", "estargz.layers",
                   "estargz.mountfs", "estargz.overlay")


def test_local_work_does_not_load_registry_code(tmp_path):
    """``import estargz`` and a local conversion and read load no HTTP or registry code; the public
    names from those modules still resolve on first use, and ``estargz.mount`` is the function."""
    script = (
        "import sys, estargz, estargz.cli\n"
        "estargz.cli.main(['convert', '-q', sys.argv[1], sys.argv[2]])\n"
        "estargz.cli.main(['ls', sys.argv[2]])\n"
        f"print(sorted(m for m in {_REMOTE_MODULES!r} if m in sys.modules))\n"
        "print(callable(estargz.mount), estargz.RegistryClient.__module__, set(estargz.__all__) <= set(dir(estargz)))\n"
    )
    layer = tmp_path / "layer.tar"
    with tarfile.open(layer, "w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    done = subprocess.run([sys.executable, "-c", script, str(layer), str(tmp_path / "layer.esgz")],
                          capture_output=True, text=True, check=True)
    lines = done.stdout.splitlines()
    assert "hello.txt" in lines
    assert lines[-2:] == ["[]", "True estargz.registry True"]
