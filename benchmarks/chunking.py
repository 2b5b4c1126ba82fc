"""Throughput of the zstd:chunked content chunker (estargz.rollsum.chunk_file) on one core.

The input is real data: a tar of this machine's Python standard library (cut to --size MiB),
chunked as one file, best of --repeat runs, as bytes and as a memoryview (the two hole finders).

    python benchmarks/chunking.py               # 100 MiB
    python benchmarks/chunking.py --size 300
"""

from __future__ import annotations

import argparse
import io
import sysconfig
import tarfile
import time
from pathlib import Path

from estargz.rollsum import chunk_file


def _real_data(size: int) -> bytes:
    out = io.BytesIO()
    root = Path(sysconfig.get_paths()["stdlib"])
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(root.rglob("*")):
            if out.tell() >= size:
                break
            if path.is_file() and not path.is_symlink():
                tar.add(path, arcname=str(path.relative_to(root)), recursive=False)
    data = out.getvalue()
    if len(data) < size:
        data = (data * (size // max(len(data), 1) + 1))
    return data[:size]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100, help="MiB of input (default 100)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    data = _real_data(args.size << 20)
    for label, buf in (("bytes", data), ("memoryview", memoryview(data))):
        best = float("inf")
        for _ in range(args.repeat):
            start = time.perf_counter()
            chunks = chunk_file(buf)
            best = min(best, time.perf_counter() - start)
        zeros = sum(1 for c in chunks if c[2])
        print(f"{label:10s} {len(data) / 1e6:7.1f} MB  {len(chunks):6d} chunks ({zeros} zeros)  "
              f"{best:6.3f} s  {len(data) / best / 1e6:6.0f} MB/s")


if __name__ == "__main__":
    main()
