"""The layers behind a mount: one blob (a file or a registry blob), or every layer of an image
(a registry reference or an OCI layout, one platform), each opened lazily and anchored."""

from __future__ import annotations

import errno
import json
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .annotations import (
    LEGACY_MANIFEST_CHECKSUM_ANNOTATION,
    MANIFEST_CHECKSUM_ANNOTATION,
    TOC_DIGEST_ANNOTATION,
)
from .digests import sha256_digest
from .errors import (
    EStargzError,
    FormatError,
    LimitError,
    NotFoundError,
    VerificationError,
)
from .footer import MAX_FOOTER_SIZE
from .reader import Reader
from .registry import (
    MANIFEST_MEDIA_TYPES,
    Anchor,
    BlobSource,
    RegistryClient,
    default_platform,
    open_layer,
    parse_reference,
)
from .source import FileSource, Source

__all__ = ["CountingSource", "Layer", "open_layers"]

#: Largest index or manifest read from an OCI layout.
_MAX_LAYOUT_DOCUMENT = 4 << 20
#: Layer annotations that carry the TOC digest a layout's layer is anchored to.
_ANCHOR_ANNOTATIONS = (TOC_DIGEST_ANNOTATION, MANIFEST_CHECKSUM_ANNOTATION, LEGACY_MANIFEST_CHECKSUM_ANNOTATION)
#: Indexes nested deeper than this in a layout are refused.
_MAX_INDEX_DEPTH = 4


class CountingSource:
    """A source that counts what it reads (requests and bytes), and serves reads that fall inside
    a range :meth:`preloaded` by one larger read from memory (prefetching in few requests).

    Opening a layer fetches its footer, then exactly its TOC (``opening_tail``): a mount's bytes
    are those it reads, at the cost of one request more than a reader fetching a share of the blob.
    """

    opening_tail = MAX_FOOTER_SIZE

    def __init__(self, source: Source) -> None:
        self._source = source
        self._lock = threading.Lock()
        self._preloaded: list[tuple[int, bytes]] = []
        self.requests = 0
        self.bytes = 0

    @property
    def size(self) -> int:
        return self._source.size

    def _fetch(self, offset: int, length: int) -> bytes:
        data = self._source.read_at(offset, length)
        with self._lock:
            self.requests += 1
            self.bytes += len(data)
        return data

    def _held(self, offset: int, length: int) -> bytes | None:
        """The bytes of ``[offset, offset + length)`` if a preloaded range holds them all."""
        with self._lock:
            held = list(self._preloaded)
        for start, data in held:
            if start <= offset and offset + length <= start + len(data):
                return data[offset - start:offset - start + length]
        return None

    def read_at(self, offset: int, length: int) -> bytes:
        data = self._held(offset, length)
        return self._fetch(offset, length) if data is None else data

    @contextmanager
    def preloaded(self, start: int, end: int) -> Iterator[None]:
        """Read ``[start, end)`` in one request (unless a preloaded range holds it already) and
        serve reads inside it from memory while the block runs."""
        if self._held(start, end - start) is not None:
            yield
            return
        held = (start, self._fetch(start, end - start))
        with self._lock:
            self._preloaded.append(held)
        try:
            yield
        finally:
            with self._lock:
                self._preloaded = [item for item in self._preloaded if item is not held]

    def close(self) -> None:
        close = getattr(self._source, "close", None)
        if close is not None:
            close()


@dataclass
class Layer:
    """One opened layer: its reader over a counting source, and what names it."""

    name: str
    reader: Reader
    source: CountingSource
    anchor: str = "none"
    """What the TOC was checked against: ``manifest-digest``, ``tag`` (see :class:`~estargz.registry.Anchor`),
    ``file`` (a blob file the caller named, with ``toc_digest`` if given) or ``none``."""
    closers: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def close(self) -> None:
        self.reader.close()
        self.source.close()
        for close in self.closers:
            close()


