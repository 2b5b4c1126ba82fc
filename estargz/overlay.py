"""Layers merged as overlayfs shows them (pure logic, no FUSE): later layers win, whiteouts
(``.wh.NAME``) hide lower names, opaque markers (``.wh..wh..opq``) hide a lower directory's
contents, landmark files stay hidden, and hardlinked names of one layer share one node."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from .ordering import NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK
from .reader import Entry, Reader

__all__ = ["OPAQUE_MARKER", "WHITEOUT_PREFIX", "Node", "OverlayTree"]

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
#: Root entries of a layer that are the format's own, not the image's.
_HIDDEN_AT_ROOT = frozenset({PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK})
#: The inode number of the root directory (FUSE's convention).
ROOT_INODE = 1


@dataclass(eq=False, slots=True)
class Node:
    """One inode of the merged tree: the TOC entry it shows and the layer it comes from."""

    entry: Entry
    layer: int
    inode: int = 0
    nlink: int = 0
    children: dict[str, Node] = field(default_factory=dict, repr=False)

    def is_dir(self) -> bool:
        return self.entry.type == "dir"


class OverlayTree:
    """The merged tree of ``readers``, lowest layer first."""

    def __init__(self, readers: Sequence[Reader]) -> None:
        self.root = Node(readers[0].lookup("") if readers else Entry(name="", type="dir", mode=0o755), 0)
        for layer, reader in enumerate(readers):
            explicit = {entry.name for entry in reader}
            root_entry = reader.lookup("")
            if "" in explicit or layer == 0:
                self.root.entry, self.root.layer = root_entry, layer
            self._merge(self.root, root_entry, layer, "", explicit, {})
        self._number()

    def _merge(self, into: Node, directory: Entry, layer: int, path: str, explicit: set[str],
               shared: dict[int, Node]) -> None:
        """Apply one layer's directory onto a merged directory node."""
        children = directory.children
        if OPAQUE_MARKER in children:
            into.children.clear()
        for name in children:
            if name.startswith(WHITEOUT_PREFIX) and name != OPAQUE_MARKER:
                into.children.pop(name[len(WHITEOUT_PREFIX):], None)
        for name, entry in children.items():
            if name.startswith(WHITEOUT_PREFIX) or (not path and name in _HIDDEN_AT_ROOT):
                continue
            child_path = f"{path}/{name}" if path else name
            if entry.type != "dir":
                node = shared.get(id(entry))
                if node is None:
                    node = shared[id(entry)] = Node(entry, layer)
                into.children[name] = node
                continue
            existing = into.children.get(name)
            if existing is None or not existing.is_dir():
                existing = into.children[name] = Node(entry, layer)
            elif child_path in explicit:
                existing.entry, existing.layer = entry, layer
            self._merge(existing, entry, layer, child_path, explicit, shared)

    def _number(self) -> None:
        """Give every node an inode number and its link count (directories: 2 + subdirectories)."""
        self.root.inode = ROOT_INODE
        self.root.nlink = 2 + sum(1 for child in self.root.children.values() if child.is_dir())
        next_inode = ROOT_INODE + 1
        for node in self.walk_nodes():
            if node.inode == 0:
                node.inode = next_inode
                next_inode += 1
            if node.is_dir():
                node.nlink = 2 + sum(1 for child in node.children.values() if child.is_dir())
            else:
                node.nlink += 1
        self.inodes = next_inode - 1
        """How many inodes the tree has."""

    def walk_nodes(self) -> Iterator[Node]:
        """Every node below the root, depth first; a hardlinked node once per name it has."""
        stack = [self.root]
        while stack:
            directory = stack.pop()
            for child in directory.children.values():
                yield child
                if child.is_dir():
                    stack.append(child)

    def lookup(self, path: str) -> Node | None:
        """The node at ``path`` (``/a/b`` or ``a/b``), or None."""
        node = self.root
        for part in path.split("/"):
            if not part:
                continue
            if not node.is_dir():
                return None
            found = node.children.get(part)
            if found is None:
                return None
            node = found
        return node

    def files(self) -> list[Node]:
        """Every regular file node once, in tree order."""
        seen: dict[int, Node] = {}
        for node in self.walk_nodes():
            if node.entry.type == "reg":
                seen.setdefault(id(node), node)
        return list(seen.values())
