"""estargz.registry: lazy reading from an OCI registry over HTTP ranges.

Most tests push images to a real registry on loopback (Debian's docker-registry, distribution
2.8; the ``docker_registry`` fixture of conftest.py) and read them back with estargz.open over a
BlobSource. Authentication, retries and odd answers (200 to a range request, 503, resets, bad
Content-Range) are exercised on a small fake registry served by http.server on 127.0.0.1.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import random
import re
import socket
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
from helpers import QuietHandler, QuietServer, sha256

import estargz
from estargz import (
    EStargzError,
    FormatError,
    LimitError,
    NotFoundError,
    VerificationError,
)
from estargz.registry import (
    OCI_INDEX,
    OCI_MANIFEST,
    BlobSource,
    Reference,
    RegistryClient,
    default_platform,
    open_layer,
    parse_reference,
)

MTIME = 1700000000
HELLO = b"hello from the registry\n"
REPO = "estargz/layers"


# --------------------------------------------------------------------------------------------
# references
# --------------------------------------------------------------------------------------------
DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:5000/app:v1", Reference("127.0.0.1:5000", "app", "v1", None, "https")),
    ("localhost/a/b/c", Reference("localhost", "a/b/c", "latest", None, "https")),
    ("[::1]:5000/x:y", Reference("[::1]:5000", "x", "y", None, "https")),
    ("registry.example.com/team/app", Reference("registry.example.com", "team/app", "latest", None, "https")),
    (f"registry.example.com:443/app@{DIGEST}", Reference("registry.example.com:443", "app", None, DIGEST, "https")),
    (f"quay.io/org/app:1.2@{DIGEST}", Reference("quay.io", "org/app", "1.2", DIGEST, "https")),
    ("http://registry.example.com/app:1", Reference("registry.example.com", "app", "1", None, "http")),
    ("https://127.0.0.1:5000/app", Reference("127.0.0.1:5000", "app", "latest", None, "https")),
    ("http://myregistry/app", Reference("myregistry", "app", "latest", None, "http")),
    ("ubuntu:22.04", Reference("docker.io", "library/ubuntu", "22.04", None, "https")),
    ("user/app", Reference("docker.io", "user/app", "latest", None, "https")),
])
def test_parse_reference(text: str, expected: Reference) -> None:
    ref = parse_reference(text)
    assert ref == expected
    assert ref.reference == (expected.digest or expected.tag)


@pytest.mark.parametrize("text", [
    "127.0.0.1:5000/App:v1", "127.0.0.1:5000/app:bad/tag", "127.0.0.1:5000/app@sha256:abc",
    "127.0.0.1:5000/app@md5:" + "a" * 32, "http://hostonly", "bad_host:5000/app", "127.0.0.1:5000/a//b",
])
def test_parse_reference_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_reference(text)


def test_reference_round_trip() -> None:
    for text in ("127.0.0.1:5000/a/b:t", f"example.com/a@{DIGEST}", f"example.com/a:t@{DIGEST}"):
        assert str(parse_reference(text)) == text


def test_default_platform() -> None:
    os_name, _, arch = default_platform().partition("/")
    assert os_name == "linux" and arch


# --------------------------------------------------------------------------------------------
# images pushed to the real registry
# --------------------------------------------------------------------------------------------
def _layer_tar() -> bytes:
    """About 3.8 MB of incompressible files, a small text file, a directory and a symlink."""
    rng = random.Random(20240601)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        def add(info: tarfile.TarInfo, data: bytes = b"") -> None:
            info.mtime, info.size = MTIME, len(data)
            tf.addfile(info, io.BytesIO(data) if data else None)
        for name in ("data", "etc"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            add(info)
        for i in range(24):
            add(tarfile.TarInfo(f"data/blob{i:02d}.bin"), rng.randbytes(160_000))
        add(tarfile.TarInfo("etc/hello.txt"), HELLO)
        link = tarfile.TarInfo("etc/link")
        link.type, link.linkname = tarfile.SYMTYPE, "hello.txt"
        add(link)
    return buf.getvalue()


class Pusher:
    """A minimal registry client that pushes: monolithic blob upload and manifest PUT."""

    def __init__(self, host: str) -> None:
        self.host = host

    def _call(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
              expect: int = 201) -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection(self.host, timeout=30)
        try:
            conn.request(method, path, body=body, headers={"Content-Length": str(len(body)), **(headers or {})})
            resp = conn.getresponse()
            text = resp.read()
            assert resp.status == expect, f"{method} {path}: {resp.status} {text!r}"
            return resp
        finally:
            conn.close()

    def blob(self, repo: str, data: bytes) -> str:
        digest = sha256(data)
        location = urlsplit(self._call("POST", f"/v2/{repo}/blobs/uploads/", expect=202).getheader("Location", ""))
        query = f"{location.query}&" if location.query else ""
        self._call("PUT", f"{location.path}?{query}digest={digest}", data,
                   {"Content-Type": "application/octet-stream"})
        return digest

    def manifest(self, repo: str, ref: str, manifest: dict[str, Any]) -> tuple[str, int]:
        body = json.dumps(manifest).encode()
        self._call("PUT", f"/v2/{repo}/manifests/{ref}", body, {"Content-Type": manifest["mediaType"]})
        return sha256(body), len(body)

    def image(self, repo: str, tag: str, layers: list[estargz.BuildResult], arch: str = "amd64") -> tuple[str, int]:
        config = json.dumps({"architecture": arch, "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": [r.diff_id for r in layers]}}).encode()
        manifest = {
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": self.blob(repo, config), "size": len(config)},
            "layers": [{"mediaType": r.media_type, "digest": r.blob_digest, "size": r.blob_size,
                        "annotations": r.annotations} for r in layers],
        }
        return self.manifest(repo, tag, manifest)


@dataclass
class Remote:
    host: str
    tar: bytes
    results: dict[str, estargz.BuildResult]
    blobs: dict[str, bytes]
    manifests: dict[str, str] = field(default_factory=dict)

    def ref(self, suffix: str) -> str:
        return f"{self.host}/{REPO}{suffix}"


def _tag(fmt: str) -> str:
    return fmt.replace(":", "-")


@pytest.fixture(scope="module")
def remote(docker_registry: Any) -> Remote:
    """One layer in each format pushed as its own image, a two-layer image and a two-platform index."""
    tar = _layer_tar()
    results, blobs = {}, {}
    pusher = Pusher(docker_registry.host)
    for fmt in estargz.FORMATS:
        out = io.BytesIO()
        results[fmt] = estargz.convert(io.BytesIO(tar), out, format=fmt)
        blobs[fmt] = out.getvalue()
        assert pusher.blob(REPO, blobs[fmt]) == results[fmt].blob_digest
    remote = Remote(docker_registry.host, tar, results, blobs)
    for fmt in estargz.FORMATS:
        remote.manifests[fmt] = pusher.image(REPO, _tag(fmt), [results[fmt]])[0]
    pusher.image(REPO, "two-layers", [results["estargz"], results["zstd:chunked"]])
    amd64 = pusher.image(REPO, "amd64-only", [results["estargz"]], "amd64")
    arm64 = pusher.image(REPO, "arm64-only", [results["zstd:chunked"]], "arm64")
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": amd64[0], "size": amd64[1],
         "platform": {"os": "linux", "architecture": "amd64"}},
        {"mediaType": OCI_MANIFEST, "digest": arm64[0], "size": arm64[1],
         "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
    ]}
    remote.manifests["index"] = pusher.manifest(REPO, "multiarch", index)[0]
    return remote


@pytest.fixture
def expected_names(remote: Remote) -> set[str]:
    with tarfile.open(fileobj=io.BytesIO(remote.tar)) as tf:
        return {m.name for m in tf.getmembers()}


@pytest.mark.parametrize("fmt", estargz.FORMATS)
def test_list_reads_only_footer_and_toc(remote: Remote, expected_names: set[str], fmt: str) -> None:
    source, descriptor = open_layer(remote.ref(f":{_tag(fmt)}"), insecure=True)
    with source:
        assert descriptor["digest"] == remote.results[fmt].blob_digest
        assert descriptor["annotations"] == remote.results[fmt].annotations
        assert source.size == len(remote.blobs[fmt])
        with estargz.open(source, annotations=descriptor.get("annotations")) as blob:
            assert blob.format == fmt
            names = {entry.name for entry in blob} - {"", estargz.PREFETCH_LANDMARK, estargz.NO_PREFETCH_LANDMARK}
        assert names == expected_names
        assert source.requests <= 2  # the footer (unless annotations locate the TOC), the TOC
        assert source.bytes_transferred < 0.05 * source.size


@pytest.mark.parametrize("fmt", estargz.FORMATS)
def test_read_one_small_file(remote: Remote, fmt: str) -> None:
    source, descriptor = open_layer(remote.ref(f":{_tag(fmt)}"), insecure=True)
    with source, estargz.open(source, annotations=descriptor["annotations"]) as blob:
        opened = source.bytes_transferred
        assert blob.read("etc/hello.txt") == HELLO
        assert blob.read("/etc/hello.txt") == HELLO and blob.lookup("etc/link").link_name == "hello.txt"
        assert source.bytes_transferred - opened < 64 << 10
        assert source.bytes_transferred < 0.05 * source.size
        with blob.open("data/blob07.bin") as f:
            f.seek(1000)
            piece = f.read(100)
    with tarfile.open(fileobj=io.BytesIO(remote.tar)) as tf:
        assert piece == tf.extractfile("data/blob07.bin").read()[1000:1100]  # type: ignore[union-attr]


@pytest.mark.parametrize("fmt", estargz.FORMATS)
def test_verify_whole_layer_over_http(remote: Remote, fmt: str) -> None:
    source, descriptor = open_layer(remote.ref(f":{_tag(fmt)}"), timeout=10, insecure=True)
    with source, estargz.open(source, annotations=descriptor["annotations"]) as blob:
        opened = (source.bytes_transferred, source.requests)
        report = blob.verify(remote.results[fmt].toc_digest, threads=4)
    local = estargz.open(remote.blobs[fmt]).verify()
    assert (report.files, report.chunks, report.bytes) == (local.files, local.chunks, local.bytes)
    assert report.coverage is not None
    assert (report.coverage.blob_bytes, report.coverage.blob_digest) == (source.size, remote.results[fmt].blob_digest)
    transferred, requests = source.bytes_transferred - opened[0], source.requests - opened[1]
    assert source.size <= transferred <= source.size * 101 // 100  # every byte once, metadata again
    assert requests <= source.size // (1 << 20) + 10  # a few large reads, not one per chunk


def test_manifest_digest_reference(remote: Remote) -> None:
    source, descriptor = open_layer(remote.ref(f"@{remote.manifests['estargz']}"), insecure=True)
    with source, estargz.open(source, annotations=descriptor["annotations"]) as blob:
        assert descriptor["digest"] == remote.results["estargz"].blob_digest
        assert blob.read("etc/hello.txt") == HELLO
    client = RegistryClient(remote.host, insecure=True)
    with client:
        manifest = client.get_manifest(REPO, _tag("estargz"))
        assert manifest.digest == remote.manifests["estargz"] and manifest.media_type == OCI_MANIFEST
        assert client.get_manifest(REPO, manifest.digest).data == manifest.data


@pytest.mark.parametrize("fmt", estargz.FORMATS)
def test_blob_digest_reference(remote: Remote, fmt: str) -> None:
    digest = remote.results[fmt].blob_digest
    source, descriptor = open_layer(remote.ref(f"@{digest}"), insecure=True)
    with source:
        assert descriptor == {"mediaType": "application/octet-stream", "digest": digest,
                              "size": len(remote.blobs[fmt])}
        assert "annotations" not in descriptor
        assert source.requests == 0  # the HEAD was the client's, before the source existed
        with estargz.open(source) as blob:  # no annotations: the footer locates the TOC
            assert blob.read("etc/hello.txt") == HELLO


def test_layer_selection(remote: Remote) -> None:
    ref = remote.ref(":two-layers")
    for index, fmt in ((0, "estargz"), (1, "zstd:chunked"), (-1, "zstd:chunked"),
                       (remote.results["estargz"].blob_digest, "estargz")):
        source, descriptor = open_layer(ref, index, insecure=True)
        with source, estargz.open(source, annotations=descriptor["annotations"]) as blob:
            assert descriptor["digest"] == remote.results[fmt].blob_digest
            assert blob.format == fmt
    with pytest.raises(ValueError, match="2 layers"):
        open_layer(ref, insecure=True)
    with pytest.raises(NotFoundError):
        open_layer(ref, 2, insecure=True)
    with pytest.raises(NotFoundError):
        open_layer(ref, remote.results["zstd:chunked-stargz"].blob_digest, insecure=True)


def test_index_with_two_platforms(remote: Remote) -> None:
    ref = remote.ref(":multiarch")
    for platform, fmt in (("linux/amd64", "estargz"), ("linux/arm64", "zstd:chunked"),
                          ("linux/arm64/v8", "zstd:chunked")):
        source, descriptor = open_layer(ref, 0, platform=platform, insecure=True)
        with source, estargz.open(source, annotations=descriptor["annotations"]) as blob:
            assert descriptor["digest"] == remote.results[fmt].blob_digest
            assert blob.read("etc/hello.txt") == HELLO
    with RegistryClient(remote.host, insecure=True) as client:
        index = client.get_manifest(REPO, "multiarch")
        assert index.is_index and index.digest == remote.manifests["index"]
        default = {"linux/amd64": "amd64-only", "linux/arm64": "arm64-only"}.get(default_platform())
        if default is not None:
            assert client.resolve_manifest(REPO, index).digest == client.get_manifest(REPO, default).digest
    with pytest.raises(NotFoundError, match="linux/amd64, linux/arm64/v8"):
        open_layer(ref, 0, platform="linux/s390x", insecure=True)
    with pytest.raises(NotFoundError):
        open_layer(ref, 0, platform="windows/amd64", insecure=True)
    with pytest.raises(ValueError):
        open_layer(ref, 0, platform="linux", insecure=True)


def test_wrong_digests(remote: Remote) -> None:
    missing = "sha256:" + "0" * 64
    with pytest.raises(NotFoundError):  # neither a blob nor a manifest
        open_layer(remote.ref(f"@{missing}"), insecure=True)
    with pytest.raises(NotFoundError):
        open_layer(remote.ref(f"@{missing}"), 0, insecure=True)
    with RegistryClient(remote.host, insecure=True) as client:
        with pytest.raises(NotFoundError):
            BlobSource(client, REPO, missing)
        # A descriptor whose size is wrong: the registry's Content-Range total gives it away.
        digest = remote.results["estargz"].blob_digest
        wrong = BlobSource(client, REPO, digest, len(remote.blobs["estargz"]) - 1)
        with pytest.raises(VerificationError, match="bytes, expected"):
            estargz.open(wrong)
        # Annotations with another layer's TOC digest.
        source = BlobSource(client, REPO, digest)
        assert source.size == len(remote.blobs["estargz"])
        with pytest.raises(VerificationError):
            estargz.open(source, annotations={estargz.TOC_DIGEST_ANNOTATION: missing})
        with pytest.raises(VerificationError):
            estargz.open(source, toc_digest=missing)
        with pytest.raises(FormatError):
            source.read_at(source.size - 10, 11)


def test_missing_repository_and_tag(remote: Remote) -> None:
    with pytest.raises(NotFoundError, match="MANIFEST_UNKNOWN|NAME_UNKNOWN"):
        open_layer(f"{remote.host}/no/such/repo:latest", insecure=True)
    with pytest.raises(NotFoundError):
        open_layer(remote.ref(":no-such-tag"), insecure=True)
    with RegistryClient(remote.host, insecure=True) as client, pytest.raises(NotFoundError, match="HTTP 404"):
        BlobSource(client, "no/such/repo", remote.results["estargz"].blob_digest)


def test_read_ranges_on_the_registry(remote: Remote) -> None:
    blob = remote.blobs["estargz"]
    ranges = [(0, 10), (5000, 300), (len(blob) - 51, 51), (100, 0), (5000, 300)]
    with RegistryClient(remote.host, insecure=True) as client:
        source = client.blob(REPO, remote.results["estargz"].blob_digest, len(blob))
        assert source.read_ranges(ranges) == [blob[o:o + n] for o, n in ranges]
        assert source.requests == 1  # one multipart/byteranges answer
        assert source.bytes_transferred < 2000


def test_concurrent_reads_share_nothing(remote: Remote) -> None:
    blob = remote.blobs["zstd:chunked"]
    rng = random.Random(7)
    ranges = [(o, rng.randrange(1, 5000)) for o in (rng.randrange(0, len(blob) - 5000) for _ in range(64))]
    with RegistryClient(remote.host, insecure=True) as client:
        source = client.blob(REPO, remote.results["zstd:chunked"].blob_digest)
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda r: source.read_at(*r), ranges))
    assert got == [blob[o:o + n] for o, n in ranges]
    assert source.requests == 65  # HEAD + one range each


# --------------------------------------------------------------------------------------------
# a fake registry: authentication, retries and odd answers
# --------------------------------------------------------------------------------------------
_ROUTE = re.compile(r"/v2/(?P<repo>.+)/(?P<kind>manifests|blobs)/(?P<ref>[^/]+)")


class FakeRegistry:
    """A registry on 127.0.0.1 whose behaviour the tests set: auth, failures, range handling."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, tuple[bytes, str, str | None]] = {}  # ref -> body, type, digest header
        self.auth: str | None = None  # None, "bearer" or "basic"
        self.credentials: tuple[str, str] | None = None
        self.tokens: set[str] = set()
        self.token_requests: list[dict[str, list[str]]] = []
        self.fail: list[int | str] = []  # statuses (or "reset") for the next requests
        self.retry_after = "0"
        self.ranges = "honour"  # "honour", "ignore", "short", "shifted"
        self.multirange = "multipart"  # "multipart", "200", "416"
        self.redirect_to: str | None = None  # blob GETs answered 307 to this origin's /storage/
        self.log: list[tuple[str, str, str | None]] = []
        self.lock = threading.Lock()
        self.server = QuietServer(("127.0.0.1", 0), _FakeHandler)
        self.server.fake = self  # type: ignore[attr-defined]
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def add_blob(self, data: bytes) -> str:
        self.blobs[sha256(data)] = data
        return sha256(data)

    def requests_to(self, prefix: str) -> list[tuple[str, str, str | None]]:
        return [entry for entry in self.log if entry[1].startswith(prefix)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _FakeHandler(QuietHandler):

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str, headers: dict[str, str] | None = None) -> None:
        body = json.dumps({"errors": [{"code": code, "message": code.lower()}]}).encode()
        self._send(status, body, {"Content-Type": "application/json", **(headers or {})})

    def _serve(self) -> None:
        fake: FakeRegistry = self.server.fake
        url = urlsplit(self.path)
        with fake.lock:
            fake.log.append((self.command, self.path, self.headers.get("Authorization")))
            failure = fake.fail.pop(0) if fake.fail and not url.path.startswith("/token") else None
        if failure == "reset":
            self.close_connection = True
            return
        if failure is not None:
            self._error(int(failure), "UNAVAILABLE", {"Retry-After": fake.retry_after})
            return
        if url.path == "/token":
            self._token(fake, parse_qs(url.query))
            return
        if url.path.startswith("/storage/"):
            self._blob(fake, fake.blobs.get(url.path[len("/storage/"):]))
            return
        route = _ROUTE.fullmatch(url.path)
        if not self._authorized(fake, route.group("repo") if route else None):
            return
        if url.path == "/v2/":
            self._send(200, b"{}", {"Content-Type": "application/json"})
        elif route and route.group("kind") == "manifests" and route.group("ref") in fake.manifests:
            body, media_type, digest = fake.manifests[route.group("ref")]
            self._send(200, body, {"Content-Type": media_type, **({"Docker-Content-Digest": digest} if digest else {})})
        elif route and route.group("kind") == "blobs" and route.group("ref") in fake.blobs:
            if fake.redirect_to and self.command == "GET":
                self._send(307, b"", {"Location": f"http://{fake.redirect_to}/storage/{route.group('ref')}"})
            else:
                self._blob(fake, fake.blobs[route.group("ref")])
        else:
            self._error(404, "NAME_UNKNOWN")

    def _authorized(self, fake: FakeRegistry, repo: str | None) -> bool:
        given = self.headers.get("Authorization", "")
        if fake.auth == "bearer" and given.removeprefix("Bearer ") not in fake.tokens:
            scope = f',scope="repository:{repo}:pull"' if repo else ""
            challenge = f'Bearer realm="http://{fake.host}/token",service="fake-registry"{scope}'
        elif fake.auth == "basic" and (not fake.credentials or given != _basic(*fake.credentials)):
            challenge = 'Basic realm="fake"'
        else:
            return True
        self._error(401, "UNAUTHORIZED", {"WWW-Authenticate": challenge})
        return False

    def _token(self, fake: FakeRegistry, query: dict[str, list[str]]) -> None:
        with fake.lock:
            fake.token_requests.append(query)
            token = f"token-{len(fake.token_requests)}"
        if fake.credentials and self.headers.get("Authorization") != _basic(*fake.credentials):
            self._error(401, "UNAUTHORIZED")
            return
        fake.tokens.add(token)
        self._send(200, json.dumps({"token": token, "expires_in": 300}).encode(), {"Content-Type": "application/json"})

    def _blob(self, fake: FakeRegistry, data: bytes | None) -> None:
        if data is None:
            self._error(404, "BLOB_UNKNOWN")
            return
        headers = {"Content-Type": "application/octet-stream", "Docker-Content-Digest": sha256(data)}
        spec = self.headers.get("Range")
        if not spec or fake.ranges == "ignore" or self.command == "HEAD":
            self._send(200, data, headers)
            return
        ranges = [tuple(int(x) for x in part.split("-")) for part in spec.removeprefix("bytes=").split(",")]
        if len(ranges) > 1:
            if fake.multirange == "200":
                self._send(200, data, headers)
            elif fake.multirange == "416":
                self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            else:
                body = b"".join(b"\r\n--XYZ\r\nContent-Type: application/octet-stream\r\n"
                                + f"Content-Range: bytes {a}-{b}/{len(data)}\r\n\r\n".encode() + data[a:b + 1]
                                for a, b in ranges) + b"\r\n--XYZ--\r\n"
                self._send(206, body, {"Content-Type": "multipart/byteranges; boundary=XYZ"})
            return
        first, last = ranges[0]
        if fake.ranges == "short":
            last = min(last, first + 99)
        if fake.ranges == "shifted":
            first, last = first + 1, last + 1
        self._send(206, data[first:last + 1], {**headers, "Content-Range": f"bytes {first}-{last}/{len(data)}"})


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture(autouse=True)
def no_credential_files(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials only as each test gives them, not from this machine's docker or podman files."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)


@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    registry = FakeRegistry()
    yield registry
    registry.close()


BLOB = random.Random(3).randbytes(300_000)


def _client(fake: FakeRegistry, **options: Any) -> RegistryClient:
    return RegistryClient(fake.host, **{"backoff": 0.01, "timeout": 5, "insecure": True, **options})


def test_bearer_token_anonymous(fake: FakeRegistry) -> None:
    fake.auth = "bearer"
    digest = fake.add_blob(BLOB)
    with _client(fake) as client:
        source = client.blob("lib/img", digest)
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda o: source.read_at(o, 1000), range(0, 200_000, 10_000)))
        assert got == [BLOB[o:o + 1000] for o in range(0, 200_000, 10_000)]
    assert len(fake.token_requests) == 1  # fetched once, cached for the scope, shared by threads
    assert fake.token_requests[0] == {"service": ["fake-registry"], "scope": ["repository:lib/img:pull"]}
    blob_requests = fake.requests_to("/v2/lib/img/blobs/")
    assert blob_requests[0][2] is None and all(auth == "Bearer token-1" for _, _, auth in blob_requests[1:])
    assert len(blob_requests) == 1 + 1 + 20  # the challenged HEAD, then the HEAD and the ranges with the token


