"""Start a program from a lazily mounted image, against pulling and unpacking the whole image.

The image is a Python image built from this machine's Debian Python (the interpreter, its shared
libraries, the standard library and dist-packages, merged-/usr symlinks): one layer of more than
100 MB, converted with the files ``python3 -c 'print("hi")'`` opens (recorded once with strace in
a chroot of the unpacked layer, with the ELF interpreter the kernel opens) prioritized, and
pushed with skopeo to a Debian docker-registry on 127.0.0.1. Each run times, from the start to
the end of ``chroot ROOT python3 -c 'print("hi")'``:

- lazy: ``python -m estargz mount REF MNT`` (footer, TOC, then the chunks that are read; the
  prioritized files prefetched in the background), then the program in a chroot of the mount;
- full: ``skopeo copy`` of the image into an OCI layout, ``tar -xf`` of its layer, then the
  program in a chroot of the unpacked tree.

Bytes are what crossed the loopback connection for the layer: the mount's own count of fetched
blob bytes, and the whole blob for the pull. The mount runs with its modules' bytecode, as an
installed package has it (written by one untimed mount first, even under PYTHONDONTWRITEBYTECODE).
Needs root (chroot, FUSE), skopeo, docker-registry.

Each run pulls once and mounts once per ``--prefetch`` and ``--cache-size`` given (and with the
estargz of a ``--baseline`` checkout too), one after the other and in turns first after the pull,
so that the machine's load weighs on all alike; medians and ranges are printed with the load.

    python benchmarks/mount.py [--format estargz] [--prefetch landmark none] [--runs 5] [--cache-size 256M 8M]
                               [--baseline OTHER-CHECKOUT]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import estargz  # noqa: E402
from lazy import start_registry  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PYTHON = "/usr/bin/python3.11"
PROGRAM = [PYTHON, "-c", 'print("hi")']
#: The directories of the image besides the interpreter's shared libraries.
TREES = ("/usr/lib/python3.11", "/usr/lib/python3")
MERGED_USR = {"bin": "usr/bin", "lib": "usr/lib", "lib64": "usr/lib64", "sbin": "usr/sbin"}
MOUNT_TIMEOUT = 120
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def shared_libraries(paths: list[str]) -> set[str]:
    """The shared libraries ``ldd`` lists for ``paths``, with the symlinks leading to them."""
    found: set[str] = set()
    for path in paths:
        proc = subprocess.run(["ldd", path], capture_output=True, text=True, check=False)
        for library in re.findall(r"(/\S+) \(0x", proc.stdout):
            while os.path.islink(library):
                found.add(library)
                library = os.path.join(os.path.dirname(library), os.readlink(library))
            found.add(os.path.normpath(library))
    return found


def image_path(path: str) -> str:
    """Where a host path lies in the image (whose /lib, /lib64, /bin are symlinks into /usr)."""
    top, _, rest = path.lstrip("/").partition("/")
    return f"{MERGED_USR.get(top, top)}/{rest}"


def python_image_tar(out: Path) -> int:
    """Write the image's layer tar; return its size."""
    dynload = [str(p) for p in Path("/usr/lib/python3.11/lib-dynload").glob("*.so")]
    libraries = shared_libraries([PYTHON, *dynload])
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, target in MERGED_USR.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
            tar.addfile(info)
        for directory in ("usr", "usr/bin", "usr/lib", "usr/lib64", "usr/lib/x86_64-linux-gnu", "tmp"):
            tar.add(f"/{directory}", arcname=directory, recursive=False)
        tar.add(PYTHON, arcname=PYTHON.lstrip("/"))
        tar.add("/usr/bin/python3", arcname="usr/bin/python3")
        for path in sorted(libraries):
            tar.add(path, arcname=image_path(path), recursive=False)
        for tree in TREES:
            tar.add(tree, arcname=tree.lstrip("/"))
    return out.stat().st_size


def resolved(rootfs: Path, name: str) -> str:
    """``name`` with the symlinks of the image followed inside ``rootfs``."""
    for _ in range(40):
        path = rootfs / name
        if not path.is_symlink():
            return name
        target = os.readlink(path)
        relative = os.path.normpath(os.path.join(os.path.dirname(name), target))
        name = image_path(target) if target.startswith("/") else relative
    return name


