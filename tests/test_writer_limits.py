"""The writer refuses, with a typed error, every layer whose blob its readers would reject."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile

import pytest

import estargz
from estargz import LimitError, UnsupportedInputError

#: CPU seconds for converting a layer of 20000 entries (interpreter start and imports included).
CPU_BUDGET = 15
MODES = {
    "estargz": {},
    "estargz-keep-diff-id": {"external_toc": True, "keep_diff_id": True},
    "zstd-chunked": {"format": estargz.FORMAT_ZSTD_CHUNKED},
    "zstd-chunked-stargz": {"format": estargz.FORMAT_ZSTD_CHUNKED_STARGZ},
}


def make_tar(*members: tuple[str, bytes | str | None, dict]) -> bytes:
    """A PAX tar of (name, contents or None for a directory or link, extra TarInfo fields)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, extra in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            for key, value in extra.items():
                setattr(info, key, value)
            info.size = len(data) if isinstance(data, bytes) else 0
            tar.addfile(info, io.BytesIO(data) if isinstance(data, bytes) else None)
    return buf.getvalue()


def directory(name: str) -> tuple[str, None, dict]:
    return name, None, {"type": tarfile.DIRTYPE, "mode": 0o755}


def hardlink(name: str, target: str) -> tuple[str, None, dict]:
    return name, None, {"type": tarfile.LNKTYPE, "linkname": target}


def regular(name: str, data: bytes = b"data\n", **extra: object) -> tuple[str, bytes, dict]:
    return name, data, dict(extra)


UNREADABLE = {
    "hardlink to a missing file": [regular("a"), hardlink("b", "missing")],
    "hardlink cycle": [regular("a"), hardlink("b", "c"), hardlink("c", "b")],
    "hardlink to a directory": [directory("d"), hardlink("b", "d")],
    "hardlink to the root": [regular("a"), hardlink("b", "./")],
    "entry below a regular file": [regular("a"), regular("a/b")],
    "entry below a hardlink": [regular("a"), hardlink("l", "a"), directory("l/d")],
    "regular file naming the root": [regular("./"), regular("a")],
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", UNREADABLE)
def test_unreadable_tree_is_refused(tmp_path, case, mode):
    target = tmp_path / "out.blob"
    with pytest.raises(UnsupportedInputError, match="readers reject|must be a directory"):
        estargz.convert(io.BytesIO(make_tar(*UNREADABLE[case])), target, **MODES[mode])
    assert not target.exists()


def test_hardlink_chain_of_20000_links_is_checked_within_the_budget(tmp_path):
    """Each link names the one before it: checking every link costs the chain's length once."""
    names = [f"h{i}" for i in range(20_000)]
    (tmp_path / "layer.tar").write_bytes(make_tar(regular("f"), *map(hardlink, names, ["f", *names])))
    script = ("import resource, sys, estargz\n"
              f"resource.setrlimit(resource.RLIMIT_CPU, ({CPU_BUDGET}, {CPU_BUDGET}))\n"
              "estargz.convert(sys.argv[1], sys.argv[2])")
    done = subprocess.run([sys.executable, "-c", script, tmp_path / "layer.tar", tmp_path / "out.blob"],
                          check=False, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    with estargz.open(tmp_path / "out.blob") as reader:
        assert reader.read(names[-1]) == b"data\n"


@pytest.mark.parametrize("mode", ["estargz", "zstd-chunked-stargz"])  # the others keep duplicates out
def test_later_entry_replacing_the_obstacle_is_accepted(mode):
    layer = make_tar(regular("a"), hardlink("h", "t"), directory("a"), regular("a/b"), regular("t"))
    blob = io.BytesIO()
    estargz.convert(io.BytesIO(layer), blob, **MODES[mode])
    with estargz.open(blob.getvalue()) as reader:
        reader.verify()
        assert reader.read("a/b") == b"data\n"
        assert reader.read("h") == b"data\n"


@pytest.mark.parametrize("mode", MODES)
def test_nul_in_a_name_is_refused(mode):
    layer = make_tar(regular("a", pax_headers={"path": "a\0b"}))
    with pytest.raises(UnsupportedInputError, match="NUL"):
        estargz.convert(io.BytesIO(layer), io.BytesIO(), **MODES[mode])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("field", ["uid", "gid"])
def test_id_beyond_64_bits_is_refused(mode, field):
    layer = make_tar(regular("a", pax_headers={field: str(1 << 64)}))
    with pytest.raises(LimitError, match=f"^tar PAX header: {field} does not fit in 64 bits$"):
        estargz.convert(io.BytesIO(layer), io.BytesIO(), **MODES[mode])


@pytest.mark.parametrize("mode", MODES)
def test_toc_over_the_reader_limit_is_refused(monkeypatch, mode):
    layer = make_tar(*(regular(f"dir/file{i}") for i in range(50)))
    blob = io.BytesIO()
    estargz.convert(io.BytesIO(layer), blob, **MODES[mode])
    monkeypatch.setattr(estargz.dialects.stargz, "MAX_TOC_SIZE", 2000)
    monkeypatch.setattr(estargz.dialects.containers_storage, "MAX_TOC_SIZE", 2000)
    with pytest.raises(LimitError, match="TOC of [0-9]+ bytes exceeds the 2000-byte limit"):
        estargz.convert(io.BytesIO(layer), io.BytesIO(), **MODES[mode])


def test_tar_split_over_the_reader_limit_is_refused(monkeypatch):
    layer = make_tar(*(regular(f"dir/file{i}") for i in range(50)))
    monkeypatch.setattr(estargz.dialects.containers_storage, "MAX_TAR_SPLIT_SIZE", 4000)
    with pytest.raises(LimitError, match="tar-split of [0-9]+ bytes exceeds the 4000-byte limit"):
        estargz.convert(io.BytesIO(layer), io.BytesIO(), format=estargz.FORMAT_ZSTD_CHUNKED)
