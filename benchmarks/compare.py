"""Convert real layers with estargz and with the Go reference, side by side in one run.

Two layers, both tars of this Python installation's standard library made with GNU tar (site-packages
left out): the full tree (a few hundred MB, with the large static library) and the layer of many
small files (the same tree without the static library ``libpython*.a``). The Go reference is
`estargz.Build` from Debian's stargz-snapshotter package, driven by the project's interop checker
(tests/interop/build_checker.sh builds it) with GOMAXPROCS = CPUs, as Go runs by default.
Pairings: estargz's default level against Go's default (9), level 9 against level 9, level 1
against level 1. For each run: wall time, throughput, blob size, peak RSS, the ratios to the Go run
of the pairing, and for estargz the fraction of its engine's two-core limit: the throughput of the
raw codec (libdeflate or zstandard at the same level) on the same bytes, cut where the
writer cuts its members, on two threads, measured in the same run. With ``--runs N`` every figure
is the median of N runs.

    python benchmarks/compare.py                 # both layers, table on stdout
    python benchmarks/compare.py --layers small  # the layer of many small files only
    python benchmarks/compare.py --markdown      # the same as Markdown tables
    python benchmarks/compare.py --all-levels    # blob sizes of both at every level 1-9
    python benchmarks/compare.py --zstd          # zstd:chunked against both Go writers
    python benchmarks/compare.py --baseline DIR  # also an older estargz checkout, run by run

With ``--baseline``, every estargz run is followed by the same run of the estargz package in DIR (a
checkout, imported through PYTHONPATH), labelled ``estargz@baseline``: before and after a change,
measured side by side in one run.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import deflate
import zstandard

from estargz import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_CONTAINERS_STORAGE_ZSTD_LEVEL,
    DEFAULT_GZIP_LEVEL,
    DEFAULT_ZSTD_LEVEL,
    GZIP_ENGINES,
)
from estargz.chunking import content_defined_chunks, fixed_chunks
from estargz.tarstream import iter_entries
from installed import use_bytecode

ROOT = Path(__file__).resolve().parent.parent
#: The layers, by name: (description, whether the static library is left out).
LAYERS = {"full": ("Python stdlib tar", False), "small": ("Python stdlib tar without the static library", True)}
#: The engines' threads: the two-core limit.
ENGINE_THREADS = 2
#: Plaintext bytes handed to an engine thread at once, as the writer batches its members.
_ENGINE_BATCH = 1 << 20


@dataclass
class Run:
    tool: str
    level: str
    seconds: float
    blob_size: int
    peak_rss: int  # bytes
    engine_seconds: float | None = None
    """Two-core limit of the run's engine on the same bytes, if measured."""


