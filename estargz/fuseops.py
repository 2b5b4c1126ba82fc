"""The mfusepy operations of ``estargz mount``; imported only once mfusepy is known to load."""

from __future__ import annotations

import errno
import stat
import threading
from typing import Any

import mfusepy

from .errors import EStargzError
from .mountfs import _BLOCK_SIZE, _NAME_MAX, _TYPE_BITS, _WRITE_FLAGS, MountedImage
from .overlay import Node


class FuseOperations(mfusepy.Operations):
    """Read-only FUSE operations over a mounted image: paths resolved in its merged tree;
    ``mounted`` is set once libfuse has mounted the file system."""

    use_ns = True

    def __init__(self, image: MountedImage, mounted: threading.Event) -> None:
        self._image = image
        self._mounted = mounted
        self._handles: dict[int, Node] = {}
        self._next = 0
        self._lock = threading.Lock()

    def init(self, path: str) -> None:
        self._mounted.set()

    def _node(self, path: str) -> Node:
        node = self._image.tree.lookup(path)
        if node is None:
            raise mfusepy.FuseOSError(errno.ENOENT)
        return node

    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        return self._image.attributes(self._node(path))

    def readdir(self, path: str, fh: int) -> list[Any]:
        node = self._node(path)
        if not node.is_dir():
            raise mfusepy.FuseOSError(errno.ENOTDIR)
        parent = self._image.tree.lookup(path.rpartition("/")[0]) or node
        children = ((name, {"st_ino": child.inode, "st_mode": _TYPE_BITS[child.entry.type]}, 0)
                    for name, child in node.children.items())
        return [(".", {"st_ino": node.inode, "st_mode": stat.S_IFDIR}, 0),
                ("..", {"st_ino": parent.inode, "st_mode": stat.S_IFDIR}, 0), *children]

    def readlink(self, path: str) -> str:
        node = self._node(path)
        if node.entry.type != "symlink":
            raise mfusepy.FuseOSError(errno.EINVAL)
        return node.entry.link_name

    def open(self, path: str, flags: int) -> int:
        if flags & _WRITE_FLAGS:
            raise mfusepy.FuseOSError(errno.EROFS)
        node = self._node(path)
        with self._lock:
            self._next += 1
            self._handles[self._next] = node
            return self._next

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        node = self._handles.get(fh) or self._node(path)
        try:
            return self._image.read(node, offset, size)
        except (EStargzError, OSError) as exc:
            self._image.failed(path, exc)
            raise mfusepy.FuseOSError(errno.EIO) from None

    def release(self, path: str, fh: int) -> int:
        with self._lock:
            self._handles.pop(fh, None)
        return 0

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        value = self._node(path).entry.xattrs.get(name)
        if value is None:
            raise mfusepy.FuseOSError(mfusepy.ENOATTR)
        return value

    def listxattr(self, path: str) -> list[str]:
        return list(self._node(path).entry.xattrs)

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": _BLOCK_SIZE, "f_frsize": _BLOCK_SIZE, "f_namemax": _NAME_MAX,
                "f_files": self._image.tree.inodes}

