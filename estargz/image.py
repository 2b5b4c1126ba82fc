"""Convert whole images without a daemon: OCI layout, OCI archive or ``docker save`` archive in,
OCI layout or OCI archive out, every layer converted with :func:`estargz.convert`.

Sources are read in place (an archive must be an uncompressed tar): every blob read is checked
against its digest, and no name is resolved outside the layout or archive. Layers are converted
by a small pool of workers, each blob once however often it occurs. Configs get the new diffIDs,
manifests and indexes the new descriptors; tags are kept. The output is built in a temporary
directory next to the destination and renamed into place only when everything succeeded.
"""

from __future__ import annotations

import copy
import io
import json
import os
import posixpath
import re
import stat
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Union

from .annotations import (
    LAYER_DIGEST_ANNOTATION,
    LEGACY_MANIFEST_CHECKSUM_ANNOTATION,
    LEGACY_MANIFEST_POSITION_ANNOTATION,
    MANIFEST_CHECKSUM_ANNOTATION,
    MANIFEST_POSITION_ANNOTATION,
    TARSPLIT_POSITION_ANNOTATION,
    TOC_DIGEST_ANNOTATION,
    UNCOMPRESSED_SIZE_ANNOTATION,
)
from .compression import DECOMPRESS_ERRORS, MAGIC_SIZE, decompressed, is_compressed_archive
from .digests import SHA256, algorithm_of, digest_of, hash_digest, new_hash, sha256_digest, split_digest
from .errors import (
    EStargzError,
    FormatError,
    LimitError,
    NotFoundError,
    UnsupportedInputError,
    VerificationError,
)
from .formats import (
    FORMAT_ESTARGZ,
)
from .oci import (
    CONFIG_MEDIA_TYPES,
    IMAGE_MANIFEST_MEDIA_TYPES,
    INDEX_MEDIA_TYPES,
    LAYER_MEDIA_TYPES,
    OCI_CONFIG_MEDIA_TYPE,
    OCI_INDEX_MEDIA_TYPE,
    OCI_MANIFEST_MEDIA_TYPE,
    Platform,
    parse_platform,
    platform_matches,
    platform_text,
)
from .dialects import dialect, options_for
from .output import atomic_output, refuse_overlap, remove_path, temp_dir
from .plain import PlainResult, check_level, plain_format, write_plain
from .push import DOCKER_PREFIX, PushResult, parse_destination, push_layout
from .reader import open_blob
from .registry import Manifest, Reference, RegistryClient, parse_reference
from .source import BLOCK_SIZE, RangeFile
from .tocimage import (
    REF_NAME_ANNOTATION,
    TOC_IMAGE_CONFIG,
    TOC_IMAGE_TAG_SUFFIX,
    toc_image_manifest,
)
from .writer import BuildResult, convert


if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey

__all__ = [
    "convert_image", "ImageResult", "ConvertedManifest", "REUSED", "LAYER_OPTIONS",
    "OCI_MANIFEST_MEDIA_TYPE", "OCI_INDEX_MEDIA_TYPE", "OCI_CONFIG_MEDIA_TYPE",
    "REF_NAME_ANNOTATION", "IMAGE_NAME_ANNOTATION",
]

#: ``io.containerd.image.name``: the full image name containerd and docker put next to the tag.
IMAGE_NAME_ANNOTATION = "io.containerd.image.name"
_ATTESTATION_ANNOTATION = "vnd.docker.reference.type"
#: Layer annotations of a previous lazy-pulling conversion, dropped when a layer is converted.
_FORMAT_ANNOTATIONS = {
    TOC_DIGEST_ANNOTATION, UNCOMPRESSED_SIZE_ANNOTATION, LAYER_DIGEST_ANNOTATION,
    MANIFEST_CHECKSUM_ANNOTATION, MANIFEST_POSITION_ANNOTATION, TARSPLIT_POSITION_ANNOTATION,
    LEGACY_MANIFEST_CHECKSUM_ANNOTATION, LEGACY_MANIFEST_POSITION_ANNOTATION,
}
#: The :func:`estargz.convert` options :func:`convert_image` passes to every layer.
LAYER_OPTIONS = frozenset({"chunk_size", "compression_level", "min_chunk_size", "external_toc", "keep_diff_id",
                           "prioritized_files", "allow_missing_prioritized"})

#: ``ImageResult.layers`` value of a layer copied as it was (``reuse``).
REUSED = "reused"
#: Largest index, manifest or config read into memory.
_MAX_JSON = 16 << 20
_MAX_DEPTH = 8
_MAX_LINKS = 16

PathLike = Union[str, "os.PathLike[str]"]
Progress = Callable[[int, int], None]
#: ``layer_progress(layer digest, done, total)``: bytes of one source layer converted so far.
LayerProgress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ConvertedManifest:
    """An image manifest written to the destination."""

    digest: str
    size: int
    platform: str | None
    """``os/architecture[/variant]``, from the index entry or else the config."""
    ref_names: tuple[str, ...]
    """Tags (``org.opencontainers.image.ref.name``) of the index.json entries that reach it."""
    source_digest: str
    """The source manifest's digest (for a legacy ``docker save`` image: its config's; for a TOC
    image: that of the index.json entry it belongs to)."""


@dataclass(frozen=True)
class ImageResult:
    """What :func:`convert_image` wrote."""

    destination: str
    format: str
    manifests: tuple[ConvertedManifest, ...]
    layers: dict[str, BuildResult | PlainResult | str]
    """Source layer digest -> its :class:`BuildResult` (:class:`~estargz.plain.PlainResult` for the
    plain formats), or :data:`REUSED`."""
    toc_images: tuple[ConvertedManifest, ...] = ()
    """With ``external_toc``: the TOC image manifests (tags end in ``-esgztoc``)."""
    skipped: tuple[str, ...] = ()
    """Digests of index entries left out: attestation manifests, and with ``platforms=None``
    manifests whose blob is not in the source (partial multi-platform exports)."""
    pushed: PushResult | None = None
    """With a registry destination: what was pushed."""

    def to_json(self) -> dict[str, object]:
        """A JSON-ready summary."""
        def manifest(m: ConvertedManifest) -> dict[str, object]:
            return {"digest": m.digest, "size": m.size, "platform": m.platform, "refNames": list(m.ref_names),
                    "sourceDigest": m.source_digest}
        return {
            "destination": self.destination,
            "format": self.format,
            "manifests": [manifest(m) for m in self.manifests],
            "layers": {k: v if isinstance(v, str) else v.to_json() for k, v in self.layers.items()},
            "tocImages": [manifest(m) for m in self.toc_images],
            "skipped": list(self.skipped),
            **({"pushed": self.pushed.to_json()} if self.pushed is not None else {}),
        }


# -- sources ------------------------------------------------------------------------------------

