"""Convert one real layer with estargz and with the Go reference, side by side in one run.

The layer is a tar of this Python installation's standard library (a few hundred MB, made with
GNU tar). The Go reference is `estargz.Build` from Debian's stargz-snapshotter package, driven by
the project's interop checker (tests/interop/build_checker.sh builds it) with GOMAXPROCS = CPUs,
as Go runs by default. Pairings: estargz's default level against Go's default (9), level 9
against level 9, level 1 against level 1. For each run: wall time, throughput, blob size, peak
RSS, and the ratios to the Go run of the pairing.

    python benchmarks/compare.py                 # table on stdout
    python benchmarks/compare.py --markdown      # the same as a Markdown table
    python benchmarks/compare.py --all-levels    # blob sizes of both at every level 1-9
    python benchmarks/compare.py --zstd          # zstd:chunked against both Go writers
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from estargz import DEFAULT_GZIP_LEVEL, GZIP_ENGINES

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Run:
    tool: str
    level: str
    seconds: float
    blob_size: int
    peak_rss: int  # bytes


def make_stdlib_tar(path: Path) -> None:
    """A tar of the standard library directory (site-packages left out), made with GNU tar."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    subprocess.run(["tar", "--exclude=site-packages", "-C", "/", "-cf", str(path),
                    str(stdlib.relative_to("/"))], check=True)


