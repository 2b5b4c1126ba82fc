"""Peak RSS of `python -m estargz convert` against layer size and entry count.

By size: synthetic layer tars of growing size (a mix of small and large files, half of each file
compressible text, half random bytes), converted in a child process whose peak RSS is read with
wait4; it must stay flat.

By entry count: layers of empty or one-byte files, a hundred per directory, two levels deep,
converted to every format, then read back in another child (open, look up and read the last file,
verify every chunk). Peak RSS grows with the TOC (and the tar-split), not with per-entry objects.

    python benchmarks/memory.py                    # 0.25, 1 and 2 GB layers
    python benchmarks/memory.py --sizes-gb 0.5 4
    python benchmarks/memory.py --entries 100000 1000000
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path


class _Generated:
    """A file-like object yielding ``size`` bytes of half-compressible data without storing them."""

    def __init__(self, size: int, seed: int) -> None:
        rng = random.Random(seed)
        self._block = (b"estargz lazy pulling layer %d\n" % seed) * 1024 + rng.randbytes(32 * 1024)
        self._left = size

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        reps = n // len(self._block) + 1
        self._left -= n
        return (self._block * reps)[:n]


def make_layer(path: Path, size: int) -> None:
    rng = random.Random(size)
    written = 0
    index = 0
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        while written < size:
            file_size = rng.choice((0, 700, 5_000, 60_000, 900_000, 9 << 20, 40 << 20))
            info = tarfile.TarInfo(f"data/d{index % 97}/f{index}")
            info.size = file_size
            info.mtime = 1_700_000_000
            tar.addfile(info, _Generated(file_size, index))  # type: ignore[arg-type]
            written += file_size + 512
            index += 1


def convert_rss(layer: Path, out: Path) -> tuple[float, int]:
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "estargz", "convert", "-q", str(layer), str(out)],
                            stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        sys.exit("conversion failed")
    return time.perf_counter() - start, usage.ru_maxrss * 1024


_FORMATS = ("estargz", "zstd:chunked", "zstd:chunked-stargz")
_READ_BACK = """
import estargz, sys
with estargz.open(sys.argv[1]) as reader:
    assert reader.read(sys.argv[2]) == sys.argv[3].encode()
    reader.verify()
"""


def _header(name: str, size: int, typeflag: bytes, mode: int) -> bytes:
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


def make_entries_layer(path: Path, files: int, contents: bytes) -> str:
    """``files`` files holding ``contents``, a hundred per directory; returns the last file's name."""
    name = ""
    with open(path, "wb") as out:
        for index in range(files):
            top, sub = divmod(index // 100, 100)
            if index % 100 == 0:
                if sub == 0:
                    out.write(_header(f"d{top}/", 0, b"5", 0o755))
                out.write(_header(f"d{top}/e{sub}/", 0, b"5", 0o755))
            name = f"d{top}/e{sub}/f{index}"
            out.write(_header(name, len(contents), b"0", 0o644))
            out.write(contents + bytes(-len(contents) % 512))
        out.write(bytes(1024))
    return name


def run_rss(args: list[str]) -> tuple[float, int, str]:
    """Seconds, peak RSS in bytes and stderr's last line of a child process."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    error = proc.stderr.read().decode().strip().splitlines()
    _, status, usage = os.wait4(proc.pid, 0)
    failure = error[-1] if os.waitstatus_to_exitcode(status) and error else ""
    return time.perf_counter() - start, usage.ru_maxrss * 1024, failure


def entries_table(counts: list[int]) -> None:
    print("| entries | files | format | convert s | convert peak MiB | blob MB | read back s | read back peak MiB |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="estargz-mem-") as tmp:
        layer, blob = Path(tmp) / "layer.tar", Path(tmp) / "layer.blob"
        for count in counts:
            for kind, contents in (("empty", b""), ("1 byte", b"x")):
                last = make_entries_layer(layer, count, contents)
                for fmt in _FORMATS:
                    seconds, rss, failure = run_rss(["-m", "estargz", "convert", "-q", "--format", fmt,
                                                     str(layer), str(blob)])
                    row = f"| {count} | {kind} | {fmt} | {seconds:.1f} | {rss / 2**20:.0f} |"
                    if failure:
                        print(f"{row} refused: {failure} | | |", flush=True)
                        continue
                    back_seconds, back_rss, back_failure = run_rss(
                        ["-c", _READ_BACK, str(blob), last, contents.decode()])
                    back = back_failure or f"{back_seconds:.1f} | {back_rss / 2**20:.0f}"
                    print(f"{row} {blob.stat().st_size / 1e6:.1f} | {back} |", flush=True)
                    blob.unlink()
            layer.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-gb", type=float, nargs="+", default=[0.25, 1, 2])
    parser.add_argument("--entries", type=int, nargs="+", help="entry counts (instead of sizes)")
    args = parser.parse_args()
    if args.entries:
        entries_table(args.entries)
        return
    print("| layer GB | seconds | MB/s | peak RSS MiB |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="estargz-mem-") as tmp:
        for gb in args.sizes_gb:
            layer, out = Path(tmp) / "layer.tar", Path(tmp) / "layer.esgz"
            make_layer(layer, int(gb * 1e9))
            seconds, rss = convert_rss(layer, out)
            size = layer.stat().st_size
            print(f"| {size / 1e9:.2f} | {seconds:.1f} | {size / seconds / 1e6:.0f} | {rss / 2**20:.0f} |",
                  flush=True)
            layer.unlink()
            out.unlink()


if __name__ == "__main__":
    main()
