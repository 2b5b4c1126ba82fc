"""Small checks shared by the test modules, written independently of estargz's own code."""

from __future__ import annotations

import gzip
import hashlib
import ssl
import sys
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["sha256", "clean", "gzip_members", "gunzip"]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def clean(name: str) -> str:
    """Go's ``path.Clean("/" + name)`` without the leading slash, as readers clean TOC names."""
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
        else:
            parts.append(part)
    return "/".join(parts)


def gzip_members(blob: bytes) -> list[int]:
    """Start offsets of the gzip members of ``blob``, found with zlib alone."""
    starts, pos = [], 0
    while pos < len(blob):
        inflater = zlib.decompressobj(31)
        inflater.decompress(blob[pos:])
        assert inflater.eof, f"gzip member at {pos} is incomplete"
        starts.append(pos)
        pos = len(blob) - len(inflater.unused_data)
    return starts


def gunzip(blob: bytes) -> bytes:
    """Every member inflated (gzip.decompress reads multi-member streams)."""
    return gzip.decompress(blob)


class QuietServer(ThreadingHTTPServer):
    """A loopback test server on daemon threads; connections the client drops or times out (a
    body it would not read, a deadline it enforced) are no error."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLError, TimeoutError)):
            super().handle_error(request, client_address)


class QuietHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive, no request log; GET and HEAD go to ``_serve``."""

    protocol_version = "HTTP/1.1"
    server: Any

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def _serve(self) -> None:
        raise NotImplementedError
