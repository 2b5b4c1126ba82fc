"""estargz: write, read and verify eStargz lazy-pulling container layers.

>>> import estargz
>>> result = estargz.convert("layer.tar", "layer.esgz")          # doctest: +SKIP
>>> result.annotations                                            # doctest: +SKIP
>>> with estargz.open("layer.esgz", toc_digest=result.toc_digest) as blob:  # doctest: +SKIP
...     data = blob.read("etc/os-release")
"""

from .errors import (
    EStargzError,
    FormatError,
    LimitError,
    NotFoundError,
    UnsupportedInputError,
    VerificationError,
)
from .footer import Footer
from .framing import DEFAULT_GZIP_LEVEL, GZIP_ENGINES
from .layout import NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK
from .reader import Chunk, Entry, EntryFile, Reader, VerifyReport
from .reader import open_blob as open
from .source import BytesSource, FileSource, Source
from .toc import TOC_NAME, TOCEntry, decode_toc, encode_toc
from .tocimage import TOC_IMAGE_TAG_SUFFIX, toc_image_manifest, write_toc_image
from .writer import (
    DEFAULT_CHUNK_SIZE,
    LAYER_DIGEST_ANNOTATION,
    TOC_DIGEST_ANNOTATION,
    UNCOMPRESSED_SIZE_ANNOTATION,
    BuildResult,
    convert,
    read_workload_record,
)

__version__ = "0.1.0"

__all__ = [
    "BuildResult",
    "BytesSource",
    "Chunk",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_GZIP_LEVEL",
    "EStargzError",
    "Entry",
    "EntryFile",
    "FileSource",
    "Footer",
    "FormatError",
    "GZIP_ENGINES",
    "LAYER_DIGEST_ANNOTATION",
    "LimitError",
    "NO_PREFETCH_LANDMARK",
    "NotFoundError",
    "PREFETCH_LANDMARK",
    "Reader",
    "Source",
    "TOCEntry",
    "TOC_DIGEST_ANNOTATION",
    "TOC_IMAGE_TAG_SUFFIX",
    "TOC_NAME",
    "UNCOMPRESSED_SIZE_ANNOTATION",
    "UnsupportedInputError",
    "VerificationError",
    "VerifyReport",
    "convert",
    "decode_toc",
    "encode_toc",
    "open",
    "read_workload_record",
    "toc_image_manifest",
    "write_toc_image",
]