def run_child(command: list[str]) -> tuple[float, int, bytes]:
    """Run ``command`` and measure it with wait4 (RSS of this child only)."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout = proc.stdout.read()  # type: ignore[union-attr]
    stderr = proc.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.exit(f"{' '.join(command[:3])} failed: {stderr.decode(errors='replace').strip()}")
    return seconds, usage.ru_maxrss * 1024, stdout


def run_estargz(layer: Path, out: Path, level: int | None) -> Run:
    flags = [] if level is None else ["--estargz-compression-level", str(level)]
    seconds, rss, stdout = run_child([sys.executable, "-m", "estargz", "convert", "-q", *flags,
                                      str(layer), str(out)])
    label = f"default ({DEFAULT_GZIP_LEVEL})" if level is None else str(level)
    return Run("estargz", label, seconds, json.loads(stdout)["blobSize"], rss)


def run_estargz_zstd(layer: Path, out: Path, layer_format: str, level: int | None) -> Run:
    flags = [] if level is None else ["--zstdchunked-compression-level", str(level)]
    seconds, rss, stdout = run_child([sys.executable, "-m", "estargz", "convert", "-q", "--format", layer_format,
                                      *flags, str(layer), str(out)])
    label = f"{layer_format} " + ("default" if level is None else f"level {level}")
    return Run("estargz", label, seconds, json.loads(stdout)["blobSize"], rss)


def zstd_comparison(checker: str, layer: Path | None, procs: int) -> None:
    """zstd:chunked: both estargz dialects against the Go stargz-snapshotter writer (level 3) and
    the containers/storage 1.43 writer (level 10), ratios against the faster Go writer."""
    with tempfile.TemporaryDirectory(prefix="estargz-bench-") as tmp:
        work = Path(tmp)
        if layer is None:
            layer = work / "stdlib.tar"
            make_stdlib_tar(layer)
        size = layer.stat().st_size
        seconds, rss, stdout = run_child([checker, "build", "--zstdchunked", "--procs", str(procs),
                                          str(layer), str(work / "go.zst")])
        go_stargz = Run("go stargz-snapshotter", "zstd:chunked-stargz level 3", seconds,
                        json.loads(stdout)["blobSize"], rss)
        seconds, rss, stdout = run_child([checker, "build-cs", str(layer), str(work / "go.zst")])
        go_cs = Run("go containers/storage 1.43", "zstd:chunked level 10", seconds,
                    json.loads(stdout)["blobSize"], rss)
        ours = [run_estargz_zstd(layer, work / "py.zst", "zstd:chunked-stargz", None),
                run_estargz_zstd(layer, work / "py.zst", "zstd:chunked", 3),
                run_estargz_zstd(layer, work / "py.zst", "zstd:chunked", 5),
                run_estargz_zstd(layer, work / "py.zst", "zstd:chunked", 6),
                run_estargz_zstd(layer, work / "py.zst", "zstd:chunked", None)]
    fastest = min(go_stargz, go_cs, key=lambda run: run.seconds)
    print(f"layer: {size / 1e6:.1f} MB; ratios against the faster Go writer ({fastest.tool})\n")
    print("| tool | format and level | seconds | MB/s | blob MB | peak RSS MiB | speed ×Go | size ×Go |")
    print("|---|---|---|---|---|---|---|---|")
    for run in (go_stargz, go_cs, *ours):
        print(f"| {run.tool} | {run.level} | {run.seconds:.2f} | {size / run.seconds / 1e6:.0f} | "
              f"{run.blob_size / 1e6:.2f} | {run.peak_rss / 2**20:.0f} | {fastest.seconds / run.seconds:.1f} | "
              f"{run.blob_size / fastest.blob_size:.4f} |")


def run_go(checker: str, layer: Path, out: Path, level: int, procs: int) -> Run:
    seconds, rss, stdout = run_child([checker, "build", "--level", str(level), "--procs", str(procs),
                                      str(layer), str(out)])
    return Run("go", str(level), seconds, json.loads(stdout)["blobSize"], rss)


def build_checker() -> str:
    result = subprocess.run(["bash", str(ROOT / "tests/interop/build_checker.sh")],
                            capture_output=True, text=True)
    if result.returncode:
        sys.exit("cannot build the Go reference checker:\n" + result.stderr)
    return result.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", type=Path, help="layer tar to use (default: a tar of the stdlib)")
    parser.add_argument("--procs", type=int, default=os.cpu_count() or 1,
                        help="GOMAXPROCS for the Go reference (default: every CPU, as Go does)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--zstd", action="store_true",
                        help="compare the zstd:chunked writers instead (Markdown)")
    parser.add_argument("--all-levels", action="store_true",
                        help="compare blob sizes at every level 1-9 instead (Markdown)")
    args = parser.parse_args()
    if args.all_levels:
        all_levels(build_checker(), args.layer, args.procs)
        return
    if args.zstd:
        zstd_comparison(build_checker(), args.layer, args.procs)
        return

    checker = build_checker()
    with tempfile.TemporaryDirectory(prefix="estargz-bench-") as tmp:
        work = Path(tmp)
        layer = args.layer
        if layer is None:
            layer = work / "stdlib.tar"
            make_stdlib_tar(layer)
        size = layer.stat().st_size
        go9 = run_go(checker, layer, work / "go.esgz", 9, args.procs)
        go1 = run_go(checker, layer, work / "go.esgz", 1, args.procs)
        groups = [
            (go9, [run_estargz(layer, work / "py.esgz", None), run_estargz(layer, work / "py.esgz", 9)]),
            (go1, [run_estargz(layer, work / "py.esgz", 1)]),
        ]

    print(f"layer: {layer.name if args.layer else 'Python stdlib tar'}, {size / 1e6:.1f} MB; "
          f"Go reference with GOMAXPROCS={args.procs}; {os.cpu_count()} CPUs")
    header = ("level", "tool", "seconds", "MB/s", "blob MB", "peak RSS MiB", "speed ×Go", "size ×Go")
    lines = []
    for go, ours in groups:
        for run in (go, *ours):
            lines.append((run.level, run.tool, f"{run.seconds:.2f}", f"{size / run.seconds / 1e6:.0f}",
                          f"{run.blob_size / 1e6:.2f}", f"{run.peak_rss / 2**20:.0f}",
                          f"{go.seconds / run.seconds:.1f}", f"{run.blob_size / go.blob_size:.4f}"))
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for line in lines:
            print("| " + " | ".join(line) + " |")
    else:
        widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
        for line in (header, *lines):
            print("  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)))


def all_levels(checker: str, layer: Path | None, procs: int) -> None:
    """Blob sizes of the Go reference and estargz at each level, on the same layer."""
    with tempfile.TemporaryDirectory(prefix="estargz-bench-") as tmp:
        work = Path(tmp)
        if layer is None:
            layer = work / "stdlib.tar"
            make_stdlib_tar(layer)
        print("| level | Go blob bytes | estargz engine | estargz blob bytes | size ×Go |")
        print("|---|---|---|---|---|")
        for level in range(1, 10):
            go = run_go(checker, layer, work / "go.esgz", level, procs)
            ours = run_estargz(layer, work / "py.esgz", level)
            engine, engine_level = GZIP_ENGINES[level]
            print(f"| {level} | {go.blob_size} | {engine} {engine_level} | {ours.blob_size} | "
                  f"{ours.blob_size / go.blob_size:.4f} |", flush=True)


if __name__ == "__main__":
    main()
