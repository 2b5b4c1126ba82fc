"""The "TOC image" of external-TOC layers: an OCI image whose layers are the TOC blobs.

Each layer descriptor carries ``containerd.io/snapshot/stargz/layer.digest``, the digest of the
eStargz blob its TOC belongs to; layers are sorted by digest and the config is ``{}``. Runtimes
find it as the image reference with ``-esgztoc`` appended to the tag.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from .digests import sha256_digest
from .errors import FormatError
from .oci import (
    OCI_CONFIG_MEDIA_TYPE,
    OCI_INDEX_MEDIA_TYPE,
    OCI_MANIFEST_MEDIA_TYPE,
)
from .output import atomic_output
from .writer import BuildResult

__all__ = ["REF_NAME_ANNOTATION", "TOC_IMAGE_TAG_SUFFIX", "TOC_IMAGE_CONFIG", "toc_image_manifest", "write_toc_image"]

TOC_IMAGE_TAG_SUFFIX = "-esgztoc"
#: The config blob of a TOC image.
TOC_IMAGE_CONFIG = b"{}"
#: ``org.opencontainers.image.ref.name``: the tag of an index.json entry.
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"


def toc_image_manifest(results: Sequence[BuildResult]) -> bytes:
    """The TOC image manifest (JSON bytes) for layers converted with an external TOC."""
    layers = []
    for result in results:
        descriptor = result.toc_blob_descriptor
        if descriptor is None:
            raise ValueError("toc_image_manifest needs results of conversions with external_toc")
        layers.append(descriptor)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": OCI_CONFIG_MEDIA_TYPE, "digest": sha256_digest(TOC_IMAGE_CONFIG),
                   "size": len(TOC_IMAGE_CONFIG)},
        "layers": sorted(layers, key=lambda layer: str(layer["digest"])),
    }
    return json.dumps(manifest, indent=2).encode()


def write_toc_image(directory: str | os.PathLike[str], results: Sequence[BuildResult], tag: str = "latest") -> str:
    """Write the TOC image into the OCI image layout ``directory``; return the manifest digest.

    The image is tagged ``tag`` (in ``org.opencontainers.image.ref.name``). An existing layout
    keeps its blobs and index entries; only an entry that had the same tag loses it. Every file
    is written atomically.
    """
    manifest = toc_image_manifest(results)
    blobs = os.path.join(directory, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)
    for data in (manifest, TOC_IMAGE_CONFIG, *(r.external_toc for r in results if r.external_toc)):
        _write(os.path.join(blobs, sha256_digest(data).split(":", 1)[1]), data)
    layout_file = os.path.join(directory, "oci-layout")
    if not os.path.exists(layout_file):
        _write(layout_file, json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
    index_file = os.path.join(directory, "index.json")
    index = _read_index(index_file)
    index["manifests"] = [entry for entry in index["manifests"] if _ref_name(entry) != tag]
    index["manifests"].append({
        "mediaType": OCI_MANIFEST_MEDIA_TYPE,
        "digest": sha256_digest(manifest),
        "size": len(manifest),
        "annotations": {REF_NAME_ANNOTATION: tag},
    })
    _write(index_file, json.dumps(index, indent=2).encode())
    return sha256_digest(manifest)


def _write(path: str, data: bytes) -> None:
    with atomic_output(path) as out:
        out.write(data)


def _read_index(path: str) -> dict[str, Any]:
    """The layout's index.json, or a new empty index; FormatError if it is not an image index."""
    try:
        with open(path, "rb") as f:
            index = json.loads(f.read())
    except FileNotFoundError:
        return {"schemaVersion": 2, "mediaType": OCI_INDEX_MEDIA_TYPE, "manifests": []}
    except ValueError as exc:
        raise FormatError(f"{path} is not JSON: {exc}") from None
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise FormatError(f"{path} has no manifests list")
    return index


def _ref_name(entry: object) -> object:
    annotations = entry.get("annotations") if isinstance(entry, dict) else None
    return annotations.get(REF_NAME_ANNOTATION) if isinstance(annotations, dict) else None
