"""Sigstore "simple signing" of images in registries, as cosign and containers/image do it.

Keys are ECDSA P-256. The private key is kept encrypted the way cosign and containers/image
read it: PKCS#8 DER sealed with NaCl secretbox under a key derived with scrypt from a password,
as JSON ``{"kdf": {"name": "scrypt", "params": {"N", "r", "p"}, "salt"}, "cipher": {"name":
"nacl/secretbox", "nonce"}, "ciphertext"}`` (byte strings in base64) inside a PEM block
``ENCRYPTED COSIGN PRIVATE KEY`` (``ENCRYPTED SIGSTORE PRIVATE KEY`` is read too). Plain PKCS#8
PEM private keys are accepted. The public key is a PEM ``PUBLIC KEY``.

A signature signs a JSON payload naming the image (``critical.identity.docker-reference``) and
its manifest digest (``critical.image.docker-manifest-digest``). It is stored in the image's
repository as a sigstore attachment: an OCI manifest tagged ``sha256-<hex>.sig`` whose layers
are payloads (media type ``application/vnd.dev.cosign.simplesigning.v1+json``), each with its
base64 ECDSA signature in the annotation ``dev.cosignproject.cosign/signature``.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Union

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from nacl.exceptions import CryptoError
from nacl.secret import SecretBox
from nacl.utils import random as nacl_random

from .digests import is_digest, sha256_digest
from .errors import EStargzError, FormatError, NotFoundError, VerificationError
from .oci import OCI_CONFIG_MEDIA_TYPE, OCI_MANIFEST_MEDIA_TYPE
from .registry import MAX_MANIFEST_SIZE, Reference, RegistryClient, parse_reference

__all__ = [
    "ENCRYPTED_KEY_PEM_TYPE",
    "PASSWORD_ENVIRONMENT",
    "SIGNATURE_ANNOTATION",
    "SIMPLE_SIGNING_MEDIA_TYPE",
    "KeyFileError",
    "VerifiedSignature",
    "generate_key_pair",
    "load_private_key",
    "load_public_key",
    "sign_image",
    "signature_tag",
    "simple_signing_payload",
    "verify_image",
]

#: Media type of a signature layer (the payload).
SIMPLE_SIGNING_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
#: Layer annotation holding the base64 signature of the payload.
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
#: The ``critical.type`` of a simple-signing payload.
SIGNATURE_TYPE = "cosign container image signature"
#: PEM type written for encrypted private keys (cosign and containers/image read it).
ENCRYPTED_KEY_PEM_TYPE = "ENCRYPTED COSIGN PRIVATE KEY"
_ENCRYPTED_KEY_PEM_TYPES = (ENCRYPTED_KEY_PEM_TYPE, "ENCRYPTED SIGSTORE PRIVATE KEY")
#: Where cosign (and estargz) take the private key's password from.
PASSWORD_ENVIRONMENT = "COSIGN_PASSWORD"
_SCRYPT_NAME = "scrypt"
_CIPHER_NAME = "nacl/secretbox"
#: scrypt (N, r, p) written: the parameters every reader of the format accepts.
_SCRYPT_WRITE = (32768, 8, 1)
#: scrypt (N, r, p) read: those and the newer "standard" and "OWASP" levels.
_SCRYPT_READ = frozenset({(32768, 8, 1), (65536, 8, 1), (131072, 8, 1)})
_SALT_SIZE = 32
_MAX_KEY_FILE = 64 << 10
_MAX_SIGNATURES = 64
_PEM_RE = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\s*(.*?)\s*-----END \1-----", re.DOTALL)
_DOCKER_HUB = "docker.io"
#: The names cosign and docker give Docker Hub in signed references.
_DOCKER_HUB_NAMES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})

KeyInput = Union[bytes, str, "os.PathLike[str]"]


class KeyFileError(EStargzError):
    """A key file that cannot be read: malformed, of an unsupported kind, or a wrong password."""


def _pem_blocks(data: bytes) -> list[tuple[str, bytes]]:
    return [(m.group(1).decode(), m.group(2)) for m in _PEM_RE.finditer(data)]


def _pem(kind: str, body: bytes) -> bytes:
    text = base64.b64encode(body).decode()
    lines = [text[i:i + 64] for i in range(0, len(text), 64)]
    return (f"-----BEGIN {kind}-----\n" + "\n".join(lines) + f"\n-----END {kind}-----\n").encode()


def _derive(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=SecretBox.KEY_SIZE, n=n, r=r, p=p).derive(password)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _encrypt(plaintext: bytes, password: bytes) -> bytes:
    salt = os.urandom(_SALT_SIZE)
    n, r, p = _SCRYPT_WRITE
    nonce = nacl_random(SecretBox.NONCE_SIZE)
    sealed = SecretBox(_derive(password, salt, n, r, p)).encrypt(plaintext, nonce).ciphertext
    return json.dumps({"kdf": {"name": _SCRYPT_NAME, "params": {"N": n, "r": r, "p": p}, "salt": _b64(salt)},
                       "cipher": {"name": _CIPHER_NAME, "nonce": _b64(nonce)},
                       "ciphertext": _b64(sealed)}, separators=(",", ":")).encode()


def _decrypt(document: bytes, password: bytes) -> bytes:
    try:
        data = json.loads(document)
        kdf, cipher = data["kdf"], data["cipher"]
        params = (kdf["params"]["N"], kdf["params"]["r"], kdf["params"]["p"])
        salt = base64.b64decode(kdf["salt"], validate=True)
        nonce = base64.b64decode(cipher["nonce"], validate=True)
        sealed = base64.b64decode(data["ciphertext"], validate=True)
        names = (kdf["name"], cipher["name"])
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, binascii.Error):
        raise KeyFileError("the encrypted private key is not the sigstore JSON format") from None
    if names != (_SCRYPT_NAME, _CIPHER_NAME):
        raise KeyFileError(f"unsupported key encryption {names[0]!r} / {names[1]!r}")
    if params not in _SCRYPT_READ:
        raise KeyFileError(f"unsupported scrypt parameters N={params[0]} r={params[1]} p={params[2]}")
    if len(nonce) != SecretBox.NONCE_SIZE:
        raise KeyFileError("the encrypted private key has a nonce of the wrong size")
    try:
        return SecretBox(_derive(password, salt, *params)).decrypt(sealed, nonce)
    except CryptoError:
        raise KeyFileError("cannot decrypt the private key: wrong password?") from None


def _read(key: KeyInput) -> bytes:
    if isinstance(key, bytes):
        return key
    with open(key, "rb") as f:
        data = f.read(_MAX_KEY_FILE + 1)
    if len(data) > _MAX_KEY_FILE:
        raise KeyFileError(f"{os.fspath(key)}: over {_MAX_KEY_FILE} bytes, not a key file")
    return data


def generate_key_pair(password: bytes) -> tuple[bytes, bytes]:
    """A new ECDSA P-256 key pair: (encrypted private key PEM, public key PEM)."""
    if not isinstance(password, bytes):
        raise TypeError("password must be bytes")
    private = ec.generate_private_key(ec.SECP256R1())
    der = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = private.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    return _pem(ENCRYPTED_KEY_PEM_TYPE, _encrypt(der, password)), public


def load_private_key(key: KeyInput, password: bytes | None = None) -> ec.EllipticCurvePrivateKey:
    """An ECDSA private key from PEM bytes or a file: encrypted sigstore/cosign (``password``,
    default ``$COSIGN_PASSWORD``) or plain PKCS#8/SEC1. KeyFileError if it cannot be read."""
    data = _read(key)
    blocks = _pem_blocks(data)
    encrypted = next((body for kind, body in blocks if kind in _ENCRYPTED_KEY_PEM_TYPES), None)
    try:
        if encrypted is not None:
            if password is None:
                password = os.environ.get(PASSWORD_ENVIRONMENT, "").encode()
            der = _decrypt(base64.b64decode(b"".join(encrypted.split()), validate=True), password)
            private = serialization.load_der_private_key(der, None)
        else:
            private = serialization.load_pem_private_key(data, password or None)
    except (ValueError, TypeError, UnsupportedAlgorithm, binascii.Error) as exc:
        raise KeyFileError(f"cannot read the private key: {' '.join(str(exc).split())[:200]}") from None
    if not isinstance(private, ec.EllipticCurvePrivateKey):
        raise KeyFileError("the private key is not an ECDSA key")
    return private


