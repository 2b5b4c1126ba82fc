"""Registry to registry: estargz's `image convert` against `skopeo copy` of the same image.

The image is the Python standard library as one gzip layer (as in compare.py), pushed to one
Debian `docker-registry` on 127.0.0.1. Each run copies it to a second, empty registry (restarted
with fresh storage before every run, so nothing is mounted or skipped): estargz converting to
eStargz and to zstd:chunked, skopeo copying it as it is and converting it to zstd:chunked.

    python benchmarks/push.py [--runs 3]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import make_stdlib_tar, run_child
from installed import use_bytecode
from lazy import start_registry

from estargz.push import push_layout

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
BLOCK = 1 << 20


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def gzip_layout(tar: Path, directory: Path) -> None:
    """A single-layer OCI image layout (tag ``bench``) around a gzip layer of ``tar``."""
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes, media_type: str) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": "sha256:" + digest, "size": len(data)}

    compressed = directory / "layer.gz"
    with open(tar, "rb") as src, open(compressed, "wb") as raw, \
            gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as out:
        shutil.copyfileobj(src, out, BLOCK)
    layer_digest = file_digest(compressed)
    compressed.rename(blobs / layer_digest[7:])
    layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest,
             "size": (blobs / layer_digest[7:]).stat().st_size}
    config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [file_digest(tar)]}}
    config_descriptor = put(json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json")
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST, "config": config_descriptor, "layers": [layer]}
    entry = put(json.dumps(manifest).encode(), MANIFEST)
    entry["annotations"] = {"org.opencontainers.image.ref.name": "bench"}
    (directory / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    (directory / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')


def registry(root: Path) -> tuple[subprocess.Popen[bytes], int]:
    root.mkdir(parents=True)
    return start_registry(root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    use_bytecode()
    for tool in ("skopeo", "docker-registry"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (apt-get install {tool})")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_stdlib_tar(work / "layer.tar")
        gzip_layout(work / "layer.tar", work / "layout")
        source_registry, source_port = registry(work / "a")
        try:
            source = f"127.0.0.1:{source_port}/bench/src:bench"
            push_layout(work / "layout", source, insecure=True)
            commands = {
                "estargz image convert (eStargz)": [sys.executable, "-m", "estargz", "image", "convert", "-q",
                                                    "--insecure", source],
                "estargz image convert (zstd:chunked)": [sys.executable, "-m", "estargz", "image", "convert", "-q",
                                                         "--insecure", "--format", "zstd:chunked", source],
                "skopeo copy (as it is)": ["skopeo", "copy", "-q", "--src-tls-verify=false", "--dest-tls-verify=false",
                                           f"docker://{source}"],
                "skopeo copy --dest-compress-format zstd:chunked": [
                    "skopeo", "copy", "-q", "--src-tls-verify=false", "--dest-tls-verify=false",
                    "--dest-compress-format", "zstd:chunked", f"docker://{source}"],
            }
            print(f"layer: {(work / 'layer.tar').stat().st_size / 1e6:.1f} MB tar\n")
            print(f"| command | seconds (median of {args.runs}) | max RSS MB |")
            print("|---|---|---|")
            for name, command in commands.items():
                seconds, peaks = [], []
                for _ in range(args.runs):
                    target, port = registry(work / f"b{len(seconds)}-{abs(hash(name))}")
                    try:
                        destination = f"127.0.0.1:{port}/bench/dst:bench"
                        if command[0] == "skopeo":
                            destination = "docker://" + destination
                        took, peak, _ = run_child(command + [destination])
                    finally:
                        target.kill()
                        target.wait()
                    seconds.append(took)
                    peaks.append(peak)
                print(f"| {name} | {statistics.median(seconds):.2f} | {max(peaks) / 1e6:.0f} |")
        finally:
            source_registry.kill()
            source_registry.wait()


if __name__ == "__main__":
    main()
