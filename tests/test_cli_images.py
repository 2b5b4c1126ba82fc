"""The command line on whole images and on registry references.

`image convert` turns an OCI layout into a converted one; the reading commands take a reference to
a layer in a real registry on loopback (pushed with skopeo) and read it lazily.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pty
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import zstandard

import estargz
from estargz.cli import main

FILES = {
    "etc/hostname": b"lazy\n",
    "usr/share/doc/readme.txt": b"estargz reads only what it needs\n" * 200,
    "usr/bin/tool": bytes(range(256)) * 300,
}


def layer_tar() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in FILES.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def put_blob(layout: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return "sha256:" + digest


def oci_layout(directory: Path, tag: str = "v1") -> Path:
    """A one-layer OCI layout with an uncompressed layer."""
    layer = layer_tar()
    layer_digest = put_blob(directory, layer)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [layer_digest]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put_blob(directory, config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest,
                    "size": len(layer)}],
    }).encode()
    (directory / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": put_blob(directory, manifest),
        "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": tag}}]}))
    (directory / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return directory


def layer_descriptor(layout: Path) -> dict:
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"].split(":", 1)[1]
    manifest = json.loads((layout / "blobs" / "sha256" / digest).read_text())
    [layer] = manifest["layers"]
    return layer


@pytest.mark.parametrize("layer_format", estargz.FORMATS)
def test_image_convert_writes_a_layout_of_the_format(tmp_path, capsys, layer_format):
    source = oci_layout(tmp_path / "source")
    assert main(["image", "convert", "--format", layer_format, "-q", str(source), str(tmp_path / "out")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["format"] == layer_format and summary["manifests"][0]["refNames"] == ["v1"]
    descriptor = layer_descriptor(tmp_path / "out")
    blob = tmp_path / "out" / "blobs" / "sha256" / descriptor["digest"].split(":", 1)[1]
    with estargz.open(blob, annotations=descriptor["annotations"]) as reader:
        assert reader.format == layer_format
        reader.verify()
        assert {name: reader.read(name) for name in FILES} == FILES


def test_image_convert_refuses_a_non_empty_destination(tmp_path):
    source = oci_layout(tmp_path / "source")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("mine")
    proc = subprocess.run([sys.executable, "-m", "estargz", "image", "convert", str(source), str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.startswith("estargz: error: ") and proc.stderr.count("\n") == 1
    assert (tmp_path / "out" / "keep").read_text() == "mine"


@pytest.fixture(scope="module")
def pushed(tmp_path_factory, skopeo, docker_registry) -> str:
    """A converted one-layer image in the loopback registry; returns its reference."""
    work = tmp_path_factory.mktemp("pushed")
    source = oci_layout(work / "source")
    estargz.convert_image(source, work / "converted")
    reference = f"{docker_registry.host}/cli/image:v1"
    subprocess.run([skopeo, "copy", "-q", "--dest-tls-verify=false", f"oci:{work / 'converted'}:v1",
                    f"docker://{reference}"], check=True)
    return reference


@pytest.mark.interop
def test_ls_and_cat_read_a_registry_layer_lazily(pushed, capsysbinary):
    assert main(["ls", "--insecure", pushed, "--layer", "0"]) == 0
    listed = capsysbinary.readouterr().out.decode().split()
    assert set(FILES) <= set(listed) and ".no.prefetch.landmark" in listed
    assert main(["cat", "--insecure", pushed, "usr/bin/tool"]) == 0
    assert capsysbinary.readouterr().out == FILES["usr/bin/tool"]


@pytest.mark.interop
def test_cat_and_verify_over_the_registry_as_a_process(pushed):
    cat = subprocess.run([sys.executable, "-m", "estargz", "cat", "--insecure", pushed, "etc/hostname", "usr/bin/tool"],
                         capture_output=True)
    assert cat.returncode == 0 and cat.stdout == FILES["etc/hostname"] + FILES["usr/bin/tool"]
    verify = subprocess.run([sys.executable, "-m", "estargz", "verify", "--insecure", pushed, "--layer", "-1"],
                            capture_output=True, text=True)
    assert verify.returncode == 0 and json.loads(verify.stdout)["ok"] is True


@pytest.mark.interop
def test_registry_errors_are_one_line(pushed):
    host = pushed.split("/", 1)[0]
    for reference, expected in ((f"{host}/cli/missing:v1", "not found"), (pushed + "-nope", "")):
        proc = subprocess.run([sys.executable, "-m", "estargz", "ls", "--insecure", reference], capture_output=True,
                              text=True)
        assert proc.returncode == 1
        assert proc.stderr.startswith("estargz: error: ") and proc.stderr.count("\n") == 1
        assert expected in proc.stderr.lower()


@pytest.mark.interop
def test_plain_http_registry_needs_insecure(pushed, tmp_path):
    """The loopback registry speaks plain HTTP: every command refuses it without --insecure."""
    source = oci_layout(tmp_path / "source")
    host = pushed.split("/", 1)[0]
    for argv in (["ls", pushed], ["ls", f"http://{pushed}"], ["image", "push", str(source), f"{host}/cli/pushed:v1"],
                 ["image", "convert", pushed, str(tmp_path / "out")]):
        proc = subprocess.run([sys.executable, "-m", "estargz", *argv], capture_output=True, text=True)
        assert proc.returncode == 1, argv
        assert proc.stderr.startswith("estargz: error: ") and proc.stderr.count("\n") == 1
        assert "use --insecure" in proc.stderr
    assert not (tmp_path / "out").exists()
    done = subprocess.run([sys.executable, "-m", "estargz", "image", "convert", "-q", "--insecure", "--zstd", pushed,
                           f"{host}/cli/zstd:v1"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with estargz.RegistryClient(host, insecure=True) as client:
        [layer] = client.get_manifest("cli/zstd", "v1").content["layers"]
        with client.blob("cli/zstd", layer["digest"], layer["size"]) as blob:
            data = blob.read_at(0, layer["size"])
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
    with tarfile.open(fileobj=zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)), mode="r|") as tar:
        assert {m.name: tar.extractfile(m).read() for m in tar if m.name in FILES} == FILES


def test_image_convert_draws_one_progress_line_per_layer_on_a_terminal(tmp_path):
    """Under a pseudo-terminal, each layer gets its own progress line, redrawn in place."""
    source = oci_layout(tmp_path / "source")
    digest = layer_descriptor(source)["digest"].split(":", 1)[1]
    pid, fd = pty.fork()
    if pid == 0:  # the child runs the command with the terminal as its stderr
        os.execvp(sys.executable, [sys.executable, "-m", "estargz", "image", "convert", str(source),
                                   str(tmp_path / "out")])
    output = b""
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:  # the terminal closes when the child exits
            break
        if not data:
            break
        output += data
    _, status = os.waitpid(pid, 0)
    assert status == 0
    assert f"{digest[:12]} [{'#' * 30}] 100.0%".encode() in output
    assert b"\x1b[1A" in output  # the line is redrawn in place


def converted_platforms(capsys: pytest.CaptureFixture[str], *flags: str, source: Path, out: Path) -> set[str]:
    assert main(["image", "convert", "-q", *flags, str(source), str(out)]) == 0
    return {m["platform"] for m in json.loads(capsys.readouterr().out)["manifests"]}


def test_image_convert_platforms_as_nerdctl_chooses_them(tmp_path, capsys, monkeypatch):
    """This machine's platform by default; --platform takes comma lists and repeats;
    --all-platforms takes every one."""
    from test_image import two_platform_layout

    source = two_platform_layout(tmp_path / "src").root
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    assert converted_platforms(capsys, source=source, out=tmp_path / "default") == {"linux/arm64/v8"}
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    assert converted_platforms(capsys, source=source, out=tmp_path / "x86") == {"linux/amd64"}
    both = {"linux/amd64", "linux/arm64/v8"}
    assert converted_platforms(capsys, "--all-platforms", source=source, out=tmp_path / "all") == both
    assert converted_platforms(capsys, "--platform", "linux/arm64,linux/amd64", source=source,
                               out=tmp_path / "comma") == both
    assert converted_platforms(capsys, "--platform", "linux/arm64", "--platform=linux/amd64", source=source,
                               out=tmp_path / "repeated") == both
    with pytest.raises(SystemExit) as stop:
        main(["image", "convert", "--all-platforms", "--platform", "linux/arm64", str(source), str(tmp_path / "x")])
    assert stop.value.code == 2
    assert "--platform and --all-platforms" in capsys.readouterr().err


def test_image_convert_takes_nerdctl_format_flags(tmp_path, capsys):
    source = oci_layout(tmp_path / "source")
    assert main(["image", "convert", "-q", "--estargz", "--oci", str(source), str(tmp_path / "out")]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == estargz.FORMAT_ESTARGZ
    with pytest.raises(SystemExit) as stop:
        main(["image", "convert", "--estargz", "--zstdchunked", str(source), str(tmp_path / "both")])
    assert stop.value.code == 2 and not (tmp_path / "both").exists()


@pytest.mark.parametrize("flag", ["--estargz-record-in", "--zstdchunked-record-in"])
def test_image_convert_puts_recorded_paths_first_in_every_layer(tmp_path, capsys, flag):
    source = oci_layout(tmp_path / "source")
    record = tmp_path / "record.jsonl"
    record.write_text('{"path": "usr/bin/tool", "layerIndex": 0}\n{"path": "not/in/the/layer", "layerIndex": 0}\n')
    fmt = estargz.FORMAT_ESTARGZ if flag == "--estargz-record-in" else estargz.FORMAT_ZSTD_CHUNKED_STARGZ
    assert main(["image", "convert", "-q", "--format", fmt, flag, str(record), str(source), str(tmp_path / "out")]) == 0
    capsys.readouterr()
    descriptor = layer_descriptor(tmp_path / "out")
    blob = tmp_path / "out" / "blobs" / "sha256" / descriptor["digest"].split(":", 1)[1]
    with estargz.open(blob, annotations=descriptor["annotations"]) as reader:
        reader.verify()
        files = [entry.name for entry in reader if entry.type == "reg"]
        assert files[:2] == ["usr/bin/tool", ".prefetch.landmark"]
        assert reader.read("usr/bin/tool") == FILES["usr/bin/tool"]


@pytest.mark.parametrize("argv", [
    ["image", "convert", "SRC", "DST", "--overw"],
    ["image", "convert", "SRC", "DST", "--zstdchunk"],
    ["image", "convert", "SRC", "DST", "--all-plat"],
    ["convert", "SRC", "DST", "--estargz-compression", "9"],
    ["ls", "BLOB", "--toc-dig", "sha256:00"],
])
def test_flags_are_taken_only_in_full(tmp_path, capsys, argv):
    """A typo or prefix must not select another flag."""
    source = oci_layout(tmp_path / "source")
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "keep").write_text("mine")
    names = {"SRC": str(source), "DST": str(tmp_path / "dst"), "BLOB": str(tmp_path / "blob")}
    with pytest.raises(SystemExit) as stop:
        main([names.get(arg, arg) for arg in argv])
    assert stop.value.code == 2
    assert "unrecognized arguments: " + argv[-1 if argv[-1].startswith("--") else -2] in capsys.readouterr().err
    assert (tmp_path / "dst" / "keep").read_text() == "mine"


@pytest.mark.parametrize("argv, flag", [
    (["image", "convert", "SRC", "DST"], "--overwrite"),
    (["verify", "BLOB", "--toc", "BLOB"], "--toc"),
])
def test_errors_name_the_flag_not_the_keyword_argument(tmp_path, argv, flag):
    source = oci_layout(tmp_path / "source")
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "keep").write_text("mine")
    blob = tmp_path / "layer.esgz"
    estargz.convert(io.BytesIO(layer_tar()), blob)
    names = {"SRC": str(source), "DST": str(tmp_path / "dst"), "BLOB": str(blob)}
    proc = subprocess.run([sys.executable, "-m", "estargz", *[names.get(arg, arg) for arg in argv]],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.startswith("estargz: error: ") and proc.stderr.count("\n") == 1
    assert flag in proc.stderr and "=" not in proc.stderr.replace(str(tmp_path), "")


@pytest.mark.parametrize("flags, media_type", [
    (["--zstd"], "application/vnd.oci.image.layer.v1.tar+zstd"),
    (["--zstd", "--zstd-compression-level", "19"], "application/vnd.oci.image.layer.v1.tar+zstd"),
    (["--uncompress"], "application/vnd.oci.image.layer.v1.tar"),
])
def test_image_convert_writes_plain_layers_as_nerdctl(tmp_path, capsys, flags, media_type):
    source = oci_layout(tmp_path / "source")
    assert main(["image", "convert", "-q", *flags, str(source), str(tmp_path / "out")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["format"] == ("zstd" if "--zstd" in flags else "uncompressed")
    descriptor = layer_descriptor(tmp_path / "out")
    assert descriptor["mediaType"] == media_type and "annotations" not in descriptor
    blob = (tmp_path / "out" / "blobs" / "sha256" / descriptor["digest"].split(":", 1)[1]).read_bytes()
    assert "sha256:" + hashlib.sha256(blob).hexdigest() == descriptor["digest"] and len(blob) == descriptor["size"]
    tar = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob)).read() if "--zstd" in flags else blob
    assert tar == layer_tar()
    assert layer_descriptor(source)["digest"] in json.loads(
        (tmp_path / "out" / "blobs" / "sha256" / config_digest(tmp_path / "out")).read_text())["rootfs"]["diff_ids"]
    assert main(["image", "convert", "-q", str(tmp_path / "out"), str(tmp_path / "back")]) == 0
    capsys.readouterr()
    back = layer_descriptor(tmp_path / "back")
    with estargz.open(tmp_path / "back" / "blobs" / "sha256" / back["digest"].split(":", 1)[1],
                      annotations=back["annotations"]) as reader:
        reader.verify()
        assert {name: reader.read(name) for name in FILES} == FILES


def config_digest(layout: Path) -> str:
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((layout / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]).read_text())
    return manifest["config"]["digest"][7:]


def test_zstd_level_changes_the_blob(tmp_path, capsys):
    source = oci_layout(tmp_path / "source")
    for name, flags in (("default", []), ("level-3", ["--zstd-compression-level", "3"]),
                        ("level-19", ["--zstd-compression-level", "19"])):
        assert main(["image", "convert", "-q", "--zstd", *flags, str(source), str(tmp_path / name)]) == 0
    capsys.readouterr()
    digests = {name: layer_descriptor(tmp_path / name)["digest"] for name in ("default", "level-3", "level-19")}
    assert digests["default"] == digests["level-3"] != digests["level-19"]


@pytest.mark.parametrize("argv, named", [
    (["--zstd", "--estargz-chunk-size", "4096", "--estargz-external-toc"],
     "--zstd writes plain layers without a TOC: it cannot take --estargz-chunk-size, --estargz-external-toc"),
    (["--uncompress", "--zstdchunked"], "--uncompress writes plain layers without a TOC: it cannot take --zstdchunked"),
    (["--zstd", "--format", "zstd:chunked"], "it cannot take --format"),
    (["--zstd", "--estargz-compression-level", "9"], "it cannot take --estargz-compression-level"),
    (["--zstd", "--uncompress"], "--zstd and --uncompress exclude each other"),
    (["--uncompress", "--zstd-compression-level", "5"], "--zstd-compression-level needs --zstd"),
    (["--zstd-compression-level", "5"], "--zstd-compression-level needs --zstd"),
])
def test_plain_output_flag_conflicts_are_one_line_usage_errors(tmp_path, argv, named):
    source = oci_layout(tmp_path / "source")
    proc = subprocess.run([sys.executable, "-m", "estargz", "image", "convert", *argv, str(source),
                           str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 2 and not (tmp_path / "out").exists()
    *_, last = proc.stderr.splitlines()
    assert last.startswith("estargz: error: ") and named in last
