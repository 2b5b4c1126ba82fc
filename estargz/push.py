"""Push an OCI image layout to a registry.

>>> result = push_layout("converted-layout/", "127.0.0.1:5000/app:esgz", insecure=True)   # doctest: +SKIP
>>> result.digest                                                          # doctest: +SKIP
'sha256:…'

Blobs first (several at once): a blob the repository already has is not sent again, one that
another repository of the same registry has is mounted from there when ``mount_from`` names it,
and the rest go up in chunks with resume after a dropped connection. Manifests follow, each
index after its children and by digest; the tag is put last, so a failure never leaves a tag
naming a partial image.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

from .digests import algorithm_of, digest_of, is_digest
from .errors import (
    FormatError,
    LimitError,
    NotFoundError,
    UnsupportedInputError,
    VerificationError,
)
from .oci import OCI_INDEX_MEDIA_TYPE, OCI_MANIFEST_MEDIA_TYPE
from .registry import (
    DEFAULT_UPLOAD_CHUNK,
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    MAX_MANIFEST_SIZE,
    Reference,
    RegistryClient,
    parse_reference,
)
from .tocimage import REF_NAME_ANNOTATION, TOC_IMAGE_TAG_SUFFIX

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey

__all__ = ["DOCKER_PREFIX", "PushResult", "parse_destination", "push_layout"]

#: The transport prefix skopeo writes before registry references.
DOCKER_PREFIX = "docker://"
_MAX_DEPTH = 8
_DEFAULT_JOBS = 4

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class PushResult:
    """What :func:`push_layout` did."""

    reference: str
    """The image pushed, ``host/repository@digest``."""
    digest: str
    media_type: str
    tags: list[str] = field(default_factory=list)
    uploaded: list[str] = field(default_factory=list)
    """Blobs sent."""
    existing: list[str] = field(default_factory=list)
    """Blobs the repository had already."""
    mounted: list[str] = field(default_factory=list)
    """Blobs mounted from another repository of the registry."""
    manifests: list[str] = field(default_factory=list)
    """Manifests and indexes put, in the order they were put."""
    signatures: list[str] = field(default_factory=list)
    """Digests of the signature manifests put (``sign_with``)."""

    def to_json(self) -> dict[str, object]:
        return {"reference": self.reference, "digest": self.digest, "mediaType": self.media_type,
                "tags": self.tags, "uploaded": self.uploaded, "existing": self.existing,
                "mounted": self.mounted, "manifests": self.manifests, "signatures": self.signatures}


def parse_destination(text: str) -> Reference:
    """A registry reference, with or without skopeo's ``docker://`` prefix."""
    return parse_reference(text.removeprefix(DOCKER_PREFIX))


class _Layout:
    """The blobs of an OCI layout directory, each checked for size before it is sent."""

    def __init__(self, root: str) -> None:
        self.root = root

    def path(self, digest: object) -> str:
        if not is_digest(digest):
            raise FormatError(f"invalid digest {digest!r} in the layout")
        algorithm, encoded = str(digest).split(":")
        return os.path.join(self.root, "blobs", algorithm, encoded)

    def read_json(self, name: str, limit: int = MAX_MANIFEST_SIZE) -> tuple[bytes, Any]:
        try:
            with open(name, "rb") as f:
                data = f.read(limit + 1)
        except FileNotFoundError:
            raise NotFoundError(f"{os.path.relpath(name, self.root)} is not in the layout") from None
        if len(data) > limit:
            raise LimitError(f"{os.path.relpath(name, self.root)} is over the {limit}-byte limit")
        try:
            return data, json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise FormatError(f"{os.path.relpath(name, self.root)} is not JSON") from None


@dataclass
class _Plan:
    """Blobs to send (digest -> size) and manifests to put, children before parents."""

    blobs: dict[str, int] = field(default_factory=dict)
    manifests: list[tuple[str, bytes, str]] = field(default_factory=list)

    def add_manifest(self, layout: _Layout, descriptor: dict[str, Any], depth: int = 0) -> None:
        digest = descriptor.get("digest")
        if depth > _MAX_DEPTH:
            raise LimitError(f"indexes nested more than {_MAX_DEPTH} deep")
        if any(d == digest for d, _, _ in self.manifests):
            return
        data, document = layout.read_json(layout.path(digest))
        _check(data, digest, descriptor.get("size"))
        if not isinstance(document, dict):
            raise FormatError(f"manifest {digest} is not a JSON object")
        media_type = descriptor.get("mediaType") or document.get("mediaType") or (
            OCI_INDEX_MEDIA_TYPE if "manifests" in document else OCI_MANIFEST_MEDIA_TYPE)
        if media_type not in MANIFEST_MEDIA_TYPES:
            raise UnsupportedInputError(f"manifest {digest} has media type {media_type!r}")
        if media_type in INDEX_MEDIA_TYPES:
            for child in _descriptors(document.get("manifests"), digest):
                self.add_manifest(layout, child, depth + 1)
        else:
            config = document.get("config")
            for blob in [config] + list(_descriptors(document.get("layers"), digest)):
                if not isinstance(blob, dict) or not isinstance(blob.get("size"), int):
                    raise FormatError(f"manifest {digest} has an invalid descriptor")
                layout.path(blob.get("digest"))
                self.blobs[blob["digest"]] = blob["size"]
        self.manifests.append((digest, data, media_type))  # type: ignore[arg-type]


def _descriptors(value: object, where: object) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise FormatError(f"{where} has no list of descriptors")
    return value


