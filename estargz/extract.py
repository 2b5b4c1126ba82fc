"""Extract a layer to a directory without ever writing outside it.

Every path is walked one component at a time from the target directory with ``O_NOFOLLOW``, so
neither ``..`` (names are cleaned anyway) nor a symlink planted by the layer can redirect a write.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import FormatError

if TYPE_CHECKING:
    from .reader import Entry, Reader

__all__ = ["extract", "ExtractReport"]

_COPY_BLOCK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


@dataclass
class ExtractReport:
    """What :func:`extract` wrote, and what it could not create (with the reason)."""

    entries: int = 0
    bytes: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


class _Tree:
    """Directory file descriptors below the extraction root, opened without following symlinks."""

    def __init__(self, root: str) -> None:
        os.makedirs(root, exist_ok=True)
        # The destination itself may be a symlink to a directory (as with tar -C); below it,
        # nothing is followed.
        self.root_fd = os.open(root, _DIR_FLAGS & ~os.O_NOFOLLOW)
        self._fds: dict[str, int] = {"": self.root_fd}

    def dir_fd(self, path: str) -> int:
        fd = self._fds.get(path)
        if fd is not None:
            return fd
        parent, _, name = path.rpartition("/")
        parent_fd = self.dir_fd(parent)
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            os.mkdir(name, 0o755, dir_fd=parent_fd)
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise FormatError(f"refusing to extract below {path!r}: it is not a directory") from None
            raise
        self._fds[path] = fd
        return fd

    def clear(self, parent_fd: int, name: str, *, keep_dir: bool = False) -> bool:
        """Remove whatever is at ``name``; return True if a directory was kept there."""
        try:
            st = os.lstat(name, dir_fd=parent_fd)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            raise FormatError(f"refusing to replace directory {name!r} with a non-directory")
        os.unlink(name, dir_fd=parent_fd)
        return False

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def _split(name: str) -> tuple[str, str]:
    parent, _, base = name.rpartition("/")
    return parent, base


def extract(reader: Reader, dest: str | os.PathLike[str]) -> ExtractReport:
    """Write every entry of ``reader`` below ``dest`` (created if needed) and return a report.

    File contents are verified chunk by chunk as they are read. Ownership is applied when running
    as root; device nodes that cannot be created (not root) are listed in ``report.skipped``.
    Whiteout files (``.wh.*``) are written as the ordinary files they are in the layer.
    """
    report = ExtractReport()
    tree = _Tree(os.fspath(dest))
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    directories: list[tuple[str, Entry]] = []
    try:
        for entry in reader:
            if not entry.name:
                continue
            parent, base = _split(entry.name)
            parent_fd = tree.dir_fd(parent)
            report.entries += 1
            if entry.type == "dir":
                if not tree.clear(parent_fd, base, keep_dir=True):
                    os.mkdir(base, 0o700, dir_fd=parent_fd)
                directories.append((entry.name, entry))
                continue
            tree.clear(parent_fd, base)
            if entry.type == "reg":
                report.bytes += _write_file(reader, entry, parent_fd, base, as_root)
            elif entry.type == "symlink":
                os.symlink(entry.link_name, base, dir_fd=parent_fd)
                _set_owner_and_time(entry, base, parent_fd, as_root, follow=False)
            elif entry.type == "hardlink":
                target = reader.lookup(entry.name)
                target_parent, target_base = _split(target.name)
                try:
                    os.link(target_base, base, src_dir_fd=tree.dir_fd(target_parent),
                            dst_dir_fd=parent_fd, follow_symlinks=False)
                except FileNotFoundError:
                    raise FormatError(f"hardlink {entry.name!r} comes before its target {target.name!r}") from None
            elif entry.type == "fifo":
                os.mkfifo(base, entry.permissions, dir_fd=parent_fd)
                _set_owner_and_time(entry, base, parent_fd, as_root)
            elif entry.type in ("char", "block"):
                kind = stat.S_IFCHR if entry.type == "char" else stat.S_IFBLK
                try:
                    os.mknod(base, kind | entry.permissions, os.makedev(entry.dev_major, entry.dev_minor),
                             dir_fd=parent_fd)
                except PermissionError as exc:
                    report.skipped.append((entry.name, exc.strerror or "permission denied"))
                    continue
                _set_owner_and_time(entry, base, parent_fd, as_root)
            else:
                report.skipped.append((entry.name, f"unknown entry type {entry.type!r}"))
        for name, entry in reversed(directories):
            _set_attributes(entry, tree.dir_fd(name), as_root)
    finally:
        tree.close()
    return report


def _write_file(reader: Reader, entry: Entry, parent_fd: int, base: str, as_root: bool) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(base, flags, 0o600, dir_fd=parent_fd)
    written = 0
    try:
        with reader.open(entry.name) as src:
            while block := src.read(_COPY_BLOCK):
                os.write(fd, block)
                written += len(block)
        _set_attributes(entry, fd, as_root)
    finally:
        os.close(fd)
    return written


def _set_attributes(entry: Entry, fd: int, as_root: bool) -> None:
    """Owner (as root), xattrs, permissions and modification time of an open file or directory.

    The owner comes first: changing it clears ``security.capability`` and setuid bits.
    """
    if as_root:
        os.fchown(fd, entry.uid, entry.gid)
    for key, value in entry.xattrs.items():
        try:
            os.setxattr(fd, key, value)
        except OSError:
            pass  # namespace not writable here (e.g. trusted.* without privileges)
    os.fchmod(fd, entry.permissions)
    mtime = entry.mtime
    if mtime is not None:
        os.utime(fd, (mtime.timestamp(), mtime.timestamp()))


def _set_owner_and_time(entry: Entry, base: str, parent_fd: int, as_root: bool, follow: bool = True) -> None:
    """Owner (as root), permissions (not for symlinks) and time of a node created by name."""
    if as_root:
        os.chown(base, entry.uid, entry.gid, dir_fd=parent_fd, follow_symlinks=follow)
    if follow:  # mkfifo and mknod apply the umask
        os.chmod(base, entry.permissions, dir_fd=parent_fd)
    mtime = entry.mtime
    if mtime is not None and (follow or os.utime in os.supports_follow_symlinks):
        os.utime(base, (mtime.timestamp(), mtime.timestamp()), dir_fd=parent_fd, follow_symlinks=follow)
