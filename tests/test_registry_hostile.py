"""A hostile registry on loopback: the client never sends credentials where it must not, never
hangs on a slow answer, turns malformed answers into typed one-line errors, and refuses bytes that
do not match the digests of what the user named.

Servers bind 127.0.0.1 or 127.0.0.2 only; every server loop is bounded in count and time.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import ssl
import stat
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
from helpers import QuietHandler, QuietServer, sha256

import estargz
from estargz import EStargzError, FormatError, RegistryClient, RegistryError, VerificationError
from estargz.auth import Auth, Credentials
from estargz.cli import main
from estargz.registry import OCI_MANIFEST, open_layer

USER, PASSWORD = "alice", "s3cret"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
DRIP_LIMIT = 400  # bytes a slow-drip answer sends at most
DRIP_PAUSE = 0.05

Route = Callable[["_Handler"], None]


class Hostile:
    """An HTTP(S) server whose answers the test scripts per path; logs what it was sent."""

    def __init__(self, address: str = "127.0.0.1", tls: ssl.SSLContext | None = None, port: int = 0) -> None:
        self.routes: dict[str, Route] = {}
        self.log: list[tuple[str, str, str | None, bytes]] = []
        self.server = QuietServer((address, port), _Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.server.hostile = self  # type: ignore[attr-defined]
        self.host = f"{address}:{self.server.server_address[1]}"
        self.url = f"{'https' if tls else 'http'}://{self.host}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def authorizations(self) -> list[str | None]:
        return [auth for _, _, auth, _ in self.log]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Handler(QuietHandler):

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        self.connection.settimeout(5)
        hostile: Hostile = self.server.hostile
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        hostile.log.append((self.command, self.path, self.headers.get("Authorization"), body))
        route = hostile.routes.get(urlsplit(self.path).path)
        if route is None:
            self.send(404, b'{"errors":[{"code":"NAME_UNKNOWN","message":"unknown"}]}')
        else:
            route(self)

    def send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def raw(self, data: bytes) -> None:
        self.wfile.write(data)
        self.close_connection = True

    def drip(self, data: bytes) -> None:
        """Send ``data`` a byte at a time, stopping when the client has gone."""
        for byte in data[:DRIP_LIMIT]:
            try:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
            except OSError:
                break
            time.sleep(DRIP_PAUSE)
        self.close_connection = True


@pytest.fixture
def hostile() -> Iterator[Hostile]:
    server = Hostile()
    yield server
    server.close()


@pytest.fixture
def elsewhere() -> Iterator[Hostile]:
    """A second server on another loopback host name (a foreign host)."""
    server = Hostile("127.0.0.2")
    yield server
    server.close()


@pytest.fixture(autouse=True)
def no_credential_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def _client(server: Hostile, **options: Any) -> RegistryClient:
    return RegistryClient(server.host, **{"backoff": 0.01, "retries": 1, "timeout": 5, "insecure": True, **options})


def _challenge(realm: str) -> Route:
    def route(handler: _Handler) -> None:
        if handler.headers.get("Authorization", "").startswith("Bearer good"):
            handler.send(200, b"{}")
        else:
            handler.send(401, b"", {"WWW-Authenticate": f'Bearer realm="{realm}",service="svc"'})
    return route


def _token(answer: bytes) -> Route:
    return lambda handler: handler.send(200, answer, {"Content-Type": "application/json"})


# -- credentials -----------------------------------------------------------------------------
def test_foreign_realm_over_http_gets_no_credentials(hostile: Hostile, elsewhere: Hostile) -> None:
    hostile.routes["/v2/"] = _challenge(f"{elsewhere.url}/token")
    elsewhere.routes["/token"] = _token(b'{"token": "good"}')
    with _client(hostile, username=USER, password=PASSWORD) as client:
        with pytest.raises(RegistryError, match="refusing to send credentials .* to the token realm http://127.0.0.2"):
            client.ping()
    assert elsewhere.log == []
    with _client(hostile, auth=Auth.anonymous()) as client:  # anonymous tokens may come from anywhere
        client.ping()
    assert elsewhere.authorizations() == [None]


def test_same_origin_realm_over_http_gets_credentials(hostile: Hostile) -> None:
    hostile.routes["/v2/"] = _challenge(f"{hostile.url}/token")
    hostile.routes["/token"] = _token(b'{"token": "good"}')
    with _client(hostile, username=USER, password=PASSWORD) as client:
        client.ping()
    assert hostile.authorizations() == [None, BASIC, "Bearer good"]


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a self-signed certificate for 127.0.0.1, and a client context trusting it."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    return server, ssl.create_default_context(cafile=str(cert))


def test_realm_downgrading_https_to_http_gets_no_credentials(tls: tuple[ssl.SSLContext, ssl.SSLContext],
                                                            hostile: Hostile) -> None:
    secure = Hostile(tls=tls[0])
    try:
        secure.routes["/v2/"] = _challenge(f"{hostile.url}/token")  # same host, plain http
        hostile.routes["/token"] = _token(b'{"token": "good"}')
        client = RegistryClient(secure.host, scheme="https", ssl_context=tls[1], username=USER, password=PASSWORD,
                                retries=0)
        with client, pytest.raises(RegistryError, match="refusing to send credentials for https://"):
            client.ping()
        assert hostile.log == [] and secure.authorizations() == [None]
        secure.routes["/v2/"] = _challenge(f"{secure.url}/token")  # the same realm over https is fine
        secure.routes["/token"] = _token(b'{"token": "good"}')
        client = RegistryClient(secure.host, scheme="https", ssl_context=tls[1], username=USER, password=PASSWORD)
        with client:
            client.ping()
        assert secure.authorizations()[-2:] == [BASIC, "Bearer good"]
    finally:
        secure.close()


# -- plain HTTP and unverified TLS only when asked ---------------------------------------------
def _basic_only(handler: _Handler) -> None:
    if handler.headers.get("Authorization") == BASIC:
        handler.send(200, b"{}")
    else:
        handler.send(401, b"", {"WWW-Authenticate": 'Basic realm="r"'})


def test_plain_http_registry_is_refused_without_insecure(hostile: Hostile, capsys: pytest.CaptureFixture[str]) -> None:
    hostile.routes["/v2/"] = _basic_only
    with RegistryClient(hostile.host, username=USER, password=PASSWORD, retries=0) as client, \
            pytest.raises(RegistryError, match=r"GET https://127\.0\.0\.1:\d+/v2/: TLS failed .*use --insecure"):
        client.ping()
    with pytest.raises(ValueError, match=r"plain HTTP to 127\.0\.0\.1:\d+ is refused: .*use --insecure"):
        RegistryClient(hostile.host, scheme="http")
    for reference in (f"{hostile.host}/lib/img:v1", f"http://{hostile.host}/lib/img:v1"):
        assert main(["ls", reference]) == 1
        err = capsys.readouterr().err
        assert err.startswith("estargz: error: ") and err.count("\n") == 1 and "use --insecure" in err
    assert hostile.log == []  # nothing, credentials least of all, went over plain HTTP
    with RegistryClient(hostile.host, username=USER, password=PASSWORD, retries=0, insecure=True) as client:
        client.ping()
        assert client.scheme == "http"
    assert hostile.authorizations() == [None, BASIC]


def test_insecure_skips_certificate_checks_and_stays_on_https(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    secure = Hostile(tls=tls[0])
    try:
        secure.routes["/v2/"] = lambda handler: handler.send(200, b"{}")
        with RegistryClient(secure.host, retries=0) as client, \
                pytest.raises(RegistryError, match="certificate verify failed.*use --insecure"):
            client.ping()
        assert secure.log == []
        with RegistryClient(secure.host, retries=0, insecure=True) as client:
            client.ping()
            assert client.scheme == "https"
        with RegistryClient(secure.host, retries=0, ssl_context=tls[1]) as client:
            client.ping()
        assert [path for _, path, _, _ in secure.log] == ["/v2/", "/v2/"]
    finally:
        secure.close()


def test_insecure_never_falls_back_to_http_after_an_https_answer(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """A registry reached over HTTPS that later answers without TLS (another server on its port)
    gets no request, and no credentials, over plain HTTP."""
    secure = Hostile(tls=tls[0])
    secure.routes["/v2/"] = _basic_only
    client = RegistryClient(secure.host, username=USER, password=PASSWORD, retries=1, backoff=0.01, insecure=True)
    with client:
        client.ping()
        assert secure.authorizations() == [None, BASIC]
        secure.close()
        client.close()  # the next request connects anew
        plain = Hostile(port=int(secure.host.rsplit(":", 1)[1]))
        try:
            plain.routes["/v2/"] = _basic_only
            with pytest.raises(RegistryError, match="TLS failed"):
                client.ping()
            assert plain.log == [] and client.scheme == "https"
        finally:
            plain.close()


def test_redirect_to_another_host_drops_authorization(hostile: Hostile, elsewhere: Hostile) -> None:
    blob = b"layer bytes" * 100
    digest = sha256(blob)

    def blobs(handler: _Handler) -> None:
        if handler.headers.get("Authorization") != BASIC:
            handler.send(401, b"", {"WWW-Authenticate": 'Basic realm="r"'})
        elif handler.command == "HEAD":
            handler.send(200, blob, {"Docker-Content-Digest": digest})
        else:
            handler.send(307, b"", {"Location": f"{elsewhere.url}/storage?sig=1"})

    hostile.routes[f"/v2/lib/img/blobs/{digest}"] = blobs
    elsewhere.routes["/storage"] = lambda h: h.send(206, blob[5:15], {"Content-Range": f"bytes 5-14/{len(blob)}"})
    with _client(hostile, username=USER, password=PASSWORD) as client:
        assert client.blob("lib/img", digest).read_at(5, 10) == blob[5:15]
    assert hostile.authorizations()[-1] == BASIC
    assert elsewhere.authorizations() == [None]


# -- deadlines -------------------------------------------------------------------------------
def test_slow_drip_body_hits_the_deadline(hostile: Hostile) -> None:
    hostile.routes["/v2/"] = lambda h: (h.raw(b"HTTP/1.1 200 OK\r\nContent-Length: 400\r\n\r\n"),
                                        h.drip(b"x" * DRIP_LIMIT))
    with _client(hostile, deadline=0.5) as client:
        started = time.monotonic()
        with pytest.raises(RegistryError, match=r"no complete answer within the 0\.5 s deadline"):
            client.ping()
        assert time.monotonic() - started < DRIP_LIMIT * DRIP_PAUSE / 2  # cut long before the drip ends
    assert len(hostile.log) == 1  # a missed deadline is not retried


def test_slow_drip_headers_hit_the_deadline(hostile: Hostile) -> None:
    hostile.routes["/v2/"] = lambda h: h.drip(b"HTTP/1.1 200 OK\r\nX-Slow: " + b"y" * DRIP_LIMIT)
    with _client(hostile, deadline=0.5) as client:
        started = time.monotonic()
        with pytest.raises(RegistryError, match="deadline"):
            client.ping()
        assert time.monotonic() - started < DRIP_LIMIT * DRIP_PAUSE / 2


# -- malformed answers -----------------------------------------------------------------------
@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 abc Broken\r\n\r\n",
    b"NOT-HTTP\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 200 + b"\r\n",
    b"HTTP/1.1 200 OK\r\nX-Long: " + b"z" * 70_000 + b"\r\n\r\n",
    b"HTTP/1.1 302 Found\r\nLocation: http://[::1\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 302 Found\r\nLocation: ftp://127.0.0.1/x\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
])
def test_malformed_answers_are_one_line_registry_errors(hostile: Hostile, answer: bytes) -> None:
    hostile.routes["/v2/"] = lambda h: h.raw(answer)
    with _client(hostile) as client, pytest.raises(EStargzError) as caught:
        client.ping()
    assert isinstance(caught.value, (RegistryError, FormatError))
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 500


@pytest.mark.parametrize("realm", ["", "not a url", "ftp://127.0.0.1/token", "http://[::1/token", "http://:99999/t"])
def test_malformed_realms(hostile: Hostile, realm: str) -> None:
    hostile.routes["/v2/"] = _challenge(realm)
    with _client(hostile) as client, pytest.raises(RegistryError) as caught:
        client.ping()
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("answer", [
    b"[]", b'"token"', b'{"token": 5}', b'{"token": ["a"]}', b'{"token": "two words"}', b'{"token": "a\\nb"}',
    b"{}", b"not json", b"\xff\xfe",
])
def test_malformed_token_answers(hostile: Hostile, answer: bytes) -> None:
    hostile.routes["/v2/"] = _challenge(f"{hostile.url}/token")
    hostile.routes["/token"] = _token(answer)
    with _client(hostile) as client, pytest.raises(FormatError, match="token answer"):
        client.ping()


@pytest.mark.parametrize("expires_in", ["1" + "0" * 400, "1e400", "-5", '"soon"', "null", "true"])
def test_odd_token_lifetimes_still_work(hostile: Hostile, expires_in: str) -> None:
    hostile.routes["/v2/"] = _challenge(f"{hostile.url}/token")
    hostile.routes["/token"] = _token(b'{"token": "good", "expires_in": %s}' % expires_in.encode())
    with _client(hostile) as client:
        client.ping()
        client.ping()
    assert [p for _, p, _, _ in hostile.log].count("/token?service=svc") == 1


def test_oversized_token_answer_is_refused(hostile: Hostile) -> None:
    hostile.routes["/v2/"] = _challenge(f"{hostile.url}/token")
    hostile.routes["/token"] = _token(b'{"token": "' + b"a" * (2 << 20) + b'"}')
    with _client(hostile) as client, pytest.raises(FormatError, match="over the .*-byte limit"):
        client.ping()


# -- digests ---------------------------------------------------------------------------------
def _layer() -> tuple[estargz.BuildResult, bytes]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        data = b"hello, anchored world\n"
        info = tarfile.TarInfo("etc/hello.txt")
        info.size, info.mtime = len(data), 1_700_000_000
        tf.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    return estargz.convert(io.BytesIO(buf.getvalue()), out), out.getvalue()


def _serve_image(server: Hostile, blob: bytes, descriptor: dict[str, Any], tag: str = "v1",
                 served_blob: bytes | None = None) -> str:
    """Serve an image of one layer under ``tag`` and its digest; returns the manifest digest."""
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": sha256(b"{}"), "size": 2},
                           "layers": [descriptor]}).encode()
    digest = sha256(manifest)
    for ref in (tag, digest):
        server.routes[f"/v2/lib/img/manifests/{ref}"] = lambda h: h.send(200, manifest, {"Content-Type": OCI_MANIFEST})
    data = blob if served_blob is None else served_blob

    def blob_route(handler: _Handler) -> None:
        spec = handler.headers.get("Range")
        if spec:
            first, last = (int(x) for x in spec.removeprefix("bytes=").split("-"))
            handler.send(206, data[first:last + 1], {"Content-Range": f"bytes {first}-{last}/{len(data)}"})
        else:
            handler.send(200, data)

    server.routes[f"/v2/lib/img/blobs/{descriptor['digest']}"] = blob_route
    return digest


def _descriptor(layer: estargz.BuildResult, **annotations: str) -> dict[str, Any]:
    return {"mediaType": layer.media_type, "digest": layer.blob_digest, "size": layer.blob_size,
            "annotations": {**layer.annotations, **annotations}}


def test_wrong_toc_anchor_is_refused(hostile: Hostile) -> None:
    layer, blob = _layer()
    wrong = sha256(b"another toc")
    _serve_image(hostile, blob, _descriptor(layer, **{"containerd.io/snapshot/stargz/toc.digest": wrong}))
    source, descriptor = open_layer(f"{hostile.host}/lib/img:v1", insecure=True)
    with source, pytest.raises(VerificationError, match=f"annotation .* {wrong}"):
        estargz.open(source, annotations=descriptor["annotations"])
    assert main(["ls", "--insecure", f"{hostile.host}/lib/img:v1"]) == 1
    assert main(["ls", "--insecure", f"{hostile.host}/lib/img:v1", "--annotation",  # the manifest's anchor wins
                 f"containerd.io/snapshot/stargz/toc.digest={layer.toc_digest}"]) == 1


def test_info_says_how_the_toc_is_anchored(hostile: Hostile, capsys: pytest.CaptureFixture[str]) -> None:
    layer, blob = _layer()
    manifest = _serve_image(hostile, blob, _descriptor(layer))
    anchors = {}
    for ref in ("lib/img:v1", f"lib/img@{manifest}", f"lib/img@{layer.blob_digest}"):
        assert main(["info", "--insecure", f"{hostile.host}/{ref}"]) == 0
        anchors[ref] = json.loads(capsys.readouterr().out)["anchor"]
    assert anchors["lib/img:v1"] == {"kind": "tag", "manifest": manifest, "tocDigest": layer.toc_digest,
                                     "annotation": "containerd.io/snapshot/stargz/toc.digest"}
    assert anchors[f"lib/img@{manifest}"]["kind"] == "manifest-digest"
    assert anchors[f"lib/img@{layer.blob_digest}"] == {"kind": "none"}


def test_verify_checks_the_whole_blob_digest(hostile: Hostile, capsys: pytest.CaptureFixture[str]) -> None:
    layer, blob = _layer()
    tampered = bytearray(blob)
    tampered[len(blob) // 2] ^= 1
    _serve_image(hostile, blob, _descriptor(layer), served_blob=bytes(tampered))
    assert main(["verify", "--insecure", f"{hostile.host}/lib/img:v1"]) == 1
    assert f"expected {layer.blob_digest}" in capsys.readouterr().err
    _serve_image(hostile, blob, _descriptor(layer), served_blob=blob + b"extra")
    assert main(["verify", "--insecure", f"{hostile.host}/lib/img:v1"]) == 1
    assert "bytes" in capsys.readouterr().err
    _serve_image(hostile, blob, _descriptor(layer))
    assert main(["verify", "--insecure", f"{hostile.host}/lib/img:v1"]) == 0
    assert json.loads(capsys.readouterr().out)["anchor"]["kind"] == "tag"


def test_index_child_with_the_wrong_digest_is_refused(hostile: Hostile) -> None:
    layer, blob = _layer()
    manifest = _serve_image(hostile, blob, _descriptor(layer))
    child = hostile.routes[f"/v2/lib/img/manifests/{manifest}"]
    claimed = sha256(b"a different manifest")
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": [{"mediaType": OCI_MANIFEST, "digest": claimed, "size": 10,
                                       "platform": {"os": "linux", "architecture": "amd64"}}]}).encode()
    hostile.routes["/v2/lib/img/manifests/multi"] = lambda h: h.send(
        200, index, {"Content-Type": "application/vnd.oci.image.index.v1+json"})
    hostile.routes[f"/v2/lib/img/manifests/{claimed}"] = child  # served under a digest it does not have
    with pytest.raises(VerificationError, match=f"expected {claimed}"):
        open_layer(f"{hostile.host}/lib/img:multi", platform="linux/amd64", insecure=True)


@pytest.mark.parametrize("annotations", [[], {"a": 1}, "x"])
def test_descriptor_fields_of_the_wrong_type(hostile: Hostile, annotations: Any) -> None:
    layer, blob = _layer()
    _serve_image(hostile, blob, {**_descriptor(layer), "annotations": annotations})
    with pytest.raises(FormatError, match="annotations"):
        open_layer(f"{hostile.host}/lib/img:v1", insecure=True)


# -- credentials from config files and helpers -------------------------------------------------
def _basic_only(handler: _Handler) -> None:
    if handler.headers.get("Authorization") == BASIC:
        handler.send(200, b"{}")
    else:
        handler.send(401, b"", {"WWW-Authenticate": 'Basic realm="r"'})


def test_docker_config_auths(hostile: Hostile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hostile.routes["/v2/"] = _basic_only
    config = tmp_path / "docker" / "config.json"
    config.parent.mkdir()
    encoded = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    config.write_text(json.dumps({"auths": {f"http://{hostile.host}/v1/": {"auth": encoded}}}))
    with _client(hostile) as client:
        client.ping()
    config.write_text(json.dumps({"auths": {hostile.host: {"username": USER, "password": PASSWORD}}}))
    with _client(hostile) as client:
        client.ping()
    podman = tmp_path / "auth.json"
    podman.write_text(json.dumps({"auths": {hostile.host: {"auth": base64.b64encode(b"x:y").decode()}}}))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(podman))  # podman's file comes first
    with _client(hostile) as client, pytest.raises(RegistryError, match="401"):
        client.ping()
    config.write_text(json.dumps({"auths": {hostile.host: {"auth": "!!not base64"}}}))
    monkeypatch.delenv("REGISTRY_AUTH_FILE")
    with _client(hostile) as client, pytest.raises(RegistryError, match="not base64"):
        client.ping()


def _helper(folder: Path, name: str, script: str) -> None:
    path = folder / f"docker-credential-{name}"
    path.write_text(f"#!{sys.executable}\n{script}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_credential_helpers(hostile: Hostile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hostile.routes["/v2/"] = _basic_only
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    asked = tmp_path / "asked"
    _helper(bin_dir, "fake", f"""import json, sys
