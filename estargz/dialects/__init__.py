"""One module per layer format behind one :class:`Dialect` protocol.

- :mod:`.estargz`: eStargz (gzip), with its external-TOC and keep-diff-id variants;
- :mod:`.stargz_zstd`: stargz-snapshotter's zstd:chunked (the stargz walk and TOC, zstd frames);
- :mod:`.containers_storage`: containers/storage's zstd:chunked (its own walk and tar-split).
"""

from __future__ import annotations

from collections.abc import Mapping

from ..annotations import MANIFEST_POSITION_ANNOTATION, TARSPLIT_POSITION_ANNOTATION

from .base import OPTIONAL_OPTIONS, DecodedTOC, Dialect, LayerOptions, LayerWriter, Tail, TarInput, options_for
from .containers_storage import CONTAINERS_STORAGE, has_containers_storage_schema
from .estargz import ESTARGZ
from .stargz_zstd import STARGZ_ZSTD

__all__ = [
    "Dialect", "LayerOptions", "LayerWriter", "Tail", "TarInput", "OPTIONAL_OPTIONS", "DIALECTS", "dialect",
    "options_for", "DecodedTOC", "detect", "read_toc",
]

#: Every dialect, by format name.
DIALECTS: dict[str, Dialect] = {d.name: d for d in (ESTARGZ, CONTAINERS_STORAGE, STARGZ_ZSTD)}


def dialect(name: str) -> Dialect:
    """The dialect of the format ``name``; ValueError for an unknown format."""
    try:
        return DIALECTS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown format {name!r}") from None


def detect(footer_kind: str, annotations: Mapping[str, str]) -> Dialect | None:
    """The dialect a footer kind or the layer annotations name, or None when only the TOC's schema
    can tell (a 40-byte zstd footer, or the position annotations both zstd dialects write)."""
    for candidate in DIALECTS.values():
        if footer_kind in candidate.footer_kinds:
            return candidate
    if MANIFEST_POSITION_ANNOTATION in annotations or TARSPLIT_POSITION_ANNOTATION in annotations:
        return CONTAINERS_STORAGE
    return None


def read_toc(known: Dialect | None, toc_json: bytes) -> tuple[Dialect, DecodedTOC]:
    """Decode a TOC in the ``known`` dialect. A zstd TOC of unknown dialect is containers/storage's
    if its schema says so (see :func:`has_containers_storage_schema`), else stargz-snapshotter's."""
    if known is None:
        known = CONTAINERS_STORAGE if has_containers_storage_schema(toc_json) else STARGZ_ZSTD
    return known, known.read_toc(toc_json)
