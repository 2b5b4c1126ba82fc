"""Lazy pulling at the format level: requests and bytes per operation on a layer in a registry.

The layer is the Python standard library (as in compare.py), converted to each format and pushed
to a Debian `docker-registry` on 127.0.0.1 with `skopeo`. For each format the blob's HTTP requests
and body bytes are counted per operation: opening (footer and TOC), reading one small file, one
large file, and the set of files that `python3 -c 'print("hi")'` reads from the standard library
(recorded once with `python3 -v`), each from a freshly opened layer; side by side with a full
pull (download the whole blob, then unpack it).

    python benchmarks/lazy.py
    python benchmarks/lazy.py --format zstd:chunked
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import estargz  # noqa: E402
from compare import make_stdlib_tar  # noqa: E402
from estargz.registry import open_layer  # noqa: E402


def recorded_files(stdlib: Path) -> list[str]:
    """Standard-library files that ``python3 -c 'print("hi")'`` reads, relative to / (the layer
    holds the standard library without site-packages, like compare.py's)."""
    proc = subprocess.run([sys.executable, "-v", "-c", 'print("hi")'], capture_output=True, text=True, check=True)
    paths = re.findall(r"^# code object from '([^']+)'", proc.stderr, re.M)
    return [p.lstrip("/") for p in dict.fromkeys(paths)
            if Path(p).is_relative_to(stdlib) and "/site-packages/" not in p]


def oci_layout(layer: Path, directory: Path) -> None:
    """A single-layer OCI image layout (tag ``bench``) around an uncompressed layer tar."""
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return "sha256:" + digest

    layer_digest = hashlib.sha256(layer.read_bytes()).hexdigest()
    shutil.copyfile(layer, blobs / layer_digest)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": ["sha256:" + layer_digest]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "sha256:" + layer_digest,
                    "size": layer.stat().st_size}],
    }).encode()
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": put(manifest), "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": "bench"}}]}
    (directory / "index.json").write_text(json.dumps(index))
    (directory / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')


def start_registry(root: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A Debian docker-registry listening on a free port of 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = root / "config.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
                      f"    rootdirectory: {root / 'data'}\nhttp:\n  addr: 127.0.0.1:{port}\n")
    proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    sys.exit("docker-registry did not start")


FULL_PULL = "full pull: download the blob, unpack it"


@dataclass
class Cost:
    """What one operation cost: the blob's requests and body bytes, and seconds."""

    requests: int
    bytes: int
    seconds: float


def lazy_costs(reference: str, small: str, large: str, files: list[str]) -> tuple[dict[str, Cost], dict[str, Cost]]:
    """Costs of opening the layer, then of each read from a freshly opened layer; and the
    requests and bytes stargz-snapshotter would need for the same operations."""
    workloads = {"open (footer + TOC)": [], f"one small file ({Path(small).name})": [small],
                 f"one large file ({Path(large).name})": [large],
                 f"python3 -c 'print(\"hi\")' ({len(files)} files)": files}
    costs, estimates = {}, {}
    for label, names in workloads.items():
        start = time.perf_counter()
        source, descriptor = open_layer(reference, 0, insecure=True)
        with estargz.Reader(source, annotations=descriptor.get("annotations"), owns_source=True) as blob:
            opened = (source.requests, source.bytes_transferred, time.perf_counter())
            estimates[label] = snapshotter_estimate(blob, names)
            for name in names:
                blob.read(name)
            if names:
                costs[label] = Cost(source.requests - opened[0], source.bytes_transferred - opened[1],
                                    time.perf_counter() - opened[2])
            else:
                costs[label] = Cost(opened[0], opened[1], opened[2] - start)
    return costs, estimates


#: stargz-snapshotter's blob granularity (fs/remote: ``defaultChunkSize``) and largest footer.
SNAPSHOTTER_REGION = 50000
SNAPSHOTTER_FOOTER = 64


def snapshotter_estimate(blob: estargz.Reader, names: list[str]) -> Cost:
    """Requests and bytes stargz-snapshotter's reader would need for ``names`` (after opening) on
    this blob, by its rule: a file read takes one request per TOC chunk whose compressed range
    touches a 50000-byte-aligned blob region not fetched before, and fetches those regions."""
    fetched: set[int] = set()
    requests = transferred = 0

    def read(start: int, end: int) -> None:
        nonlocal requests, transferred
        missing = set(range(start // SNAPSHOTTER_REGION, (end - 1) // SNAPSHOTTER_REGION + 1)) - fetched
        if missing:
            requests += 1
            transferred += sum(min(blob.size, (r + 1) * SNAPSHOTTER_REGION) - r * SNAPSHOTTER_REGION for r in missing)
            fetched.update(missing)

    read(blob.size - SNAPSHOTTER_FOOTER, blob.size)
    if blob.toc_offset is not None:
        toc_length = blob.footer.toc_length
        read(blob.toc_offset, blob.toc_offset + toc_length if toc_length is not None else blob.size)
    if names:
        requests = transferred = 0
    for name in names:
        for chunk in blob.lookup(name).chunks:
            read(chunk.offset, chunk.next_offset)
    return Cost(requests, transferred, 0.0)


def full_pull(reference: str, work: Path) -> Cost:
    """Download the whole blob (digest-checked) and unpack it."""
    start = time.perf_counter()
    source, descriptor = open_layer(reference, 0, insecure=True)
    with source, open(work / "whole.blob", "wb") as out:
        source.download(out)
        requests, transferred = source.requests, source.bytes_transferred
    with estargz.open(work / "whole.blob", annotations=descriptor.get("annotations")) as blob:
        blob.extract(work / "rootfs")
    shutil.rmtree(work / "rootfs")
    return Cost(requests, transferred, time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", action="append", choices=estargz.FORMATS,
                        help="a format to measure (repeatable; default: all)")
    args = parser.parse_args()
    for tool in ("skopeo", "docker-registry"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed (apt-get install {tool})")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = recorded_files(stdlib)
    small = min(files, key=lambda name: (Path("/", name).stat().st_size, name))
    large = max((str(p.relative_to("/")) for p in stdlib.rglob("*") if p.is_file() and not p.is_symlink()
                 and "site-packages" not in p.parts), key=lambda name: (Path("/", name).stat().st_size, name))
    with tempfile.TemporaryDirectory(prefix="estargz-lazy-") as tmp:
        work = Path(tmp)
        make_stdlib_tar(work / "layer.tar")
        oci_layout(work / "layer.tar", work / "plain")
        registry, port = start_registry(work)
        try:
            for fmt in args.format or estargz.FORMATS:
                converted = work / fmt.replace(":", "-")
                estargz.convert_image(work / "plain", converted, format=fmt)
                reference = f"127.0.0.1:{port}/bench:{converted.name}"
                subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{converted}:bench",
                                f"docker://{reference}"], check=True)
                costs, estimates = lazy_costs(reference, small, large, files)
                costs[FULL_PULL] = full_pull(reference, work)
                report(fmt, costs, estimates)
        finally:
            registry.kill()
            registry.wait()


def report(fmt: str, costs: dict[str, Cost], estimates: dict[str, Cost]) -> None:
    """One Markdown table per format."""
    blob_size = costs[FULL_PULL].bytes
    print(f"\n{fmt}: Python stdlib layer, {blob_size / 1e6:.1f} MB blob\n")
    print("| operation | requests | bytes | seconds | stargz-snapshotter's rule: requests | bytes |")
    print("|---|---|---|---|---|---|")
    for label, cost in costs.items():
        estimate = estimates.get(label)
        other = f"{estimate.requests} | {estimate.bytes}" if estimate else " | "
        print(f"| {label} | {cost.requests} | {cost.bytes} | {cost.seconds:.3f} | {other} |")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    main()