assert sys.argv[1:] == ["get"]
server = sys.stdin.read()
open({str(asked)!r}, "a").write(server + "\\n")
if server != {hostile.host!r}:
    print("credentials not found in native keychain"); sys.exit(1)
print(json.dumps({{"ServerURL": server, "Username": {USER!r}, "Secret": {PASSWORD!r}}}))
""")
    _helper(bin_dir, "broken", "import sys\nprint('garbage')\n")
    config = tmp_path / "docker" / "config.json"
    config.parent.mkdir()
    config.write_text(json.dumps({"credHelpers": {hostile.host: "fake"}}))
    with _client(hostile) as client:
        client.ping()
        client.ping()
    assert asked.read_text() == f"{hostile.host}\n"  # asked once, only when the registry asked
    config.write_text(json.dumps({"auths": {hostile.host: {}}, "credsStore": "fake"}))
    with _client(hostile) as client:
        client.ping()
    config.write_text(json.dumps({"credsStore": "broken"}))
    with _client(hostile) as client, pytest.raises(RegistryError, match="docker-credential-broken gave no JSON"):
        client.ping()
    config.write_text(json.dumps({"credsStore": "absent"}))
    with _client(hostile) as client, pytest.raises(RegistryError, match="docker-credential-absent is not installed"):
        client.ping()


def test_identity_token_is_sent_as_a_refresh_token(hostile: Hostile) -> None:
    hostile.routes["/v2/"] = _challenge(f"{hostile.url}/token")
    hostile.routes["/token"] = _token(b'{"access_token": "good"}')
    with _client(hostile, auth=Auth(Credentials("<token>", "refresh-me"))) as client:
        client.ping()
    method, _, authorization, body = hostile.log[1]
    form = parse_qs(body.decode())
    assert (method, authorization) == ("POST", None)
    assert form["grant_type"] == ["refresh_token"] and form["refresh_token"] == ["refresh-me"]
    assert form["service"] == ["svc"]


# -- proxies ---------------------------------------------------------------------------------
def test_http_proxy_from_the_environment(hostile: Hostile, monkeypatch: pytest.MonkeyPatch) -> None:
    hostile.routes["/v2/"] = lambda h: h.send(200, b"{}")
    target = "127.0.0.2:9"  # nothing listens there: only the proxy can answer
    monkeypatch.setenv("HTTP_PROXY", hostile.url)
    monkeypatch.setenv("NO_PROXY", "example.invalid")
    with RegistryClient(target, scheme="http", retries=0, insecure=True) as client:
        client.ping()
    assert [path for _, path, _, _ in hostile.log] == [f"http://{target}/v2/"]
    monkeypatch.setenv("NO_PROXY", "127.0.0.2")
    with RegistryClient(target, scheme="http", retries=0, insecure=True) as client, \
            pytest.raises(RegistryError, match="refused"):
        client.ping()
    assert len(hostile.log) == 1
