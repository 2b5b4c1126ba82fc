"""Lazy pulling at the format level: read what a program needs from a layer in a registry.

The layer is the Python standard library (as in compare.py), converted to eStargz and pushed to a
Debian `docker-registry` on 127.0.0.1 with `skopeo`. The workload is the set of files that
`python3 -c 'print("hi")'` reads from the standard library, recorded once with `python3 -v`.
Lazily, estargz fetches the footer, the TOC and the chunks of those files with HTTP range
requests; the alternative downloads the whole layer and unpacks it. Both are timed side by side.

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", default=estargz.FORMAT_ESTARGZ, choices=estargz.FORMATS)
    args = parser.parse_args()
    for tool in ("skopeo", "docker-registry"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed (apt-get install {tool})")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = recorded_files(stdlib)
    with tempfile.TemporaryDirectory(prefix="estargz-lazy-") as tmp:
        work = Path(tmp)
        make_stdlib_tar(work / "layer.tar")
        oci_layout(work / "layer.tar", work / "plain")
        estargz.convert_image(work / "plain", work / "converted", format=args.format)
        registry, port = start_registry(work)
        try:
            reference = f"127.0.0.1:{port}/bench:bench"
            subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{work / 'converted'}:bench",
                            f"docker://{reference}"], check=True)

            start = time.perf_counter()
            source, descriptor = open_layer(reference, 0)
            with estargz.Reader(source, annotations=descriptor.get("annotations"), owns_source=True) as blob:
                lazy_bytes = sum(len(blob.read(name)) for name in files)
                lazy_seconds = time.perf_counter() - start
                transferred, requests, blob_size = source.bytes_transferred, source.requests, blob.size

            start = time.perf_counter()
            source, descriptor = open_layer(reference, 0)
            with source, open(work / "whole.blob", "wb") as out:
                for offset in range(0, source.size, 8 << 20):
                    out.write(source.read_at(offset, min(8 << 20, source.size - offset)))
                full_transferred = source.bytes_transferred
            with estargz.open(work / "whole.blob", annotations=descriptor.get("annotations")) as blob:
                blob.extract(work / "rootfs")
            full_seconds = time.perf_counter() - start
        finally:
            registry.kill()
            registry.wait()
    print(f"layer: Python stdlib, {args.format}, {blob_size / 1e6:.1f} MB blob; workload: {len(files)} files "
          f"({lazy_bytes / 1e3:.0f} kB) read by python3 -c 'print(\"hi\")'\n")
    print("| method | seconds | bytes transferred | requests |")
    print("|---|---|---|---|")
    print(f"| lazy: footer, TOC and the files' chunks | {lazy_seconds:.3f} | {transferred} | {requests} |")
    print(f"| download and unpack the whole layer | {full_seconds:.3f} | {full_transferred} | "
          f"{-(-blob_size // (8 << 20))} |")
    print(f"\nlazy / full: {lazy_seconds / full_seconds:.3f} of the time, "
          f"{transferred / full_transferred:.4f} of the bytes")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    main()