def test_bearer_token_with_credentials(fake: FakeRegistry) -> None:
    fake.auth, fake.credentials = "bearer", ("alice", "s3cret")
    digest = fake.add_blob(BLOB)
    with _client(fake) as client, pytest.raises(EStargzError, match="no credentials") as caught:
        client.blob("lib/img", digest)
    assert not isinstance(caught.value, NotFoundError)
    with _client(fake, username="alice", password="wrong") as client, pytest.raises(EStargzError, match="401"):
        client.blob("lib/img", digest)
    with _client(fake, username="alice", password="s3cret") as client:
        source = client.blob("lib/img", digest)
        assert source.read_at(1, 5) == BLOB[1:6]
        fake.tokens.clear()  # revoked: the next request is challenged again and gets a new token
        assert source.read_at(7, 5) == BLOB[7:12]
    assert fake.requests_to("/v2/lib/img/blobs/")[-1][2] == f"Bearer token-{len(fake.token_requests)}"


def test_basic_auth(fake: FakeRegistry) -> None:
    fake.auth, fake.credentials = "basic", ("bob", "pw")
    digest = fake.add_blob(BLOB)
    with _client(fake) as client, pytest.raises(EStargzError, match="no credentials"):
        client.ping()
    with _client(fake, username="bob", password="nope") as client, pytest.raises(EStargzError, match="denied"):
        client.ping()
    with _client(fake, username="bob", password="pw") as client:
        client.ping()
        source = client.blob("lib/img", digest)
        assert source.read_at(0, 4) == BLOB[:4]
        assert source.requests == 2  # credentials sent up front once the registry asked for them


