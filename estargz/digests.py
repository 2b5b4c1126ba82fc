"""Content digests ``algorithm:hex``: compute them, and parse or validate the ones an input names.

The algorithms are those of the OCI image spec and go-digest: sha256 (the default), sha384 and
sha512, each with its full lowercase hex encoding.
"""

from __future__ import annotations

import hashlib
import re
from typing import Protocol

from .errors import FormatError, UnsupportedInputError

__all__ = [
    "SHA256", "HEX_LENGTHS", "Hasher", "DIGEST_RE", "EMPTY_DIGEST", "new_hash", "hash_digest", "sha256_digest",
    "digest_of", "is_digest", "algorithm_of", "split_digest",
]

SHA256 = "sha256"
#: Length of the hex encoding, per supported algorithm.
HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}
#: A well-formed digest of a supported algorithm.
DIGEST_RE = re.compile("|".join(f"{name}:[0-9a-f]{{{length}}}" for name, length in HEX_LENGTHS.items()))
#: The digest of no bytes.
EMPTY_DIGEST = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
Buffer = bytes | bytearray | memoryview
#: OCI's digest grammar: any algorithm name, any encoding.
_GRAMMAR = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")


class Hasher(Protocol):
    """A running hash, as :mod:`hashlib` makes them."""

    @property
    def name(self) -> str: ...

    def update(self, data: Buffer, /) -> None: ...

    def hexdigest(self) -> str: ...


def new_hash(algorithm: str = SHA256) -> Hasher:
    """A fresh hash object of ``algorithm``; feed it with ``update`` and finish with :func:`hash_digest`."""
    return hashlib.new(algorithm)


def hash_digest(hasher: Hasher) -> str:
    """The ``algorithm:hex`` digest of what ``hasher`` has seen."""
    return f"{hasher.name}:{hasher.hexdigest()}"


def sha256_digest(data: Buffer) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def digest_of(data: Buffer, algorithm: str = SHA256) -> str:
    """``algorithm:<hex>`` of ``data``."""
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def is_digest(value: object) -> bool:
    """Whether ``value`` is a well-formed digest of a supported algorithm."""
    return isinstance(value, str) and DIGEST_RE.fullmatch(value) is not None


def algorithm_of(digest: str | None) -> str:
    """The algorithm a digest names; sha256 when there is no well-formed digest to follow."""
    return digest.partition(":")[0] if digest is not None and is_digest(digest) else SHA256


def split_digest(value: object) -> tuple[str, str]:
    """``(algorithm, hex)`` of a digest an input names.

    :class:`FormatError` when ``value`` is not a digest, :class:`UnsupportedInputError` when it is
    one of an algorithm this library does not compute.
    """
    if not isinstance(value, str) or not _GRAMMAR.fullmatch(value):
        raise FormatError(f"invalid digest {value!r}")
    algorithm, encoded = value.split(":", 1)
    if algorithm not in HEX_LENGTHS:
        raise UnsupportedInputError(f"unsupported digest algorithm {algorithm!r}")
    if not DIGEST_RE.fullmatch(value):
        raise FormatError(f"invalid {algorithm} digest {value!r}")
    return algorithm, encoded
