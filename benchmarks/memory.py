"""Peak RSS of `python -m estargz convert` against layer size: it must stay flat.

Writes synthetic layer tars of growing size (a mix of small and large files, half of each file
compressible text, half random bytes) and converts each in a child process, reading the child's
peak RSS with wait4.

    python benchmarks/memory.py                    # 0.25, 1 and 2 GB layers
    python benchmarks/memory.py --sizes-gb 0.5 4
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-gb", type=float, nargs="+", default=[0.25, 1, 2])
    args = parser.parse_args()
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
