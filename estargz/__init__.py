"""estargz: write, read and verify lazy-pulling container layers (eStargz and zstd:chunked).

>>> import estargz
>>> result = estargz.convert("layer.tar", "layer.esgz")          # doctest: +SKIP
>>> result.annotations                                            # doctest: +SKIP
>>> with estargz.open("layer.esgz", toc_digest=result.toc_digest) as blob:  # doctest: +SKIP
...     data = blob.read("etc/os-release")
"""

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
from .image import REUSED, ConvertedManifest, ImageResult, convert_image
from .ordering import NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK
from .mount import mount
from .push import PushResult, push_layout
from .reader import Chunk, Entry, EntryFile, Reader, VerifyReport
from .reader import open_blob as open
from .registry import BlobSource, RegistryClient, open_layer, parse_reference
from .source import BytesSource, FileSource, Source
from .toc import TOC_NAME, TOCEntry, decode_toc, encode_toc
from .tocimage import TOC_IMAGE_TAG_SUFFIX, toc_image_manifest, write_toc_image
from .writer import DEFAULT_CHUNK_SIZE, BuildResult, convert, read_workload_record

__version__ = "0.1.0"

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