def load_public_key(key: KeyInput) -> ec.EllipticCurvePublicKey:
    """An ECDSA public key from PEM bytes or a file; KeyFileError if it cannot be read."""
    try:
        public = serialization.load_pem_public_key(_read(key))
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"cannot read the public key: {' '.join(str(exc).split())[:200]}") from None
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise KeyFileError("the public key is not an ECDSA key")
    return public


def simple_signing_payload(docker_reference: str, manifest_digest: str) -> bytes:
    """The payload signed for an image: its name and manifest digest."""
    return json.dumps({"critical": {"identity": {"docker-reference": docker_reference},
                                    "image": {"docker-manifest-digest": manifest_digest},
                                    "type": SIGNATURE_TYPE},
                       "optional": None}, separators=(",", ":")).encode()


def signature_tag(manifest_digest: str) -> str:
    """``sha256-<hex>.sig``: the tag of a manifest's signatures."""
    if not is_digest(manifest_digest):
        raise ValueError(f"invalid digest {manifest_digest!r}")
    algorithm, encoded = manifest_digest.split(":")
    return f"{algorithm}-{encoded}.sig"


def _identity(ref: Reference) -> str:
    """The reference as signed: ``host/repository[:tag]`` (a digest is not part of it)."""
    return f"{ref.registry}/{ref.repository}" + (f":{ref.tag}" if ref.tag else "")


