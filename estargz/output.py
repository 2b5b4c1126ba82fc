"""Outputs that appear whole or not at all, and never overwrite an input.

A file is written under a fresh temporary name in its target directory, created exclusively
(``O_CREAT|O_EXCL|O_NOFOLLOW``, so a planted file or symlink cannot redirect it), and renamed into
place only once it is complete; on any failure, including ``KeyboardInterrupt`` and the CLI's
SIGTERM handling, the temporary file is removed. Modes are those the kernel gives a new file or
directory (``0o666``/``0o777`` less the umask): the process umask is never changed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO, Union, cast

__all__ = ["atomic_output", "open_temp_at", "refuse_overlap", "refuse_same_file", "remove_leftovers", "remove_path",
           "temp_dir"]

PathLike = Union[str, "os.PathLike[str]"]

_TEMP_SUFFIX = ".part"
_HIDDEN_PREFIX = ".estargz-"
_ATTEMPTS = 100
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


#: Temporary paths that may exist: registered before they are created, so that an exception
#: raised by a signal handler at any point leaves no temporary file unknown to remove_leftovers.
_live: set[str] = set()


def _exclusive(create: Callable[[str], None], prefix: str, suffix: str, register: bool = True) -> str:
    """Call ``create`` on fresh names ``prefix<random>suffix`` until one did not exist; return it."""
    for _ in range(_ATTEMPTS):
        name = f"{prefix}{secrets.token_hex(8)}{suffix}"
        if register:
            _live.add(name)
        try:
            create(name)
        except FileExistsError:
            _live.discard(name)
            continue
        return name
    raise FileExistsError(errno.EEXIST, "no free temporary name", prefix)


def remove_path(path: str) -> None:
    """Remove a file, symlink or directory tree if it still exists."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def remove_leftovers() -> None:
    """Remove the temporary files and directories of outputs still being written (for a process
    that stops on a signal while worker threads may hold some)."""
    for path in list(_live):
        remove_path(path)
        _live.discard(path)


def _prefix(target: str) -> str:
    """The temporary-name prefix of ``target``: hidden, in the same directory."""
    directory = _target_directory(target)
    return os.path.join(directory, f".{os.path.basename(target)}.")


def open_temp_at(dir_fd: int, mode: int) -> tuple[int, str]:
    """A new file (descriptor, name) created exclusively in the directory ``dir_fd``."""
    fds: list[int] = []

    def create(name: str) -> None:
        fds.append(os.open(name, _FILE_FLAGS, mode, dir_fd=dir_fd))

    name = _exclusive(create, _HIDDEN_PREFIX, _TEMP_SUFFIX, register=False)
    return fds[0], name


def _target_directory(path: str) -> str:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(errno.ENOENT, "No such directory", directory)
    return directory


@contextlib.contextmanager
def atomic_output(path: PathLike, inputs: Iterable[object] = ()) -> Iterator[BinaryIO]:
    """A binary file to write that replaces ``path`` only when the ``with`` block succeeds.

    ``inputs`` are the paths (others are ignored) the output must not be: ``path`` is refused
    with ValueError if it is one of them, also through a symlink or hardlink.
    """
    target = os.fspath(path)
    for source in inputs:
        refuse_same_file(source, target)
    prefix = _prefix(target)
    if os.path.isdir(target):
        raise IsADirectoryError(errno.EISDIR, "Is a directory", target)
    fds: list[int] = []

    def create(name: str) -> None:
        fds.append(os.open(name, _FILE_FLAGS, 0o666))

    temp = _exclusive(create, prefix, _TEMP_SUFFIX)
    try:
        with os.fdopen(fds[0], "wb") as out:
            yield out
        os.replace(temp, target)
    except BaseException:
        remove_path(temp)
        raise
    finally:
        _live.discard(temp)


@contextlib.contextmanager
def temp_dir(target: str) -> Iterator[str]:
    """A new, empty directory next to ``target`` (mode ``0o777`` less the umask), removed at the
    end of the ``with`` block unless it was renamed away."""
    path = _exclusive(lambda name: os.mkdir(name, 0o777), _prefix(target), ".tmp")
    try:
        yield path
    finally:
        remove_path(path)
        _live.discard(path)


def _identity(path: object) -> tuple[int, int] | None:
    if not isinstance(path, (str, os.PathLike)):
        return None
    try:
        status = os.stat(path)
    except (OSError, ValueError):
        return None
    return status.st_dev, status.st_ino


def refuse_same_file(source: object, output: PathLike) -> None:
    """ValueError if ``output`` is the file ``source`` names (same device and inode)."""
    identity = _identity(source)
    if identity is not None and identity == _identity(output):
        named = os.fspath(cast(PathLike, source))
        raise ValueError(f"{os.fspath(output)} is the input {named}: refusing to overwrite it")


def refuse_overlap(source: PathLike, output: PathLike) -> None:
    """ValueError if ``output`` is ``source`` or a directory that contains it."""
    refuse_same_file(source, output)
    identity = _identity(output)
    if identity is None:
        return
    here = os.path.realpath(os.fspath(source))
    while True:
        if _identity(here) == identity:
            raise ValueError(f"{os.fspath(output)} contains the input {os.fspath(source)}: refusing to replace it")
        parent = os.path.dirname(here)
        if parent == here:
            return
        here = parent
