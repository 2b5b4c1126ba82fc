"""HTTP transport for registries on urllib3: pooled connections, proxies from the environment,
and an overall deadline per request (connect, headers and body), enforced by a watchdog that shuts
the socket of a request that outlives it."""

from __future__ import annotations

import heapq
import itertools
import socket
import ssl
import threading
import time
import urllib.request
import warnings
from typing import Any, Mapping
from urllib.parse import urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

__all__ = [
    "Transport", "Response", "Deadline", "DeadlineExceeded", "TRANSIENT_ERRORS", "TRANSPORT_ERRORS", "is_tls_failure",
]


class DeadlineExceeded(urllib3.exceptions.TimeoutError):
    """A request did not end within its deadline."""

#: Failures worth another try: refused or reset connections, timeouts, broken answers.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    urllib3.exceptions.ProtocolError, urllib3.exceptions.NewConnectionError,
    urllib3.exceptions.TimeoutError, ConnectionError, TimeoutError,
)
#: Every failure of the transport itself (a request that got no usable answer).
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (urllib3.exceptions.HTTPError, OSError, ValueError)

def is_tls_failure(exc: BaseException) -> bool:
    """Whether a transport failure is a failed TLS handshake or certificate check (a server that
    does not speak TLS answers the handshake with something else)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, (ssl.SSLError, urllib3.exceptions.SSLError)):
            return True
        seen.add(id(current))
        nested = [arg for arg in current.args if isinstance(arg, BaseException)]
        current = current.__cause__ or current.__context__ or (nested[0] if nested else None)
    return False


_POOLS = 8  # origins kept: the registry, its token realm, storage redirects
_POOL_SIZE = 32  # kept-alive connections per origin, one per concurrent reader thread
_local = threading.local()


class Deadline:
    """The end of one request: once it passes, the request's connection is shut down."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.expired = False
        self.done = False
        self._connections: list[HTTPConnection] = []
        self._lock = threading.Lock()

    def remaining(self) -> float:
        return max(self.at - time.monotonic(), 0.0)

    def attach(self, conn: HTTPConnection) -> None:
        with self._lock:
            self._connections.append(conn)
            if not self.expired:
                return
        _shut(conn)

    def finish(self) -> None:
        """The request is over: its connection may serve others and must not be shut."""
        with self._lock:
            self.done = True
            self._connections.clear()

    def expire(self) -> None:
        with self._lock:
            if self.done:
                return
            self.expired = True
            connections = list(self._connections)
        for conn in connections:
            _shut(conn)


def _shut(conn: HTTPConnection) -> None:
    sock = getattr(conn, "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _Watchdog:
    """One daemon thread that expires deadlines in time order."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Deadline]] = []
        self._counter = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def watch(self, deadline: Deadline) -> None:
        with self._cond:
            heapq.heappush(self._heap, (deadline.at, next(self._counter), deadline))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="estargz-deadlines", daemon=True)
                self._thread.start()
            if self._heap[0][2] is deadline:  # the earliest: the thread must wake sooner
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                at, _, deadline = self._heap[0]
                wait = at - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
            deadline.expire()


_WATCHDOG = _Watchdog()


class _GuardedMixin:
    """Attaches the connection to the calling thread's current deadline before each request."""

    def request(self, *args: Any, **kwargs: Any) -> None:
        deadline: Deadline | None = getattr(_local, "deadline", None)
        if deadline is not None:
            deadline.attach(self)  # type: ignore[arg-type]
        super().request(*args, **kwargs)  # type: ignore[misc]


class _GuardedHTTPConnection(_GuardedMixin, HTTPConnection):
    pass


class _GuardedHTTPSConnection(_GuardedMixin, HTTPSConnection):
    pass


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


_POOL_CLASSES = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}


