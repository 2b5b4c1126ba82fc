"""The "TOC image" of external-TOC layers: an OCI image whose layers are the TOC blobs.

Each layer descriptor carries ``containerd.io/snapshot/stargz/layer.digest``, the digest of the
eStargz blob its TOC belongs to; layers are sorted by digest and the config is ``{}``. Runtimes
find it as the image reference with ``-esgztoc`` appended to the tag.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence

from .formats import (
    OCI_CONFIG_MEDIA_TYPE,
    OCI_INDEX_MEDIA_TYPE,
    OCI_MANIFEST_MEDIA_TYPE,
)
from .writer import BuildResult

__all__ = ["TOC_IMAGE_TAG_SUFFIX", "TOC_IMAGE_CONFIG", "toc_image_manifest", "write_toc_image"]

TOC_IMAGE_TAG_SUFFIX = "-esgztoc"
#: The config blob of a TOC image.
TOC_IMAGE_CONFIG = b"{}"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


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
        "config": {"mediaType": OCI_CONFIG_MEDIA_TYPE, "digest": _digest(TOC_IMAGE_CONFIG), "size": len(TOC_IMAGE_CONFIG)},
        "layers": sorted(layers, key=lambda layer: str(layer["digest"])),
    }
    return json.dumps(manifest, indent=2).encode()


def write_toc_image(directory: str | os.PathLike[str], results: Sequence[BuildResult], tag: str = "latest") -> str:
    """Write the TOC image as an OCI image layout in ``directory``; return the manifest digest.

    The image is tagged ``tag`` (in ``org.opencontainers.image.ref.name``).
    """
    manifest = toc_image_manifest(results)
    blobs = os.path.join(directory, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)
    for data in (manifest, TOC_IMAGE_CONFIG, *(r.external_toc for r in results if r.external_toc)):
        with open(os.path.join(blobs, _digest(data).split(":", 1)[1]), "wb") as f:
            f.write(data)
    with open(os.path.join(directory, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX_MEDIA_TYPE,
        "manifests": [{
            "mediaType": OCI_MANIFEST_MEDIA_TYPE,
            "digest": _digest(manifest),
            "size": len(manifest),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    }
    with open(os.path.join(directory, "index.json"), "w") as f:
        json.dump(index, f, indent=2)
    return _digest(manifest)
