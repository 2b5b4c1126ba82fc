"""Lazy reading of layers from an OCI distribution registry, by HTTP range requests.

>>> source, descriptor = open_layer("127.0.0.1:5000/app:latest", 0, insecure=True)   # doctest: +SKIP
>>> with source, estargz.open(source, annotations=descriptor.get("annotations")) as blob:  # doctest: +SKIP
...     data = blob.read("etc/os-release")

Over urllib3 (:mod:`estargz.transport`): Bearer-token and Basic authentication with credentials
looked up as docker and podman do (:mod:`estargz.auth`), a deadline per request, retries with
backoff on transient failures, OCI and Docker manifests and indexes, platform selection. Errors:
:class:`NotFoundError` (404, no such platform or layer), :class:`VerificationError` (digest or size
mismatch), :class:`LimitError` (manifest too large, or a blob too large to read whole when the
registry ignores ranges),
:class:`FormatError` (malformed or unexpected answers), and :class:`RegistryError` when the
registry cannot be reached, refuses access, fails or misses a deadline.
"""

from __future__ import annotations

import base64
import functools
import json
import random
import re
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Mapping, NamedTuple, Sequence, TypeVar
from urllib.parse import urlencode, urljoin, urlsplit

from .annotations import (
    LEGACY_MANIFEST_CHECKSUM_ANNOTATION,
    MANIFEST_CHECKSUM_ANNOTATION,
    TOC_DIGEST_ANNOTATION,
)
from .auth import Auth, Credentials
from .digests import algorithm_of, digest_of, hash_digest, is_digest, new_hash
from .errors import (
    EStargzError,
    FormatError,
    LimitError,
    NotFoundError,
    RegistryError,
    VerificationError,
)
from .oci import (
    DOCKER_MANIFEST_LIST_MEDIA_TYPE,
    DOCKER_MANIFEST_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPES,
    INDEX_MEDIA_TYPES,
    OCI_INDEX_MEDIA_TYPE,
    OCI_MANIFEST_MEDIA_TYPE,
    default_platform,
    parse_platform,
    platform_matches,
    platform_text,
)
from .source import BLOCK_SIZE
from .transport import TRANSIENT_ERRORS, TRANSPORT_ERRORS, DeadlineExceeded, Response, Transport, is_tls_failure


if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey

__all__ = [
    "Reference", "parse_reference", "RegistryClient", "Manifest", "BlobSource", "Anchor", "open_layer",
    "default_platform", "OCI_MANIFEST", "OCI_INDEX", "DOCKER_MANIFEST", "DOCKER_MANIFEST_LIST",
    "MANIFEST_MEDIA_TYPES", "INDEX_MEDIA_TYPES", "MAX_MANIFEST_SIZE", "MAX_WHOLE_BLOB", "DEFAULT_DEADLINE",
    "DEFAULT_UPLOAD_CHUNK",
    "RequestStats",
]

OCI_MANIFEST = OCI_MANIFEST_MEDIA_TYPE
OCI_INDEX = OCI_INDEX_MEDIA_TYPE
DOCKER_MANIFEST = DOCKER_MANIFEST_MEDIA_TYPE
DOCKER_MANIFEST_LIST = DOCKER_MANIFEST_LIST_MEDIA_TYPE
#: The media types a manifest fetch accepts: image manifests and indexes.
MANIFEST_MEDIA_TYPES = (*IMAGE_MANIFEST_MEDIA_TYPES, *INDEX_MEDIA_TYPES)

#: Largest manifest accepted (distribution's own limit).
MAX_MANIFEST_SIZE = 4 << 20
#: Largest blob read whole into memory when a registry answers a range request with 200.
MAX_WHOLE_BLOB = 64 << 20

_USER_AGENT = "estargz-python"
_MAX_SMALL_BODY = 1 << 20  # token answers
_MAX_DRAIN = 64 << 10  # what is read of an unwanted body to keep its connection
_MAX_REDIRECTS = 5
_MAX_INDEX_DEPTH = 4
_MAX_WAIT = 10.0  # longest single back-off, Retry-After included
_MAX_RANGES = 64  # ranges per multi-range request
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_DEFAULT_TOKEN_LIFETIME = 60.0
_MAX_TOKEN_LIFETIME = 86400.0
_TOKEN_RE = re.compile(r"[\x21-\x7e]{1,8192}")
_INSECURE_HINT = ("for a registry without TLS or with a certificate that cannot be verified, "
                  "use --insecure (insecure=True)")
#: Seconds a request may take, connect, headers and body together, before the body's share.
DEFAULT_DEADLINE = 60.0
_DEADLINE_BYTES_PER_SECOND = 1 << 20  # every MiB a request expects adds a second
_DOCKER_HUB = "docker.io"
_ENDPOINTS = {"docker.io": "registry-1.docker.io", "index.docker.io": "registry-1.docker.io"}

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST_RE = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{{1,5}})?")
_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_UPLOAD_RANGE_RE = re.compile(r"(?:bytes=)?(\d+)-(-1|\d+)")
_UPLOAD_RESTARTS = 3
#: Bytes sent per PATCH request of a chunked blob upload.
DEFAULT_UPLOAD_CHUNK = 8 << 20
_PARAM_RE = re.compile(r'([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')

T = TypeVar("T")
_BODY_ERRORS: tuple[type[BaseException], ...] = (EStargzError, *TRANSPORT_ERRORS)


# -- references ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reference:
    """An image (or blob) reference: ``registry/repository[:tag][@digest]`` and its URL scheme."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None
    scheme: str = "https"

    @property
    def reference(self) -> str:
        """What follows ``/manifests/``: the digest if there is one, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def _hostname(registry: str) -> str:
    if registry.startswith("["):
        return registry[1:registry.index("]")]
    return registry.partition(":")[0]


def _check_repository(repository: str) -> None:
    if not _REPOSITORY_RE.fullmatch(repository):
        raise ValueError(f"invalid repository name {repository!r}")


def _check_digest(digest: str) -> None:
    if not is_digest(digest):
        raise ValueError(f"invalid digest {digest!r} (expected sha256:<64 hex>, sha384:<96 hex> or sha512:<128 hex>)")


def parse_reference(text: str) -> Reference:
    """Parse ``[http[s]://]host[:port]/repo[/more][:tag][@sha256:…]``.

    Without a host-like first component (one with a dot or a port, or ``localhost``) the
    registry is Docker Hub, with ``library/`` added to one-component names, as docker does.
    Without a tag or digest the tag is ``latest``. The scheme is ``https`` unless an ``http://``
    prefix asks for plain HTTP (which a client refuses unless ``insecure``). Raises ValueError on
    a malformed reference.
    """
    rest = text.strip()
    scheme = None
    for prefix in ("http://", "https://"):
        if rest.lower().startswith(prefix):
            scheme, rest = prefix[:-3], rest[len(prefix):]
    rest = rest.rstrip("/") if scheme else rest
    name, _, digest = rest.partition("@")
    if digest:
        _check_digest(digest)
    tag = None
    slash, colon = name.rfind("/"), name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1:]
        if not _TAG_RE.fullmatch(tag):
            raise ValueError(f"invalid tag {tag!r} in {text!r}")
    first, sep, remainder = name.partition("/")
    if sep and (scheme or "." in first or ":" in first or first == "localhost" or first.startswith("[")):
        registry, repository = first, remainder
    elif scheme:
        raise ValueError(f"no repository in {text!r}")
    else:
        registry, repository = _DOCKER_HUB, name if "/" in name else f"library/{name}"
    if not _HOST_RE.fullmatch(registry):
        raise ValueError(f"invalid registry host {registry!r} in {text!r}")
    _check_repository(repository)
    if tag is None and not digest:
        tag = "latest"
    return Reference(registry, repository, tag, digest or None, scheme or "https")