def interpreter(path: str) -> str:
    """The ELF interpreter of ``path`` (``ld.so``), which the kernel opens when it runs ``path``."""
    proc = subprocess.run(["readelf", "-lW", path], capture_output=True, text=True, check=True)
    return re.findall(r"Requesting program interpreter: (\S+)\]", proc.stdout)[0]


def record_workload(layer: Path, work: Path) -> list[str]:
    """The files of the layer that the program opens, in the order it opens them: strace's, with
    the ELF interpreter the kernel opens while executing the program (as a recorder watching
    opens with fanotify, like stargz-snapshotter's ``ctr-remote image optimize``, sees it)."""
    rootfs = work / "record"
    rootfs.mkdir()
    subprocess.run(["tar", "-xf", str(layer), "-C", str(rootfs)], check=True)
    trace = work / "strace.log"
    subprocess.run(["strace", "-f", "-qq", "-e", "trace=openat,open,execve", "-o", str(trace),
                    "chroot", str(rootfs), *PROGRAM], check=True, capture_output=True)
    log = trace.read_text()
    log = log[log.index(f'execve("{PYTHON}"'):]  # what chroot itself opened before is not the program's
    opened = re.findall(r'(?:openat\(AT_FDCWD, |open\(|execve\()"([^"]+)"', log)
    opened.insert(1, interpreter(PYTHON))
    files = [resolved(rootfs, image_path(os.path.normpath(path))) for path in dict.fromkeys(opened)]
    files = [name for name in dict.fromkeys(files) if os.path.isfile(rootfs / name)]
    shutil.rmtree(rootfs)
    return files


def write_layout(root: Path, blob: Path, result: estargz.BuildResult) -> None:
    store = root / "blobs" / "sha256"
    store.mkdir(parents=True)

    def put(data: bytes) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (store / digest).write_bytes(data)
        return {"digest": "sha256:" + digest, "size": len(data)}

    shutil.copyfile(blob, store / result.blob_digest[7:])
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [result.diff_id]}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **put(config)},
                           "layers": [{"mediaType": result.media_type, "digest": result.blob_digest,
                                       "size": result.blob_size, "annotations": result.annotations}]}).encode()
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": OCI_MANIFEST, **put(manifest), "annotations": {"org.opencontainers.image.ref.name": "bench"}}]}))
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')


def run_program(rootfs: Path) -> None:
    proc = subprocess.run(["chroot", str(rootfs), *PROGRAM], capture_output=True, text=True, check=False)
    if proc.returncode != 0 or proc.stdout != "hi\n":
        sys.exit(f"the program failed in {rootfs}: {proc.stderr.strip()}")


def full_pull(reference: str, work: Path, blob_size: int) -> tuple[float, int]:
    """Seconds to pull, unpack and run; bytes of the layer pulled."""
    layout, rootfs = work / "pulled", work / "rootfs"
    start = time.perf_counter()
    subprocess.run(["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{reference}", f"oci:{layout}:bench"],
                   check=True)
    manifest = json.loads((layout / "blobs" / "sha256" / json.loads((layout / "index.json").read_text())
                           ["manifests"][0]["digest"][7:]).read_text())
    rootfs.mkdir()
    for layer in manifest["layers"]:
        subprocess.run(["tar", "-xf", str(layout / "blobs" / "sha256" / layer["digest"][7:]), "-C", str(rootfs)],
                       check=True)
    run_program(rootfs)
    seconds = time.perf_counter() - start
    shutil.rmtree(layout)
    shutil.rmtree(rootfs)
    return seconds, blob_size


def installed_environment(work: Path) -> dict[str, str]:
    """The environment for ``python -m estargz``: its modules' bytecode written and reused (in a
    directory of ``work``), as an installed package has it, even where PYTHONDONTWRITEBYTECODE is set."""
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    return {**environment, "PYTHONPYCACHEPREFIX": str(work / "bytecode")}


def lazy_mount(reference: str, work: Path, options: list[str], checkout: Path) -> tuple[float, dict[str, object]]:
    """Seconds to mount (with the estargz of ``checkout``) and run; the figures the mount printed on exit."""
    mountpoint, log = work / "mnt", work / "mount.log"
    mountpoint.mkdir(exist_ok=True)
    environment = installed_environment(work / checkout.name)
    start = time.perf_counter()
    with open(log, "wb") as out:
        command = [sys.executable, "-m", "estargz", "mount", "--insecure", reference, str(mountpoint), *options]
        process = subprocess.Popen(command, cwd=checkout, env=environment, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=out)
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while not os.path.ismount(mountpoint):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            sys.exit(f"the mount did not start: {log.read_text()}")
        time.sleep(0.005)
    run_program(mountpoint)
    seconds = time.perf_counter() - start
    subprocess.run([sys.executable, "-m", "estargz", "umount", str(mountpoint)], cwd=checkout, check=True)
    process.wait(timeout=MOUNT_TIMEOUT)
    figures = [line for line in log.read_text().splitlines() if line.startswith("{")]
    return seconds, json.loads(figures[-1])


