"""The layer formats estargz writes and reads, and their OCI media types (from :mod:`estargz.oci`):
the lazy-pulling formats (:mod:`estargz.dialects`) and the plain ones (:mod:`estargz.plain`)."""

from .oci import (
    GZIP_LAYER_MEDIA_TYPE,
    OCI_CONFIG_MEDIA_TYPE,
    OCI_INDEX_MEDIA_TYPE,
    OCI_MANIFEST_MEDIA_TYPE,
    ZSTD_LAYER_MEDIA_TYPE,
)

__all__ = [
    "FORMAT_ESTARGZ", "FORMAT_ZSTD_CHUNKED", "FORMAT_ZSTD_CHUNKED_STARGZ", "FORMATS", "FORMAT_ZSTD",
    "FORMAT_UNCOMPRESSED", "PLAIN_FORMATS",
    "GZIP_LAYER_MEDIA_TYPE", "ZSTD_LAYER_MEDIA_TYPE", "OCI_MANIFEST_MEDIA_TYPE", "OCI_INDEX_MEDIA_TYPE",
    "OCI_CONFIG_MEDIA_TYPE",
]

#: eStargz: gzip members, TOC as the tar entry ``stargz.index.json``, 51-byte footer.
FORMAT_ESTARGZ = "estargz"
#: containers/storage's zstd:chunked (podman, buildah, skopeo, CRI-O): lossless, content-defined
#: chunks, compact TOC and tar-split in skippable frames, 64-byte footer.
FORMAT_ZSTD_CHUNKED = "zstd:chunked"
#: stargz-snapshotter's zstd:chunked (``nerdctl image convert --zstdchunked``): the eStargz TOC
#: and chunking in zstd frames, 40-byte footer.
FORMAT_ZSTD_CHUNKED_STARGZ = "zstd:chunked-stargz"
FORMATS = (FORMAT_ESTARGZ, FORMAT_ZSTD_CHUNKED, FORMAT_ZSTD_CHUNKED_STARGZ)


#: Plain zstd layers without a TOC (``nerdctl image convert --zstd``); image conversion only.
FORMAT_ZSTD = "zstd"
#: Uncompressed layers (``nerdctl image convert --uncompress``); image conversion only.
FORMAT_UNCOMPRESSED = "uncompressed"
PLAIN_FORMATS = (FORMAT_ZSTD, FORMAT_UNCOMPRESSED)
