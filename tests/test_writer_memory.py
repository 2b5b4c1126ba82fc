"""Converting a layer of many entries needs memory for its TOC, not for Python objects per entry.

Each conversion runs in a child process whose peak RSS is read with ``wait4``; the growth of the
peak between a small and a large layer, per added entry, must stay within a budget that per-entry
objects held to the end (or copies of the TOC) would exceed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import estargz

SMALL, LARGE = 20_000, 80_000
#: Bytes of peak RSS per added entry: the TOC JSON (about 200 bytes an entry here) and the entry
#: index the eStargz order needs (about 950 in all); for containers/storage the TOC JSON, the
#: tar-split (about 800 bytes an entry) and the set of names that rejects duplicates (about 1950).
#: Holding each entry's TOC objects and copies of the TOC to the end took 1950 and 5350.
BUDGET = {
    estargz.FORMAT_ESTARGZ: 1400,
    estargz.FORMAT_ZSTD_CHUNKED_STARGZ: 1400,
    estargz.FORMAT_ZSTD_CHUNKED: 3000,
}
_CONVERT = "import estargz, sys; estargz.convert(sys.argv[1], sys.argv[2], format=sys.argv[3], threads=2)"
#: Runs the conversion from a small process and prints its peak RSS in KiB: a child forked from
#: this (large) test process would start its peak from this process's size.
_MEASURE = """
import os, subprocess, sys
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], *sys.argv[2:]])
_, status, usage = os.wait4(child.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def _header(name: str, size: int, typeflag: bytes, mode: int) -> bytes:
    """A ustar header block, built field by field from the POSIX layout."""
    block = bytearray(512)
    block[0:len(name)] = name.encode()
    block[100:108] = b"%07o\0" % mode
    block[108:116] = block[116:124] = b"0000000\0"
    block[124:136] = b"%011o\0" % size
    block[136:148] = b"%011o\0" % 1_700_000_000
    block[156:157] = typeflag
    block[257:265] = b"ustar\x0000"
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def write_layer(path: Path, files: int) -> None:
    """``files`` one-byte files, a hundred per directory, two directory levels deep."""
    with open(path, "wb") as out:
        for index in range(files):
            top, sub = divmod(index // 100, 100)
            directory = f"d{top}/e{sub}"
            if index % 100 == 0:
                if sub == 0:
                    out.write(_header(f"d{top}/", 0, b"5", 0o755))
                out.write(_header(directory + "/", 0, b"5", 0o755))
            out.write(_header(f"{directory}/f{index}", 1, b"0", 0o644) + b"x" + bytes(511))
        out.write(bytes(1024))


def peak_rss(layer: Path, blob: Path, format: str) -> int:
    """Peak RSS in bytes of a process converting ``layer``."""
    measured = subprocess.run([sys.executable, "-c", _MEASURE, _CONVERT, str(layer), str(blob), format],
                              cwd=Path(estargz.__file__).parent.parent, capture_output=True, text=True,
                              check=True)
    status, kib = map(int, measured.stdout.split())
    assert status == 0, measured.stderr
    return kib * 1024


@pytest.fixture(scope="module")
def layers(tmp_path_factory) -> dict[int, Path]:
    directory = tmp_path_factory.mktemp("layers")
    paths = {count: directory / f"{count}.tar" for count in (SMALL, LARGE)}
    for count, path in paths.items():
        write_layer(path, count)
    return paths


@pytest.mark.parametrize("format", BUDGET)
def test_peak_memory_per_entry_stays_within_the_toc_budget(tmp_path, layers, format):
    blob = tmp_path / "layer.blob"
    small = peak_rss(layers[SMALL], blob, format)
    large = peak_rss(layers[LARGE], blob, format)
    with estargz.open(blob) as reader:
        assert reader.read(f"d{LARGE // 10_000 - 1}/e99/f{LARGE - 1}") == b"x"
    per_entry = (large - small) / (LARGE - SMALL)
    assert per_entry < BUDGET[format], f"{per_entry:.0f} bytes of peak RSS per entry"