# -- manifests -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Manifest:
    """A manifest or index as fetched: media type, digest, raw bytes and parsed JSON."""

    media_type: str
    digest: str
    data: bytes = field(repr=False)
    content: dict[str, Any] = field(repr=False)

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_MEDIA_TYPES

    @property
    def layers(self) -> list[dict[str, Any]]:
        """The layer descriptors of an image manifest."""
        layers = self.content.get("layers")
        if self.is_index or not isinstance(layers, list) or not all(isinstance(d, dict) for d in layers):
            raise FormatError(f"manifest {self.digest} has no list of layers")
        return layers


def _check_descriptor(descriptor: Any, what: str) -> dict[str, Any]:
    if not isinstance(descriptor, dict):
        raise FormatError(f"{what} is not a descriptor object")
    digest, size = descriptor.get("digest"), descriptor.get("size")
    if not is_digest(digest):
        raise FormatError(f"{what} has an invalid digest {digest!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise FormatError(f"{what} has an invalid size {size!r}")
    annotations = descriptor.get("annotations", {})
    if not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()):
        raise FormatError(f"{what} has annotations that are not an object of strings")
    if not isinstance(descriptor.get("mediaType", ""), str):
        raise FormatError(f"{what} has a media type that is not a string")
    return dict(descriptor)


#: Layer annotations that carry a TOC digest, the anchor of a lazy read.
TOC_ANCHOR_ANNOTATIONS = (TOC_DIGEST_ANNOTATION, MANIFEST_CHECKSUM_ANNOTATION, LEGACY_MANIFEST_CHECKSUM_ANNOTATION)


@dataclass(frozen=True)
class Anchor:
    """What a lazily read layer's TOC is checked against, and how far that is trusted.

    ``kind``: ``signature`` (the TOC digest comes from a manifest whose digest, or whose index's
    digest, ``manifest``, carries a signature checked with the key given), ``manifest-digest``
    (the TOC digest comes from a manifest named by digest),
    ``tag`` (from the manifest a tag named, as the registry served it) or ``none`` (no TOC digest
    from a checked manifest: a bare blob, or a layer descriptor without the annotation).
    """

    kind: str
    manifest: str | None = None
    toc_digest: str | None = None
    annotation: str | None = None

    @classmethod
    def of(cls, manifest: Manifest, descriptor: Mapping[str, Any], by_digest: bool) -> "Anchor":
        annotations = descriptor.get("annotations", {})
        key = next((k for k in TOC_ANCHOR_ANNOTATIONS if k in annotations), None)
        if key is None:
            return cls("none", manifest.digest)
        return cls("manifest-digest" if by_digest else "tag", manifest.digest, annotations[key], key)

    def to_json(self) -> dict[str, str]:
        found = {"kind": self.kind, "manifest": self.manifest, "tocDigest": self.toc_digest,
                 "annotation": self.annotation}
        return {k: v for k, v in found.items() if v is not None}


def _media_type(header: str | None) -> str:
    return (header or "").split(";", 1)[0].strip().lower()


def _parse_manifest(data: bytes, content_type: str | None, digest: str) -> Manifest:
    try:
        content = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"manifest {digest} is not JSON: {exc}") from None
    if not isinstance(content, dict):
        raise FormatError(f"manifest {digest} is not a JSON object")
    if content.get("schemaVersion") != 2:
        raise FormatError(f"manifest {digest} has schemaVersion {content.get('schemaVersion')!r}; "
                          "only schema 2 (OCI and Docker v2) is supported")
    media_type = _media_type(content_type)
    if media_type not in MANIFEST_MEDIA_TYPES:
        media_type = content.get("mediaType") or (OCI_INDEX if "manifests" in content else OCI_MANIFEST)
    if media_type not in MANIFEST_MEDIA_TYPES:
        raise FormatError(f"manifest {digest} has unsupported media type {media_type!r}")
    return Manifest(media_type, digest, data, content)


def _select_platform(index: Manifest, platform: str | None) -> dict[str, Any]:
    wanted = parse_platform(platform or default_platform())
    entries = index.content.get("manifests")
    if not isinstance(entries, list):
        raise FormatError(f"index {index.digest} has no list of manifests")
    seen = []
    for position, entry in enumerate(entries):
        entry = _check_descriptor(entry, f"manifest {position} of index {index.digest}")
        found: dict[str, Any] = entry["platform"] if isinstance(entry.get("platform"), dict) else {}
        seen.append(platform_text(found))
        if platform_matches(found, wanted):
            return entry
    raise NotFoundError(f"index {index.digest} has no manifest for {platform or default_platform()} "
                        f"(it has {', '.join(seen) or 'none'})")


def _select_layer(manifest: Manifest, layer: int | str | None) -> dict[str, Any]:
    layers = manifest.layers
    if layer is None:
        if len(layers) != 1:
            raise ValueError(f"manifest {manifest.digest} has {len(layers)} layers: give a layer index or digest")
        layer = 0
    if isinstance(layer, str):
        position = next((i for i, d in enumerate(layers) if d.get("digest") == layer), None)
        if position is None:
            raise NotFoundError(f"manifest {manifest.digest} has no layer {layer}")
    else:
        position = layer + len(layers) if layer < 0 else layer
        if not 0 <= position < len(layers):
            raise NotFoundError(f"manifest {manifest.digest} has {len(layers)} layers, no layer {layer}")
    return _check_descriptor(layers[position], f"layer {position} of manifest {manifest.digest}")


# -- HTTP ------------------------------------------------------------------------------------
class RequestStats:
    """Thread-safe counters of requests sent and body bytes received, also added to a parent's."""

    def __init__(self, parent: "RequestStats | None" = None) -> None:
        self.requests = 0
        self.bytes = 0
        self._parent = parent
        self._lock = threading.Lock()

    def request(self) -> None:
        with self._lock:
            self.requests += 1
        if self._parent is not None:
            self._parent.request()

    def received(self, count: int) -> None:
        with self._lock:
            self.bytes += count
        if self._parent is not None:
            self._parent.received(count)


def _read_exact(resp: Response, count: int, stats: RequestStats) -> bytes:
    parts: list[bytes] = []
    remaining = count
    while remaining:
        piece = resp.read(min(remaining, BLOCK_SIZE))
        if not piece:
            raise ConnectionError(f"the connection closed {remaining} bytes before the end of the body")
        stats.received(len(piece))
        parts.append(piece)
        remaining -= len(piece)
    return b"".join(parts)


def _read_body(resp: Response, limit: int, stats: RequestStats, what: str) -> bytes:
    """The whole body, refusing more than ``limit`` bytes."""
    if resp.length is not None:
        if resp.length > limit:
            raise LimitError(f"{what} is {resp.length} bytes, over the {limit}-byte limit")
        return _read_exact(resp, resp.length, stats)
    data = b""
    while len(data) <= limit:
        piece = resp.read(min(BLOCK_SIZE, limit + 1 - len(data)))
        if not piece:
            return data
        stats.received(len(piece))
        data += piece
    raise LimitError(f"{what} is over the {limit}-byte limit")