def test_range_ignored_small_blob_is_read_once(fake: FakeRegistry) -> None:
    fake.ranges = "ignore"
    digest = fake.add_blob(BLOB)
    with _client(fake) as client:
        source = client.blob("lib/img", digest, len(BLOB))
        assert source.read_at(1000, 10) == BLOB[1000:1010]
        assert [source.read_at(o, 100) for o in (0, 5, 299_900)] == [BLOB[o:o + 100] for o in (0, 5, 299_900)]
        assert source.requests == 1 and source.bytes_transferred == len(BLOB)


def test_range_ignored_large_blob_is_refused(fake: FakeRegistry) -> None:
    fake.ranges = "ignore"
    digest = fake.add_blob(BLOB)
    with _client(fake) as client:
        source = BlobSource(client, "lib/img", digest, len(BLOB), max_whole_blob=100_000)
        with pytest.raises(LimitError, match="ignores Range"):
            source.read_at(0, 10)
        assert source.bytes_transferred < 100_000  # the body was not read
        corrupt = fake.add_blob(BLOB[:-1] + b"!")
        fake.blobs[corrupt] = BLOB  # served under a digest it does not have
        with pytest.raises(VerificationError):
            client.blob("lib/img", corrupt, len(BLOB)).read_at(0, 10)


