"""Extract a layer to a directory without ever writing outside it.

Every path is walked one component at a time from the target directory with ``O_NOFOLLOW``, so
neither ``..`` (names are cleaned anyway) nor a symlink planted by the layer can redirect a write.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import FormatError, LimitError
from .output import open_temp_at
from .source import BLOCK_SIZE

if TYPE_CHECKING:
    from .reader import Entry, Reader

__all__ = ["extract", "ExtractReport"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
#: Directory descriptors kept open at most (besides the root), whatever the number of directories.
MAX_OPEN_DIRECTORIES = 64
#: Largest uid or gid applied; ``2**32 - 1`` is ``(uid_t) -1``, which means "leave unchanged".
_MAX_ID = 2**32 - 2
_DEVICE_OUT_OF_RANGE = "device number out of range"


@dataclass
class ExtractReport:
    """What :func:`extract` wrote, and what it could not create (with the reason)."""

    entries: int = 0
    bytes: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


class _Tree:
    """Directory descriptors below the extraction root, opened without following symlinks.

    At most :data:`MAX_OPEN_DIRECTORIES` stay open (least recently used ones are closed, and
    reopened by walking down from the root again), so deep or wide layers need few descriptors.
    A descriptor returned by :meth:`dir_fd` is valid until the next call.
    """

    def __init__(self, root: str) -> None:
        os.makedirs(root, exist_ok=True)
        # The destination itself may be a symlink to a directory (as with tar -C); below it,
        # nothing is followed.
        self.root_fd = os.open(root, _DIR_FLAGS & ~os.O_NOFOLLOW)
        self._fds: OrderedDict[str, int] = OrderedDict()

    def dir_fd(self, path: str) -> int:
        if not path:
            return self.root_fd
        fd = self._fds.get(path)
        if fd is not None:
            self._fds.move_to_end(path)
            return fd
        parts = path.split("/")
        known = len(parts) - 1
        while known and "/".join(parts[:known]) not in self._fds:
            known -= 1
        fd = self.dir_fd("/".join(parts[:known]))
        for depth in range(known, len(parts)):
            fd = self._open_child(fd, parts[depth], "/".join(parts[:depth + 1]))
        return fd

    def _open_child(self, parent_fd: int, name: str, path: str) -> int:
        """Open (creating it if missing) directory ``name`` of ``parent_fd``, cached as ``path``."""
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
        if len(self._fds) > MAX_OPEN_DIRECTORIES:
            os.close(self._fds.popitem(last=False)[1])
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
        os.close(self.root_fd)


def _split(name: str) -> tuple[str, str]:
    parent, _, base = name.rpartition("/")
    return parent, base


def extract(reader: Reader, dest: str | os.PathLike[str]) -> ExtractReport:
    """Write every entry of ``reader`` below ``dest`` (created if needed) and return a report.

    File contents are verified chunk by chunk as they are read. Ownership is applied when running
    as root; device nodes that cannot be created (not root) are listed in ``report.skipped``.
    Whiteout files (``.wh.*``) are written as the ordinary files they are in the layer.

    As GNU tar does, entries that cannot exist here are skipped and listed in ``report.skipped``:
    a name with a component longer than the file system allows (``NAME_MAX``, and everything
    below such a directory), a symlink with an empty target, and a device node whose numbers this
    system cannot represent. A NUL byte in a name, link target or xattr name raises FormatError;
    a uid or gid outside ``0 .. 2**32 - 2`` raises LimitError.
    """
    report = ExtractReport()
    tree = _Tree(os.fspath(dest))
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    directories: list[tuple[str, Entry]] = []
    try:
        for entry in reader:
            if not entry.name:
                continue
            _check_entry(entry)
            report.entries += 1
            try:
                reason = _extract_entry(reader, entry, tree, as_root, report)
            except OSError as exc:
                if exc.errno != errno.ENAMETOOLONG:
                    raise
                reason = "file name too long"
            if reason is not None:
                report.skipped.append((entry.name, reason))
            elif entry.type == "dir":
                directories.append((entry.name, entry))
        for name, entry in reversed(directories):
            _set_attributes(entry, tree.dir_fd(name), as_root)
    finally:
        tree.close()
    return report


def _check_entry(entry: Entry) -> None:
    """Refuse what no file system can hold: NUL bytes in names, link targets and xattr names;
    ids outside ``uid_t``."""
    if any("\x00" in text for text in (entry.name, entry.link_name, *entry.xattrs)):
        raise FormatError(f"entry {entry.name!r} has a NUL byte in its name, link target or xattr names")
    for what, value in (("uid", entry.uid), ("gid", entry.gid)):
        if not 0 <= value <= _MAX_ID:
            raise LimitError(f"entry {entry.name!r} has {what} {value}, outside 0..{_MAX_ID}")


def _extract_entry(reader: Reader, entry: Entry, tree: _Tree, as_root: bool, report: ExtractReport) -> str | None:
    """Create one entry; return why it was skipped, or None."""
    parent, base = _split(entry.name)
    parent_fd = tree.dir_fd(parent)
    if entry.type == "dir":
        if not tree.clear(parent_fd, base, keep_dir=True):
            os.mkdir(base, 0o700, dir_fd=parent_fd)
        return None
    if entry.type == "symlink" and not entry.link_name:
        return "empty symlink target"
    tree.clear(parent_fd, base)
    if entry.type == "reg":
        report.bytes += _write_file(reader, entry, parent_fd, base, as_root)
    elif entry.type == "symlink":
        os.symlink(entry.link_name, base, dir_fd=parent_fd)
        _set_owner_and_time(entry, base, parent_fd, as_root, follow=False)
    elif entry.type == "hardlink":
        _link(reader, entry, tree, base)
    elif entry.type == "fifo":
        os.mkfifo(base, entry.permissions, dir_fd=parent_fd)
        _set_owner_and_time(entry, base, parent_fd, as_root)
    elif entry.type in ("char", "block"):
        return _make_device(entry, parent_fd, base, as_root)
    else:
        return f"unknown entry type {entry.type!r}"
    return None


def _make_device(entry: Entry, parent_fd: int, base: str, as_root: bool) -> str | None:
    """Create a character or block device; return why it was skipped, or None."""
    kind = stat.S_IFCHR if entry.type == "char" else stat.S_IFBLK
    try:
        os.mknod(base, kind | entry.permissions, os.makedev(entry.dev_major, entry.dev_minor), dir_fd=parent_fd)
    except PermissionError as exc:
        return exc.strerror or "permission denied"
    except OverflowError:
        return _DEVICE_OUT_OF_RANGE
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return _DEVICE_OUT_OF_RANGE
    _set_owner_and_time(entry, base, parent_fd, as_root)
    return None


def _link(reader: Reader, entry: Entry, tree: _Tree, base: str) -> None:
    """A hardlink to an entry already extracted, both directories walked without following links."""
    target = reader.lookup(entry.name)
    target_parent, target_base = _split(target.name)
    source_fd = os.dup(tree.dir_fd(target_parent))
    try:
        os.link(target_base, base, src_dir_fd=source_fd, dst_dir_fd=tree.dir_fd(_split(entry.name)[0]),
                follow_symlinks=False)
    except FileNotFoundError:
        raise FormatError(f"hardlink {entry.name!r} comes before its target {target.name!r}") from None
    finally:
        os.close(source_fd)


def _write_file(reader: Reader, entry: Entry, parent_fd: int, base: str, as_root: bool) -> int:
    """Write a regular file under a temporary name, renamed to ``base`` once complete and verified."""
    fd, temp = open_temp_at(parent_fd, 0o600)
    written = 0
    try:
        try:
            with reader.open(entry.name) as src:
                while block := src.read(BLOCK_SIZE):
                    os.write(fd, block)
                    written += len(block)
            _set_attributes(entry, fd, as_root)
        finally:
            os.close(fd)
        os.rename(temp, base, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
    except BaseException:
        os.unlink(temp, dir_fd=parent_fd)
        raise
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