def _parse_challenges(values: Sequence[str]) -> dict[str, dict[str, str]]:
    """``WWW-Authenticate`` values as {scheme: {param: value}} (lower-case schemes)."""
    challenges: dict[str, dict[str, str]] = {}
    for value in values:
        scheme, _, rest = value.strip().partition(" ")
        challenges.setdefault(scheme.lower(), _header_params(rest))
    return challenges


def _header_params(text: str) -> dict[str, str]:
    """``key=value`` and ``key="quoted value"`` pairs of a header, keys in lower case."""
    return {m.group(1).lower(): re.sub(r"\\(.)", r"\1", m.group(2)) if m.group(2) is not None else m.group(3)
            for m in _PARAM_RE.finditer(text)}


def _error_detail(body: bytes) -> str:
    """The registry's error codes and messages, or the start of the body, on one line."""
    try:
        errors = json.loads(body).get("errors")
        detail = "; ".join(f"{e.get('code', '?')}: {e.get('message', '')}" for e in errors)
    except (ValueError, AttributeError, TypeError):
        detail = body[:200].decode("utf-8", "replace")
    return _one_line(detail)[:300]


def _one_line(text: object) -> str:
    """``text`` (an exception: its innermost OS error, if any) on one line."""
    if isinstance(text, BaseException):
        cause = text
        while cause.__cause__ is not None or cause.__context__ is not None:
            cause = cause.__cause__ or cause.__context__  # type: ignore[assignment]
        text = cause.strerror if isinstance(cause, OSError) and cause.strerror else text
    return " ".join(str(text).split())


def _content_range(value: str | None) -> tuple[int, int, int | None]:
    match = _CONTENT_RANGE_RE.fullmatch((value or "").strip())
    if not match or int(match.group(2)) < int(match.group(1)):
        raise FormatError(f"bad Content-Range {_one_line(value)[:100]!r} in a 206 answer")
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), int(match.group(2)), total


def _origin_of(url: str) -> tuple[str, str]:
    """``(scheme, host[:port])`` of an absolute http(s) URL; RegistryError for anything else."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise RegistryError(f"malformed URL {_one_line(url)[:200]!r}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise RegistryError(f"not an http(s) URL: {_one_line(url)[:200]!r}")
    return parts.scheme.lower(), parts.netloc.lower()


def _token_lifetime(expires_in: Any) -> float:
    """Seconds a token is kept: ``expires_in`` within [1 s, 1 day], 60 s if absent or odd."""
    if isinstance(expires_in, bool) or not isinstance(expires_in, (int, float)) or expires_in != expires_in:
        return _DEFAULT_TOKEN_LIFETIME
    return float(min(max(expires_in, 1), _MAX_TOKEN_LIFETIME))


@dataclass
class _Call:
    """One request's state across redirects, challenges and retries."""

    method: str
    url: str
    first_origin: tuple[str, str]
    seconds: float
    retry_deadline: float
    headers: dict[str, str]
    scope: str | None
    stats: RequestStats
    authenticate: bool
    body: bytes | None
    attempt: int = 0
    redirects: int = 0
    challenged: bool = False


class _Retry(NamedTuple):
    """Try a request again after ``delay`` seconds; ``failure`` is why."""

    failure: BaseException | str
    delay: float


class _Again:
    """Send a request again at once: it was redirected or challenged."""


_AGAIN = _Again()


