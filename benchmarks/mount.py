"""Start a program from a lazily mounted image, against pulling and unpacking the whole image.

The image is a Debian Python image, as ``FROM debian:bookworm-slim`` and ``RUN apt-get install -y
--no-install-recommends python3`` give, built without a daemon: ``debootstrap --variant=minbase
bookworm`` as the first layer, then what ``apt-get install python3`` in a chroot of it adds or
changes (with OCI whiteouts for what it deletes) as the second; downloaded packages, package lists
and apt's caches are left out, as images leave them out, and so is what debian:bookworm-slim does
not install (documentation, manual pages, translations). The two layer tars are built once and kept
in ~/.cache/estargz-bench. ``--image host`` takes instead one layer of this machine's Python tree and
the libraries it links. The layers are converted with the files ``python3 -c 'print("hi")'`` opens
prioritized in the topmost layer holding each (recorded once with strace in a chroot of the unpacked
image, with the ELF interpreter the kernel opens), and pushed with skopeo to a Debian
docker-registry on 127.0.0.1. Each run times, from the start to the end of
``chroot ROOT python3 -c 'print("hi")'``:

- lazy: ``python -m estargz mount REF MNT`` (footer, TOC, then the chunks that are read; the
  prioritized files prefetched in the background), then the program in a chroot of the mount;
- full: ``skopeo copy`` of the image into an OCI layout, ``tar -xf`` of its layers in order (each
  one's whiteouts applied), then the program in a chroot of the unpacked tree.

Bytes are what crossed the loopback connection for the layers: the mount's own count of fetched
blob bytes, and the whole blobs for the pull. The mount runs with its modules' bytecode, as an
installed package has it (written by one untimed mount first, even under PYTHONDONTWRITEBYTECODE).
Needs root (chroot, FUSE, debootstrap), skopeo, docker-registry, debootstrap and the network to
build the image once.

Each run pulls once and mounts once per ``--prefetch`` and ``--cache-size`` given (and with the
estargz of a ``--baseline`` checkout too), one after the other and in turns first after the pull,
so that the machine's load weighs on all alike; medians and ranges are printed with the load.

    python benchmarks/mount.py [--image debian|host] [--format estargz] [--prefetch landmark none]
                               [--runs 5] [--cache-size 256M 8M] [--baseline OTHER-CHECKOUT]
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
WHITEOUT = ".wh."
#: The Debian image: ``debootstrap --variant=minbase`` of this suite, then ``apt-get install python3``.
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("python3",)
#: The built layer tars are kept here between runs.
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "estargz-bench", f"debian-{SUITE}-slim-python3")
LAYER_NAMES = ("base.tar", "python3.tar")
#: What a Debian image leaves out: the contents of the kernel's file systems and of /dev, downloaded
#: packages, package lists and apt's caches (as ``apt-get clean && rm -rf /var/lib/apt/lists/*``),
#: and what debian:bookworm-slim does not install: documentation but the copyright files, manual and
#: info pages, translations.
EXCLUDED = re.compile(r"(proc|sys|dev)/.*|var/cache/apt/(archives/.*\.deb|[^/]*\.bin)|var/lib/apt/lists/.*"
                      r"|usr/share/(doc/[^/]+/(?!copyright$).*|groff/.*|info/.*|linda/.*|lintian/overrides/.*"
                      r"|locale/.*|man/.*)")


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


def host_layers(work: Path) -> list[Path]:
    """The one-layer image of this machine's Python tree and the libraries it links."""
    out = work / "host.tar"
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
    return [out]


Snapshot = dict[str, tuple[int, int, int]]


def snapshot(root: Path) -> Snapshot:
    """Each path under ``root`` an image holds (relative, parents first) with its ctime, mtime and size."""
    found: Snapshot = {}
    for directory, subdirectories, files in os.walk(root):
        subdirectories.sort()
        for name in [*subdirectories, *sorted(files)]:
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, root)
            if not EXCLUDED.fullmatch(relative):
                info = os.lstat(path)
                found[relative] = (info.st_ctime_ns, info.st_mtime_ns, info.st_size)
    return found


def tar_paths(root: Path, paths: list[str], out: Path) -> None:
    """Write ``paths`` of ``root`` (not their contents) to the tar ``out``, as they are on disk."""
    listing = out.with_suffix(".list")
    listing.write_text("".join(f"{path}\n" for path in paths))
    subprocess.run(["tar", "-C", str(root), "-cf", str(out), "--no-recursion", "--numeric-owner", "--xattrs",
                    "--format=pax", "-T", str(listing)], check=True)
    listing.unlink()


def add_whiteouts(out: Path, deleted: list[str]) -> None:
    """Append an OCI whiteout to the tar ``out`` for each path of ``deleted`` not under another one."""
    gone = set(deleted)
    with tarfile.open(out, "a", format=tarfile.PAX_FORMAT) as tar:
        for path in deleted:
            parent, name = os.path.split(path)
            if parent not in gone:
                tar.addfile(tarfile.TarInfo(os.path.join(parent, WHITEOUT + name)))


