"""Keys, simple signing and signature-anchored lazy reads.

The encrypted key format is checked against a decryption written here from the format's
description (scrypt from hashlib, secretbox from PyNaCl), in both directions. Signatures are
pushed to the session's docker-registry and checked: the sigstore attachment's layout, a good
signature, and the failures (wrong key, tampered payload, another image's signature, none).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
from io import BytesIO
from pathlib import Path
from typing import Any

import nacl.secret
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from helpers import sha256
from test_image_registry import SMALL_FILE, SMALL_TEXT, TAG, source_layout

import estargz
from estargz.errors import VerificationError
from estargz.image import convert_image
from estargz.push import push_layout
from estargz.registry import RegistryClient, open_layer
from estargz.sign import (
    KeyFileError,
    generate_key_pair,
    load_private_key,
    load_public_key,
    sign_image,
    verify_image,
)

PASSWORD = b"correct horse"
SIG_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIG_ANNOTATION = "dev.cosignproject.cosign/signature"


def pem_body(pem: bytes, kind: str) -> bytes:
    match = re.search(rb"-----BEGIN " + kind.encode() + rb"-----\n(.*?)-----END " + kind.encode() + rb"-----",
                      pem, re.DOTALL)
    assert match, pem[:80]
    return base64.b64decode(b"".join(match.group(1).split()))


def seal(der: bytes, password: bytes, n: int, kind: str) -> bytes:
    """An encrypted key as the format describes it, made without estargz."""
    salt, nonce = os.urandom(32), os.urandom(24)
    key = hashlib.scrypt(password, salt=salt, n=n, r=8, p=1, maxmem=256 << 20, dklen=32)
    sealed = nacl.secret.SecretBox(key).encrypt(der, nonce).ciphertext
    document = {"kdf": {"name": "scrypt", "params": {"N": n, "r": 8, "p": 1}, "salt": base64.b64encode(salt).decode()},
                "cipher": {"name": "nacl/secretbox", "nonce": base64.b64encode(nonce).decode()},
                "ciphertext": base64.b64encode(sealed).decode()}
    body = base64.encodebytes(json.dumps(document).encode())
    return f"-----BEGIN {kind}-----\n".encode() + body + f"-----END {kind}-----\n".encode()


@pytest.fixture(scope="module")
def key_pair() -> tuple[bytes, bytes]:
    return generate_key_pair(PASSWORD)


# -- keys --------------------------------------------------------------------------------------

def test_generated_key_decrypts_as_the_format_says(key_pair: tuple[bytes, bytes]) -> None:
    private_pem, public_pem = key_pair
    document = json.loads(pem_body(private_pem, "ENCRYPTED COSIGN PRIVATE KEY"))
    assert document["kdf"]["name"] == "scrypt" and document["cipher"]["name"] == "nacl/secretbox"
    params = document["kdf"]["params"]
    key = hashlib.scrypt(PASSWORD, salt=base64.b64decode(document["kdf"]["salt"]), n=params["N"], r=params["r"],
                         p=params["p"], maxmem=256 << 20, dklen=32)
    der = nacl.secret.SecretBox(key).decrypt(base64.b64decode(document["ciphertext"]),
                                            base64.b64decode(document["cipher"]["nonce"]))
    private = serialization.load_der_private_key(der, None)
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp256r1"
    public = serialization.load_pem_public_key(public_pem)
    public.verify(private.sign(b"payload", ec.ECDSA(hashes.SHA256())), b"payload", ec.ECDSA(hashes.SHA256()))


@pytest.mark.parametrize("n, kind", [(32768, "ENCRYPTED COSIGN PRIVATE KEY"),
                                     (65536, "ENCRYPTED SIGSTORE PRIVATE KEY")])
def test_reads_keys_sealed_elsewhere(n: int, kind: str) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    der = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    loaded = load_private_key(seal(der, PASSWORD, n, kind), PASSWORD)
    assert loaded.private_numbers() == private.private_numbers()


def test_plain_pkcs8_key_is_accepted(tmp_path: Path) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "plain.pem"
    path.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    assert load_private_key(path).private_numbers() == private.private_numbers()


def test_password_from_environment(key_pair: tuple[bytes, bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COSIGN_PASSWORD", PASSWORD.decode())
    assert load_private_key(key_pair[0]).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo) == key_pair[1]


def test_bad_keys_are_refused(key_pair: tuple[bytes, bytes]) -> None:
    with pytest.raises(KeyFileError, match="wrong password"):
        load_private_key(key_pair[0], b"wrong")
    der = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises(KeyFileError, match="scrypt parameters"):
        load_private_key(seal(der, PASSWORD, 1024, "ENCRYPTED COSIGN PRIVATE KEY"), PASSWORD)
    body = bytearray(pem_body(key_pair[0], "ENCRYPTED COSIGN PRIVATE KEY"))
    body[-10] ^= 1
    text = base64.encodebytes(bytes(body))
    with pytest.raises(KeyFileError):
        load_private_key(b"-----BEGIN ENCRYPTED COSIGN PRIVATE KEY-----\n" + text
                         + b"-----END ENCRYPTED COSIGN PRIVATE KEY-----\n", PASSWORD)
    with pytest.raises(KeyFileError):
        load_public_key(b"not a key")
    with pytest.raises(KeyFileError):
        load_private_key(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")


# -- signatures in a registry -------------------------------------------------------------------

@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory, docker_registry: Any,
           key_pair: tuple[bytes, bytes]) -> dict[str, Any]:
    """The test image converted to eStargz, pushed and signed, and the plain image pushed unsigned."""
    root = source_layout(tmp_path_factory.mktemp("sign") / "src").root
    ref = f"{docker_registry.host}/sign/app:{TAG}"
    result = convert_image(root, ref, sign_with=load_private_key(key_pair[0], PASSWORD), insecure=True)
    plain = push_layout(root, f"{docker_registry.host}/sign/app:plain", insecure=True)
    return {"ref": ref, "digest": result.pushed.digest, "plain": plain.digest, "host": docker_registry.host,
            "signatures": result.pushed.signatures}


def test_signature_is_a_sigstore_attachment(signed: dict[str, Any], key_pair: tuple[bytes, bytes]) -> None:
    with RegistryClient(signed["host"], insecure=True) as client:
        attachment = client.get_manifest("sign/app", f"sha256-{signed['digest'][7:]}.sig")
        assert [attachment.digest] == signed["signatures"]
        [layer] = attachment.content["layers"]
        assert layer["mediaType"] == SIG_MEDIA_TYPE
        payload = client.blob("sign/app", layer["digest"], layer["size"]).read_at(0, layer["size"])
    assert sha256(payload) == layer["digest"]
    critical = json.loads(payload)["critical"]
    assert critical == {"identity": {"docker-reference": signed["ref"]},
                        "image": {"docker-manifest-digest": signed["digest"]},
                        "type": "cosign container image signature"}
    public = serialization.load_pem_public_key(key_pair[1])
    public.verify(base64.b64decode(layer["annotations"][SIG_ANNOTATION]), payload, ec.ECDSA(hashes.SHA256()))


def test_verify_good_and_bad(signed: dict[str, Any], key_pair: tuple[bytes, bytes]) -> None:
    public = load_public_key(key_pair[1])
    other = ec.generate_private_key(ec.SECP256R1())
    with RegistryClient(signed["host"], insecure=True) as client:
        assert verify_image(client, signed["ref"], signed["digest"], public).manifest_digest == signed["digest"]
        with pytest.raises(VerificationError, match="does not match the key"):
            verify_image(client, signed["ref"], signed["digest"], other.public_key())
        with pytest.raises(VerificationError, match="no signatures"):
            verify_image(client, signed["ref"], signed["plain"], public)
        # The signature copied, with the image's digest, to another repository.
        tag = f"sha256-{signed['digest'][7:]}.sig"
        attachment = client.get_manifest("sign/app", tag)
        for blob in [attachment.content["config"], *attachment.content["layers"]]:
            data = client.blob("sign/app", blob["digest"], blob["size"]).read_at(0, blob["size"])
            client.upload_blob("sign/elsewhere", blob["digest"], BytesIO(data), len(data))
        client.put_manifest("sign/elsewhere", tag, attachment.data, attachment.media_type)
        with pytest.raises(VerificationError, match="not .*/sign/elsewhere"):
            verify_image(client, f"{signed['host']}/sign/elsewhere:{TAG}", signed["digest"], public)


def test_tampered_and_moved_signatures_fail(signed: dict[str, Any], key_pair: tuple[bytes, bytes]) -> None:
    public = load_public_key(key_pair[1])
    with RegistryClient(signed["host"], insecure=True) as client:
        attachment = client.get_manifest("sign/app", f"sha256-{signed['digest'][7:]}.sig")
        # The signature of one image put where another image's signatures go.
        client.put_manifest("sign/app", f"sha256-{signed['plain'][7:]}.sig", attachment.data,
                            attachment.media_type)
        with pytest.raises(VerificationError, match="another image"):
            verify_image(client, f"{signed['host']}/sign/app:plain", signed["plain"], public)
        # A payload changed under its signature.
        [layer] = attachment.content["layers"]
        payload = client.blob("sign/app", layer["digest"], layer["size"]).read_at(0, layer["size"])
        forged = payload.replace(b'"cosign container image signature"', b'"cosign container image signature" ')
        client.upload_blob("sign/app", sha256(forged), BytesIO(forged), len(forged))
        manifest = {**attachment.content, "layers": [{**layer, "digest": sha256(forged), "size": len(forged)}]}
        client.put_manifest("sign/app", f"sha256-{signed['plain'][7:]}.sig", json.dumps(manifest).encode(),
                            attachment.media_type)
        with pytest.raises(VerificationError, match="does not match the key"):
            verify_image(client, f"{signed['host']}/sign/app:plain", signed["plain"], public)


def test_lazy_read_anchored_on_the_signature(signed: dict[str, Any], key_pair: tuple[bytes, bytes]) -> None:
    source, descriptor = open_layer(signed["ref"], 1, verify_with=load_public_key(key_pair[1]), insecure=True)
    with source, estargz.open(source, annotations=descriptor["annotations"]) as blob:
        assert blob.read(SMALL_FILE) == SMALL_TEXT
    assert source.anchor.kind == "signature" and source.anchor.manifest == signed["digest"]
    assert source.anchor.toc_digest == descriptor["annotations"][estargz.TOC_DIGEST_ANNOTATION]
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(VerificationError):
        open_layer(signed["ref"], 1, verify_with=other, insecure=True)


def test_signed_layer_without_toc_digest_is_refused(signed: dict[str, Any], key_pair: tuple[bytes, bytes]) -> None:
    ref = f"{signed['host']}/sign/app:plain"
    with RegistryClient(signed["host"], insecure=True) as client:
        sign_image(client, ref, signed["plain"], load_private_key(key_pair[0], PASSWORD))
    with pytest.raises(VerificationError, match="no TOC digest annotation"):
        open_layer(ref, 0, verify_with=load_public_key(key_pair[1]), insecure=True)


def cli(*args: str, cwd: Path, password: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent.parent), *sys.path])}
    env.pop("COSIGN_PASSWORD", None)
    if password is not None:
        env["COSIGN_PASSWORD"] = password
    return subprocess.run([sys.executable, "-m", "estargz", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, stdin=subprocess.DEVNULL, timeout=300, check=False)


def test_cli_keygen_sign_and_read_with_key(signed: dict[str, Any], tmp_path: Path) -> None:
    made = cli("keygen", "--output-prefix", "k", cwd=tmp_path, password="pw")
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "k.key").stat().st_mode & 0o777 == 0o600
    assert load_private_key(tmp_path / "k.key", b"pw").public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo) == (tmp_path / "k.pub").read_bytes()
    assert cli("keygen", "--output-prefix", "k", cwd=tmp_path, password="pw").returncode == 1

    ref = f"docker://{signed['ref']}"
    done = cli("sign", "--insecure", ref, "--key", "k.key", cwd=tmp_path, password="pw")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["manifestDigest"] == signed["digest"]
    info = cli("info", "--insecure", signed["ref"], "--layer", "1", "--key", "k.pub", cwd=tmp_path)
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["anchor"] == {
        "kind": "signature", "manifest": signed["digest"],
        "tocDigest": json.loads(info.stdout)["tocDigest"], "annotation": estargz.TOC_DIGEST_ANNOTATION}
    cat = cli("cat", "--insecure", signed["ref"], "--layer", "1", "--key", "k.pub", SMALL_FILE, cwd=tmp_path)
    assert cat.returncode == 0 and cat.stdout == SMALL_TEXT.decode()

    wrong = cli("sign", "--insecure", ref, "--key", "k.key", cwd=tmp_path, password="nope")
    assert wrong.returncode == 1 and wrong.stderr.strip().count("\n") == 0 and "wrong password" in wrong.stderr
    (tmp_path / "o.pub").write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    refused = cli("cat", "--insecure", signed["ref"], "--layer", "1", "--key", "o.pub", SMALL_FILE, cwd=tmp_path)
    assert refused.returncode == 1 and refused.stdout == "" and "no valid signature" in refused.stderr
    assert refused.stderr.strip().count("\n") == 0


# -- against an independent implementation (Go's crypto and golang.org/x/crypto) ---------------

SIGCHECK_BUILD = Path(__file__).parent / "interop" / "build_sigcheck.sh"


@pytest.fixture(scope="module")
def sigcheck() -> Path:
    """tests/interop/sigcheck built from Debian's Go packages; skipped when it cannot be built,
    except in CI, where that fails."""
    proc = subprocess.run(["bash", str(SIGCHECK_BUILD)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=900, check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or not os.access(lines[-1], os.X_OK):
        message = f"sigcheck did not build: {proc.stderr.strip()[-500:]}"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return Path(lines[-1])


def go(sigcheck: Path, *args: str | Path) -> str:
    proc = subprocess.run([str(sigcheck), *map(str, args)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def push_signature(client: RegistryClient, repository: str, manifest_digest: str, payload: bytes,
                   signature: str) -> None:
    """A sigstore attachment put together here, around a payload and signature made elsewhere."""
    config = b'{"architecture":"","os":"","config":{},"rootfs":{"type":"layers","diff_ids":[]}}'
    for data in (payload, config):
        client.upload_blob(repository, sha256(data), BytesIO(data), len(data))
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(config),
                           "size": len(config)},
                "layers": [{"mediaType": SIG_MEDIA_TYPE, "digest": sha256(payload), "size": len(payload),
                            "annotations": {SIG_ANNOTATION: signature}}]}
    client.put_manifest(repository, f"sha256-{manifest_digest[7:]}.sig", json.dumps(manifest).encode(),
                        manifest["mediaType"])


@pytest.mark.interop
def test_go_reads_estargz_keys_and_estargz_checks_go_signatures(signed: dict[str, Any], sigcheck: Path,
                                                                 tmp_path: Path) -> None:
    assert cli("keygen", "--output-prefix", "e", cwd=tmp_path, password="pw").returncode == 0
    assert go(sigcheck, "public", tmp_path / "e.key", "pw") == (tmp_path / "e.pub").read_text()
    # Go signs the unsigned image with the key estargz made; estargz checks it.
    ref = f"{signed['host']}/sign/app:plain"
    payload = json.dumps({"critical": {"identity": {"docker-reference": ref},
                                       "image": {"docker-manifest-digest": signed["plain"]},
                                       "type": "cosign container image signature"}, "optional": None}).encode()
    (tmp_path / "payload").write_bytes(payload)
    signature = go(sigcheck, "sign", tmp_path / "e.key", "pw", tmp_path / "payload").strip()
    with RegistryClient(signed["host"], insecure=True) as client:
        push_signature(client, "sign/go", signed["plain"], payload, signature)
        public = load_public_key(tmp_path / "e.pub")
        with pytest.raises(VerificationError, match="not .*/sign/go"):
            verify_image(client, f"{signed['host']}/sign/go:plain", signed["plain"], public)
        push_signature(client, "sign/app", signed["plain"], payload, signature)
        assert verify_image(client, ref, signed["plain"], public).docker_reference == ref


@pytest.mark.interop
def test_estargz_signs_with_go_keys_and_go_checks(signed: dict[str, Any], sigcheck: Path, tmp_path: Path) -> None:
    go(sigcheck, "keygen", tmp_path / "g", "pw")
    key = load_private_key(tmp_path / "g.key", b"pw")
    ref = f"{signed['host']}/sign/gokey:{TAG}"
    with RegistryClient(signed["host"], insecure=True) as client:
        sign_image(client, ref, signed["digest"], key)
        attachment = client.get_manifest("sign/gokey", f"sha256-{signed['digest'][7:]}.sig")
        [layer] = attachment.content["layers"]
        payload = client.blob("sign/gokey", layer["digest"], layer["size"]).read_at(0, layer["size"])
    (tmp_path / "payload").write_bytes(payload)
    go(sigcheck, "verify", tmp_path / "g.pub", tmp_path / "payload", layer["annotations"][SIG_ANNOTATION])
    (tmp_path / "payload").write_bytes(payload.replace(b"gokey", b"gokez"))
    proc = subprocess.run([str(sigcheck), "verify", str(tmp_path / "g.pub"), str(tmp_path / "payload"),
                           layer["annotations"][SIG_ANNOTATION]], capture_output=True, timeout=60, check=False)
    assert proc.returncode == 1
