"""Reading through symbolic links inside a layer: followed like a path lookup, never above the root."""

from __future__ import annotations

import io
import tarfile

import pytest

import estargz
from estargz import FormatError, NotFoundError


def layer(links: dict[str, str], files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in links.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    blob = io.BytesIO()
    estargz.convert(io.BytesIO(out.getvalue()), blob)
    return blob.getvalue()


BLOB = layer(
    {
        "etc/os-release": "../usr/lib/os-release",  # as on Debian
        "lib": "usr/lib",  # a symlinked directory
        "abs": "/usr/lib/os-release",
        "escape": "../../../../usr/lib/os-release",  # cannot leave the root
        "loop/a": "b",
        "loop/b": "a",
        "dangling": "nowhere",
        "dir-link": "usr",
    },
    {"usr/lib/os-release": b"ID=debian\n", "usr/lib/x/y.txt": b"deep\n"},
)


@pytest.mark.parametrize("name", ["etc/os-release", "abs", "escape", "lib/os-release", "/lib/../lib/os-release"])
def test_symlinks_are_followed_inside_the_layer(name):
    with estargz.open(BLOB) as reader:
        assert reader.read(name) == b"ID=debian\n"
        assert reader.resolve(name) is reader.lookup("usr/lib/os-release")


def test_symlinked_directories_are_followed_in_the_middle_of_a_path():
    with estargz.open(BLOB) as reader:
        assert reader.read("lib/x/y.txt") == b"deep\n"
        assert reader.read("dir-link/lib/x/y.txt") == b"deep\n"
        assert reader.lookup("lib").type == "symlink"  # lookup itself does not follow


def test_symlink_loops_and_dangling_links_are_typed_errors():
    with estargz.open(BLOB) as reader:
        with pytest.raises(FormatError, match="too many levels"):
            reader.read("loop/a")
        with pytest.raises(NotFoundError):
            reader.read("dangling")
        with pytest.raises(FormatError, match="not a regular file"):
            reader.read("dir-link")