def make_stdlib_tar(path: Path, *, small_files: bool = False) -> None:
    """A tar of the standard library directory (site-packages left out), made with GNU tar;
    with ``small_files``, also without the static library (``libpython*.a``)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    excludes = ["--exclude=site-packages", *(["--exclude=libpython*.a"] if small_files else [])]
    subprocess.run(["tar", *excludes, "-C", "/", "-cf", str(path), str(stdlib.relative_to("/"))], check=True)


def member_cuts(layer: bytes, chunk_size: int = DEFAULT_CHUNK_SIZE) -> list[memoryview]:
    """The layer cut where the stargz writers start a member: at each chunk of each file."""
    starts = [entry.data_offset + offset for entry in iter_entries(io.BytesIO(layer)) if entry.kind == "reg"
              for offset, _ in fixed_chunks(entry.size, chunk_size)]
    bounds = [0, *starts, len(layer)]
    view = memoryview(layer)
    return [view[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


def frame_cuts(layer: bytes) -> list[memoryview]:
    """The layer cut as the containers/storage writer frames it: headers apart, each file's
    content-defined chunks one by one (runs of zeros left out: they are not compressed)."""
    view, position, cuts = memoryview(layer), 0, []
    for entry in iter_entries(io.BytesIO(layer)):
        cuts.append(view[position:entry.data_offset])
        content = view[entry.data_offset:entry.data_offset + entry.size]
        if entry.kind == "reg" and entry.size:
            cuts.extend(content[at:at + length] for at, length, zeros in content_defined_chunks(content) if not zeros)
        position = entry.data_offset + entry.size
    cuts.append(view[position:])
    return [cut for cut in cuts if len(cut)]


def gzip_engine(level: int) -> Callable[[memoryview], object]:
    """The raw deflate engine the eStargz writer uses at ``level``."""
    _, engine_level = GZIP_ENGINES[level]
    return lambda data: deflate.deflate_compress(data, engine_level)


def zstd_engine(level: int) -> Callable[[memoryview], object]:
    """zstd at ``level``, one context per thread."""
    local = threading.local()

    def compress(data: memoryview) -> object:
        if not hasattr(local, "context"):
            local.context = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)
        return local.context.compress(data)
    return compress


def _batches(cuts: list[memoryview]) -> Iterator[list[memoryview]]:
    batch: list[memoryview] = []
    size = 0
    for cut in cuts:
        batch.append(cut)
        size += len(cut)
        if size >= _ENGINE_BATCH:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _engine_limits(layer: Path, jobs: Sequence[tuple[str, str, int]]) -> list[float]:
    """Seconds of each job (cuts: "members" or "frames"; codec: "gzip" or "zstd"; level) on ``layer``."""
    data = layer.read_bytes()
    cutters = {"members": member_cuts, "frames": frame_cuts}
    engines = {"gzip": gzip_engine, "zstd": zstd_engine}
    cuts = {kind: cutters[kind](data) for kind in {kind for kind, _, _ in jobs}}
    return [engine_seconds(engines[codec](level), cuts[kind]) for kind, codec, level in jobs]


def engine_limits(layer: Path, jobs: Sequence[tuple[str, str, int]]) -> list[float]:
    """:func:`_engine_limits` in a spawned process: this one, whose children's peak RSS the tables
    report (a child's peak counts its parent's memory at the fork), never holds the layer."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_engine_limits, layer, jobs).result()


def engine_seconds(compress: Callable[[memoryview], object], cuts: list[memoryview]) -> float:
    """Wall time of the engine alone compressing ``cuts`` on :data:`ENGINE_THREADS` threads."""
    with ThreadPoolExecutor(ENGINE_THREADS) as pool:
        start = time.perf_counter()
        for _ in pool.map(lambda batch: [compress(cut) for cut in batch], _batches(cuts)):
            pass
        return time.perf_counter() - start


def run_child(command: list[str], baseline: bool = False) -> tuple[float, int, bytes]:
    """Run ``command`` (with the ``--baseline`` estargz if ``baseline``) and measure it with wait4
    (RSS of this child only)."""
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(BASELINE)} if baseline else None
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            cwd=BASELINE if baseline else None)
    stdout = proc.stdout.read()  # type: ignore[union-attr]
    stderr = proc.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.exit(f"{' '.join(command[:3])} failed: {stderr.decode(errors='replace').strip()}")
    return seconds, usage.ru_maxrss * 1024, stdout


#: The estargz checkout of ``--baseline``, if given.
BASELINE: Path | None = None
BASELINE_TOOL = "estargz@baseline"


def run_estargz_cli(args: list[str], label: str) -> list[Run]:
    """``python -m estargz convert -q ARGS``, then the same with the baseline if there is one."""
    runs = []
    for tool, baseline in (("estargz", False), *([(BASELINE_TOOL, True)] if BASELINE else [])):
        seconds, rss, stdout = run_child([sys.executable, "-m", "estargz", "convert", "-q", *args], baseline)
        runs.append(Run(tool, label, seconds, json.loads(stdout)["blobSize"], rss))
    return runs


def run_estargz(layer: Path, out: Path, level: int | None) -> list[Run]:
    flags = [] if level is None else ["--estargz-compression-level", str(level)]
    label = f"default ({DEFAULT_GZIP_LEVEL})" if level is None else str(level)
    return run_estargz_cli([*flags, str(layer), str(out)], label)


def run_estargz_zstd(layer: Path, out: Path, layer_format: str, level: int | None) -> list[Run]:
    flags = [] if level is None else ["--zstdchunked-compression-level", str(level)]
    label = f"{layer_format} " + ("default" if level is None else f"level {level}")
    return run_estargz_cli(["--format", layer_format, *flags, str(layer), str(out)], label)