class RegistryClient:
    """A client for one registry (``host[:port]``; ``docker.io`` means Docker Hub): GET and HEAD
    with authentication, retries, manifests and blobs. Thread-safe.

    Authentication follows the registry's 401 challenge: ``Bearer`` (a token from the realm,
    asked with the credentials when there are any, cached per scope until it expires) or
    ``Basic``. Credentials are ``username``/``password``, else ``auth`` (default: an
    :class:`~estargz.auth.Auth` reading docker's and podman's config files and credential
    helpers). They go only to the registry itself, and to a token realm only over HTTPS when the
    registry was reached over HTTPS (or to the registry's own origin); redirects to another
    origin never carry them.

    Every request must end within ``deadline`` seconds plus one second per MiB of the body it
    expects (connect, headers and body together); ``timeout`` bounds connecting. Connection
    failures, 429 and 500/502/503/504 are retried ``retries`` times with exponential back-off from
    ``backoff`` seconds (or ``Retry-After``, at most 10 s a wait), never past ``max_retry_time``
    seconds after the first try. Redirects are followed (up to 5). Proxies come from
    ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY``.

    The registry is spoken to over HTTPS with verified certificates, whatever its host (loopback
    included). ``insecure`` (the CLI's ``--insecure``, as nerdctl's ``--insecure-registry``)
    skips certificate verification and, when the registry answers the TLS handshake with
    something else before any HTTPS answer came, goes on over plain HTTP; ``scheme="http"``
    (an ``http://`` reference prefix) means plain HTTP from the start and needs ``insecure`` too.
    """

    def __init__(self, registry: str, *, scheme: str | None = None, insecure: bool = False,
                 username: str | None = None, password: str | None = None, auth: Auth | None = None,
                 retries: int = 3, timeout: float = 30.0, deadline: float = DEFAULT_DEADLINE,
                 backoff: float = 0.5, max_retry_time: float = 60.0, ssl_context: ssl.SSLContext | None = None,
                 proxies: Mapping[str, str] | None = None) -> None:
        if not _HOST_RE.fullmatch(registry):
            raise ValueError(f"invalid registry host {registry!r}")
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        if username is not None and auth is not None:
            raise ValueError("give username and password, or auth, not both")
        self.registry = registry
        self.scheme = (scheme or "https").lower()
        if self.scheme not in ("http", "https"):
            raise ValueError(f"scheme must be http or https, not {scheme!r}")
        if self.scheme == "http" and not insecure:
            raise ValueError(f"plain HTTP to {registry} is refused: {_INSECURE_HINT}")
        self.insecure = insecure
        self._tls_answered = False
        self._origin = (self.scheme, _ENDPOINTS.get(registry, registry).lower())
        self.retries, self.timeout, self.backoff, self.max_retry_time = retries, timeout, backoff, max_retry_time
        self.deadline = deadline
        self.auth = Auth(Credentials(username, password)) if username is not None else auth or Auth()  # type: ignore[arg-type]
        self._transport = Transport(connect_timeout=timeout, ssl_context=ssl_context, proxies=proxies,
                                    verify_tls=not insecure)
        self._lock = threading.Lock()
        self._auth_lock = threading.Lock()
        self._bearer: dict[str, str] | None = None
        self._basic = False
        self._tokens: dict[str, tuple[str, float]] = {}
        self.stats = RequestStats()

    @property
    def requests(self) -> int:
        """HTTP requests answered so far (all threads, all sources of this client)."""
        return self.stats.requests

    @property
    def bytes_transferred(self) -> int:
        """Body bytes received so far."""
        return self.stats.bytes

    def _credentials(self) -> Credentials | None:
        return self.auth.lookup(self.registry)

    def close(self) -> None:
        """Close every connection (a later request opens new ones)."""
        self._transport.close()

    def __enter__(self) -> "RegistryClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests ------------------------------------------------------------------------
    def _url(self, path: str) -> str:
        return f"{self._origin[0]}://{self._origin[1]}{path}"

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after and retry_after.strip().isdigit():
            return min(float(retry_after.strip()), _MAX_WAIT)
        return min(self.backoff * 2.0 ** attempt, _MAX_WAIT) * (0.5 + random.random() / 2)

    def _status_error(self, method: str, url: str, resp: Response, stats: RequestStats,
                      attempts: int = 1) -> EStargzError:
        """The typed error for an unexpected status (reads a little of the body)."""
        try:
            body = _read_body(resp, _MAX_DRAIN, stats, "error body")
        except _BODY_ERRORS:
            body = b""
        detail = _error_detail(body)
        where = f"{method} {url}: HTTP {resp.status} {_one_line(resp.reason)[:100]}"
        where += f" ({detail})" if detail else ""
        if attempts > 1:
            where += f", after {attempts} attempts"
        if resp.status == 404:
            return NotFoundError(where)
        if resp.status in (401, 403):
            given = " with the credentials given" if self._credentials() else " (no credentials given)"
            return RegistryError(f"{where}: access denied{given}", resp.status)
        if resp.status in _RETRY_STATUSES or resp.status >= 500:
            return RegistryError(where, resp.status)
        return FormatError(where)

    def request(self, method: str, path: str, *, handle: Callable[[Response], T],
                headers: Mapping[str, str] | None = None, scope: str | None = None,
                stats: RequestStats | None = None, authenticate: bool = True, body: bytes | None = None,
                expect: int = 0) -> T:
        """Send a request (a path on this registry, or an absolute URL) and return
        ``handle(response)``, which must read what it needs and raise on unwanted statuses.

        ``expect`` is the body size expected, which extends the deadline. ``handle`` is not
        called for redirects, challenges and retried statuses; it may be called again when
        reading the body fails on a transient error.
        """
        url = path if "://" in path else self._url(path)
        call = _Call(method, url, _origin_of(url), self.deadline + expect / _DEADLINE_BYTES_PER_SECOND,
                     time.monotonic() + self.max_retry_time, dict(headers or {}), scope, stats or self.stats,
                     authenticate, body)
        while True:
            outcome = self._attempt(call, handle)
            if isinstance(outcome, _Again):
                continue
            if not isinstance(outcome, _Retry):
                return outcome
            if call.attempt >= self.retries or time.monotonic() + outcome.delay > call.retry_deadline:
                cause = outcome.failure if isinstance(outcome.failure, BaseException) else None
                raise RegistryError(f"{method} {call.url}: {_one_line(outcome.failure)} "
                                    f"(gave up after {call.attempt + 1} attempts)") from cause
            time.sleep(outcome.delay)
            call.attempt += 1

    def _attempt(self, call: _Call, handle: Callable[[Response], T]) -> T | _Retry | _Again:
        """Send ``call`` once: the handled answer, or whether and when to try again."""
        send = self._headers(call)
        try:
            resp = self._transport.send(call.method, call.url, send, call.seconds, call.body)
            call.stats.request()
        except TRANSPORT_ERRORS as exc:
            if self._fall_back_to_http(call, exc):
                return _AGAIN
            return self._failed(call, exc)
        if _origin_of(call.url) == self._origin and self._origin[0] == "https":
            self._tls_answered = True
        try:
            return self._answer(call, resp, handle, send.get("Authorization"))
        except TRANSPORT_ERRORS as exc:
            return self._failed(call, exc)
        finally:
            resp.release(_MAX_DRAIN)

    def _headers(self, call: _Call) -> dict[str, str]:
        """The headers of the next attempt: credentials for this registry, none for another origin
        a redirect led to."""
        origin = _origin_of(call.url)
        send = {"User-Agent": _USER_AGENT, **call.headers}
        if call.authenticate and origin == self._origin:
            self._authorize(send, call.scope, call.stats)
        elif origin != call.first_origin:
            send = {k: v for k, v in send.items() if k.lower() != "authorization"}
        return send

    def _fall_back_to_http(self, call: _Call, exc: BaseException) -> bool:
        """With ``insecure``: whether a failed TLS handshake with the registry, which never
        answered over HTTPS, moves this and every later request to plain HTTP."""
        https = ("https", self._origin[1])
        if not self.insecure or not is_tls_failure(exc) or _origin_of(call.url) != https:
            return False
        with self._lock:
            if self._tls_answered:
                return False
            self._origin = ("http", self._origin[1])
            self.scheme = "http"
        call.url = "http" + call.url[len("https"):]
        if call.first_origin == https:
            call.first_origin = self._origin
        return True

    def _failed(self, call: _Call, exc: BaseException) -> _Retry:
        """A retry after a transient transport failure; the typed error for any other."""
        if isinstance(exc, DeadlineExceeded):
            raise self._late(call.method, call.url, call.seconds) from exc
        if is_tls_failure(exc):
            hint = "" if self.insecure else f": {_INSECURE_HINT}"
            raise RegistryError(f"{call.method} {call.url}: TLS failed ({_one_line(exc)[:200]}){hint}") from exc
        if isinstance(exc, TRANSIENT_ERRORS):
            return _Retry(exc, self._delay(call.attempt, None))
        raise RegistryError(f"{call.method} {call.url}: {_one_line(exc)}") from exc

    def _answer(self, call: _Call, resp: Response, handle: Callable[[Response], T],
                authorization: str | None) -> T | _Retry | _Again:
        """``handle(resp)``, or follow a redirect, answer a challenge, or retry a status."""
        status = resp.status
        location = resp.getheader("Location")
        if status in _REDIRECT_STATUSES and location:
            self._follow(call, location)
            return _AGAIN
        if status == 401 and call.authenticate and _origin_of(call.url) == self._origin and not call.challenged:
            call.challenged = True
            resp.release(_MAX_DRAIN)  # the token realm may be on this very connection
            self._on_challenge(resp.getheaders("WWW-Authenticate"), call.scope, call.stats, authorization, call.url)
            return _AGAIN
        if status not in _RETRY_STATUSES:
            return handle(resp)
        retry = _Retry(f"HTTP {status}", self._delay(call.attempt, resp.getheader("Retry-After")))
        if call.attempt >= self.retries or time.monotonic() + retry.delay > call.retry_deadline:
            raise self._status_error(call.method, call.url, resp, call.stats, call.attempt + 1)
        return retry

    def _follow(self, call: _Call, location: str) -> None:
        if call.redirects >= _MAX_REDIRECTS:
            raise FormatError(f"{call.method} {call.url}: more than {_MAX_REDIRECTS} redirects")
        call.url, call.redirects = self._redirect(call.url, location), call.redirects + 1

    @staticmethod
    def _late(method: str, url: str, seconds: float) -> RegistryError:
        return RegistryError(f"{method} {url}: no complete answer within the {seconds:g} s deadline")

    @staticmethod
    def _redirect(url: str, location: str) -> str:
        try:
            target = urljoin(url, location.strip())
        except ValueError:
            raise RegistryError(f"redirect from {url} to a malformed Location {_one_line(location)[:200]!r}") from None
        _origin_of(target)
        return target

    # -- authentication ------------------------------------------------------------------
    def _may_send_credentials(self, origin: tuple[str, str]) -> bool:
        """The registry itself, or an HTTPS origin it named while reached over HTTPS."""
        return origin == self._origin or (self._origin[0] == "https" and origin[0] == "https")

    @staticmethod
    def _basic_header(credentials: Credentials) -> str:
        pair = f"{credentials.username}:{credentials.password}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")

    def _cached_token(self, scope: str | None) -> str | None:
        with self._lock:
            cached = self._tokens.get(scope or "")
        return cached[0] if cached and cached[1] > time.monotonic() else None

    def _authorize(self, headers: dict[str, str], scope: str | None, stats: RequestStats) -> None:
        """Add the credentials that the registry asked for before, fetching a token if needed."""
        if self._bearer is not None:
            headers["Authorization"] = "Bearer " + (self._cached_token(scope) or self._fetch_token(scope, stats))
        elif self._basic:
            credentials = self._credentials()
            if credentials is not None:
                headers["Authorization"] = self._basic_header(credentials)

    def _on_challenge(self, values: Sequence[str], scope: str | None, stats: RequestStats, sent: str | None,
                      url: str) -> None:
        """Act on a 401's ``WWW-Authenticate`` values: get a token, or send Basic credentials."""
        challenges = _parse_challenges(values)
        bearer = challenges.get("bearer")
        credentials = self._credentials()
        if bearer and bearer.get("realm"):
            with self._lock:
                self._bearer = bearer
                if sent and sent == f"Bearer {self._tokens.get(scope or '', ('',))[0]}":
                    del self._tokens[scope or ""]  # refused: expired or revoked
            self._fetch_token(scope, stats, bearer.get("scope"))
        elif "basic" in challenges and credentials is not None and not sent:
            self._basic = True
        else:
            kinds = ", ".join(challenges) or "no WWW-Authenticate challenge"
            raise RegistryError(f"GET {url}: HTTP 401: authentication required ({_one_line(kinds)[:100]})"
                                + ("" if credentials else "; no credentials given")
                                + ("; the credentials sent were refused" if sent else ""), 401)

    def _fetch_token(self, scope: str | None, stats: RequestStats, challenge_scope: str | None = None) -> str:
        """A Bearer token for ``scope`` from the challenge's realm, cached until it expires."""
        with self._auth_lock:
            cached = self._cached_token(scope)
            if cached is not None:
                return cached
            bearer = self._bearer or {}
            realm = bearer.get("realm", "")
            origin = _origin_of(realm)
            credentials = self._credentials()
            if credentials is not None and not self._may_send_credentials(origin):
                raise RegistryError(f"refusing to send credentials for {self._origin[0]}://{self._origin[1]} "
                                    f"to the token realm {origin[0]}://{origin[1]}")
            query = [("service", bearer["service"])] if bearer.get("service") else []
            query += [("scope", s) for s in dict.fromkeys(x for x in (challenge_scope, scope) if x)]
            method, body, headers = "GET", None, {}
            if credentials is not None and credentials.identity_token is not None:
                method, url = "POST", realm
                body = urlencode([*query, ("grant_type", "refresh_token"), ("client_id", _USER_AGENT),
                                  ("refresh_token", credentials.identity_token)]).encode()
                headers["Content-Type"] = "application/x-www-form-urlencoded"
            else:
                url = realm + ("&" if "?" in realm else "?") + urlencode(query) if query else realm
                if credentials is not None:
                    headers["Authorization"] = self._basic_header(credentials)

            def handle(resp: Response) -> bytes:
                if resp.status != 200:
                    raise self._status_error(method, realm, resp, stats)
                return _read_body(resp, _MAX_SMALL_BODY, stats, "token answer")

            answer = self.request(method, url, handle=handle, headers=headers, stats=stats,
                                  authenticate=False, body=body)
            token, lifetime = _parse_token(answer, origin)
            with self._lock:
                self._tokens[scope or ""] = (token, time.monotonic() + lifetime * 0.9)
            return token

    # -- registry API --------------------------------------------------------------------
    def ping(self) -> None:
        """``GET /v2/`` (authenticating if asked); raises unless the registry answers 200."""
        def handle(resp: Response) -> None:
            if resp.status != 200:
                raise self._status_error("GET", "/v2/", resp, self.stats)
            _read_body(resp, _MAX_SMALL_BODY, self.stats, "/v2/ answer")

        self.request("GET", "/v2/", handle=handle)

    def get_manifest(self, repository: str, reference: str) -> Manifest:
        """The manifest or index named by a tag or digest, checked against the digest (the one
        asked for, else the registry's ``Docker-Content-Digest``)."""
        _check_repository(repository)
        by_digest = is_digest(reference)
        if not by_digest and not _TAG_RE.fullmatch(reference):
            raise ValueError(f"invalid tag or digest {reference!r}")
        path = f"/v2/{repository}/manifests/{reference}"

        def handle(resp: Response) -> tuple[bytes, str | None, str | None]:
            if resp.status != 200:
                raise self._status_error("GET", path, resp, self.stats)
            data = _read_body(resp, MAX_MANIFEST_SIZE, self.stats, f"manifest {repository}:{reference}")
            return data, resp.getheader("Content-Type"), resp.getheader("Docker-Content-Digest")

        data, content_type, header_digest = self.request(
            "GET", path, handle=handle, scope=f"repository:{repository}:pull",
            headers={"Accept": ", ".join(MANIFEST_MEDIA_TYPES)})
        expected = reference if by_digest else header_digest
        digest = digest_of(data, algorithm_of(expected))
        if expected and digest != expected:
            raise VerificationError(f"manifest {repository}:{reference} has digest {digest}, expected {expected}")
        return _parse_manifest(data, content_type, digest)

    def resolve_manifest(self, repository: str, reference: str | Manifest, *,
                         platform: str | None = None) -> Manifest:
        """The image manifest of a tag or digest (or of a fetched manifest), through indexes by
        platform: ``os/arch[/variant]``, default :func:`default_platform`."""
        manifest = self.get_manifest(repository, reference) if isinstance(reference, str) else reference
        for _ in range(_MAX_INDEX_DEPTH):
            if not manifest.is_index:
                return manifest
            descriptor = _select_platform(manifest, platform)
            manifest = self.get_manifest(repository, descriptor["digest"])
            if len(manifest.data) != descriptor["size"]:
                raise VerificationError(f"manifest {manifest.digest} is {len(manifest.data)} bytes, "
                                        f"the index says {descriptor['size']}")
        raise LimitError(f"indexes nested more than {_MAX_INDEX_DEPTH} deep in {repository}")

    def stat_blob(self, repository: str, digest: str, *, stats: RequestStats | None = None) -> dict[str, Any]:
        """``HEAD`` a blob: its descriptor (``mediaType``, ``digest``, ``size``)."""
        _check_repository(repository)
        _check_digest(digest)
        path = f"/v2/{repository}/blobs/{digest}"

        def handle(resp: Response) -> dict[str, Any]:
            if resp.status != 200:
                raise self._status_error("HEAD", path, resp, stats or self.stats)
            length, said = resp.getheader("Content-Length"), resp.getheader("Docker-Content-Digest")
            if not length or not length.isdigit():
                raise FormatError(f"HEAD {path}: no Content-Length")
            if said and said != digest:
                raise VerificationError(f"HEAD {path}: the registry says the digest is {said}")
            return {"mediaType": _media_type(resp.getheader("Content-Type")) or "application/octet-stream",
                    "digest": digest, "size": int(length)}

        return self.request("HEAD", path, handle=handle, scope=f"repository:{repository}:pull", stats=stats)

    # -- pushing -------------------------------------------------------------------------
    def has_blob(self, repository: str, digest: str) -> bool:
        """Whether the repository holds the blob (``HEAD``)."""
        try:
            self.stat_blob(repository, digest)
        except NotFoundError:
            return False
        return True

    def mount_blob(self, repository: str, digest: str, source_repository: str) -> str | None:
        """Ask for a cross-repository mount of a blob from ``source_repository`` of this registry.

        Returns None once mounted; otherwise the registry opened an upload instead, and its
        URL is returned for :meth:`upload_blob`."""
        _check_repository(source_repository)
        query = urlencode([("mount", digest), ("from", source_repository)])
        return self._start_upload(repository, digest, query)

    def cancel_upload(self, repository: str, location: str) -> None:
        """Drop an upload the registry opened (``DELETE``); a registry that refuses is left be."""
        def handle(resp: Response) -> None:
            return None

        try:
            self.request("DELETE", location, handle=handle, scope=_push_scope(repository))
        except EStargzError:
            pass

    def _start_upload(self, repository: str, digest: str, query: str = "") -> str | None:
        _check_repository(repository)
        _check_digest(digest)
        path = f"/v2/{repository}/blobs/uploads/" + (f"?{query}" if query else "")

        def handle(resp: Response) -> str | None:
            if resp.status == 201:
                return None
            if resp.status != 202:
                raise self._status_error("POST", path, resp, self.stats)
            return self._upload_location(resp, path)

        return self.request("POST", path, handle=handle, scope=_push_scope(repository), body=b"",
                            headers={"Content-Length": "0"})

    def _upload_location(self, resp: Response, path: str) -> str:
        location = resp.getheader("Location")
        if not location:
            raise FormatError(f"{path}: HTTP {resp.status} without a Location")
        target = self._redirect(path if "://" in path else self._url(path), location)
        if _origin_of(target) != self._origin:
            raise FormatError(f"{path}: the upload location {_one_line(location)[:200]!r} is on another origin")
        return target

    def upload_blob(self, repository: str, digest: str, fileobj: BinaryIO, size: int, *,
                    chunk_size: int = DEFAULT_UPLOAD_CHUNK, location: str | None = None) -> None:
        """Upload ``size`` bytes of ``fileobj`` (read from offset 0, seekable) as blob ``digest``.

        A chunked upload (``PATCH`` pieces of ``chunk_size`` bytes, then ``PUT ?digest=``): after
        a dropped connection the upload asks the registry how far it got and goes on from there,
        or starts over when the registry lost the session. The bytes are hashed as they are sent
        and the upload is not completed unless they match ``digest`` (VerificationError).
        ``location`` continues an upload the registry already opened (see :meth:`mount_blob`)."""
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        algorithm = digest.partition(":")[0]
        for _ in range(_UPLOAD_RESTARTS):
            url = location or self._start_upload(repository, digest)
            location = None
            if url is None:
                return
            hasher = new_hash(algorithm)
            url = self._send_chunks(repository, url, fileobj, size, chunk_size, hasher)
            if url is None:
                continue
            if hash_digest(hasher) != digest:
                raise VerificationError(f"blob {digest}: the bytes uploaded have digest "
                                        f"{algorithm}:{hasher.hexdigest()}")
            self._finish_upload(repository, url, digest)
            return
        raise RegistryError(f"upload of {digest} to {self.registry}/{repository} failed "
                            f"{_UPLOAD_RESTARTS} times")

    def _send_chunks(self, repository: str, url: str, fileobj: BinaryIO, size: int, chunk_size: int,
                     hasher: Any) -> str | None:
        """PATCH the bytes from offset 0 to ``size``; the URL to complete the upload, or None when
        the registry lost the session (start over)."""
        offset = 0
        resumes = 0
        while offset < size:
            fileobj.seek(offset)
            data = fileobj.read(min(chunk_size, size - offset))
            if not data:
                raise VerificationError(f"the blob ended at {offset} bytes, expected {size}")
            try:
                url = self._patch(repository, url, offset, data)
            except NotFoundError:
                return None
            except (RegistryError, _UploadOutOfStep) as exc:
                if isinstance(exc, RegistryError) and exc.status not in (None, *_RETRY_STATUSES):
                    raise
                resumes += 1
                if resumes > self.retries:
                    raise
                state = self._upload_status(repository, url)
                if state is None or state[1] > offset + len(data) or state[1] < offset:
                    return None
                url, reached = state
                if reached > offset:
                    hasher.update(data[:reached - offset])
                    offset = reached
                continue
            hasher.update(data)
            offset += len(data)
        return url

    def _patch(self, repository: str, url: str, offset: int, data: bytes) -> str:
        end = offset + len(data) - 1

        def handle(resp: Response) -> str:
            if resp.status == 416:
                raise _UploadOutOfStep()
            if resp.status != 202:
                raise self._status_error("PATCH", url, resp, self.stats)
            reached = _upload_range(resp.getheader("Range"))
            if reached is not None and reached != end + 1:
                raise _UploadOutOfStep()
            return self._upload_location(resp, url)

        return self.request("PATCH", url, handle=handle, scope=_push_scope(repository), body=data,
                            expect=len(data), headers={"Content-Type": "application/octet-stream",
                                     "Content-Range": f"{offset}-{end}", "Content-Length": str(len(data))})

    def _upload_status(self, repository: str, url: str) -> tuple[str, int] | None:
        """The upload's URL and the bytes the registry holds, or None if it lost the upload."""
        def handle(resp: Response) -> tuple[str, int] | None:
            if resp.status in (400, 404, 416) or resp.status >= 500:
                return None
            if resp.status != 204:
                raise self._status_error("GET", url, resp, self.stats)
            reached = _upload_range(resp.getheader("Range"))
            return (self._upload_location(resp, url), reached) if reached is not None else None

        try:
            return self.request("GET", url, handle=handle, scope=_push_scope(repository))
        except RegistryError:
            return None

    def _finish_upload(self, repository: str, url: str, digest: str) -> None:
        target = url + ("&" if urlsplit(url).query else "?") + urlencode([("digest", digest)])

        def handle(resp: Response) -> None:
            if resp.status not in (201, 204):
                raise self._status_error("PUT", url, resp, self.stats)
            said = resp.getheader("Docker-Content-Digest")
            if said and said != digest:
                raise VerificationError(f"the registry stored blob {said}, expected {digest}")

        self.request("PUT", target, handle=handle, scope=_push_scope(repository), body=b"",
                     headers={"Content-Length": "0", "Content-Type": "application/octet-stream"})

    def put_manifest(self, repository: str, reference: str, data: bytes, media_type: str) -> str:
        """``PUT`` a manifest or index under a tag or its digest; returns its digest."""
        _check_repository(repository)
        digest = digest_of(data)
        if is_digest(reference):
            if reference != digest_of(data, algorithm_of(reference)):
                raise VerificationError(f"manifest pushed as {reference} has digest {digest}")
        elif not _TAG_RE.fullmatch(reference):
            raise ValueError(f"invalid tag or digest {reference!r}")
        if len(data) > MAX_MANIFEST_SIZE:
            raise LimitError(f"manifest {digest} is {len(data)} bytes, over the {MAX_MANIFEST_SIZE}-byte limit")
        path = f"/v2/{repository}/manifests/{reference}"

        def handle(resp: Response) -> None:
            if resp.status not in (200, 201, 202):
                raise self._status_error("PUT", path, resp, self.stats)
            said = resp.getheader("Docker-Content-Digest")
            if said and said != digest and said.partition(":")[0] == "sha256":
                raise VerificationError(f"the registry stored manifest {said}, expected {digest}")

        self.request("PUT", path, handle=handle, scope=_push_scope(repository), body=data,
                     headers={"Content-Type": media_type})
        return digest

    def blob(self, repository: str, digest: str, size: int | None = None) -> "BlobSource":
        """A :class:`BlobSource` over a blob of this registry."""
        return BlobSource(self, repository, digest, size)