def _open_layer(name: str, source: Source, annotations: Mapping[str, str] | None, anchor: str,
                toc_digest: str | None = None) -> Layer:
    counting = CountingSource(source)
    try:
        reader = Reader(counting, annotations=annotations, toc_digest=toc_digest)
    except EStargzError as exc:
        counting.close()
        raise type(exc)(f"layer {name}: {exc}") from None
    except BaseException:
        counting.close()
        raise
    return Layer(name, reader, counting, anchor)


def _open_all(openers: list[Callable[[], Layer]]) -> list[Layer]:
    layers: list[Layer] = []
    try:
        for opener in openers:
            layers.append(opener())
    except BaseException:
        for layer in layers:
            layer.close()
        raise
    return layers


def open_layers(source: str, *, layer: int | str | None = None, platform: str | None = None,
                toc_digest: str | None = None, **client_options: Any) -> list[Layer]:
    """The layers named by ``source``, lowest first: a blob file, an OCI layout directory, or a
    registry reference (an image, or a blob by digest). ``layer`` picks one layer of an image."""
    if os.path.isdir(source):
        return _layout_layers(source, layer, platform)
    if os.path.exists(source):
        if layer is not None:
            raise ValueError("a layer index is for images; this is a blob file")
        return [_open_layer(source, FileSource.open(source), None, "file", toc_digest)]
    if not _looks_like_reference(source):
        raise FileNotFoundError(errno.ENOENT, "no such file or directory (nor a registry reference)", source)
    return _registry_layers(source, layer, platform, toc_digest, client_options)


def _looks_like_reference(text: str) -> bool:
    """Whether ``text`` names a registry (``HOST/...`` whose host has a dot or a port, or is localhost)."""
    host, slash, _ = text.removeprefix("https://").removeprefix("http://").partition("/")
    return bool(slash) and host not in ("", ".", "..") and ("." in host or ":" in host or host == "localhost")


def _registry_layers(text: str, layer: int | str | None, platform: str | None, toc_digest: str | None,
                     client_options: dict[str, Any]) -> list[Layer]:
    ref = parse_reference(text)
    if layer is not None:
        blob, descriptor = open_layer(ref, layer, platform=platform, **client_options)
        return [_open_layer(descriptor["digest"], blob, descriptor.get("annotations"), blob.anchor.kind, toc_digest)]
    client_options.setdefault("scheme", ref.scheme)
    client = RegistryClient(ref.registry, **client_options)
    try:
        if ref.digest and platform is None:
            try:
                described = client.stat_blob(ref.repository, ref.digest)
            except NotFoundError:
                described = None
            if described is not None and described["mediaType"] not in MANIFEST_MEDIA_TYPES:
                blob = BlobSource(client, ref.repository, ref.digest, described["size"])
                layers = [_open_layer(ref.digest, blob, None, "none", toc_digest)]
                layers[0].closers.append(client.close)
                return layers
        manifest = client.resolve_manifest(ref.repository, ref.reference, platform=platform)
        by_digest = ref.digest is not None

        def opener(descriptor: dict[str, Any]) -> Callable[[], Layer]:
            return lambda: _open_layer(descriptor["digest"],
                                       client.blob(ref.repository, descriptor["digest"], descriptor.get("size")),
                                       descriptor.get("annotations"), Anchor.of(manifest, descriptor, by_digest).kind)

        layers = _open_all([opener(descriptor) for descriptor in manifest.layers])
    except BaseException:
        client.close()
        raise
    if layers:
        layers[-1].closers.append(client.close)
    else:
        client.close()
    return layers


# -- OCI layouts -----------------------------------------------------------------------------
def _blob_path(root: str, digest: object) -> str:
    if not isinstance(digest, str) or ":" not in digest:
        raise FormatError(f"OCI layout: invalid digest {digest!r}")
    algorithm, _, encoded = digest.partition(":")
    if algorithm != "sha256" or len(encoded) != 64 or not all(c in "0123456789abcdef" for c in encoded):
        raise FormatError(f"OCI layout: unsupported digest {digest!r}")
    return os.path.join(root, "blobs", algorithm, encoded)


