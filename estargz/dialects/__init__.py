"""One module per layer format behind one :class:`Dialect` protocol.

- :mod:`.estargz`: eStargz (gzip), with its external-TOC and keep-diff-id variants;
- :mod:`.stargz_zstd`: stargz-snapshotter's zstd:chunked (the stargz walk and TOC, zstd frames);
- :mod:`.containers_storage`: containers/storage's zstd:chunked (its own walk and tar-split).
"""

from __future__ import annotations

from .base import OPTIONAL_OPTIONS, Dialect, LayerOptions, LayerWriter, Tail, TarInput, options_for
from .containers_storage import CONTAINERS_STORAGE
from .estargz import ESTARGZ
from .stargz_zstd import STARGZ_ZSTD

__all__ = [
    "Dialect", "LayerOptions", "LayerWriter", "Tail", "TarInput", "OPTIONAL_OPTIONS", "DIALECTS", "dialect",
    "options_for",
]

#: Every dialect, by format name.
DIALECTS: dict[str, Dialect] = {d.name: d for d in (ESTARGZ, CONTAINERS_STORAGE, STARGZ_ZSTD)}


def dialect(name: str) -> Dialect:
    """The dialect of the format ``name``; ValueError for an unknown format."""
    try:
        return DIALECTS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown format {name!r}") from None