def _empty_config() -> bytes:
    return json.dumps({"architecture": "", "os": "", "config": {}, "rootfs": {"type": "layers", "diff_ids": []}},
                      separators=(",", ":")).encode()


def sign_image(client: RegistryClient, reference: str | Reference, manifest_digest: str,
               key: ec.EllipticCurvePrivateKey) -> str:
    """Sign ``manifest_digest`` as the image ``reference`` names and store the signature next to
    it (kept with any signatures already there); returns the signature manifest's digest."""
    ref = parse_reference(reference) if isinstance(reference, str) else reference
    payload = simple_signing_payload(_identity(ref), manifest_digest)
    signature = base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()
    tag = signature_tag(manifest_digest)
    layers = _existing_signatures(client, ref.repository, tag)
    layers.append({"mediaType": SIMPLE_SIGNING_MEDIA_TYPE, "digest": _put_blob(client, ref.repository, payload),
                   "size": len(payload), "annotations": {SIGNATURE_ANNOTATION: signature}})
    config = json.loads(_empty_config())
    config["rootfs"]["diff_ids"] = [layer["digest"] for layer in layers]
    config_raw = json.dumps(config, separators=(",", ":")).encode()
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST_MEDIA_TYPE,
                "config": {"mediaType": OCI_CONFIG_MEDIA_TYPE, "digest": _put_blob(client, ref.repository, config_raw),
                           "size": len(config_raw)},
                "layers": layers}
    return client.put_manifest(ref.repository, tag, json.dumps(manifest, separators=(",", ":")).encode(),
                               OCI_MANIFEST_MEDIA_TYPE)


def _existing_signatures(client: RegistryClient, repository: str, tag: str) -> list[dict[str, Any]]:
    try:
        manifest = client.get_manifest(repository, tag)
    except NotFoundError:
        return []
    return [dict(layer) for layer in manifest.layers if isinstance(layer, dict)]


def _put_blob(client: RegistryClient, repository: str, data: bytes) -> str:
    digest = sha256_digest(data)
    if not client.has_blob(repository, digest):
        client.upload_blob(repository, digest, io.BytesIO(data), len(data))
    return digest


