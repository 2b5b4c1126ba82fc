"""`verify` throughput of estargz and of the Go verifier, side by side on the same blobs.

The layer is a tar of /usr/lib/python3.11 (``tar -C /usr -cf usr-lib.tar lib/python3.11``, or
``--layer``), converted by estargz with default options and with min-chunk-size. Each blob is
verified, one run after the other from this process, by ``python -m estargz verify --toc-digest``
(this checkout's estargz) and by the Go interop checker's ``verify`` command (Debian's
stargz-snapshotter, GOMAXPROCS=2; tests/interop/checker/main.go), best of ``--repeat`` runs. A
stargz-flavoured zstd:chunked blob of the same layer is compared too. Throughput is blob bytes per
second. The Go command does more than verify chunks: it also hashes each file's content and
inflates the whole blob once more for the diffID. Debian's Go package is v0.12.0, older than
min-chunk-size, so it refuses that blob; the table says so.

    python3 benchmarks/verify.py                # table on stdout
    python3 benchmarks/verify.py --markdown     # the same as a Markdown table (docs/benchmarks.md)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from installed import use_bytecode

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CHECKER = Path.home() / ".cache/estargz-checker/estargz-checker"
GO_PROCS = 2
MIN_CHUNK_SIZE = 50000
LAYER_DIR = ("/usr", "lib/python3.11")


@dataclass
class Timing:
    tool: str
    blob: str
    blob_size: int
    seconds: float
    peak_rss: int
    error: str = ""

    @property
    def mb_per_s(self) -> float:
        return self.blob_size / self.seconds / 1e6


def timed(command: list[str], env: dict[str, str]) -> tuple[float, int] | str:
    """Wall seconds and peak RSS (bytes) of one run of ``command``, or the last line of its error."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    stderr = proc.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        lines = stderr.decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else f"exit status {os.waitstatus_to_exitcode(status)}"
    return seconds, usage.ru_maxrss * 1024


def best_of(repeat: int, tool: str, blob: str, size: int, command: list[str], env: dict[str, str]) -> Timing:
    """The fastest of ``repeat`` runs (seconds 0 and ``error`` set when the command failed)."""
    runs = []
    for _ in range(repeat):
        run = timed(command, env)
        if isinstance(run, str):
            return Timing(tool, blob, size, 0.0, 0, error=run)
        runs.append(run)
    return Timing(tool, blob, size, min(s for s, _ in runs), max(r for _, r in runs))


def convert(layer: Path, out: Path, flags: list[str], env: dict[str, str]) -> str:
    """Convert ``layer`` with ``python -m estargz convert`` (a child, so that this process stays
    small: a child's peak RSS starts from its parent's); return the TOC digest."""
    result = subprocess.run([sys.executable, "-m", "estargz", "convert", "-q", *flags, str(layer), str(out)],
                            capture_output=True, check=True, env=env, cwd=ROOT)
    return json.loads(result.stdout)["tocDigest"]


#: Blob label -> (flags of ``estargz convert``, flags of the Go checker's verify).
BLOBS = {
    "default": ([], []),
    f"min-chunk-size {MIN_CHUNK_SIZE}": (["--estargz-min-chunk-size", str(MIN_CHUNK_SIZE)], []),
    "zstd:chunked-stargz": (["--format", "zstd:chunked-stargz"], ["--zstdchunked"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", type=Path, help="layer tar (default: a tar of /usr/lib/python3.11)")
    parser.add_argument("--checker", type=Path,
                        default=Path(os.environ.get("ESTARGZ_CHECKER") or DEFAULT_CHECKER),
                        help="the Go interop checker (default: $ESTARGZ_CHECKER or %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each verifier; the best counts")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()
    use_bytecode()
    if not os.access(args.checker, os.X_OK):
        sys.exit(f"no Go checker at {args.checker}: build it with tests/interop/build_checker.sh")
    python_env = {**os.environ, "PYTHONPATH": str(ROOT)}
    go_env = {**os.environ, "GOMAXPROCS": str(GO_PROCS)}
    with tempfile.TemporaryDirectory(prefix="estargz-bench-") as tmp:
        work = Path(tmp)
        layer = args.layer
        if layer is None:
            layer = work / "usr-lib.tar"
            subprocess.run(["tar", "-C", LAYER_DIR[0], "-cf", str(layer), LAYER_DIR[1]], check=True)
        pairs = []
        for label, (convert_flags, go_flags) in BLOBS.items():
            blob = work / "layer.blob"
            toc_digest = convert(layer, blob, convert_flags, python_env)
            size = blob.stat().st_size
            go = best_of(args.repeat, f"go (GOMAXPROCS={GO_PROCS})", label, size,
                         [str(args.checker), "verify", *go_flags, str(blob), toc_digest], go_env)
            ours = best_of(args.repeat, "estargz", label, size, [sys.executable, "-m", "estargz", "verify",
                           "--toc-digest", toc_digest, str(blob)], python_env)
            pairs.append((go, ours))
    print_table(layer.stat().st_size if args.layer else None, pairs, args.markdown)


def print_table(layer_size: int | None, pairs: list[tuple[Timing, Timing]], markdown: bool) -> None:
    source = f"{layer_size / 1e6:.1f} MB layer" if layer_size else "tar of /usr/lib/python3.11"
    print(f"{source}; {os.cpu_count()} CPUs; best of the runs\n")
    header = ("blob", "tool", "blob MB", "seconds", "MB/s", "peak RSS MiB", "speed ×Go")
    lines = []
    for go, ours in pairs:
        for run in (go, ours):
            if run.error:
                lines.append((run.blob, run.tool, f"{run.blob_size / 1e6:.1f}", f"refused: {run.error[:60]}",
                              "", "", ""))
                continue
            ratio = f"{go.seconds / run.seconds:.2f}" if not go.error else ""
            lines.append((run.blob, run.tool, f"{run.blob_size / 1e6:.1f}", f"{run.seconds:.2f}",
                          f"{run.mb_per_s:.0f}", f"{run.peak_rss / 2**20:.0f}", ratio))
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for line in lines:
            print("| " + " | ".join(line) + " |")
        return
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    for line in (header, *lines):
        print("  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)))


if __name__ == "__main__":
    main()