def _read_document(path: str, what: str, descriptor: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A JSON document of the layout, checked against its descriptor's digest and size."""
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_LAYOUT_DOCUMENT + 1)
    except FileNotFoundError:
        raise NotFoundError(f"OCI layout: {what} is missing") from None
    if len(data) > _MAX_LAYOUT_DOCUMENT:
        raise LimitError(f"OCI layout: {what} is larger than {_MAX_LAYOUT_DOCUMENT} bytes")
    if descriptor is not None:
        digest = sha256_digest(data)
        if digest != descriptor.get("digest") or len(data) != descriptor.get("size"):
            raise VerificationError(f"OCI layout: {what} does not match its descriptor")
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise FormatError(f"OCI layout: {what} is not JSON") from None
    if not isinstance(document, dict):
        raise FormatError(f"OCI layout: {what} is not a JSON object")
    return document


def _platform_matches(descriptor: Mapping[str, Any], platform: str) -> bool:
    found = descriptor.get("platform")
    if not isinstance(found, dict):
        return False
    os_name, _, rest = platform.partition("/")
    architecture, _, variant = rest.partition("/")
    return (found.get("os") == os_name and found.get("architecture") == architecture
            and (not variant or found.get("variant") == variant))


def _pick_manifest(root: str, document: dict[str, Any], platform: str | None) -> dict[str, Any]:
    """The image manifest of a layout's index: through nested indexes, by platform when there is
    more than one."""
    for _ in range(_MAX_INDEX_DEPTH):
        manifests = document.get("manifests")
        if not isinstance(manifests, list) or not manifests or not all(isinstance(m, dict) for m in manifests):
            raise FormatError("OCI layout: an index has no list of manifests")
        candidates = manifests
        if len(manifests) > 1 or platform is not None:
            wanted = platform or default_platform()
            candidates = [m for m in manifests if _platform_matches(m, wanted)]
            if not candidates:
                raise NotFoundError(f"OCI layout: no manifest for platform {wanted}")
        descriptor = candidates[0]
        document = _read_document(_blob_path(root, descriptor.get("digest")), f"manifest {descriptor.get('digest')}",
                                  descriptor)
        if "layers" in document:
            return document
    raise LimitError(f"OCI layout: indexes nested more than {_MAX_INDEX_DEPTH} deep")


def _layout_layers(root: str, layer: int | str | None, platform: str | None) -> list[Layer]:
    index = _read_document(os.path.join(root, "index.json"), "index.json")
    manifest = _pick_manifest(root, index, platform)
    descriptors = manifest.get("layers")
    if not isinstance(descriptors, list) or not all(isinstance(d, dict) for d in descriptors):
        raise FormatError("OCI layout: the manifest has no list of layers")
    if layer is not None:
        position = (next((i for i, d in enumerate(descriptors) if d.get("digest") == layer), None)
                    if isinstance(layer, str) else layer + len(descriptors) if layer < 0 else layer)
        if position is None or not 0 <= position < len(descriptors):
            raise NotFoundError(f"OCI layout: the image has no layer {layer}")
        descriptors = [descriptors[position]]

    def opener(descriptor: dict[str, Any]) -> Callable[[], Layer]:
        def open_one() -> Layer:
            path = _blob_path(root, descriptor.get("digest"))
            source = FileSource.open(path)
            if source.size != descriptor.get("size"):
                source.close()
                raise VerificationError(f"OCI layout: blob {descriptor.get('digest')} does not have its size")
            annotations = descriptor.get("annotations")
            anchored = isinstance(annotations, dict) and any(key in annotations for key in _ANCHOR_ANNOTATIONS)
            return _open_layer(descriptor["digest"], source, annotations, "manifest-digest" if anchored else "none")
        return open_one

    return _open_all([opener(d) for d in descriptors])