def zstd_round(checker: str, layer: Path, procs: int) -> list[Run]:
    """One run of each zstd:chunked writer, then the two-core limit of the estargz runs' engines."""
    cases = (("zstd:chunked-stargz", None, DEFAULT_ZSTD_LEVEL), ("zstd:chunked", 3, 3), ("zstd:chunked", 5, 5),
             ("zstd:chunked", 6, 6),
             ("zstd:chunked", None, DEFAULT_CONTAINERS_STORAGE_ZSTD_LEVEL))
    with tempfile.TemporaryDirectory(prefix="estargz-bench-") as tmp:
        work = Path(tmp)
        seconds, rss, stdout = run_child([checker, "build", "--zstdchunked", "--procs", str(procs),
                                          str(layer), str(work / "go.zst")])
        runs = [Run("go stargz-snapshotter", "zstd:chunked-stargz level 3", seconds,
                    json.loads(stdout)["blobSize"], rss)]
        seconds, rss, stdout = run_child([checker, "build-cs", str(layer), str(work / "go.zst")])
        runs.append(Run("go containers/storage 1.43", "zstd:chunked level 10", seconds,
                        json.loads(stdout)["blobSize"], rss))
        ours = [run for layer_format, level, _ in cases
                for run in run_estargz_zstd(layer, work / "py.zst", layer_format, level)]
    kinds = {"zstd:chunked-stargz": "members", "zstd:chunked": "frames"}
    limits = engine_limits(layer, [(kinds[layer_format], "zstd", level) for layer_format, _, level in cases])
    for run, seconds in zip((run for run in ours if run.tool == "estargz"), limits, strict=True):
        run.engine_seconds = seconds
    return runs + ours


