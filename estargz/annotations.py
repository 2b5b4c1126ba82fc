"""OCI layer-descriptor annotation keys of the lazy-pulling formats."""

__all__ = [
    "TOC_DIGEST_ANNOTATION", "UNCOMPRESSED_SIZE_ANNOTATION", "LAYER_DIGEST_ANNOTATION",
    "MANIFEST_CHECKSUM_ANNOTATION", "MANIFEST_POSITION_ANNOTATION", "TARSPLIT_POSITION_ANNOTATION",
    "LEGACY_MANIFEST_CHECKSUM_ANNOTATION", "LEGACY_MANIFEST_POSITION_ANNOTATION",
]

#: eStargz: sha256 of the TOC JSON.
TOC_DIGEST_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"
#: eStargz: size of the whole decompressed blob.
UNCOMPRESSED_SIZE_ANNOTATION = "io.containers.estargz.uncompressed-size"
#: External-TOC image: the digest of the eStargz blob a TOC blob belongs to.
LAYER_DIGEST_ANNOTATION = "containerd.io/snapshot/stargz/layer.digest"
#: containers/storage >= 1.44 zstd:chunked: sha256 of the compressed TOC, and where it lies.
MANIFEST_CHECKSUM_ANNOTATION = "io.github.containers.zstd-chunked.manifest-checksum"
MANIFEST_POSITION_ANNOTATION = "io.github.containers.zstd-chunked.manifest-position"
TARSPLIT_POSITION_ANNOTATION = "io.github.containers.zstd-chunked.tarsplit-position"
#: The same, as stargz-snapshotter and containers/storage <= 1.43 spell them.
LEGACY_MANIFEST_CHECKSUM_ANNOTATION = "io.containers.zstd-chunked.manifest-checksum"
LEGACY_MANIFEST_POSITION_ANNOTATION = "io.containers.zstd-chunked.manifest-position"