def _check(data: bytes, digest: object, size: object) -> None:
    if size is not None and len(data) != size:
        raise VerificationError(f"{digest}: {len(data)} bytes, the descriptor says {size}")
    if not is_digest(digest) or digest_of(data, algorithm_of(str(digest))) != digest:
        raise VerificationError(f"blob {digest} does not match its digest")


def _roots(layout: _Layout, tag: str | None) -> list[tuple[dict[str, Any], str | None]]:
    """The index.json entries to push and the tag each gets: the image, and a TOC image as
    ``TAG-esgztoc``. More than one distinct image is refused (which one would the tag name?)."""
    _, index = layout.read_json(os.path.join(layout.root, "index.json"))
    if not isinstance(index, dict):
        raise FormatError("index.json is not a JSON object")
    images: dict[object, dict[str, Any]] = {}
    tocs: dict[object, dict[str, Any]] = {}
    for entry in _descriptors(index.get("manifests"), "index.json"):
        name = (entry.get("annotations") or {}).get(REF_NAME_ANNOTATION, "")
        (tocs if isinstance(name, str) and name.endswith(TOC_IMAGE_TAG_SUFFIX) else images)[entry.get("digest")] = entry
    if len(images) != 1:
        raise UnsupportedInputError(f"the layout holds {len(images)} images; a registry reference names one "
                                    "(pick one with a platform, or push an index)")
    roots: list[tuple[dict[str, Any], str | None]] = [(next(iter(images.values())), tag)]
    if len(tocs) == 1:
        roots.append((next(iter(tocs.values())), tag + TOC_IMAGE_TAG_SUFFIX if tag else None))
    return roots


def push_layout(layout: PathLike, destination: str | Reference, *, client: RegistryClient | None = None,
                mount_from: str | None = None, jobs: int = _DEFAULT_JOBS,
                chunk_size: int = DEFAULT_UPLOAD_CHUNK, sign_with: EllipticCurvePrivateKey | None = None,
                **client_options: Any) -> PushResult:
    """Push the image of an OCI layout directory to ``destination`` (``host/repo:tag``,
    ``host/repo@digest`` or with ``docker://``), with its TOC image (tag ``TAG-esgztoc``) if
    the layout has one. ``jobs`` blobs go up at once. ``mount_from`` names a repository of
    the same registry to mount blobs from. ``client`` (else one made from ``client_options``,
    see :class:`RegistryClient`) does the requests. ``sign_with`` (an ECDSA private key, see
    :func:`estargz.sign.load_private_key`) signs each pushed image before its tag is put.

    A destination digest must be the image's (VerificationError). Errors:
    :class:`RegistryError` and the others of :class:`RegistryClient`, FormatError for a
    malformed layout, VerificationError for a blob that does not match its digest.
    """
    ref = parse_destination(destination) if isinstance(destination, str) else destination
    if jobs < 1:
        raise ValueError("jobs must be at least 1")
    store = _Layout(os.fspath(layout))
    roots = _roots(store, ref.tag if not ref.digest else None)
    plan = _Plan()
    for descriptor, _ in roots:
        plan.add_manifest(store, descriptor)
    if ref.digest and roots[0][0].get("digest") != ref.digest:
        raise VerificationError(f"the image is {roots[0][0].get('digest')}, not {ref.digest}")
    own = client is None
    if client is None:
        client_options.setdefault("scheme", ref.scheme)
        client = RegistryClient(ref.registry, **client_options)
    manifests = {digest: (data, media_type) for digest, data, media_type in plan.manifests}
    image = roots[0][0]["digest"]
    try:
        result = PushResult(f"{ref.registry}/{ref.repository}@{image}", image, manifests[image][1])
        _push_blobs(client, ref.repository, store, plan.blobs, result, mount_from, jobs, chunk_size)
        for digest, data, media_type in plan.manifests:
            client.put_manifest(ref.repository, digest, data, media_type)
            result.manifests.append(digest)
        if sign_with is not None:
            result.signatures.extend(_sign_roots(client, ref, roots, sign_with))
        for descriptor, tag in roots:
            if tag:
                client.put_manifest(ref.repository, tag, *manifests[descriptor["digest"]])
                result.tags.append(tag)
        return result
    finally:
        if own:
            client.close()


def _sign_roots(client: RegistryClient, ref: Reference, roots: list[tuple[dict[str, Any], str | None]],
                key: EllipticCurvePrivateKey) -> list[str]:
    """Sign each pushed image under the tag it is pushed to; return the signatures' digests."""
    from .sign import sign_image

    return [sign_image(client, Reference(ref.registry, ref.repository, tag, None, ref.scheme),
                       descriptor["digest"], key)
            for descriptor, tag in roots]


def _push_blobs(client: RegistryClient, repository: str, layout: _Layout, blobs: dict[str, int],
                result: PushResult, mount_from: str | None, jobs: int, chunk_size: int) -> None:
    def push(digest: str, size: int) -> str:
        if client.has_blob(repository, digest):
            return "existing"
        location = client.mount_blob(repository, digest, mount_from) if mount_from else None
        if mount_from and location is None:
            return "mounted"
        path = layout.path(digest)
        try:
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_size != size:
                    raise VerificationError(f"blob {digest} is {os.fstat(f.fileno()).st_size} bytes, "
                                            f"the manifest says {size}")
                client.upload_blob(repository, digest, f, size, chunk_size=chunk_size, location=location)
        except FileNotFoundError:
            raise NotFoundError(f"blob {digest} is not in the layout") from None
        return "uploaded"

    with ThreadPoolExecutor(jobs, thread_name_prefix="estargz-push") as pool:
        outcomes = list(pool.map(lambda item: (item[0], push(*item)), blobs.items()))
    for digest, outcome in outcomes:
        getattr(result, outcome).append(digest)