def test_retries_on_503_then_200(fake: FakeRegistry) -> None:
    digest = fake.add_blob(BLOB)
    with _client(fake) as client:
        source = client.blob("lib/img", digest, len(BLOB))
        fake.fail = [503, 503]
        assert source.read_at(10, 10) == BLOB[10:20]
        assert source.requests == 3
        fake.fail = [429, "reset", 502]
        assert source.read_at(20, 10) == BLOB[20:30]
    with _client(fake, retries=1) as client:
        fake.fail = [503, 503, 503]
        with pytest.raises(EStargzError, match="HTTP 503.*after 2 attempts"):
            client.blob("lib/img", digest, len(BLOB)).read_at(0, 1)


def test_retry_time_is_bounded(fake: FakeRegistry) -> None:
    digest = fake.add_blob(BLOB)
    fake.fail, fake.retry_after = [503] * 10, "5"
    with _client(fake, retries=5, max_retry_time=1.0) as client:
        started = time.monotonic()
        with pytest.raises(EStargzError, match="503"):
            client.blob("lib/img", digest, len(BLOB)).read_at(0, 1)
        assert time.monotonic() - started < 1.0  # a 5 s wait would pass the 1 s budget: no retry


def test_connection_refused_is_typed() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        client = RegistryClient(f"127.0.0.1:{sock.getsockname()[1]}", retries=1, backoff=0.01, insecure=True)
        with client, pytest.raises(EStargzError, match="gave up after 2 attempts") as caught:
            client.ping()
    assert str(caught.value).endswith(": Connection refused (gave up after 2 attempts)")