def build_step(command: list[str]) -> None:
    """Run one step of building the image, its output shown only if it fails."""
    proc = subprocess.run(command, capture_output=True, text=True, check=False,
                          env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if proc.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def build_debian_layers(root: Path, out: Path) -> None:
    """Bootstrap Debian in ``root``, install Python; write the base layer and the install's diff to ``out``."""
    build_step(["debootstrap", "--variant=minbase", SUITE, str(root), MIRROR])
    before = snapshot(root)
    tar_paths(root, list(before), out / LAYER_NAMES[0])
    subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
    try:
        build_step(["chroot", str(root), "apt-get", "install", "-y", "--no-install-recommends", *PACKAGES])
    finally:
        subprocess.run(["umount", str(root / "proc")], check=True)
    after = snapshot(root)
    tar_paths(root, [path for path, state in after.items() if before.get(path) != state], out / LAYER_NAMES[1])
    add_whiteouts(out / LAYER_NAMES[1], [path for path in before if path not in after])


def debian_layers() -> list[Path]:
    """The Debian Python image's two layer tars, built once into CACHE."""
    layers = [CACHE / name for name in LAYER_NAMES]
    if not all(layer.exists() for layer in layers):
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE.parent) as tmp:
            build = Path(tmp) / "layers"
            build.mkdir()
            build_debian_layers(Path(tmp) / "root", build)
            shutil.rmtree(CACHE, ignore_errors=True)
            build.rename(CACHE)
    return layers


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


def interpreter(path: Path) -> str:
    """The ELF interpreter of ``path`` (``ld.so``), which the kernel opens when it runs ``path``."""
    proc = subprocess.run(["readelf", "-lW", str(path)], capture_output=True, text=True, check=True)
    return re.findall(r"Requesting program interpreter: (\S+)\]", proc.stdout)[0]


def unpack(layers: list[Path], rootfs: Path) -> None:
    """Extract ``layers`` in order into ``rootfs``, each one's whiteouts removing what the layers
    below hold (the layers this benchmark builds have no opaque directories)."""
    rootfs.mkdir()
    for layer in layers:
        subprocess.run(["tar", "-xf", str(layer), "-C", str(rootfs)], check=True)
        for directory, subdirectories, files in os.walk(rootfs):
            for name in [*subdirectories, *files]:
                if name.startswith(WHITEOUT):
                    hidden = Path(directory, name[len(WHITEOUT):])
                    if hidden.is_dir() and not hidden.is_symlink():
                        shutil.rmtree(hidden)
                    else:
                        hidden.unlink(missing_ok=True)
                    os.unlink(os.path.join(directory, name))


def record_workload(layers: list[Path], work: Path) -> list[str]:
    """The files of the image that the program opens, in the order it opens them: strace's, with
    the ELF interpreter the kernel opens while executing the program (as a recorder watching
    opens with fanotify, like stargz-snapshotter's ``ctr-remote image optimize``, sees it)."""
    rootfs = work / "record"
    unpack(layers, rootfs)
    trace = work / "strace.log"
    subprocess.run(["strace", "-f", "-qq", "-e", "trace=openat,open,execve", "-o", str(trace),
                    "chroot", str(rootfs), *PROGRAM], check=True, capture_output=True)
    log = trace.read_text()
    log = log[log.index(f'execve("{PYTHON}"'):]  # what chroot itself opened before is not the program's
    opened = re.findall(r'(?:openat\(AT_FDCWD, |open\(|execve\()"([^"]+)"', log)
    opened.insert(1, interpreter(rootfs / PYTHON.lstrip("/")))
    files = [resolved(rootfs, image_path(os.path.normpath(path))) for path in dict.fromkeys(opened)]
    files = [name for name in dict.fromkeys(files) if os.path.isfile(rootfs / name)]
    shutil.rmtree(rootfs)
    return files


def write_layout(root: Path, blobs: list[Path], results: list[estargz.BuildResult]) -> None:
    """Write an OCI layout of the image of ``blobs``, tagged ``bench``."""
    store = root / "blobs" / "sha256"
    store.mkdir(parents=True)

    def put(data: bytes) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (store / digest).write_bytes(data)
        return {"digest": "sha256:" + digest, "size": len(data)}

    for blob, result in zip(blobs, results, strict=True):
        shutil.copyfile(blob, store / result.blob_digest[7:])
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [result.diff_id for result in results]}}).encode()
    layers = [{"mediaType": result.media_type, "digest": result.blob_digest, "size": result.blob_size,
               "annotations": result.annotations} for result in results]
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **put(config)},
                           "layers": layers}).encode()
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": OCI_MANIFEST, **put(manifest), "annotations": {"org.opencontainers.image.ref.name": "bench"}}]}))
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')


def run_program(rootfs: Path) -> None:
    proc = subprocess.run(["chroot", str(rootfs), *PROGRAM], capture_output=True, text=True, check=False)
    if proc.returncode != 0 or proc.stdout != "hi\n":
        sys.exit(f"the program failed in {rootfs}: {proc.stderr.strip()}")


