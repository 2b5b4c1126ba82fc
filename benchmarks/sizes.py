"""Blob size of one real layer under each eStargz mode, next to plain `gzip -9` of the same tar.

The layer is the same tar of the Python standard library as benchmarks/compare.py uses (or
--layer). Modes: default, min-chunk-size, external TOC, and both at level 9 (the densest setting).

    python benchmarks/sizes.py                  # Markdown table on stdout
    python benchmarks/sizes.py --min-chunk-size 50000
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import estargz  # noqa: E402
from compare import make_stdlib_tar  # noqa: E402


def gzip9_size(layer: Path) -> int:
    """Size of ``gzip -9`` (zlib level 9) of the layer."""
    with open(layer, "rb") as f:
        proc = subprocess.run(["gzip", "-9", "-c"], stdin=f, capture_output=True, check=True)
    return len(proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", type=Path, help="layer tar (default: a tar of the stdlib)")
    parser.add_argument("--min-chunk-size", type=int, default=50000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="estargz-sizes-") as tmp:
        layer = args.layer
        if layer is None:
            layer = Path(tmp) / "stdlib.tar"
            make_stdlib_tar(layer)
        reference = gzip9_size(layer)
        m = args.min_chunk_size
        modes = [
            (f"default (level {estargz.DEFAULT_GZIP_LEVEL})", {}),
            ("level 9", {"compression_level": 9}),
            (f"min-chunk-size {m}", {"min_chunk_size": m}),
            ("external TOC", {"external_toc": True}),
            (f"level 9, min-chunk-size {m}, external TOC",
             {"compression_level": 9, "min_chunk_size": m, "external_toc": True}),
        ]
        print(f"layer: {layer.stat().st_size / 1e6:.1f} MB tar; gzip -9: {reference} bytes\n")
        print("| mode | blob bytes | TOC blob bytes | × gzip -9 |")
        print("|---|---|---|---|")
        print(f"| gzip -9 (plain, not eStargz) | {reference} | | 1.0000 |")
        for label, options in modes:
            result = estargz.convert(layer, io.BytesIO(), **options)
            toc = len(result.external_toc) if result.external_toc is not None else 0
            print(f"| {label} | {result.blob_size} | {toc or ''} | {result.blob_size / reference:.4f} |", flush=True)


if __name__ == "__main__":
    main()