def spread(seconds: list[float]) -> str:
    """The median of ``seconds`` with their range."""
    return f"{statistics.median(seconds):.3f} ({min(seconds):.3f}-{max(seconds):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", default=estargz.FORMAT_ESTARGZ, choices=estargz.FORMATS)
    parser.add_argument("--prefetch", nargs="+", default=["landmark"], choices=("landmark", "all", "none"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cache-size", nargs="+", default=["256M"])
    parser.add_argument("--chunk-size", type=int, default=estargz.DEFAULT_CHUNK_SIZE)
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="also mount with the estargz of this checkout (another version), side by side")
    args = parser.parse_args()
    for tool in ("skopeo", "docker-registry", "strace", "chroot", "ldd", "readelf"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed")
    checkouts = {"this": ROOT, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    configs = [(name, prefetch, size) for name in checkouts for prefetch in args.prefetch for size in args.cache_size]
    with tempfile.TemporaryDirectory(prefix="estargz-mount-bench-") as tmp:
        work = Path(tmp)
        layer_size = python_image_tar(work / "layer.tar")
        files = record_workload(work / "layer.tar", work)
        result = estargz.convert(work / "layer.tar", work / "layer.blob", format=args.format,
                                 chunk_size=args.chunk_size, prioritized_files=files, allow_missing_prioritized=True)
        write_layout(work / "layout", work / "layer.blob", result)
        registry, port = start_registry(work)
        try:
            reference = f"127.0.0.1:{port}/bench/python:bench"
            subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{work / 'layout'}:bench",
                            f"docker://{reference}"], check=True)
            for checkout in checkouts.values():  # writes the bytecode
                lazy_mount(reference, work, ["--prefetch", "none"], checkout)
            load_before = os.getloadavg()[0]
            full: list[float] = []
            lazy: dict[tuple[str, str, str], list[tuple[float, dict[str, object]]]] = {c: [] for c in configs}
            for run in range(args.runs):  # side by side, so that the machine's load weighs on all alike
                full.append(full_pull(reference, work, result.blob_size)[0])
                for name, prefetch, size in configs[run % len(configs):] + configs[:run % len(configs)]:
                    options = ["--prefetch", prefetch, "--cache-size", size]
                    lazy[name, prefetch, size].append(lazy_mount(reference, work, options, checkouts[name]))
            load_after = os.getloadavg()[0]
        finally:
            registry.kill()
            registry.wait()
    print(f"image: Debian Python 3.11, one {args.format} layer: {layer_size / 1e6:.1f} MB tar, "
          f"{result.blob_size} bytes blob, {args.chunk_size >> 10} KiB chunks; {len(files)} prioritized files; "
          f"median (range) of {args.runs} runs; load average {load_before:.1f} before, {load_after:.1f} after\n")
    print("| estargz | prefetch | cache | seconds to 'hi' | full / lazy: of medians, median per run "
          "| layer bytes transferred | requests |")
    print("|---|---|---|---|---|---|---|")
    for (name, prefetch, size), runs in lazy.items():
        seconds = [s for s, _ in runs]
        figures = runs[-1][1]
        per_run = statistics.median(f / s for f, s in zip(full, seconds, strict=True))
        print(f"| {name} mount + chroot | {prefetch} | {size} | {spread(seconds)} | "
              f"{statistics.median(full) / statistics.median(seconds):.2f}x, {per_run:.2f}x | "
              f"{figures['bytesFetched']} ({figures['bytesFetched'] / result.blob_size:.1%}) | {figures['requests']} |")
    print(f"| skopeo copy + tar -x + chroot | - | - | {spread(full)} | 1 | {result.blob_size} | - |")
    for (name, prefetch, size), runs in lazy.items():
        print(f"\nmount figures ({name}, {prefetch}, {size}, last run): {json.dumps(runs[-1][1])}")


if __name__ == "__main__":
    main()