class _Blob(RangeFile):
    """A read-only seekable window of a file, read with ``pread``; also an estargz ``Source``."""

    def __init__(self, fd: int, offset: int, size: int, owns_fd: bool) -> None:
        super().__init__(size)
        self._fd, self._offset, self._size, self._owns_fd = fd, offset, size, owns_fd

    @property
    def size(self) -> int:
        return self._size

    def view(self) -> _Blob:
        """Another window on the same bytes, at offset 0, that leaves the file open when closed."""
        return _Blob(self._fd, self._offset, self._size, owns_fd=False)

    def read_at(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self._size:
            raise FormatError(f"range [{offset}, {offset + length}) lies outside the blob ({self._size} bytes)")
        data = b""
        while len(data) < length:
            more = os.pread(self._fd, length - len(data), self._offset + offset + len(data))
            if not more:
                raise FormatError(f"short read at offset {offset + len(data)}: the blob is truncated")
            data += more
        return data

    def pread(self, size: int, offset: int) -> bytes:
        length = max(0, min(size, self._size - offset))
        return self.read_at(offset, length) if length else b""

    def close(self) -> None:
        if not self.closed and self._owns_fd:
            os.close(self._fd)
        super().close()


def _clean(name: str) -> str:
    """A relative name inside the source; FormatError if it is absolute or leaves it."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise FormatError(f"invalid file name {name!r}")
    cleaned = posixpath.normpath(name)
    if cleaned.startswith(("/", "../")) or cleaned in ("..", "."):
        raise FormatError(f"file name {name!r} points outside the image")
    return cleaned


def _blob_name(digest: object) -> str:
    """``blobs/<algorithm>/<hex>`` for a digest; FormatError for anything that is not a digest."""
    algorithm, encoded = split_digest(digest)
    return f"blobs/{algorithm}/{encoded}"


class _Store:
    """The files of a source image (layout directory or archive); names never leave it."""

    def open(self, name: str) -> _Blob:
        raise NotImplementedError

    def resolve(self, name: str) -> str:
        """The canonical name of ``name`` (symlinks followed); NotFoundError if it is absent."""
        raise NotImplementedError

    def size(self, name: str) -> int:
        """The size of a blob (without reading it where the store can tell)."""
        with self.open(name) as blob:
            return blob.size

    def exists(self, name: str) -> bool:
        try:
            self.resolve(name)
        except NotFoundError:
            return False
        return True

    def close(self) -> None:
        pass


class _DirStore(_Store):
    def __init__(self, root: str) -> None:
        self._root = os.path.realpath(root)

    def resolve(self, name: str) -> str:
        real = os.path.realpath(os.path.join(self._root, _clean(name)))
        if os.path.commonpath([real, self._root]) != self._root:
            raise FormatError(f"{name!r} points outside the image")
        if not os.path.isfile(real):
            raise NotFoundError(f"{name} is not in the image")
        return os.path.relpath(real, self._root).replace(os.sep, "/")

    def open(self, name: str) -> _Blob:
        path = os.path.join(self._root, self.resolve(name))
        fd = os.open(path, os.O_RDONLY)
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            os.close(fd)
            raise FormatError(f"{name} is not a regular file")
        return _Blob(fd, 0, status.st_size, owns_fd=True)


class _TarStore(_Store):
    """An uncompressed tar, indexed once and read in place."""

    def __init__(self, path: str) -> None:
        with open(path, "rb") as f:
            if is_compressed_archive(f.read(MAGIC_SIZE)):
                raise UnsupportedInputError(f"{path} is a compressed archive: decompress it first")
            f.seek(0)
            self._members: dict[str, tarfile.TarInfo] = {}
            try:
                with tarfile.open(fileobj=f, mode="r:") as tar:
                    for member in tar:
                        name = posixpath.normpath(member.name)
                        if not name.startswith(("/", "../")) and name not in ("..", "."):
                            self._members[name] = member
            except tarfile.TarError as exc:
                raise FormatError(f"{path} is neither an image layout nor a readable tar: {exc}") from None
        self._fd = os.open(path, os.O_RDONLY)

    def _member(self, name: str) -> tarfile.TarInfo:
        name = _clean(name)
        for _ in range(_MAX_LINKS):
            member = self._members.get(name)
            if member is None:
                raise NotFoundError(f"{name} is not in the archive")
            if member.issym():
                if member.linkname.startswith("/"):
                    raise FormatError(f"{name} links outside the archive")
                name = _clean(posixpath.join(posixpath.dirname(name), member.linkname))
            elif member.islnk():
                name = _clean(member.linkname)
            elif member.isreg():
                if member.sparse is not None:
                    raise UnsupportedInputError(f"{name} is a sparse file in the archive")
                return member
            else:
                raise FormatError(f"{name} is not a regular file in the archive")
        raise FormatError(f"{name}: too many levels of links in the archive")

    def resolve(self, name: str) -> str:
        return posixpath.normpath(self._member(name).name)

    def open(self, name: str) -> _Blob:
        member = self._member(name)
        return _Blob(self._fd, member.offset_data, member.size, owns_fd=False)

    def close(self) -> None:
        os.close(self._fd)


class _RegistryStore(_Store):
    """An image in a registry seen as an OCI layout: ``index.json`` names the referenced manifest
    (tagged with the reference's tag), manifests are fetched up front and checked against their
    digests, and every other blob is downloaded, digest-checked, to an anonymous temporary file
    when it is opened."""

    def __init__(self, ref: Reference, client_options: Mapping[str, Any]) -> None:
        self.ref = ref
        self.client = RegistryClient(ref.registry, **{"scheme": ref.scheme, **client_options})
        try:
            top = self.client.get_manifest(ref.repository, ref.reference)
            self._files: dict[str, bytes] = {}
            self._absent: set[str] = set()
            self._add_manifest(top, 0)
            entry: dict[str, Any] = {"mediaType": top.media_type, "digest": top.digest, "size": len(top.data)}
            if ref.tag and not ref.digest:
                entry["annotations"] = {REF_NAME_ANNOTATION: ref.tag}
            self._files["index.json"] = _dumps({"schemaVersion": 2, "manifests": [entry]})
        except BaseException:
            self.client.close()
            raise

    def _add_manifest(self, manifest: Manifest, depth: int) -> None:
        self._files[_blob_name(manifest.digest)] = manifest.data
        if not manifest.is_index:
            return
        if depth >= _MAX_DEPTH:
            raise LimitError(f"indexes nested more than {_MAX_DEPTH} deep")
        children = manifest.content.get("manifests")
        if not isinstance(children, list):
            raise FormatError(f"index {manifest.digest} has no manifests list")
        for number, value in enumerate(children):
            digest = _descriptor(value, f"entry {number} of index {manifest.digest}")["digest"]
            if _blob_name(digest) in self._files:
                continue
            try:
                child = self.client.get_manifest(self.ref.repository, digest)
            except NotFoundError:
                self._absent.add(_blob_name(digest))
                continue
            self._add_manifest(child, depth + 1)

    def resolve(self, name: str) -> str:
        name = _clean(name)
        if name in self._files or (name.startswith("blobs/") and name not in self._absent):
            return name
        raise NotFoundError(f"{name} is not in {self.ref}")

    def size(self, name: str) -> int:
        name = self.resolve(name)
        if name in self._files:
            return len(self._files[name])
        return int(self.client.stat_blob(self.ref.repository, _name_digest(name))["size"])

    def open(self, name: str) -> _Blob:
        name = self.resolve(name)
        with tempfile.TemporaryFile() as spool:
            if name in self._files:
                spool.write(self._files[name])
            else:
                with self.client.blob(self.ref.repository, _name_digest(name)) as source:
                    source.download(spool)
            spool.flush()
            fd = os.dup(spool.fileno())
        return _Blob(fd, 0, os.fstat(fd).st_size, owns_fd=True)

    def close(self) -> None:
        self.client.close()


def _name_digest(name: str) -> str:
    """The digest of a ``blobs/<algorithm>/<hex>`` name."""
    _, algorithm, encoded = name.split("/")
    return f"{algorithm}:{encoded}"


def _registry_reference(value: object) -> Reference | None:
    """The registry reference ``value`` names (``docker://…``, or ``host/repo…`` that is not a
    local path), or None for a local path."""
    if not isinstance(value, str):
        return None
    if value.startswith(DOCKER_PREFIX):
        return parse_destination(value)
    host, slash, _ = value.partition("/")
    if not slash or os.path.lexists(value) or os.path.lexists(host) \
            or not ("." in host or ":" in host or host == "localhost"):
        return None
    try:
        return parse_reference(value)
    except ValueError:
        return None


def _open_store(source: str) -> _Store:
    if os.path.isdir(source):
        return _DirStore(source)
    if os.path.isfile(source):
        return _TarStore(source)
    raise FileNotFoundError(f"no such image layout or archive: {source}")


def _hash_blob(blob: _Blob, algorithm: str = SHA256) -> str:
    hasher = new_hash(algorithm)
    for offset in range(0, blob.size, BLOCK_SIZE):
        hasher.update(blob.read_at(offset, min(BLOCK_SIZE, blob.size - offset)))
    return hash_digest(hasher)


def _check(blob: _Blob, name: str, digest: str | None, size: int | None) -> str:
    """Hash ``blob`` (with ``digest``'s algorithm) and compare; return its digest."""
    if size is not None and blob.size != size:
        raise VerificationError(f"{name}: {blob.size} bytes, the descriptor says {size}")
    actual = _hash_blob(blob, algorithm_of(digest))
    if digest is not None and actual != digest:
        raise VerificationError(f"{name}: digest is {actual}, expected {digest}")
    return actual


def _diff_id(blob: _Blob) -> str:
    """sha256 of the decompressed layer (gzip, zstd or plain)."""
    head = blob.read_at(0, min(MAGIC_SIZE, blob.size))
    stream = decompressed(io.BufferedReader(blob.view(), BLOCK_SIZE), head)
    hasher = new_hash()
    try:
        while block := stream.read(BLOCK_SIZE):
            hasher.update(block)
    except DECOMPRESS_ERRORS as exc:
        raise FormatError(f"cannot decompress the layer: {exc}") from None
    return hash_digest(hasher)


def _loads(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise FormatError(f"{what} is not JSON: {exc}") from None


def _dumps(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


# -- the source model ---------------------------------------------------------------------------

@dataclass
class _Layer:
    """A source layer blob, converted once however many manifests use it."""

    name: str
    digest: str | None
    size: int | None
    media_type: str
    """The OCI media type it stands for; "" when unknown (legacy ``docker save``)."""
    annotations: dict[str, str]
    diff_id: str | None = None
    """Legacy ``docker save``: the config's diffID, which is what identifies the blob."""


@dataclass
class _Image:
    source_digest: str
    raw: bytes | None
    """The source manifest (None for a legacy ``docker save`` image)."""
    manifest: dict[str, Any]
    config_raw: bytes
    config: dict[str, Any]
    layers: list[_Layer]
    descriptors: list[dict[str, Any]]
    platform: dict[str, Any] | None


@dataclass
class _Index:
    source_digest: str
    raw: bytes
    index: dict[str, Any]
    children: list[tuple[dict[str, Any], _Image | _Index]]


@dataclass
class _Root:
    descriptor: dict[str, Any]
    node: _Image | _Index


@dataclass
class _Outcome:
    source_digest: str
    result: BuildResult | PlainResult | None
    """None when the layer was copied as it was."""
    layer: _Layer


def _platform_string(platform: dict[str, Any] | None) -> str | None:
    if not platform or not platform.get("os") or not platform.get("architecture"):
        return None
    return platform_text(platform)


def _parse_platforms(platforms: Sequence[str] | None) -> list[Platform] | None:
    if platforms is None:
        return None
    return [parse_platform(spec) for spec in ([platforms] if isinstance(platforms, str) else platforms)]


def _config_platform(config: dict[str, Any]) -> dict[str, Any] | None:
    platform = {k: config[k] for k in ("os", "architecture", "variant") if isinstance(config.get(k), str)}
    return platform or None


def _descriptor(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FormatError(f"{what} is not a descriptor")
    _blob_name(value.get("digest"))
    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise FormatError(f"{what} has no valid size")
    annotations = value.get("annotations", {})
    if not isinstance(annotations, dict) or not all(isinstance(v, str) for v in annotations.values()):
        raise FormatError(f"{what} has invalid annotations")
    if not isinstance(value.get("platform", {}), dict):
        raise FormatError(f"{what} has an invalid platform")
    _media_type(value, what)
    return value


def _media_type(document: dict[str, Any], what: str) -> str:
    """The ``mediaType`` of a descriptor or document ("" when absent); FormatError if not a string."""
    media_type = document.get("mediaType", "")
    if not isinstance(media_type, str):
        raise FormatError(f"{what} has an invalid mediaType")
    return media_type


def _tag(repo_tag: str) -> str:
    """The tag of ``name:tag`` (``latest`` when there is none)."""
    last = repo_tag.rsplit("/", 1)[-1]
    return last.rsplit(":", 1)[1] if ":" in last else "latest"


class _Progress:
    """Sums the layers' progress, weighted by source blob size; stops workers once cancelled."""

    def __init__(self, callback: Progress | None, total: int,
                 layer_callback: LayerProgress | None = None) -> None:
        self._callback, self._total, self._layer_callback = callback, total, layer_callback
        self._done: dict[str, int] = {}
        self._lock = threading.Lock()
        self.cancelled = threading.Event()

    def update(self, key: str, size: int, fraction: float) -> None:
        if self.cancelled.is_set():
            raise _Cancelled()
        if self._callback is None and self._layer_callback is None:
            return
        with self._lock:  # one call at a time, so ``done`` never goes backwards
            self._done[key] = int(size * min(1.0, fraction))
            if self._layer_callback is not None:
                self._layer_callback(key, self._done[key], size)
            if self._callback is not None:
                self._callback(sum(self._done.values()), self._total)

    def for_layer(self, key: str, size: int) -> Progress:
        return lambda done, total: self.update(key, size, done / total if total else 1.0)


class _Cancelled(Exception):
    """Raised inside a worker once another layer failed."""


# -- conversion ---------------------------------------------------------------------------------

class _Converter:
    def __init__(self, store: _Store, build: str, *, format: str, platforms: list[Platform] | None,
                 reuse: bool, threads: int, layer_jobs: int, progress: Progress | None,
                 layer_progress: LayerProgress | None, layer_options: dict[str, Any]) -> None:
        self.store, self.build, self.format = store, build, format
        self.platforms, self.reuse, self.threads, self.layer_jobs = platforms, reuse, threads, layer_jobs
        self.progress_callback = progress
        self.layer_progress = layer_progress
        self.options = layer_options
        self.external_toc = bool(layer_options.get("external_toc"))
        self.plain = plain_format(format)
        self.dialect = None if self.plain else dialect(format)
        self.lossless = self.dialect is None or self.dialect.lossless(options_for(self.dialect, **layer_options))
        self.layers: dict[str, _Layer] = {}
        self.nodes: dict[str, _Image | _Index] = {}
        self.dropped: set[str] = set()
        """Digests of manifests and indexes that were read and left out (nothing kept below)."""
        self.tagged: set[tuple[int, tuple[str, ...]]] = set()
        self.skipped: list[str] = []
        self.matched: set[Platform] = set()
        self.outcomes: dict[str, _Outcome] = {}
        self.emitted: dict[int, dict[str, Any]] = {}
        self.manifests: dict[str, ConvertedManifest] = {}
        os.makedirs(os.path.join(build, "blobs", "sha256"))

    # -- reading -------------------------------------------------------------------------
    def read_json(self, name: str, digest: str | None = None, size: int | None = None) -> tuple[bytes, Any]:
        with self.store.open(name) as blob:
            if blob.size > _MAX_JSON:
                raise LimitError(f"{name} holds {blob.size} bytes, more than the {_MAX_JSON}-byte limit")
            data = blob.read_at(0, blob.size)
        if size is not None and len(data) != size:
            raise VerificationError(f"{name}: {len(data)} bytes, the descriptor says {size}")
        if digest is not None:
            if digest_of(data, algorithm_of(digest)) != digest:
                raise VerificationError(f"{name}: digest is not {digest}")
        return data, _loads(data, name)

    def load(self) -> tuple[dict[str, Any], list[_Root]]:
        """The top-level index (without its manifests) and its entries, per the source kind."""
        if self.store.exists("index.json"):
            return self.load_layout()
        if self.store.exists("manifest.json"):
            return {"schemaVersion": 2, "mediaType": OCI_INDEX_MEDIA_TYPE}, self.load_docker()
        raise FormatError("the source has neither index.json (OCI layout) nor manifest.json (docker save)")

    def load_layout(self) -> tuple[dict[str, Any], list[_Root]]:
        if self.store.exists("oci-layout"):
            _, layout = self.read_json("oci-layout")
            if not isinstance(layout, dict) or layout.get("imageLayoutVersion") != "1.0.0":
                raise UnsupportedInputError(f"unsupported OCI layout version in oci-layout: {layout!r}")
        _, index = self.read_json("index.json")
        if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
            raise FormatError("index.json has no manifests list")
        roots = []
        for number, value in enumerate(index["manifests"]):
            descriptor = _descriptor(value, f"index.json entry {number}")
            node = self.load_node(descriptor, 0, top=True)
            if node is not None:
                roots.append(_Root(descriptor, node))
        return index, roots

    def load_node(self, descriptor: dict[str, Any], depth: int, top: bool = False) -> _Image | _Index | None:
        digest = descriptor["digest"]
        if depth > _MAX_DEPTH:
            raise LimitError(f"indexes nested more than {_MAX_DEPTH} deep")
        name = _blob_name(digest)
        if self.left_out(descriptor, name, top):
            return None
        if digest in self.nodes:
            return self.nodes[digest]
        if digest in self.dropped:
            return None
        raw, document = self.read_json(name, digest, descriptor["size"])
        if not isinstance(document, dict):
            raise FormatError(f"{digest} is not a JSON object")
        media_type = descriptor.get("mediaType") or _media_type(document, digest) or (
            OCI_INDEX_MEDIA_TYPE if "manifests" in document else OCI_MANIFEST_MEDIA_TYPE)
        node: _Image | _Index | None
        if media_type in INDEX_MEDIA_TYPES:
            node = self.load_index(digest, raw, document, depth)
        elif media_type in IMAGE_MANIFEST_MEDIA_TYPES:
            node = self.load_image(digest, raw, document, descriptor.get("platform"))
        else:
            raise UnsupportedInputError(f"{digest}: unsupported manifest media type {media_type!r}")
        if node is None:
            self.dropped.add(digest)
        else:
            self.nodes[digest] = node
        return node

    def left_out(self, descriptor: dict[str, Any], name: str, top: bool) -> bool:
        """Whether an index entry is left out: an attestation, another platform than the ones
        wanted, or (converting every platform) a manifest the source does not hold."""
        if (descriptor.get("annotations") or {}).get(_ATTESTATION_ANNOTATION):
            self.skipped.append(descriptor["digest"])
            return True
        if top:
            return False
        if self.platforms is not None:
            return "platform" in descriptor and not self.wanted(descriptor.get("platform"))
        if not self.store.exists(name):
            self.skipped.append(descriptor["digest"])
            return True
        return False

    def load_index(self, digest: str, raw: bytes, document: dict[str, Any], depth: int) -> _Index | None:
        if not isinstance(document.get("manifests"), list):
            raise FormatError(f"index {digest} has no manifests list")
        children = []
        for number, value in enumerate(document["manifests"]):
            child_descriptor = _descriptor(value, f"entry {number} of index {digest}")
            child = self.load_node(child_descriptor, depth + 1)
            if child is not None:
                children.append((child_descriptor, child))
        return _Index(digest, raw, document, children) if children else None

    def wanted(self, platform: dict[str, Any] | None) -> bool:
        if self.platforms is None:
            return True
        hits = {p for p in self.platforms if platform_matches(platform, p)}
        self.matched |= hits
        return bool(hits)

    def load_image(self, digest: str, raw: bytes | None, manifest: dict[str, Any],
                   platform: dict[str, Any] | None) -> _Image | None:
        if manifest.get("schemaVersion") != 2:
            raise UnsupportedInputError(f"manifest {digest}: only schema version 2 manifests are supported")
        config_descriptor = _descriptor(manifest.get("config"), f"config of manifest {digest}")
        config_type = _media_type(config_descriptor, f"config of manifest {digest}") or OCI_CONFIG_MEDIA_TYPE
        if config_type not in CONFIG_MEDIA_TYPES:
            raise UnsupportedInputError(f"manifest {digest}: config media type {config_type!r} is not an image's")
        config_raw, config = self.read_json(_blob_name(config_descriptor["digest"]), config_descriptor["digest"],
                                            config_descriptor["size"])
        if not self.wanted(platform or _config_platform(config if isinstance(config, dict) else {})):
            return None
        if not isinstance(manifest.get("layers"), list):
            raise FormatError(f"manifest {digest} has no layers list")
        descriptors = [_descriptor(v, f"layer {n} of manifest {digest}") for n, v in enumerate(manifest["layers"])]
        layers = []
        for number, descriptor in enumerate(descriptors):
            media_type = _media_type(descriptor, f"layer {number} of manifest {digest}")
            if media_type not in LAYER_MEDIA_TYPES:
                raise UnsupportedInputError(f"layer {number} of manifest {digest}: unsupported media type "
                                            f"{media_type!r}")
            name = self.store.resolve(_blob_name(descriptor["digest"]))
            layers.append(self.layers.setdefault(name, _Layer(
                name, descriptor["digest"], descriptor["size"], LAYER_MEDIA_TYPES[media_type],
                dict(descriptor.get("annotations") or {}))))
        return _Image(digest, raw, manifest, config_raw, self.checked_config(config, len(layers), digest),
                      layers, descriptors, platform or _config_platform(config))

    @staticmethod
    def checked_config(config: object, layers: int, where: str) -> dict[str, Any]:
        rootfs = config.get("rootfs") if isinstance(config, dict) else None
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
            raise FormatError(f"config of {where} has no rootfs.diff_ids list")
        if len(diff_ids) != layers:
            raise FormatError(f"config of {where} lists {len(diff_ids)} diffIDs for {layers} layers")
        return config  # type: ignore[return-value]

    def load_docker(self) -> list[_Root]:
        _, entries = self.read_json("manifest.json")
        if not isinstance(entries, list):
            raise FormatError("manifest.json is not a list")
        roots = []
        for number, entry in enumerate(entries):
            if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str) \
                    or not isinstance(entry.get("Layers"), list):
                raise FormatError(f"manifest.json entry {number} has no Config and Layers")
            config_name = _clean(entry["Config"])
            named = re.fullmatch(r"(?:.*/)?(?:blobs/sha256/)?([0-9a-f]{64})(?:\.json)?", config_name)
            config_raw, config = self.read_json(config_name, f"sha256:{named.group(1)}" if named else None)
            config_digest = sha256_digest(config_raw)
            config = self.checked_config(config, len(entry["Layers"]), f"manifest.json entry {number}")
            if config_digest in self.nodes or not self.wanted(_config_platform(config)):
                image = self.nodes.get(config_digest)
            else:
                layers = []
                for index, layer_name in enumerate(entry["Layers"]):
                    name = self.store.resolve(_clean(layer_name))
                    digest = name.split("/")
                    by_digest = f"sha256:{digest[2]}" if len(digest) == 3 and digest[:2] == ["blobs", "sha256"] \
                        and re.fullmatch(r"[0-9a-f]{64}", digest[2]) else None
                    layers.append(self.layers.setdefault(name, _Layer(
                        name, by_digest, None, "", {}, diff_id=config["rootfs"]["diff_ids"][index])))
                manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST_MEDIA_TYPE,
                            "config": {"mediaType": OCI_CONFIG_MEDIA_TYPE, "digest": config_digest,
                                       "size": len(config_raw)},
                            "layers": []}
                image = _Image(config_digest, None, manifest, config_raw, config, layers,
                               [{} for _ in layers], _config_platform(config))
                self.nodes[config_digest] = image
            if image is None:
                continue
            tags = entry.get("RepoTags") or []
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                raise FormatError(f"manifest.json entry {number}: RepoTags is not a list of names")
            base = {"mediaType": OCI_MANIFEST_MEDIA_TYPE, "digest": config_digest, "size": 0}
            for tag in tags:
                roots.append(_Root({**base, "annotations": {IMAGE_NAME_ANNOTATION: tag,
                                                            REF_NAME_ANNOTATION: _tag(tag)}}, image))
            if not tags:
                roots.append(_Root(base, image))
        return roots

    # -- layers --------------------------------------------------------------------------
    def convert_layers(self) -> None:
        sizes = {name: self.store.size(name) for name in self.layers}
        tracker = _Progress(self.progress_callback, sum(sizes.values()), self.layer_progress)
        pool = ThreadPoolExecutor(self.layer_jobs, thread_name_prefix="estargz-layer")
        futures: list[Future[_Outcome]] = []
        try:
            for number, layer in enumerate(self.layers.values()):
                futures.append(pool.submit(self.convert_layer, number, layer, tracker, sizes[layer.name]))
            wait(futures, return_when=FIRST_EXCEPTION)
            for future in futures:
                if future.done() and future.exception() is not None:
                    raise future.exception()  # type: ignore[misc]
            for future in futures:
                outcome = future.result()
                self.outcomes[outcome.layer.name] = outcome
        except BaseException:
            tracker.cancelled.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def convert_layer(self, number: int, layer: _Layer, tracker: _Progress, size: int) -> _Outcome:
        with self.store.open(layer.name) as blob:
            tracker.update(layer.name, size, 0.0)
            digest = _check(blob, layer.name, layer.digest, layer.size)
            if layer.diff_id is not None and digest != layer.diff_id and _diff_id(blob) != layer.diff_id:
                raise VerificationError(f"{layer.name}: the layer's diffID is not {layer.diff_id}")
            if self.in_plain_target_format(layer) or (self.reuse and self.reusable(blob, layer)):
                self.copy_blob(blob, digest)
                tracker.update(layer.name, size, 1.0)
                return _Outcome(digest, None, layer)
            temp = os.path.join(self.build, "blobs", "sha256", f".layer-{number}")
            source = io.BufferedReader(blob.view(), BLOCK_SIZE)
            progress = tracker.for_layer(layer.name, size)
            result: BuildResult | PlainResult
            if self.plain is not None:
                with atomic_output(temp) as out:
                    result = write_plain(source, out, format=self.format, threads=self.threads, progress=progress,
                                         total=blob.size, compression_level=self.options.get("compression_level"))
            else:
                result = convert(source, temp, format=self.format, threads=self.threads, progress=progress,
                                 **self.options)
        os.replace(temp, os.path.join(self.build, _blob_name(result.blob_digest)))
        tracker.update(layer.name, size, 1.0)
        return _Outcome(digest, result, layer)

    def in_plain_target_format(self, layer: _Layer) -> bool:
        """Whether the target format is plain and the layer already is in it: its media type,
        and no annotations of a lazy-pulling format (whose TOC a plain layer does not keep)."""
        return self.plain is not None and layer.media_type == self.plain.media_type \
            and not _FORMAT_ANNOTATIONS & layer.annotations.keys()

    def announced_in_target_format(self, layer: _Layer) -> bool:
        """Whether the layer's descriptor says it is in the target format (media type and the
        annotations that identify the format); its TOC still has to agree."""
        return self.dialect is not None and not self.external_toc \
            and layer.media_type == self.dialect.media_type \
            and any(key in layer.annotations for key in self.dialect.identifying_annotations)

    def reusable(self, blob: _Blob, layer: _Layer) -> bool:
        """Whether the layer already is in the target format, with the annotations that say so."""
        if not self.announced_in_target_format(layer):
            return False
        try:
            with open_blob(blob, annotations=layer.annotations) as reader:
                return reader.format == self.format
        except EStargzError:
            return False

    def copy_blob(self, blob: _Blob, digest: str) -> None:
        path = os.path.join(self.build, _blob_name(digest))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        hasher = new_hash(algorithm_of(digest))
        with atomic_output(path) as out:
            for offset in range(0, blob.size, BLOCK_SIZE):
                data = blob.read_at(offset, min(BLOCK_SIZE, blob.size - offset))
                hasher.update(data)
                out.write(data)
            if hash_digest(hasher) != digest:
                raise VerificationError(f"blob {digest} changed while it was copied")

    # -- writing -------------------------------------------------------------------------
    def put(self, data: bytes) -> str:
        digest = sha256_digest(data)
        with open(os.path.join(self.build, _blob_name(digest)), "wb") as f:
            f.write(data)
        return digest

    def emit(self, node: _Image | _Index, refs: tuple[str, ...]) -> dict[str, Any]:
        """Write ``node`` (and what it refers to); return its new descriptor."""
        if id(node) not in self.emitted:
            self.emitted[id(node)] = self.emit_image(node) if isinstance(node, _Image) else self.emit_index(node, refs)
        descriptor = self.emitted[id(node)]
        if (id(node), refs) in self.tagged:
            return descriptor
        self.tagged.add((id(node), refs))
        if isinstance(node, _Image):
            known = self.manifests[descriptor["digest"]]
            names = known.ref_names + tuple(r for r in refs if r not in known.ref_names)
            self.manifests[descriptor["digest"]] = ConvertedManifest(
                known.digest, known.size, known.platform, names, known.source_digest)
        else:
            for _, child in node.children:
                self.emit(child, refs)
        return descriptor

    def emit_image(self, image: _Image) -> dict[str, Any]:
        config = copy.deepcopy(image.config)
        diff_ids = config["rootfs"]["diff_ids"]
        layers = []
        for number, (layer, source) in enumerate(zip(image.layers, image.descriptors, strict=True)):
            outcome = self.outcomes[layer.name]
            result = outcome.result
            if result is None:  # reused: with the annotations it was validated with
                checked = {k: v for k, v in layer.annotations.items() if k in _FORMAT_ANNOTATIONS}
                annotations = {**(source.get("annotations") or {}), **checked}
                layers.append({**source, "mediaType": layer.media_type, **({"annotations": annotations}
                                                                           if annotations else {})})
                continue
            if self.lossless and result.diff_id != diff_ids[number]:
                raise VerificationError(f"layer {number} of {image.source_digest}: diffID is {result.diff_id} "
                                        f"after a lossless conversion, the config says {diff_ids[number]}")
            diff_ids[number] = result.diff_id
            annotations = {k: v for k, v in (source.get("annotations") or {}).items() if k not in _FORMAT_ANNOTATIONS}
            merged = {**annotations, **result.annotations}
            layers.append({"mediaType": result.media_type, "digest": result.blob_digest, "size": result.blob_size,
                           **({"annotations": merged} if merged else {})})
        config_raw = image.config_raw if config == image.config else _dumps(config)
        config_digest = self.put(config_raw)
        manifest = dict(image.manifest)
        manifest["mediaType"] = OCI_MANIFEST_MEDIA_TYPE
        manifest["config"] = {**manifest["config"], "mediaType": OCI_CONFIG_MEDIA_TYPE, "digest": config_digest,
                              "size": len(config_raw)}
        manifest["layers"] = layers
        raw = image.raw if image.raw is not None and manifest == image.manifest else _dumps(manifest)
        digest = self.put(raw)
        self.manifests.setdefault(digest, ConvertedManifest(
            digest, len(raw), _platform_string(image.platform), (), image.source_digest))
        return {"mediaType": OCI_MANIFEST_MEDIA_TYPE, "digest": digest, "size": len(raw)}

    def emit_index(self, node: _Index, refs: tuple[str, ...]) -> dict[str, Any]:
        manifests = [{**source, **self.emit(child, refs)} for source, child in node.children]
        index = {**node.index, "mediaType": OCI_INDEX_MEDIA_TYPE, "manifests": manifests}
        raw = node.raw if index == node.index else _dumps(index)
        return {"mediaType": OCI_INDEX_MEDIA_TYPE, "digest": self.put(raw), "size": len(raw)}

    def results_below(self, node: _Image | _Index) -> Iterator[BuildResult]:
        """The external-TOC results of the layers below ``node``, each image visited once."""
        pending, seen = [node], {id(node)}
        while pending:
            current = pending.pop()
            if isinstance(current, _Index):
                for _, child in current.children:
                    if id(child) not in seen:
                        seen.add(id(child))
                        pending.append(child)
                continue
            for layer in current.layers:
                result = self.outcomes[layer.name].result
                if result is not None and result.external_toc is not None:
                    yield result

    def toc_image(self, node: _Image | _Index) -> dict[str, Any] | None:
        """Write the TOC image of every layer below ``node``; return its descriptor."""
        results = list({r.blob_digest: r for r in self.results_below(node)}.values())
        if not results:
            return None
        manifest = toc_image_manifest(results)
        self.put(TOC_IMAGE_CONFIG)
        for result in results:
            self.put(result.external_toc)  # type: ignore[arg-type]
        return {"mediaType": OCI_MANIFEST_MEDIA_TYPE, "digest": self.put(manifest), "size": len(manifest)}

    def write(self, index: dict[str, Any],
              roots: list[_Root]) -> tuple[list[ConvertedManifest], list[ConvertedManifest]]:
        """Write the configs, manifests, indexes, TOC images and index.json; return the manifests
        and the TOC image manifests."""
        entries: list[dict[str, Any]] = []
        toc_entries: list[tuple[dict[str, Any], str]] = []
        toc_images: dict[int, dict[str, Any] | None] = {}
        for root in roots:
            annotations = root.descriptor.get("annotations") or {}
            ref = annotations.get(REF_NAME_ANNOTATION)
            refs = (ref,) if isinstance(ref, str) else ()
            new = self.emit(root.node, refs)
            entry = {k: v for k, v in root.descriptor.items() if k not in ("mediaType", "digest", "size")}
            if isinstance(root.node, _Image) and "platform" not in entry and root.node.raw is None:
                platform = root.node.platform
                if platform:
                    entry["platform"] = platform
            entries.append({**new, **entry})
            if not self.external_toc:
                continue
            key = id(root.node)
            if key not in toc_images:
                toc_images[key] = self.toc_image(root.node)
            toc = toc_images[key]
            if toc is None or (not refs and any(e["digest"] == toc["digest"] for e, _ in toc_entries)):
                continue
            toc_annotations = {k: v + TOC_IMAGE_TAG_SUFFIX for k, v in annotations.items()
                               if k in (REF_NAME_ANNOTATION, IMAGE_NAME_ANNOTATION) and isinstance(v, str)}
            toc_entries.append(({**toc, **({"annotations": toc_annotations} if toc_annotations else {})},
                                root.node.source_digest))
        out = {**{k: v for k, v in index.items() if k != "manifests"}, "schemaVersion": 2,
               "mediaType": OCI_INDEX_MEDIA_TYPE, "manifests": entries + [e for e, _ in toc_entries]}
        with open(os.path.join(self.build, "index.json"), "wb") as f:
            f.write(_dumps(out))
        with open(os.path.join(self.build, "oci-layout"), "wb") as f:
            f.write(_dumps({"imageLayoutVersion": "1.0.0"}))
        tocs = [ConvertedManifest(e["digest"], e["size"], None,
                                  tuple(v for k, v in (e.get("annotations") or {}).items() if k == REF_NAME_ANNOTATION),
                                  source) for e, source in toc_entries]
        return list(self.manifests.values()), tocs


# -- destination --------------------------------------------------------------------------------

def _occupied(path: str) -> bool:
    if os.path.isdir(path) and not os.path.islink(path):
        return bool(os.listdir(path))
    return os.path.lexists(path) and (os.path.islink(path) or os.path.getsize(path) > 0)


def _install(built: str, destination: str, overwrite: bool) -> None:
    """Rename ``built`` to ``destination``, moving what was there aside first and removing it last."""
    if not os.path.lexists(destination):
        os.rename(built, destination)
        return
    if not overwrite and _occupied(destination):
        raise FileExistsError(f"{destination} exists and is not empty (pass overwrite=True)")
    aside = built + ".old"
    os.rename(destination, aside)
    try:
        os.rename(built, destination)
    except BaseException:
        os.rename(aside, destination)
        raise
    remove_path(aside)


def _write_archive(layout: str, path: str) -> None:
    """An OCI archive: the layout as an uncompressed tar, entries sorted, owner and times zeroed."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for directory, dirs, files in os.walk(layout):
            dirs.sort()
            for name in sorted(dirs) + sorted(files):
                full = os.path.join(directory, name)
                info = tarfile.TarInfo(os.path.relpath(full, layout).replace(os.sep, "/"))
                info.mtime = 0
                if name in dirs:
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
                    continue
                info.size, info.mode = os.path.getsize(full), 0o644
                with open(full, "rb") as f:
                    tar.addfile(info, f)


def _target(source: PathLike | None, destination: PathLike, overwrite: bool) -> str:
    """The absolute destination path, once it is known to be a place the conversion may write
    (and, for a local ``source``, not one that holds it)."""
    target = os.path.abspath(os.fspath(destination))
    parent = os.path.dirname(target)
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"no such directory: {parent}")
    if source is not None:
        refuse_overlap(source, target)
    if not overwrite and _occupied(target):
        raise FileExistsError(f"{target} exists and is not empty (pass overwrite=True)")
    return target


def _check_format(format: str, layer_options: Mapping[str, Any]) -> None:
    """Refuse (ValueError) an unknown format, and options a plain format does not take."""
    chosen = plain_format(format)
    if chosen is None:
        dialect(format)
        return
    given = sorted(k for k, v in layer_options.items() if k != "compression_level" and v)
    if given:
        raise ValueError(f"the {format} format keeps no TOC and takes no {', '.join(given)}")
    check_level(chosen, layer_options.get("compression_level"))


def convert_image(
    source: PathLike,
    destination: PathLike,
    *,
    format: str = FORMAT_ESTARGZ,
    platforms: Sequence[str] | None = None,
    reuse: bool = False,
    threads: int | None = None,
    layer_jobs: int = 2,
    progress: Progress | None = None,
    layer_progress: LayerProgress | None = None,
    archive: bool | None = None,
    overwrite: bool = False,
    registry_options: Mapping[str, Any] | None = None,
    insecure: bool = False,
    sign_with: EllipticCurvePrivateKey | None = None,
    **layer_options: Any,
) -> ImageResult:
    """Convert every layer of an image to ``format`` and write the image as an OCI layout, or
    push it to a registry.

    ``format`` is a lazy-pulling format (``estargz.FORMATS``) or a plain one, as nerdctl's
    ``--zstd`` and ``--uncompress`` write: :data:`~estargz.plain.FORMAT_ZSTD` (zstd at
    ``compression_level``, default 3) or :data:`~estargz.plain.FORMAT_UNCOMPRESSED`. Plain formats
    keep the tar bytes, so the diffIDs do not change; layers already in the plain format (and
    without the annotations of a lazy-pulling format) are copied as they are.

    ``source`` is an OCI image layout directory, an OCI archive (an uncompressed tar of a layout),
    or a ``docker save`` archive (legacy, or the newer layout with manifest.json), as a tar or a
    directory. ``destination`` is an OCI layout directory, or an OCI archive when ``archive`` is
    true (default: when the name ends in ``.tar``). It must not exist, or be empty; with
    ``overwrite`` whatever is there is replaced, only once the conversion succeeded. A failed or
    interrupted conversion leaves the destination as it was.

    ``platforms`` (``["linux/amd64", "linux/arm/v7"]``) keeps only those manifests of each index;
    None keeps all of them (index entries whose manifest is absent from the source, as in partial
    multi-platform exports, are skipped and listed in ``ImageResult.skipped``). With ``reuse``,
    layers already in ``format`` (opened with their annotations) are copied as they are, except
    with ``external_toc``. ``layer_jobs`` layers are converted at once, each with ``threads``
    compression threads (default: the CPUs shared among the jobs). ``layer_progress(digest, done,
    total)`` follows each layer (from worker threads, one call at a time). ``progress(done, total)``
    counts source layer bytes; it is called from worker threads.

    ``source`` may be a registry reference (``host/repo:tag``, ``host/repo@sha256:…``, or with
    ``docker://``) and ``destination`` a registry reference ``host/repo:tag``: blobs are
    downloaded (digest-checked), the image is built in a temporary layout and pushed with
    :func:`estargz.push.push_layout` (``ImageResult.pushed``), signed with ``sign_with`` (an ECDSA
    private key) if given. ``registry_options`` go to :class:`~estargz.RegistryClient`; ``insecure``
    allows plain HTTP and unverified TLS for both registries (see :class:`~estargz.RegistryClient`).

    ``layer_options`` go to :func:`estargz.convert` for every layer: ``chunk_size``,
    ``compression_level``, ``min_chunk_size``, ``external_toc``, ``keep_diff_id``,
    ``prioritized_files`` and ``allow_missing_prioritized`` (the same paths for every layer, as
    nerdctl applies a workload record). With
    ``external_toc`` the TOC image of each index.json entry is added, tagged with the entry's
    tag plus ``-esgztoc``. Errors: :class:`FormatError` for a malformed source (or a name that
    points outside it), :class:`VerificationError` for a blob that does not match its digest,
    :class:`UnsupportedInputError` for layer or manifest kinds that cannot be converted,
    :class:`NotFoundError` for a missing blob or a platform that no manifest has.
    """
    unknown = set(layer_options) - LAYER_OPTIONS
    if unknown:
        raise TypeError(f"convert_image() got unexpected layer options: {', '.join(sorted(unknown))}")
    _check_format(format, layer_options)
    if layer_jobs < 1:
        raise ValueError("layer_jobs must be at least 1")
    wanted = _parse_platforms(platforms)
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // layer_jobs)
    registry_options = {**(registry_options or {}), **({"insecure": True} if insecure else {})}
    source_ref = _registry_reference(source)
    destination_ref = _registry_reference(destination)
    if sign_with is not None and destination_ref is None:
        raise ValueError("sign_with needs a registry destination")
    if destination_ref is not None:
        return _convert_to_registry(source, destination_ref, source_ref, registry_options or {}, sign_with,
                                    format=format,
                                    platforms=platforms, reuse=reuse, threads=threads, layer_jobs=layer_jobs,
                                    progress=progress, layer_progress=layer_progress, **layer_options)
    target = _target(None if source_ref else source, destination, overwrite)
    if archive is None:
        archive = target.endswith(".tar")
    store = _RegistryStore(source_ref, registry_options or {}) if source_ref else _open_store(os.fspath(source))
    try:
        with temp_dir(target) as build:
            layout = os.path.join(build, "layout") if archive else build
            converter = (_RemoteConverter if source_ref else _Converter)(
                store, layout, format=format, platforms=wanted, reuse=reuse, threads=threads, layer_jobs=layer_jobs,
                progress=progress, layer_progress=layer_progress, layer_options=layer_options)
            index, roots = converter.load()
            if wanted is not None and (missing := [p for p in wanted if p not in converter.matched]):
                raise NotFoundError("no manifest for platform " + ", ".join("/".join(filter(None, p)) for p in missing))
            if not roots:
                raise NotFoundError("the source holds no image to convert")
            converter.convert_layers()
            manifests, toc_images = converter.write(index, roots)
            if archive:
                _write_archive(layout, os.path.join(build, "image.tar"))
                _install(os.path.join(build, "image.tar"), target, overwrite)
            else:
                _install(build, target, overwrite)
    finally:
        store.close()
    layers = {o.source_digest: (o.result if o.result is not None else REUSED) for o in converter.outcomes.values()}
    return ImageResult(target, format, tuple(manifests), layers, tuple(toc_images), tuple(converter.skipped))


class _RemoteConverter(_Converter):
    """For a registry source: with ``reuse``, a layer already in the target format is recognised
    by range reads (footer and TOC, the TOC checked against the annotation of its digest-checked
    manifest) and not downloaded; it is not written to the layout either (see
    :func:`_place_reused`)."""

    store: _RegistryStore

    def convert_layer(self, number: int, layer: _Layer, tracker: _Progress, size: int) -> _Outcome:
        if self.reuse and layer.digest is not None and self.reusable_remotely(layer):
            tracker.update(layer.name, size, 1.0)
            return _Outcome(layer.digest, None, layer)
        return super().convert_layer(number, layer, tracker, size)

    def reusable_remotely(self, layer: _Layer) -> bool:
        if not self.announced_in_target_format(layer):
            return False
        try:
            with self.store.client.blob(self.store.ref.repository, layer.digest or "", layer.size) as source, \
                    open_blob(source, annotations=layer.annotations) as reader:
                return reader.format == self.format
        except EStargzError:
            return False


def _place_reused(build: str, result: ImageResult, source: Reference, destination: Reference,
                  registry_options: Mapping[str, Any]) -> None:
    """Layers reused without a download: fine when the destination has them or mounts them from
    the source repository (same registry); otherwise they are downloaded into the layout."""
    reused = [d for d, outcome in result.layers.items() if outcome == REUSED
              and not os.path.exists(os.path.join(build, _blob_name(d)))]
    if not reused:
        return
    same = source.registry == destination.registry
    with RegistryClient(destination.registry, **{"scheme": destination.scheme, **registry_options}) as client:
        for digest in reused:
            if client.has_blob(destination.repository, digest):
                continue
            if same:
                location = client.mount_blob(destination.repository, digest, source.repository)
                if location is None:
                    continue
                client.cancel_upload(destination.repository, location)
            with RegistryClient(source.registry, **{"scheme": source.scheme, **registry_options}) as origin, \
                    origin.blob(source.repository, digest) as blob, \
                    atomic_output(os.path.join(build, _blob_name(digest))) as out:
                blob.download(out)


def _convert_to_registry(source: PathLike, destination: Reference, source_ref: Reference | None,
                         registry_options: Mapping[str, Any], sign_with: EllipticCurvePrivateKey | None,
                         **options: Any) -> ImageResult:
    """Convert into a temporary layout, then push it; blobs of a source on the same registry
    are mounted rather than uploaded when the conversion kept them."""
    if destination.digest:
        raise ValueError(f"a converted image gets a new digest: name a tag, not {destination.digest}")
    with temp_dir(os.path.join(tempfile.gettempdir(), "estargz-push")) as build:
        result = convert_image(source, build, overwrite=True, archive=False, registry_options=registry_options,
                               **options)
        if source_ref is not None:
            _place_reused(build, result, source_ref, destination, registry_options)
        mount_from = source_ref.repository if source_ref is not None and source_ref.registry == destination.registry \
            and source_ref.repository != destination.repository else None
        pushed = push_layout(build, destination, mount_from=mount_from,
                             sign_with=sign_with, **{"scheme": destination.scheme, **registry_options})
    return replace(result, destination=pushed.reference, pushed=pushed)
