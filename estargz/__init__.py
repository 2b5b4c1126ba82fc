"""estargz: write, read and verify lazy-pulling container layers (eStargz and zstd:chunked).

>>> import estargz
>>> result = estargz.convert("layer.tar", "layer.esgz")          # doctest: +SKIP
>>> result.annotations                                            # doctest: +SKIP
>>> with estargz.open("layer.esgz", toc_digest=result.toc_digest) as blob:  # doctest: +SKIP
...     data = blob.read("etc/os-release")
"""

import importlib
from typing import TYPE_CHECKING, Any

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
from .errors import (
    EStargzError,
    FormatError,
    LimitError,
    NotFoundError,
    RegistryError,
    UnsupportedInputError,
    VerificationError,
)
from .footer import Footer
from .formats import (
    FORMAT_ESTARGZ,
    FORMAT_UNCOMPRESSED,
    FORMAT_ZSTD,
    FORMAT_ZSTD_CHUNKED,
    FORMAT_ZSTD_CHUNKED_STARGZ,
    FORMATS,
)
from .framing import (
    DEFAULT_CONTAINERS_STORAGE_ZSTD_LEVEL,
    DEFAULT_GZIP_LEVEL,
    DEFAULT_ZSTD_LEVEL,
    GZIP_ENGINES,
)
from .ordering import NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK
from .plain import PlainResult
from .reader import Chunk, Entry, EntryFile, Reader, VerifyReport
from .reader import open_blob as open
from .source import BytesSource, FileSource, Source
from .toc import TOC_NAME, TOCEntry, decode_toc, encode_toc
from .tocimage import TOC_IMAGE_TAG_SUFFIX, toc_image_manifest, write_toc_image
from .writer import DEFAULT_CHUNK_SIZE, BuildResult, convert, read_workload_record

if TYPE_CHECKING:
    from .image import REUSED, ConvertedManifest, ImageResult, convert_image
    from .mountfs import mount
    from .push import PushResult, push_layout
    from .registry import BlobSource, RegistryClient, open_layer, parse_reference

__version__ = "0.1.0"

#: Names whose modules (HTTP, registries, images, FUSE) load on first use, so that commands and
#: programs working on local files do not pay for importing them.
_LAZY = {
    "REUSED": "image", "ConvertedManifest": "image", "ImageResult": "image", "convert_image": "image",
    "mount": "mountfs", "PushResult": "push", "push_layout": "push",
    "BlobSource": "registry", "RegistryClient": "registry", "open_layer": "registry", "parse_reference": "registry",
}


def __getattr__(name: str) -> Any:
    """Load a lazily imported public name (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})

__all__ = [
    "BlobSource",
    "BuildResult",
    "BytesSource",
    "Chunk",
    "convert",
    "convert_image",
    "ConvertedManifest",
    "decode_toc",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_CONTAINERS_STORAGE_ZSTD_LEVEL",
    "DEFAULT_GZIP_LEVEL",
    "DEFAULT_ZSTD_LEVEL",
    "encode_toc",
    "Entry",
    "EntryFile",
    "EStargzError",
    "FileSource",
    "Footer",
    "FORMAT_ESTARGZ",
    "FORMAT_UNCOMPRESSED",
    "FORMAT_ZSTD",
    "FORMAT_ZSTD_CHUNKED",
    "FORMAT_ZSTD_CHUNKED_STARGZ",
    "FormatError",
    "FORMATS",
    "GZIP_ENGINES",
    "ImageResult",
    "LAYER_DIGEST_ANNOTATION",
    "LEGACY_MANIFEST_CHECKSUM_ANNOTATION",
    "LEGACY_MANIFEST_POSITION_ANNOTATION",
    "LimitError",
    "mount",
    "MANIFEST_CHECKSUM_ANNOTATION",
    "MANIFEST_POSITION_ANNOTATION",
    "NO_PREFETCH_LANDMARK",
    "NotFoundError",
    "open",
    "open_layer",
    "parse_reference",
    "PlainResult",
    "PREFETCH_LANDMARK",
    "push_layout",
    "PushResult",
    "read_workload_record",
    "Reader",
    "RegistryClient",
    "RegistryError",
    "REUSED",
    "Source",
    "TARSPLIT_POSITION_ANNOTATION",
    "TOC_DIGEST_ANNOTATION",
    "toc_image_manifest",
    "TOC_IMAGE_TAG_SUFFIX",
    "TOC_NAME",
    "TOCEntry",
    "UNCOMPRESSED_SIZE_ANNOTATION",
    "UnsupportedInputError",
    "VerificationError",
    "VerifyReport",
    "write_toc_image",
]
