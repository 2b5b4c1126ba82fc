"""Pushing to a real registry (Debian's docker-registry on loopback), read back with skopeo.

Layouts are pushed with estargz.push.push_layout and images converted straight to and from the
registry with estargz.convert_image; skopeo inspects and pulls what was pushed, and the pulled
layout must hold the very manifests and blobs (same digests) that a local conversion writes.
A proxy that drops a connection in the middle of an upload checks the resume, a corrupt blob
checks that no tag is left naming a partial image.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import sha256
from test_image_registry import TAG, read_blob, source_layout, tagged

import estargz
from estargz.errors import (
    FormatError,
    NotFoundError,
    UnsupportedInputError,
    VerificationError,
)
from estargz.image import convert_image
from estargz.push import push_layout
from estargz.registry import BlobSource, RegistryClient

pytestmark = pytest.mark.interop


def run_skopeo(binary: Path, *args: str) -> bytes:
    proc = subprocess.run([str(binary), *args], capture_output=True, timeout=120, check=False,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"skopeo {' '.join(args)}: {proc.stderr.decode(errors='replace')}"
    return proc.stdout


def pull(binary: Path, ref: str, layout: Path, tag: str = TAG) -> None:
    run_skopeo(binary, "copy", "-q", "--preserve-digests", "--src-tls-verify=false",
           f"docker://{ref}", f"oci:{layout}:{tag}")


def blobs_of(layout: Path, tag: str = TAG) -> dict[str, bytes]:
    """Every blob the tagged manifest reaches (manifest, config, layers), by digest."""
    entry = tagged(layout, tag)
    manifest_raw = read_blob(layout, entry)
    manifest = json.loads(manifest_raw)
    found = {entry["digest"]: manifest_raw, manifest["config"]["digest"]: read_blob(layout, manifest["config"])}
    found.update({layer["digest"]: read_blob(layout, layer) for layer in manifest["layers"]})
    return found


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return source_layout(tmp_path_factory.mktemp("push") / "src").root


def test_push_layout_pulls_back_with_skopeo(source: Path, docker_registry: Any, skopeo: Path,
                                            tmp_path: Path) -> None:
    ref = f"{docker_registry.host}/push/plain:{TAG}"
    result = push_layout(source, ref, insecure=True)
    entry = tagged(source, TAG)
    assert result.digest == entry["digest"] and result.tags == [TAG]
    assert sorted(result.uploaded) == sorted(set(blobs_of(source)) - {entry["digest"]})
    inspected = json.loads(run_skopeo(skopeo, "inspect", "--tls-verify=false", f"docker://{ref}"))
    assert inspected["Digest"] == entry["digest"]
    pull(skopeo, ref, tmp_path / "pulled")
    assert blobs_of(tmp_path / "pulled") == blobs_of(source)

    again = push_layout(source, f"docker://{ref}", insecure=True)
    assert again.uploaded == [] and sorted(again.existing) == sorted(result.uploaded)


@pytest.mark.parametrize("layer_format", [estargz.FORMAT_ESTARGZ, estargz.FORMAT_ZSTD_CHUNKED])
def test_converted_image_pushed_matches_local_conversion(source: Path, docker_registry: Any, skopeo: Path,
                                                         tmp_path: Path, layer_format: str) -> None:
    local = tmp_path / "local"
    convert_image(source, local, format=layer_format)
    ref = f"{docker_registry.host}/push/converted-{layer_format.replace(':', '-')}:{TAG}"
    result = convert_image(source, f"docker://{ref}", format=layer_format, insecure=True)
    assert result.pushed is not None and result.pushed.digest == tagged(local, TAG)["digest"]
    assert result.destination == f"{docker_registry.host}/{ref.split('/', 1)[1].split(':')[0]}@{result.pushed.digest}"
    pull(skopeo, ref, tmp_path / "pulled")
    assert blobs_of(tmp_path / "pulled") == blobs_of(local)


def test_registry_to_registry_conversion(source: Path, docker_registry: Any, skopeo: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    plain = f"{docker_registry.host}/push/r2r-source:{TAG}"
    push_layout(source, plain, insecure=True)
    local = tmp_path / "local"
    convert_image(source, local)
    converted = f"{docker_registry.host}/push/r2r-esgz:{TAG}"
    result = convert_image(plain, converted, insecure=True)
    assert result.pushed is not None and result.pushed.digest == tagged(local, TAG)["digest"]
    pull(skopeo, converted, tmp_path / "pulled")
    assert blobs_of(tmp_path / "pulled") == blobs_of(local)

    # Already eStargz: with reuse nothing is converted, the layers are recognised from their TOCs
    # without being downloaded, and every blob is mounted, none uploaded.
    downloaded: list[str] = []
    download = BlobSource.download
    monkeypatch.setattr(BlobSource, "download", lambda self, out: (downloaded.append(self.digest), download(self, out)))
    copy = f"{docker_registry.host}/push/r2r-copy:{TAG}"
    again = convert_image(f"docker://{converted}", copy, reuse=True, insecure=True)
    assert set(again.layers.values()) == {estargz.REUSED}
    assert again.pushed is not None and again.pushed.digest == result.pushed.digest
    assert again.pushed.uploaded == [] and again.pushed.mounted
    assert sorted(again.pushed.mounted + again.pushed.existing) == sorted(set(blobs_of(local)) - {result.pushed.digest})
    assert not set(downloaded) & set(again.layers)


def test_layout_with_two_images_is_refused(source: Path, docker_registry: Any, tmp_path: Path) -> None:
    layout = tmp_path / "two"
    shutil.copytree(source, layout)
    index = json.loads((layout / "index.json").read_text())
    config = json.loads(read_blob(layout, json.loads(read_blob(layout, index["manifests"][0]))["config"]))
    manifest = json.loads(read_blob(layout, index["manifests"][0]))
    config["os"] = "plan9"
    data = json.dumps(config).encode()
    (layout / "blobs" / "sha256" / sha256(data)[7:]).write_bytes(data)
    manifest["config"] = {**manifest["config"], "digest": sha256(data), "size": len(data)}
    raw = json.dumps(manifest).encode()
    (layout / "blobs" / "sha256" / sha256(raw)[7:]).write_bytes(raw)
    index["manifests"].append({"mediaType": manifest["mediaType"], "digest": sha256(raw), "size": len(raw)})
    (layout / "index.json").write_text(json.dumps(index))
    with pytest.raises(UnsupportedInputError, match="2 images"):
        push_layout(layout, f"{docker_registry.host}/push/two:{TAG}", insecure=True)


def test_corrupt_blob_leaves_no_tag(source: Path, docker_registry: Any, tmp_path: Path) -> None:
    layout = tmp_path / "corrupt"
    shutil.copytree(source, layout)
    manifest = json.loads(read_blob(layout, tagged(layout, TAG)))
    path = layout / "blobs" / "sha256" / manifest["layers"][1]["digest"][7:]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(VerificationError, match=manifest["layers"][1]["digest"]):
        push_layout(layout, f"{docker_registry.host}/push/corrupt:{TAG}", insecure=True)
    with RegistryClient(docker_registry.host, insecure=True) as client, pytest.raises(NotFoundError):
        client.get_manifest("push/corrupt", TAG)


class DroppingProxy:
    """A TCP proxy to the registry that cuts the connection once, ``after`` bytes into the
    first PATCH request it forwards."""

    def __init__(self, upstream: str, after: int) -> None:
        host, port = upstream.split(":")
        self.upstream = (host, int(port))
        self.after = after
        self.dropped = 0
        self.patches = 0
        self._lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, outgoing: bool) -> None:
        counting: int | None = None
        try:
            while data := source.recv(65536):
                if outgoing and b"PATCH " in data:
                    with self._lock:
                        self.patches += 1
                        if not self.dropped:
                            counting = 0
                if counting is not None:
                    counting += len(data)
                    if counting > self.after:
                        with self._lock:
                            self.dropped += 1
                        target.sendall(data[: len(data) // 2])
                        break
                target.sendall(data)
        except OSError:
            pass
        for sock in (source, target):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def proxy(docker_registry: Any) -> Iterator[DroppingProxy]:
    dropping = DroppingProxy(docker_registry.host, after=100_000)
    yield dropping
    dropping.close()


def test_upload_survives_a_dropped_connection(source: Path, proxy: DroppingProxy, docker_registry: Any,
                                                   skopeo: Path, tmp_path: Path) -> None:
    ref = f"{proxy.host}/push/resumed:{TAG}"
    result = push_layout(source, ref, chunk_size=256 << 10, jobs=1, backoff=0.01, insecure=True)
    assert proxy.dropped == 1
    assert result.digest == tagged(source, TAG)["digest"]
    pull(skopeo, f"{docker_registry.host}/push/resumed:{TAG}", tmp_path / "pulled")
    assert blobs_of(tmp_path / "pulled") == blobs_of(source)


class ResumingRegistry(http.server.BaseHTTPRequestHandler):
    """Blob uploads as the distribution spec describes them, with a session that survives a
    broken chunk: the first PATCH keeps half its body and then the connection is cut."""

    uploads: dict[str, bytearray]
    blobs: dict[str, bytes]
    counts: Counter
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def reply(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in {"Content-Length": "0", **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()

    def upload_id(self) -> str:
        return self.path.split("?")[0].rsplit("/", 1)[1]

    def do_HEAD(self) -> None:
        digest = self.path.rsplit("/", 1)[1]
        self.reply(200, {"Content-Length": str(len(self.blobs[digest]))}) if digest in self.blobs else self.reply(404)

    def do_POST(self) -> None:
        self.counts["POST"] += 1
        name = f"u{self.counts['POST']}"
        self.uploads[name] = bytearray()
        self.reply(202, {"Location": f"/v2/r/blobs/uploads/{name}"})

    def do_PATCH(self) -> None:
        upload = self.uploads[self.upload_id()]
        start, _ = (int(x) for x in self.headers["Content-Range"].split("-"))
        length = int(self.headers["Content-Length"])
        if start != len(upload):
            self.rfile.read(length)
            self.reply(416, {"Range": f"0-{len(upload) - 1}"})
            return
        if not self.counts["dropped"]:
            self.counts["dropped"] += 1
            upload += self.rfile.read(length // 2)
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        upload += self.rfile.read(length)
        self.counts["received"] += length
        self.reply(202, {"Location": self.path, "Range": f"0-{len(upload) - 1}"})

    def do_GET(self) -> None:
        self.counts["GET"] += 1
        upload = self.uploads[self.upload_id()]
        self.reply(204, {"Location": self.path, "Range": f"0-{len(upload) - 1}"})

    def do_DELETE(self) -> None:
        self.uploads.pop(self.upload_id())
        self.reply(204)

    def do_PUT(self) -> None:
        digest = self.path.split("digest=")[1].replace("%3A", ":")
        data = bytes(self.uploads.pop(self.upload_id()))
        if sha256(data) != digest:
            self.reply(400)
            return
        self.blobs[digest] = data
        self.reply(201, {"Docker-Content-Digest": digest})


def test_upload_goes_on_from_where_the_registry_got() -> None:
    handler = type("Handler", (ResumingRegistry,), {"uploads": {}, "blobs": {}, "counts": Counter()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    data = random.Random(7).randbytes(600_000)
    try:
        with RegistryClient(f"127.0.0.1:{server.server_address[1]}", backoff=0.01, insecure=True) as client:
            client.upload_blob("r", sha256(data), io.BytesIO(data), len(data), chunk_size=200_000)
    finally:
        server.shutdown()
        server.server_close()
    assert handler.blobs == {sha256(data): data}
    assert handler.counts["POST"] == 1 and handler.counts["dropped"] == 1 and handler.counts["GET"] == 1
    assert handler.counts["received"] == len(data) - 100_000  # the kept half is not sent again


class ElsewhereRegistry(ResumingRegistry):
    """Answers an upload with a Location on another origin."""

    def do_POST(self) -> None:
        self.counts["POST"] += 1
        self.reply(202, {"Location": "http://127.0.0.2:9/v2/r/blobs/uploads/x"})


def test_upload_location_on_another_origin_is_refused() -> None:
    handler = type("Handler", (ElsewhereRegistry,), {"uploads": {}, "blobs": {}, "counts": Counter()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with RegistryClient(f"127.0.0.1:{server.server_address[1]}", insecure=True) as client, \
                pytest.raises(FormatError, match="another origin"):
            client.upload_blob("r", sha256(b"data"), io.BytesIO(b"data"), 4)
    finally:
        server.shutdown()
        server.server_close()


def test_cli_image_push(source: Path, docker_registry: Any, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent.parent), *sys.path])}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "estargz", *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path, stdin=subprocess.DEVNULL, timeout=300, check=False)

    ref = f"docker://{docker_registry.host}/push/cli:{TAG}"
    done = cli("image", "push", "--insecure", str(source), ref)
    assert done.returncode == 0, done.stderr
    pushed = json.loads(done.stdout)
    assert pushed["digest"] == tagged(source, TAG)["digest"] and pushed["tags"] == [TAG]
    refused = cli("image", "convert", str(source), str(tmp_path / "out"), "--sign", "k.key")
    assert refused.returncode == 2 and "--sign needs a registry DESTINATION" in refused.stderr
    missing = cli("image", "push", "--insecure", str(tmp_path / "nothing"), ref)
    assert missing.returncode == 1 and missing.stderr.startswith("estargz: error:")
    assert missing.stderr.strip().count("\n") == 0


def test_reused_layers_go_to_another_registry(source: Path, docker_registry: Any, tmp_path: Path) -> None:
    """Reused without conversion, but the destination (another registry name) has none of the
    blobs: they are downloaded, checked and uploaded."""
    converted = f"{docker_registry.host}/push/other-src:{TAG}"
    first = convert_image(source, converted, insecure=True)
    other = DroppingProxy(docker_registry.host, after=1 << 40)
    try:
        result = convert_image(converted, f"{other.host}/push/other-dst:{TAG}", reuse=True, insecure=True)
    finally:
        other.close()
    assert set(result.layers.values()) == {estargz.REUSED}
    assert result.pushed is not None and result.pushed.digest == first.pushed.digest
    assert sorted(result.pushed.uploaded) == sorted(set(blobs_of_registry(docker_registry.host, "push/other-dst")))


def blobs_of_registry(host: str, repository: str) -> list[str]:
    """The config and layer digests of the tagged image in a repository."""
    with RegistryClient(host, insecure=True) as client:
        manifest = client.get_manifest(repository, TAG).content
    return [manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])]


def test_an_unused_upload_is_cancelled() -> None:
    handler = type("Handler", (ResumingRegistry,), {"uploads": {}, "blobs": {}, "counts": Counter()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with RegistryClient(f"127.0.0.1:{server.server_address[1]}", insecure=True) as client:
            location = client.mount_blob("r", sha256(b"x"), "elsewhere")
            assert location is not None and handler.uploads
            client.cancel_upload("r", location)
    finally:
        server.shutdown()
        server.server_close()
    assert handler.uploads == {}
