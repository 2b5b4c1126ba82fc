"""Entry order of a converted layer (de-duplication, prioritized files, landmarks) and the tree rules
its readers enforce (pure logic)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from .errors import LimitError, NotFoundError, UnsupportedInputError
from .tarstream import TarEntry
from .toc import TOC_NAME, clean_name

__all__ = [
    "PREFETCH_LANDMARK", "NO_PREFETCH_LANDMARK", "PREFETCH_MODES", "LANDMARK_CONTENTS", "landmark", "order_entries",
    "check_readable",
]

PREFETCH_LANDMARK = ".prefetch.landmark"
NO_PREFETCH_LANDMARK = ".no.prefetch.landmark"
#: What a mount fetches ahead: the entries before the landmark, all entries, or none.
PREFETCH_MODES = ("landmark", "all", "none")
LANDMARK_CONTENTS = b"\x0f"
_RESERVED = {PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK, TOC_NAME}
#: Integer TOC fields are 64-bit signed in every reader.
_INT64 = (-(1 << 63), (1 << 63) - 1)


def landmark(name: str) -> TarEntry:
    """A landmark file: a 1-byte regular file whose header carries only its name and size.

    Its ``header_offset`` is -1: it has no bytes in the input tar.
    """
    return TarEntry(name=name, kind="reg", size=len(LANDMARK_CONTENTS), header_offset=-1)


def _parent(name: str) -> str:
    return name.rpartition("/")[0]


def order_entries(
    entries: Iterable[TarEntry],
    prioritized: Sequence[str] = (),
    *,
    allow_missing: bool = False,
) -> tuple[list[TarEntry], list[str]]:
    """Order the entries of a layer as eStargz ``Build`` does; return (ordered, missing prioritized).

    - a later entry with the same cleaned name replaces an earlier one and takes the later position;
    - landmarks and ``stargz.index.json`` already in the input are dropped;
    - each prioritized path moves to the front after its existing ancestor directories (and, for a
      hardlink, its target), followed by ``.prefetch.landmark``; with no prioritized paths,
      ``.no.prefetch.landmark`` comes first.

    A prioritized path that is not in the layer raises NotFoundError, or is returned in the missing
    list with ``allow_missing``.
    """
    mover = _Mover(_latest(entries))
    missing: list[str] = []
    for path in prioritized:
        if not mover.move(clean_name(path)):
            if not allow_missing:
                raise NotFoundError(f"prioritized file {path!r} is not in the layer")
            missing.append(path)

    if prioritized:
        ordered = [*mover.moved.values(), landmark(PREFETCH_LANDMARK)]
    else:
        ordered = [landmark(NO_PREFETCH_LANDMARK)]
    ordered.extend(mover.remaining.values())
    return ordered, missing


def _latest(entries: Iterable[TarEntry]) -> dict[str, TarEntry]:
    """The entries by cleaned name, a later one replacing an earlier one and taking its position;
    landmarks and ``stargz.index.json`` dropped."""
    latest: dict[str, TarEntry] = {}
    for entry in entries:
        name = clean_name(entry.name)
        if name in _RESERVED:
            continue
        latest.pop(name, None)
        latest[name] = entry
    return latest


class _Mover:
    """Moves prioritized entries out of ``remaining`` into ``moved``, each after what it needs."""

    def __init__(self, remaining: dict[str, TarEntry]) -> None:
        self.remaining = remaining
        self.moved: dict[str, TarEntry] = {}
        self._visited: set[str] = set()

    def _move_root(self) -> None:
        if "" in self.remaining:
            self.moved[""] = self.remaining.pop("")

    def _move_ancestors(self, name: str) -> None:
        ancestors = []
        ancestor = _parent(name)
        while ancestor:
            ancestors.append(ancestor)
            ancestor = _parent(ancestor)
        for directory in reversed(ancestors):
            if directory in self.remaining:
                self.moved[directory] = self.remaining.pop(directory)

    def move(self, name: str) -> bool:
        """Move ``name`` after its ancestors and, for a hardlink, after its target (a chain of any
        length; a hardlink already followed once is not followed again, which ends a cycle).
        False if ``name`` is not in the layer."""
        chain: list[str] = []
        while name not in self.moved:
            if not name:  # the root: moved if the layer has an entry for it, never missing
                self._move_root()
                break
            entry = self.remaining.get(name)
            if entry is None:
                return False
            self._move_root()
            self._move_ancestors(name)
            chain.append(name)
            if entry.kind != "hardlink" or name in self._visited:
                break
            self._visited.add(name)
            name = clean_name(entry.linkname)
        for link in reversed(chain):
            if link in self.remaining:
                self.moved[link] = self.remaining.pop(link)
        return True


def _check_fields(entry: TarEntry) -> None:
    """Refuse an entry whose fields no TOC reader accepts."""
    if "\0" in entry.name or "\0" in entry.linkname:
        raise UnsupportedInputError(f"name {entry.name!r} holds a NUL byte: tar and TOC readers reject it")
    for what in ("mode", "uid", "gid", "devmajor", "devminor"):
        value = getattr(entry, what)
        if not _INT64[0] <= value <= _INT64[1]:
            raise LimitError(f"{entry.name!r}: {what} {value} does not fit in 64 bits")
    if entry.kind != "dir" and not clean_name(entry.name):
        raise UnsupportedInputError(f"{entry.kind} entry {entry.name!r} names the root, which must be a directory")


def _ancestors(name: str) -> Iterable[str]:
    parent = _parent(name)
    while parent:
        yield parent
        parent = _parent(parent)


def check_readable(entries: Callable[[], Iterable[TarEntry]]) -> None:
    """Refuse a layer whose TOC the readers would reject, as the TOC would list ``entries()``.

    Readers keep the last entry of each cleaned name and reject: a root that is not a directory,
    entries below a non-directory, and hardlinks whose target is missing, a directory, or a cycle.
    The entries are read twice (``entries`` gives them afresh); memory grows with the directories
    and hardlinks, not with the files.
    """
    directories: set[str] = set()
    links: set[str] = set()
    for entry in entries():
        _check_fields(entry)
        name = clean_name(entry.name)
        for ancestor in _ancestors(name):
            if ancestor in directories:
                break
            directories.add(ancestor)
        if entry.kind == "hardlink":
            links.update((name, clean_name(entry.linkname)))
    final = {name: entry for entry in entries()
             if (name := clean_name(entry.name)) in directories or name in links}
    for name in directories:
        obstacle = final.get(name)
        if obstacle is not None and obstacle.kind != "dir":
            raise UnsupportedInputError(
                f"{name!r} is a {obstacle.kind}, but entries lie below it: readers reject the layer")
    resolved: set[str] = set()
    for name, entry in final.items():
        if entry.kind == "hardlink":
            _check_hardlink(name, final, resolved)


def _check_hardlink(name: str, final: dict[str, TarEntry], resolved: set[str]) -> None:
    """Follow the hardlink ``name`` to a non-directory entry, or refuse.

    ``resolved`` holds the hardlinks already followed to a non-directory; a chain stops at the
    first of them and adds its own links, so checking every link of a chain costs its length once.
    """
    seen = {name}
    entry = final[name]
    while entry.kind == "hardlink":
        target = clean_name(entry.linkname)
        if target in resolved:
            break
        if not target:
            raise UnsupportedInputError(f"hardlink {name!r} points to a directory: readers reject the layer")
        if target in seen:
            raise UnsupportedInputError(f"hardlink {name!r} is part of a cycle: readers reject the layer")
        if target not in final:
            raise UnsupportedInputError(
                f"hardlink {name!r} points to {entry.linkname!r}, which is not in the layer: readers reject it")
        seen.add(target)
        entry = final[target]
    else:
        if entry.kind == "dir":
            raise UnsupportedInputError(f"hardlink {name!r} points to a directory: readers reject the layer")
    resolved.update(seen)