def zstd_comparison(checker: str, layer: Path, procs: int, runs: int) -> None:
    """zstd:chunked: both estargz dialects against the Go stargz-snapshotter writer (level 3) and
    the containers/storage 1.43 writer (level 10), ratios against the faster Go writer."""
    go_stargz, go_cs, *ours = median_runs([zstd_round(checker, layer, procs) for _ in range(runs)])
    size = layer.stat().st_size
    fastest = min(go_stargz, go_cs, key=lambda run: run.seconds)
    print(f"{size / 1e6:.1f} MB; ratios against the faster Go writer ({fastest.tool})\n")
    print("| tool | format and level | seconds | MB/s | blob MB | peak RSS MiB | speed ×Go | size ×Go "
          "| engine limit MB/s | × engine limit |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for run in (go_stargz, go_cs, *ours):
        print(f"| {run.tool} | {run.level} | {run.seconds:.2f} | {size / run.seconds / 1e6:.0f} | "
              f"{run.blob_size / 1e6:.2f} | {run.peak_rss / 2**20:.0f} | {fastest.seconds / run.seconds:.1f} | "
              f"{run.blob_size / fastest.blob_size:.4f} | {' | '.join(_engine_cells(run, size))} |")


def _engine_cells(run: Run, size: int) -> tuple[str, str]:
    """The engine's two-core throughput and the run's fraction of it, or blanks."""
    if run.engine_seconds is None:
        return "", ""
    return f"{size / run.engine_seconds / 1e6:.0f}", f"{run.engine_seconds / run.seconds:.2f}"


def median_runs(rounds: list[list[Run]]) -> list[Run]:
    """Each run of a round with the medians of its times and peak RSS over the rounds."""
    medians = []
    for same in zip(*rounds, strict=True):
        engines = [run.engine_seconds for run in same if run.engine_seconds is not None]
        medians.append(replace(same[0], seconds=statistics.median(run.seconds for run in same),
                               peak_rss=int(statistics.median(run.peak_rss for run in same)),
                               engine_seconds=statistics.median(engines) if engines else None))
    return medians


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


def gzip_round(checker: str, layer: Path, procs: int) -> list[Run]:
    """One run of each pairing: Go level 9, estargz default and 9; Go level 1, estargz 1; then the
    two-core limit of each estargz run's engine."""
    runs, levels = [], []
    with tempfile.TemporaryDirectory(prefix="estargz-bench-") as tmp:
        work = Path(tmp)
        for go_level, ours in ((9, (None, 9)), (1, (1,))):
            runs.append(run_go(checker, layer, work / "go.esgz", go_level, procs))
            for level in ours:
                runs.extend(run_estargz(layer, work / "py.esgz", level))
                levels.append(level or DEFAULT_GZIP_LEVEL)
    limits = engine_limits(layer, [("members", "gzip", level) for level in levels])
    for run, seconds in zip((run for run in runs if run.tool == "estargz"), limits, strict=True):
        run.engine_seconds = seconds
    return runs


def gzip_comparison(checker: str, layer: Path, procs: int, runs: int, markdown: bool) -> None:
    """The table of the gzip pairings on ``layer``; ratios against the Go run of each pairing."""
    size = layer.stat().st_size
    header = ("level", "tool", "seconds", "MB/s", "blob MB", "peak RSS MiB", "speed ×Go", "size ×Go",
              "engine limit MB/s", "× engine limit")
    lines = []
    go = None
    for run in median_runs([gzip_round(checker, layer, procs) for _ in range(runs)]):
        go = run if run.tool == "go" else go
        assert go is not None
        lines.append((run.level, run.tool, f"{run.seconds:.2f}", f"{size / run.seconds / 1e6:.0f}",
                      f"{run.blob_size / 1e6:.2f}", f"{run.peak_rss / 2**20:.0f}",
                      f"{go.seconds / run.seconds:.1f}", f"{run.blob_size / go.blob_size:.4f}",
                      *_engine_cells(run, size)))
    print(f"{size / 1e6:.1f} MB; Go reference with GOMAXPROCS={procs}; {os.cpu_count()} CPUs"
          + (f"; medians of {runs} runs" if runs > 1 else "") + "\n")
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for line in lines:
            print("| " + " | ".join(line) + " |")
    else:
        widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
        for line in (header, *lines):
            print("  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)))
    print(flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", type=Path, help="layer tar to use instead of the stdlib layers")
    parser.add_argument("--layers", choices=("both", *LAYERS), default="both",
                        help="which stdlib layers: the full tree, the many small files, or both (default)")
    parser.add_argument("--runs", type=int, default=1, help="runs of each case; figures are medians")
    parser.add_argument("--procs", type=int, default=os.cpu_count() or 1,
                        help="GOMAXPROCS for the Go reference (default: every CPU, as Go does)")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--zstd", action="store_true",
                        help="compare the zstd:chunked writers instead (Markdown)")
    parser.add_argument("--all-levels", action="store_true",
                        help="compare blob sizes at every level 1-9 instead (Markdown)")
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="also run the estargz checkout in DIR after each estargz run")
    args = parser.parse_args()
    use_bytecode()
    if args.baseline is not None:
        global BASELINE
        BASELINE = args.baseline.resolve()
        _, _, imported = run_child([sys.executable, "-c", "import estargz; print(estargz.__file__)"], True)
        if not Path(imported.decode().strip()).is_relative_to(BASELINE):
            parser.error(f"--baseline {args.baseline} has no estargz package")
    checker = build_checker()
    with tempfile.TemporaryDirectory(prefix="estargz-bench-") as tmp:
        for name, layer in layers(args.layer, args.layers, Path(tmp)):
            print(f"layer: {name}, ", end="")
            if args.all_levels:
                print()
                all_levels(checker, layer, args.procs)
            elif args.zstd:
                zstd_comparison(checker, layer, args.procs, args.runs)
            else:
                gzip_comparison(checker, layer, args.procs, args.runs, args.markdown)


def layers(given: Path | None, which: str, work: Path) -> Iterator[tuple[str, Path]]:
    """The layers to measure: ``given``, or the stdlib layers ``which`` names, made in ``work``."""
    if given is not None:
        yield given.name, given
        return
    for name, (description, small_files) in LAYERS.items():
        if which in ("both", name):
            path = work / f"stdlib-{name}.tar"
            make_stdlib_tar(path, small_files=small_files)
            yield description, path


def all_levels(checker: str, layer: Path, procs: int) -> None:
    """Blob sizes of the Go reference and estargz at each level, on the same layer."""
    with tempfile.TemporaryDirectory(prefix="estargz-bench-") as tmp:
        work = Path(tmp)
        print("| level | Go blob bytes | estargz engine | estargz blob bytes | size ×Go |")
        print("|---|---|---|---|---|")
        for level in range(1, 10):
            go = run_go(checker, layer, work / "go.esgz", level, procs)
            ours = run_estargz(layer, work / "py.esgz", level)[0]
            engine, engine_level = GZIP_ENGINES[level]
            print(f"| {level} | {go.blob_size} | {engine} {engine_level} | {ours.blob_size} | "
                  f"{ours.blob_size / go.blob_size:.4f} |", flush=True)


if __name__ == "__main__":
    main()