def full_pull(reference: str, work: Path) -> float:
    """Seconds to pull, unpack and run."""
    layout, rootfs = work / "pulled", work / "rootfs"
    start = time.perf_counter()
    subprocess.run(["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{reference}", f"oci:{layout}:bench"],
                   check=True)
    manifest = json.loads((layout / "blobs" / "sha256" / json.loads((layout / "index.json").read_text())
                           ["manifests"][0]["digest"][7:]).read_text())
    unpack([layout / "blobs" / "sha256" / layer["digest"][7:] for layer in manifest["layers"]], rootfs)
    run_program(rootfs)
    seconds = time.perf_counter() - start
    shutil.rmtree(layout)
    shutil.rmtree(rootfs)
    return seconds


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


def split_workload(files: list[str], layers: list[Path]) -> list[list[str]]:
    """``files`` divided among ``layers``: each to the topmost layer holding it, whose copy the image shows."""
    names = []
    for layer in layers:
        with tarfile.open(layer) as tar:
            names.append({os.path.normpath(name) for name in tar.getnames()})
    holder = {name: index for index, held in enumerate(names) for name in files if name in held}
    return [[name for name in files if holder.get(name) == index] for index in range(len(layers))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="debian", choices=("debian", "host"),
                        help="debian: Debian's minbase, slimmed, with python3 installed, two layers (built once into "
                             f"{CACHE}); host: this machine's Python tree and its libraries, one layer")
    parser.add_argument("--format", default=estargz.FORMAT_ESTARGZ, choices=estargz.FORMATS)
    parser.add_argument("--prefetch", nargs="+", default=["landmark"], choices=("landmark", "all", "none"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cache-size", nargs="+", default=["256M"])
    parser.add_argument("--chunk-size", type=int, default=estargz.DEFAULT_CHUNK_SIZE)
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="also mount with the estargz of this checkout (another version), side by side")
    args = parser.parse_args()
    tools = ["skopeo", "docker-registry", "strace", "chroot", "ldd", "readelf"]
    for tool in tools + (["debootstrap"] if args.image == "debian" else []):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed")
    checkouts = {"this": ROOT, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    configs = [(name, prefetch, size) for name in checkouts for prefetch in args.prefetch for size in args.cache_size]
    with tempfile.TemporaryDirectory(prefix="estargz-mount-bench-") as tmp:
        work = Path(tmp)
        layers = debian_layers() if args.image == "debian" else host_layers(work)
        tar_sizes = [layer.stat().st_size for layer in layers]
        files = record_workload(layers, work)
        split = split_workload(files, layers)
        blobs = [work / f"layer{index}.blob" for index in range(len(layers))]
        results = [estargz.convert(layer, blob, format=args.format, chunk_size=args.chunk_size,
                                   prioritized_files=prioritized, allow_missing_prioritized=True)
                   for layer, blob, prioritized in zip(layers, blobs, split, strict=True)]
        write_layout(work / "layout", blobs, results)
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
                full.append(full_pull(reference, work))
                for name, prefetch, size in configs[run % len(configs):] + configs[:run % len(configs)]:
                    options = ["--prefetch", prefetch, "--cache-size", size]
                    lazy[name, prefetch, size].append(lazy_mount(reference, work, options, checkouts[name]))
            load_after = os.getloadavg()[0]
        finally:
            registry.kill()
            registry.wait()
    blob_size = sum(result.blob_size for result in results)
    described = ", ".join(f"{size / 1e6:.1f} MB tar, {result.blob_size} bytes blob, "
                          f"{len(prioritized)} prioritized files"
                          for size, result, prioritized in zip(tar_sizes, results, split, strict=True))
    print(f"image: {args.image}, {len(layers)} {args.format} layers ({described}); "
          f"{sum(tar_sizes) / 1e6:.1f} MB of tar, {blob_size} bytes of blobs, "
          f"{args.chunk_size >> 10} KiB chunks; median (range) of {args.runs} runs; "
          f"load average {load_before:.1f} before, {load_after:.1f} after\n")
    print("| estargz | prefetch | cache | seconds to 'hi' | full / lazy: of medians, median per run "
          "| image bytes transferred | requests |")
    print("|---|---|---|---|---|---|---|")
    for (name, prefetch, size), runs in lazy.items():
        seconds = [s for s, _ in runs]
        figures = runs[-1][1]
        per_run = statistics.median(f / s for f, s in zip(full, seconds, strict=True))
        print(f"| {name} mount + chroot | {prefetch} | {size} | {spread(seconds)} | "
              f"{statistics.median(full) / statistics.median(seconds):.2f}x, {per_run:.2f}x | "
              f"{figures['bytesFetched']} ({figures['bytesFetched'] / blob_size:.1%}) | {figures['requests']} |")
    print(f"| skopeo copy + tar -x + chroot | - | - | {spread(full)} | 1 | {blob_size} | - |")
    for (name, prefetch, size), runs in lazy.items():
        print(f"\nmount figures ({name}, {prefetch}, {size}, last run): {json.dumps(runs[-1][1])}")


if __name__ == "__main__":
    main()