@dataclass(frozen=True)
class VerifiedSignature:
    """A signature that checked out: who it names, over which manifest digest."""

    docker_reference: str
    manifest_digest: str
    signature_manifest: str


def verify_image(client: RegistryClient, reference: str | Reference, manifest_digest: str,
                 key: ec.EllipticCurvePublicKey) -> VerifiedSignature:
    """Find a signature of ``manifest_digest`` made with ``key`` for the image ``reference``
    names. VerificationError when there is none: no signatures, signatures by other keys,
    tampered payloads, or payloads for another digest or image."""
    ref = parse_reference(reference) if isinstance(reference, str) else reference
    tag = signature_tag(manifest_digest)
    try:
        manifest = client.get_manifest(ref.repository, tag)
    except NotFoundError:
        raise VerificationError(f"{ref.registry}/{ref.repository}@{manifest_digest} has no signatures "
                                f"(no {tag} tag)") from None
    reasons = []
    for layer in manifest.layers[:_MAX_SIGNATURES]:
        try:
            identity = _check_signature(client, ref, layer, manifest_digest, key)
        except VerificationError as exc:
            reasons.append(str(exc))
            continue
        return VerifiedSignature(identity, manifest_digest, manifest.digest)
    raise VerificationError(f"no valid signature of {ref.registry}/{ref.repository}@{manifest_digest}: "
                            + ("; ".join(dict.fromkeys(reasons)) or "the signature manifest has no layers"))


def _check_signature(client: RegistryClient, ref: Reference, layer: Any, manifest_digest: str,
                     key: ec.EllipticCurvePublicKey) -> str:
    """Check one signature layer; the docker-reference it signs."""
    if not isinstance(layer, dict) or layer.get("mediaType") != SIMPLE_SIGNING_MEDIA_TYPE:
        raise VerificationError("not a simple-signing layer")
    encoded = (layer.get("annotations") or {}).get(SIGNATURE_ANNOTATION)
    size = layer.get("size")
    if not isinstance(encoded, str) or not isinstance(size, int) or not 0 <= size <= MAX_MANIFEST_SIZE:
        raise VerificationError("a signature layer without a signature annotation or valid size")
    try:
        signature = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise VerificationError("a signature annotation that is not base64") from None
    payload = _fetch_small(client, ref.repository, layer.get("digest"), size)
    try:
        key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise VerificationError("signature does not match the key") from None
    try:
        critical = json.loads(payload)["critical"]
        identity = critical["identity"]["docker-reference"]
        signed_digest = critical["image"]["docker-manifest-digest"]
        kind = critical["type"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        raise VerificationError("a signed payload that is not simple signing") from None
    if kind != SIGNATURE_TYPE:
        raise VerificationError(f"a signed payload of type {kind!r}")
    if signed_digest != manifest_digest:
        raise VerificationError(f"a signature of another image ({signed_digest})")
    try:
        signed = parse_reference(identity) if isinstance(identity, str) else None
    except ValueError:
        signed = None
    if signed is None or (_hub(signed.registry), signed.repository) != (_hub(ref.registry), ref.repository) \
            or (ref.tag and signed.tag and signed.tag != ref.tag and not ref.digest):
        raise VerificationError(f"a signature for {identity!r}, not {_identity(ref)}")
    return str(identity)


def _hub(registry: str) -> str:
    """Docker Hub under the one name references use for it."""
    return _DOCKER_HUB if registry in _DOCKER_HUB_NAMES else registry


def _fetch_small(client: RegistryClient, repository: str, digest: object, size: int) -> bytes:
    if not isinstance(digest, str) or not is_digest(digest):
        raise VerificationError(f"a signature layer with an invalid digest {digest!r}")
    buffer = io.BytesIO()
    try:
        with client.blob(repository, digest, size) as source:
            source.download(buffer)
    except (FormatError, VerificationError) as exc:
        raise VerificationError(f"signature payload {digest}: {exc}") from None
    return buffer.getvalue()