class Response:
    """An answer whose headers have arrived; the body is read on demand, within the deadline."""

    def __init__(self, raw: urllib3.BaseHTTPResponse, deadline: Deadline) -> None:
        self._raw = raw
        self.deadline = deadline
        self.status: int = raw.status
        self.reason: str = raw.reason or ""

    def getheader(self, name: str) -> str | None:
        return self._raw.headers.get(name)

    def getheaders(self, name: str) -> list[str]:
        return self._raw.headers.getlist(name)

    @property
    def length(self) -> int | None:
        """Body bytes still to come, if the answer said (Content-Length)."""
        return self._raw.length_remaining

    def read(self, amount: int) -> bytes:
        try:
            data = self._raw.read(amount, decode_content=False)
        except TRANSPORT_ERRORS as exc:
            if self.deadline.expired or isinstance(exc, urllib3.exceptions.ReadTimeoutError):
                raise DeadlineExceeded(str(exc)) from exc
            raise
        if not data and amount and self.deadline.expired:
            raise DeadlineExceeded("the body did not end in time")
        return data

    def release(self, drain_limit: int) -> None:
        """Give the connection back to the pool: drain a small unread body, drop it otherwise."""
        remaining = self._raw.length_remaining
        try:
            if remaining is not None and remaining <= drain_limit and not self.deadline.expired:
                self._raw.drain_conn()
            else:
                self._raw.close()
        except TRANSPORT_ERRORS:
            self._raw.close()
        self.deadline.finish()
        self._raw.release_conn()


def _unverified_context() -> ssl.SSLContext:
    """A TLS context that checks neither the certificate nor the host name."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class Transport:
    """Pooled HTTP(S) connections, through ``HTTPS_PROXY``/``HTTP_PROXY`` unless ``NO_PROXY``
    names the host. Thread-safe. With ``verify_tls`` false, HTTPS certificates are not checked."""

    def __init__(self, *, connect_timeout: float, ssl_context: ssl.SSLContext | None = None,
                 proxies: Mapping[str, str] | None = None, verify_tls: bool = True) -> None:
        self.connect_timeout = connect_timeout
        self._pool_options: dict[str, Any] = {"maxsize": _POOL_SIZE, "retries": False}
        if not verify_tls:
            if ssl_context is not None:
                raise ValueError("give an ssl_context or turn TLS verification off, not both")
            ssl_context = _unverified_context()
            self._pool_options["cert_reqs"] = "CERT_NONE"
            warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
        if ssl_context is not None:
            self._pool_options["ssl_context"] = ssl_context
        self._proxies = dict(urllib.request.getproxies_environment() if proxies is None else proxies)
        self._managers: dict[str | None, urllib3.PoolManager] = {}
        self._lock = threading.Lock()

    def _manager(self, url: str) -> urllib3.PoolManager:
        parts = urlsplit(url)
        proxy = self._proxies.get(parts.scheme)
        bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
        if proxy and bypass(parts.hostname or "", self._proxies):
            proxy = None
        with self._lock:
            manager = self._managers.get(proxy)
            if manager is None:
                if proxy:
                    manager = urllib3.ProxyManager(proxy, num_pools=_POOLS, **self._pool_options)
                else:
                    manager = urllib3.PoolManager(num_pools=_POOLS, **self._pool_options)
                manager.pool_classes_by_scheme = _POOL_CLASSES
                self._managers[proxy] = manager
        return manager

    def send(self, method: str, url: str, headers: Mapping[str, str], seconds: float,
             body: bytes | None = None) -> Response:
        """Send a request and wait for its headers; the whole exchange must end within ``seconds``.

        Raises urllib3/OS errors (:data:`TRANSPORT_ERRORS`); the deadline's ``expired`` tells a
        request cut short by it."""
        deadline = Deadline(seconds)
        _WATCHDOG.watch(deadline)
        timeout = urllib3.Timeout(connect=min(self.connect_timeout, seconds), read=seconds)
        _local.deadline = deadline
        try:
            raw = self._manager(url).urlopen(
                method, url, body=body, headers=dict(headers), redirect=False, retries=False,
                preload_content=False, decode_content=False, timeout=timeout, assert_same_host=False)
        except TRANSPORT_ERRORS as exc:
            deadline.finish()
            if deadline.expired or isinstance(exc, urllib3.exceptions.ReadTimeoutError):
                raise DeadlineExceeded(str(exc)) from exc
            raise
        except BaseException:
            deadline.finish()
            raise
        finally:
            _local.deadline = None
        return Response(raw, deadline)

    def close(self) -> None:
        with self._lock:
            managers, self._managers = list(self._managers.values()), {}
        for manager in managers:
            manager.clear()
