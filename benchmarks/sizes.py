"""Blob size of real layers under each eStargz mode, next to plain `gzip -9` of the same tar.

Two layers: the same tar of the Python standard library as benchmarks/compare.py uses, and that
tar without its one large file, the static library (`config-*/libpython*.a`): a layer of many
small files. Or one layer given with --layer. Modes: default, min-chunk-size, external TOC, and
both at level 9 (the densest setting). With --breakdown, where the bytes of the densest blob go:
gzip member headers and trailers, deflate restarts at member starts, the engine against `gzip -9`.

    python benchmarks/sizes.py                  # Markdown tables on stdout
    python benchmarks/sizes.py --min-chunk-size 50000 --breakdown
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import sysconfig
import tempfile
import zlib
from pathlib import Path
from typing import Any

import deflate

sys.path.insert(0, str(Path(__file__).resolve().parent))

import estargz  # noqa: E402
from compare import make_stdlib_tar  # noqa: E402

#: Bytes of a gzip member's header and trailer as estargz writes them.
MEMBER_FRAMING = 18
#: The external-TOC footer closing the blobs measured in the breakdown.
EXTERNAL_FOOTER = 46
#: libdeflate's level of estargz's level 9, used for the single-stream comparison.
LIBDEFLATE_LEVEL = estargz.GZIP_ENGINES[9][1]


def make_small_files_tar(path: Path) -> None:
    """The standard library tar of compare.py without the static library: many small files."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    subprocess.run(["tar", "--exclude=site-packages", "--exclude=config-*/libpython*.a", "-C", "/", "-cf",
                    str(path), str(stdlib.relative_to("/"))], check=True)


def gzip9_size(layer: Path) -> int:
    """Size of ``gzip -9`` (zlib level 9) of the layer."""
    with open(layer, "rb") as f:
        proc = subprocess.run(["gzip", "-9", "-c"], stdin=f, capture_output=True, check=True)
    return len(proc.stdout)


def members(data: bytes) -> list[tuple[int, bytes]]:
    """(compressed size, plaintext) of each gzip member of ``data``."""
    out, pos = [], 0
    while pos < len(data):
        inflater = zlib.decompressobj(31)
        plain = inflater.decompress(data[pos:])
        end = len(data) - len(inflater.unused_data)
        out.append((end - pos, plain))
        pos = end
    return out


def breakdown(layer: Path, blob: bytes, reference: int, min_chunk: int) -> None:
    """Where the bytes of an external-TOC blob go, against one deflate stream of the same bytes."""
    data = blob[:-EXTERNAL_FOOTER]
    parts = members(data)
    plain = b"".join(p for _, p in parts)
    single = len(deflate.deflate_compress(plain, LIBDEFLATE_LEVEL)) + MEMBER_FRAMING
    tar = len(deflate.deflate_compress(layer.read_bytes(), LIBDEFLATE_LEVEL)) + MEMBER_FRAMING
    below = sum(1 for size, _ in parts if size < min_chunk)
    rows = [
        ("gzip members (below min-chunk-size)", f"{len(parts)} ({below})"),
        ("blob data (no TOC: external)", len(data)),
        ("the same plaintext as one libdeflate stream", single),
        ("member restarts in all", len(data) - single),
        ("of which gzip headers and trailers", MEMBER_FRAMING * (len(parts) - 1)),
        ("the input tar as one libdeflate stream", tar),
        ("tar rewriting (headers, landmark, padding)", single - tar),
        ("engine: libdeflate against gzip -9", tar - reference),
    ]
    print("\n| densest blob: where the bytes go | bytes |")
    print("|---|---|")
    for label, value in rows:
        print(f"| {label} | {value} |")


def measure(layer: Path, label: str, min_chunk: int, show_breakdown: bool) -> None:
    """One Markdown table of the modes on ``layer``."""
    reference = gzip9_size(layer)
    modes: list[tuple[str, dict[str, Any]]] = [
        (f"default (level {estargz.DEFAULT_GZIP_LEVEL})", {}),
        ("level 9", {"compression_level": 9}),
        (f"min-chunk-size {min_chunk}", {"min_chunk_size": min_chunk}),
        ("external TOC", {"external_toc": True}),
        (f"level 9, min-chunk-size {min_chunk}, external TOC",
         {"compression_level": 9, "min_chunk_size": min_chunk, "external_toc": True}),
    ]
    print(f"\n{label}: {layer.stat().st_size / 1e6:.1f} MB tar; gzip -9: {reference} bytes\n")
    print("| mode | blob bytes | TOC blob bytes | × gzip -9 |")
    print("|---|---|---|---|")
    print(f"| gzip -9 (plain, not eStargz) | {reference} | | 1.0000 |")
    for name, options in modes:
        out = io.BytesIO()
        result = estargz.convert(layer, out, **options)
        toc = len(result.external_toc) if result.external_toc is not None else 0
        print(f"| {name} | {result.blob_size} | {toc or ''} | {result.blob_size / reference:.4f} |", flush=True)
    if show_breakdown:
        breakdown(layer, out.getvalue(), reference, min_chunk)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", type=Path, help="one layer tar (default: the two stdlib layers)")
    parser.add_argument("--min-chunk-size", type=int, default=50000)
    parser.add_argument("--breakdown", action="store_true", help="where the bytes of the densest blob go")
    args = parser.parse_args()
    if args.layer is not None:
        measure(args.layer, str(args.layer), args.min_chunk_size, args.breakdown)
        return
    with tempfile.TemporaryDirectory(prefix="estargz-sizes-") as tmp:
        for label, make in (("stdlib layer", make_stdlib_tar),
                            ("many small files (stdlib layer without the static library)", make_small_files_tar)):
            layer = Path(tmp) / "layer.tar"
            make(layer)
            measure(layer, label, args.min_chunk_size, args.breakdown)


if __name__ == "__main__":
    main()