class _UploadOutOfStep(Exception):
    """The registry holds a different number of bytes of an upload than was sent."""


def _push_scope(repository: str) -> str:
    return f"repository:{repository}:pull,push"


def _upload_range(value: str | None) -> int | None:
    """Bytes an upload holds, from its ``Range: 0-<last>`` header (distribution says ``0--1``
    for none); None when absent or malformed."""
    match = _UPLOAD_RANGE_RE.fullmatch((value or "").strip())
    if not match or int(match.group(1)) != 0:
        return None
    return int(match.group(2)) + 1


def _parse_token(body: bytes, origin: tuple[str, str]) -> tuple[str, float]:
    """The token and its lifetime from a token answer."""
    where = f"token answer from {origin[0]}://{origin[1]}"
    try:
        answer = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise FormatError(f"{where} is not JSON") from None
    if not isinstance(answer, dict):
        raise FormatError(f"{where} is not a JSON object")
    token = answer.get("token") or answer.get("access_token")
    if not isinstance(token, str) or not _TOKEN_RE.fullmatch(token):
        raise FormatError(f"{where} has no usable token")
    return token, _token_lifetime(answer.get("expires_in"))


# -- blobs -----------------------------------------------------------------------------------
class BlobSource:
    """The estargz Source protocol over a registry blob: ``read_at`` sends a Range request.

    ``size`` comes from the descriptor or a HEAD request. A registry that ignores ranges (200)
    has the blob read whole once, digest-checked and kept in memory if it is at most
    ``max_whole_blob`` bytes; larger blobs raise LimitError. Thread-safe (pooled
    keep-alive connections); ``requests`` and ``bytes_transferred`` count this source's traffic.
    """

    def __init__(self, client: RegistryClient, repository: str, digest: str, size: int | None = None, *,
                 max_whole_blob: int = MAX_WHOLE_BLOB, owns_client: bool = False) -> None:
        _check_repository(repository)
        _check_digest(digest)
        self.client, self.repository, self.digest = client, repository, digest
        self.max_whole_blob = max_whole_blob
        self._owns_client = owns_client
        self._stats = RequestStats(client.stats)
        self._path = f"/v2/{repository}/blobs/{digest}"
        self._scope = f"repository:{repository}:pull"
        self._whole: bytes | None = None
        self._whole_lock = threading.Lock()
        self._multirange = True
        self.anchor = Anchor("none")
        """Where the TOC digest to check this blob's TOC against came from (set by :func:`open_layer`)."""
        if size is None:
            size = client.stat_blob(repository, digest, stats=self._stats)["size"]
        if size < 0:
            raise ValueError(f"negative blob size {size}")
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    @property
    def requests(self) -> int:
        """HTTP requests answered for this source (HEAD, ranges, retries, tokens)."""
        return self._stats.requests

    @property
    def bytes_transferred(self) -> int:
        """Body bytes received for this source."""
        return self._stats.bytes

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self._size:
            raise FormatError(f"range [{offset}, {offset + length}) lies outside the blob ({self._size} bytes)")

    def read_at(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        parts, position, end = [], offset, offset + length
        while position < end:
            whole = self._whole
            if whole is not None:
                parts.append(whole[position:end])
                break
            piece = self.client.request(
                "GET", self._path, scope=self._scope, stats=self._stats,
                headers={"Range": f"bytes={position}-{end - 1}", "Accept-Encoding": "identity"},
                expect=end - position, handle=functools.partial(self._answer, start=position, end=end))
            parts.append(piece)
            position += len(piece)
        return b"".join(parts)

    def _answer(self, resp: Response, start: int, end: int) -> bytes:
        """The bytes from ``start`` (some or all up to ``end``) in an answer to a range request."""
        if resp.status == 200:
            return self._load_whole(resp)[start:end]
        if resp.status != 206:
            raise self.client._status_error("GET", self._path, resp, self._stats)
        if _media_type(resp.getheader("Content-Type")).startswith("multipart/"):
            raise FormatError(f"GET {self._path}: multipart answer to a single range")
        first, last = self._range_of(resp.getheader("Content-Range"))
        if first != start or last >= end:
            raise FormatError(f"GET {self._path}: asked for bytes {start}-{end - 1}, got {first}-{last}")
        if resp.length is not None and resp.length != last - first + 1:
            raise FormatError(f"GET {self._path}: Content-Length {resp.length} for bytes {first}-{last}")
        return _read_exact(resp, last - first + 1, self._stats)

    def _range_of(self, content_range: str | None) -> tuple[int, int]:
        first, last, total = _content_range(content_range)
        if total is not None and total != self._size:
            raise VerificationError(f"blob {self.digest} is {total} bytes, expected {self._size}")
        return first, last

    def _load_whole(self, resp: Response) -> bytes:
        """Read a 200 answer whole (once), check its digest and keep it."""
        if self._size > self.max_whole_blob:
            raise LimitError(f"GET {self._path}: the registry ignores Range requests and the blob "
                             f"({self._size} bytes) is over the {self.max_whole_blob}-byte limit "
                             "for reading it whole")
        with self._whole_lock:
            if self._whole is None:
                if resp.length is not None and resp.length != self._size:
                    raise VerificationError(f"blob {self.digest} is {resp.length} bytes, expected {self._size}")
                data = _read_exact(resp, self._size, self._stats)
                digest = digest_of(data, algorithm_of(self.digest))
                if digest != self.digest:
                    raise VerificationError(f"blob has digest {digest}, expected {self.digest}")
                self._whole = data
            return self._whole

    def download(self, out: BinaryIO) -> None:
        """Write the whole blob to ``out``, checking its size and digest (VerificationError)."""
        def handle(resp: Response) -> None:
            if resp.status != 200:
                raise self.client._status_error("GET", self._path, resp, self._stats)
            if resp.length is not None and resp.length != self._size:
                raise VerificationError(f"blob {self.digest} is {resp.length} bytes, expected {self._size}")
            out.seek(0)
            out.truncate()
            hasher = new_hash(algorithm_of(self.digest))
            remaining = self._size
            while piece := resp.read(min(remaining + 1, BLOCK_SIZE)):
                if len(piece) > remaining:
                    raise VerificationError(f"blob {self.digest} is over the {self._size} bytes expected")
                self._stats.received(len(piece))
                hasher.update(piece)
                out.write(piece)
                remaining -= len(piece)
            if remaining:
                raise VerificationError(f"blob {self.digest} is {self._size - remaining} bytes, expected {self._size}")
            digest = hash_digest(hasher)
            if digest != self.digest:
                raise VerificationError(f"blob has digest {digest}, expected {self.digest}")

        self.client.request("GET", self._path, scope=self._scope, stats=self._stats, expect=self._size,
                            headers={"Accept-Encoding": "identity"}, handle=handle)

    def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """The bytes of several ``(offset, length)`` ranges, in as few multi-range requests as
        the registry allows (falling back to one request per range when it refuses)."""
        for offset, length in ranges:
            self._check(offset, length)
        found: dict[tuple[int, int], bytes] = {(o, 0): b"" for o, n in ranges if n == 0}
        wanted = sorted({(o, n) for o, n in ranges if n > 0})
        for batch in (wanted[i:i + _MAX_RANGES] for i in range(0, len(wanted), _MAX_RANGES)):
            pieces: list[tuple[int, bytes]] = []
            if len(batch) > 1 and self._multirange and self._whole is None:
                spec = ",".join(f"{o}-{o + n - 1}" for o, n in batch)
                pieces = self.client.request(
                    "GET", self._path, scope=self._scope, stats=self._stats,
                    headers={"Range": f"bytes={spec}", "Accept-Encoding": "identity"},
                    expect=sum(n for _, n in batch), handle=functools.partial(self._multi_answer, batch=batch))
            for offset, length in batch:
                data = next((p[offset - s:offset - s + length] for s, p in pieces
                             if s <= offset and offset + length <= s + len(p)), None)
                found[(offset, length)] = data if data is not None else self.read_at(offset, length)
        return [found[(o, n)] for o, n in ranges]

    def _multi_answer(self, resp: Response, batch: list[tuple[int, int]]) -> list[tuple[int, bytes]]:
        if resp.status == 200 and self._size <= self.max_whole_blob:
            return [(0, self._load_whole(resp))]
        if resp.status in (200, 416):  # ranges refused: one range a request from now on
            self._multirange = False
            return []
        if resp.status != 206:
            raise self.client._status_error("GET", self._path, resp, self._stats)
        content_type = resp.getheader("Content-Type") or ""
        if not _media_type(content_type).startswith("multipart/byteranges"):
            first, last = self._range_of(resp.getheader("Content-Range"))  # coalesced into one
            return [(first, _read_exact(resp, last - first + 1, self._stats))]
        boundary = _header_params(content_type.partition(";")[2]).get("boundary")
        if not boundary:
            raise FormatError(f"GET {self._path}: multipart answer without a boundary")
        limit = sum(n for _, n in batch) + 512 * len(batch) + 4096
        return self._parse_multipart(_read_body(resp, limit, self._stats, "multipart answer"), boundary.encode())

    def _parse_multipart(self, body: bytes, boundary: bytes) -> list[tuple[int, bytes]]:
        delimiter = b"--" + boundary
        position = body.find(delimiter)
        pieces: list[tuple[int, bytes]] = []
        while position >= 0:
            position += len(delimiter)
            if body.startswith(b"--", position):
                return pieces
            head_end = body.find(b"\r\n\r\n", position)
            if head_end < 0:
                raise FormatError(f"GET {self._path}: truncated multipart answer")
            content_range = None
            for line in body[position:head_end].split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-range":
                    content_range = value.strip().decode("latin-1")
            first, last = self._range_of(content_range)
            data_start, data_end = head_end + 4, head_end + 4 + last - first + 1
            if not body.startswith(b"\r\n" + delimiter, data_end):
                raise FormatError(f"GET {self._path}: multipart part {first}-{last} has the wrong length")
            pieces.append((first, body[data_start:data_end]))
            position = data_end + 2
        raise FormatError(f"GET {self._path}: multipart answer without its boundary")

    def close(self) -> None:
        """Drop the in-memory copy, and close the client if this source owns it."""
        self._whole = None
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> "BlobSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- layers ----------------------------------------------------------------------------------
def open_layer(reference: str | Reference, layer_index: int | str | None = None, *,
               platform: str | None = None, verify_with: EllipticCurvePublicKey | None = None,
               **client_options: Any) -> tuple[BlobSource, dict[str, Any]]:
    """A layer of a remote image as a :class:`BlobSource` and its descriptor.

    ``reference`` names a tag or manifest digest (indexes are resolved by ``platform``,
    ``os/arch[/variant]``, default :func:`default_platform`), and ``layer_index`` picks the
    layer: an index (negative counts from the top), a layer digest, or None for an image with
    one layer. A reference ``host/repo@sha256:…`` naming a blob is that layer (its descriptor
    has no annotations). ``client_options`` go to :class:`RegistryClient`. The source owns its
    client: close it when done. Use ``estargz.open(source, annotations=descriptor.get("annotations"))``:
    the TOC digest annotation of a manifest whose digest was checked anchors the TOC (the
    reader refuses a TOC that does not match it); ``source.anchor`` tells which :class:`Anchor`
    the layer has.

    ``verify_with`` (an ECDSA public key, see :func:`estargz.sign.load_public_key`) first checks
    a sigstore signature of the manifest the reference names (VerificationError if there is
    none by that key for this image), and then requires the layer's TOC digest annotation: the
    anchor is then ``signature``.
    """
    ref = parse_reference(reference) if isinstance(reference, str) else reference
    client_options.setdefault("scheme", ref.scheme)
    client = RegistryClient(ref.registry, **client_options)
    try:
        if verify_with is not None:
            return _open_signed_layer(client, ref, layer_index, platform, verify_with)
        if ref.digest and layer_index is None and platform is None:
            try:
                descriptor = client.stat_blob(ref.repository, ref.digest)
            except NotFoundError:
                pass
            else:
                if descriptor["mediaType"] not in MANIFEST_MEDIA_TYPES:
                    source = BlobSource(client, ref.repository, ref.digest, descriptor["size"], owns_client=True)
                    return source, descriptor
        manifest = client.resolve_manifest(ref.repository, ref.reference, platform=platform)
        descriptor = _select_layer(manifest, layer_index)
        source = BlobSource(client, ref.repository, descriptor["digest"], descriptor["size"], owns_client=True)
        source.anchor = Anchor.of(manifest, descriptor, ref.digest is not None)
        return source, descriptor
    except BaseException:
        client.close()
        raise


def _open_signed_layer(client: RegistryClient, ref: Reference, layer_index: int | str | None,
                       platform: str | None, key: EllipticCurvePublicKey) -> tuple[BlobSource, dict[str, Any]]:
    """The layer of a signed image: signature, then manifest digest, then TOC digest annotation."""
    from .sign import verify_image

    top = client.get_manifest(ref.repository, ref.reference)
    verify_image(client, ref, top.digest, key)
    manifest = client.resolve_manifest(ref.repository, top, platform=platform)
    descriptor = _select_layer(manifest, layer_index)
    anchor = Anchor.of(manifest, descriptor, True)
    if anchor.toc_digest is None:
        raise VerificationError(f"layer {descriptor['digest']} of the signed image {top.digest} has no TOC "
                                "digest annotation to anchor a lazy read")
    source = BlobSource(client, ref.repository, descriptor["digest"], descriptor["size"], owns_client=True)
    source.anchor = Anchor("signature", top.digest, anchor.toc_digest, anchor.annotation)
    return source, descriptor