def test_odd_ranges(fake: FakeRegistry) -> None:
    digest = fake.add_blob(BLOB)
    with _client(fake) as client:
        source = client.blob("lib/img", digest, len(BLOB))
        fake.ranges = "short"  # partial answers: read_at asks for the rest
        assert source.read_at(1000, 250) == BLOB[1000:1250]
        assert source.requests == 3
        fake.ranges = "shifted"
        with pytest.raises(FormatError, match="asked for bytes"):
            source.read_at(0, 10)


def test_redirect_drops_credentials(fake: FakeRegistry) -> None:
    storage = FakeRegistry()
    try:
        fake.auth, fake.redirect_to = "bearer", storage.host
        digest = fake.add_blob(BLOB)
        storage.add_blob(BLOB)
        with _client(fake) as client:
            assert client.blob("lib/img", digest).read_at(100, 50) == BLOB[100:150]
        assert fake.requests_to("/v2/lib/img/blobs/")[-1][2] == "Bearer token-1"
        assert [auth for _, _, auth in storage.log] == [None]
    finally:
        storage.close()


def test_manifest_checks(fake: FakeRegistry) -> None:
    config = fake.add_blob(b"{}")
    layer = fake.add_blob(BLOB)
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
                       "layers": [{"mediaType": "x", "digest": layer, "size": len(BLOB)}]}).encode()
    fake.manifests["good"] = (body, OCI_MANIFEST, sha256(body))
    fake.manifests["lying"] = (body, OCI_MANIFEST, "sha256:" + "1" * 64)
    fake.manifests[DIGEST] = (body, OCI_MANIFEST, None)  # served under another digest
    fake.manifests["schema1"] = (b'{"schemaVersion": 1}', "application/json", None)
    fake.manifests["garbage"] = (b"<html>", "text/html", None)
    with _client(fake) as client:
        assert client.get_manifest("lib/img", "good").layers[0]["digest"] == layer
        with pytest.raises(VerificationError):
            client.get_manifest("lib/img", "lying")
        with pytest.raises(VerificationError):
            client.get_manifest("lib/img", DIGEST)
        with pytest.raises(FormatError, match="schemaVersion"):
            client.get_manifest("lib/img", "schema1")
        with pytest.raises(FormatError, match="not JSON"):
            client.get_manifest("lib/img", "garbage")
        with pytest.raises(ValueError):
            client.get_manifest("lib/img", "bad/tag")
    source, descriptor = open_layer(f"{fake.host}/lib/img:good", backoff=0.01, insecure=True)
    with source:
        assert descriptor["size"] == len(BLOB) and source.read_at(0, 3) == BLOB[:3]


@pytest.mark.parametrize("mode, requests", [("multipart", 1), ("416", 1 + 3), ("200", 1 + 3)])
def test_read_ranges_fallback(fake: FakeRegistry, mode: str, requests: int) -> None:
    fake.multirange = mode
    digest = fake.add_blob(BLOB)
    ranges = [(0, 10), (299_990, 10), (5, 1000)]
    with _client(fake) as client:
        source = BlobSource(client, "lib/img", digest, len(BLOB), max_whole_blob=1000)
        assert source.read_ranges(ranges) == [BLOB[o:o + n] for o, n in ranges]
        assert source.requests == requests
        assert source.read_ranges(ranges[:2]) == [BLOB[o:o + n] for o, n in ranges[:2]]
        assert source.requests == requests + (1 if mode == "multipart" else 2)  # refused once: singles since
