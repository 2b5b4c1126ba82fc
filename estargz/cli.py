"""Command-line interface: ``python -m estargz`` (or ``estargz``) with one subcommand per job."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from . import __version__
from .errors import EStargzError
from .formats import (
    FORMAT_ESTARGZ,
    FORMAT_UNCOMPRESSED,
    FORMAT_ZSTD,
    FORMAT_ZSTD_CHUNKED_STARGZ,
    FORMATS,
)
from .framing import (
    DEFAULT_CONTAINERS_STORAGE_ZSTD_LEVEL,
    DEFAULT_GZIP_LEVEL,
    DEFAULT_ZSTD_LEVEL,
    GZIP_ENGINES,
)
from .dialects import dialect
from .ordering import NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK
from .mountcli import add_mount_commands
from .oci import default_platform, parse_platform
from .output import atomic_output, refuse_same_file, remove_leftovers
from .plain import DEFAULT_PLAIN_ZSTD_LEVEL
from .reader import Reader, open_blob
from .source import BLOCK_SIZE, BytesSource, FileSource, Source
from .tocimage import write_toc_image
from .writer import DEFAULT_CHUNK_SIZE, convert, read_workload_record

__all__ = ["main"]

_DESCRIPTION = """\
Write, read and verify lazy-pulling container layers: eStargz (gzip, containerd's
stargz-snapshotter) and zstd:chunked (podman, CRI-O, skopeo; and stargz-snapshotter's own
flavour). Each is a compressed layer tar with a table of contents (TOC) that lets a runtime
fetch single files instead of the whole layer.

Typical use:
  python -m estargz convert layer.tar layer.esgz      # prints the digests and OCI annotations
  python -m estargz convert --format zstd:chunked layer.tar layer.zst
  python -m estargz verify layer.esgz --toc-digest sha256:...
  python -m estargz ls -l layer.esgz
  python -m estargz cat layer.esgz etc/os-release
  python -m estargz image convert oci-layout/ converted-layout/
  python -m estargz image convert docker://registry.example.com/app:1.0 registry.example.com/app:1.0-esgz
  python -m estargz cat registry.example.com/app:1.0 --layer 0 etc/os-release
"""


def _progress_bar(stream: TextIO = sys.stderr) -> Callable[[int, int], None]:
    started = time.monotonic()
    last = [0.0]

    def show(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] < 0.1 and done < total:
            return
        last[0] = now
        fraction = done / total if total else 1.0
        filled = int(30 * fraction)
        rate = done / max(now - started, 1e-6) / 1e6
        stream.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {fraction:6.1%} {done / 1e6:8.1f} MB "
                     f"{rate:6.1f} MB/s")
        if done >= total:
            stream.write("\n")
        stream.flush()

    return show


class _LayerBars:
    """One progress line per layer on a terminal, redrawn in place at most ten times a second."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self._stream = stream
        self._layers: dict[str, tuple[int, int]] = {}
        self._drawn = 0
        self._last = 0.0

    def __call__(self, layer: str, done: int, total: int) -> None:
        self._layers[layer] = (done, total)
        now = time.monotonic()
        if now - self._last < 0.1 and done < total:
            return
        self._last = now
        self.draw()

    def draw(self) -> None:
        out = [f"\x1b[{self._drawn}A"] if self._drawn else []
        for layer, (done, total) in self._layers.items():
            fraction = done / total if total else 1.0
            filled = int(30 * fraction)
            label = layer.rsplit('/', 1)[-1].rsplit(':', 1)[-1][:12]
            out.append(f"\r{label} [{'#' * filled}{'.' * (30 - filled)}] {fraction:6.1%} "
                       f"{total / 1e6:8.1f} MB\x1b[K\n")
        self._stream.write("".join(out))
        self._stream.flush()
        self._drawn = len(self._layers)


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]


def _recorded_paths(args: argparse.Namespace, layer_index: int | None) -> list[str]:
    """The paths of the workload records named by --estargz-record-in and --zstdchunked-record-in."""
    paths: list[str] = []
    for record in (args.estargz_record_in, args.zstdchunked_record_in):
        if record:
            with open(record, "rb") as f:
                paths.extend(read_workload_record(f, layer_index))
    return paths


def _prioritized_paths(args: argparse.Namespace) -> list[str]:
    """The paths of --prioritized-file, --prioritized-files-from and the workload records."""
    prioritized = list(args.prioritized_file)
    for path in args.prioritized_files_from:
        prioritized.extend(_read_lines(path))
    prioritized.extend(_recorded_paths(args, args.record_layer_index))
    return prioritized


def _toc_output(args: argparse.Namespace) -> str | None:
    """Where convert writes the external TOC: --estargz-toc-output, else next to the output."""
    if not args.estargz_external_toc and (args.estargz_toc_output or args.estargz_toc_image):
        raise _UsageError("--estargz-toc-output and --estargz-toc-image need --estargz-external-toc")
    toc_output: str | None = args.estargz_toc_output
    if args.estargz_external_toc and toc_output is None:
        if args.output == "-":
            raise _UsageError("--estargz-external-toc with output - needs --estargz-toc-output")
        toc_output = args.output + ".toc.tar.gz"
    if toc_output is not None:
        if args.output != "-" and os.path.realpath(toc_output) == os.path.realpath(args.output):
            raise _UsageError("--estargz-toc-output must differ from the output")
        for path in (args.input, args.output):
            if path != "-":
                refuse_same_file(path, toc_output)
    return toc_output


def _cmd_convert(args: argparse.Namespace) -> int:
    prioritized = _prioritized_paths(args)
    # as ctr-remote and nerdctl do for recorded workloads
    allow_missing = args.allow_missing_prioritized or bool(args.estargz_record_in or args.zstdchunked_record_in)
    layer_format = _convert_format(args)
    options = _layer_options(args, layer_format)
    if args.estargz_keep_diff_id and prioritized:
        raise _UsageError("--estargz-keep-diff-id keeps the layer's order: it cannot prioritize files")
    toc_output = _toc_output(args)
    show_progress = not args.quiet and sys.stderr.isatty()
    src = sys.stdin.buffer if args.input == "-" else args.input
    dst = sys.stdout.buffer if args.output == "-" else args.output
    result = convert(
        src, dst,
        format=layer_format,
        prioritized_files=prioritized,
        allow_missing_prioritized=allow_missing,
        threads=args.threads,
        progress=_progress_bar() if show_progress else None,
        **options,
    )
    summary = result.to_json()
    if result.external_toc is not None and toc_output is not None:
        with atomic_output(toc_output) as out:
            out.write(result.external_toc)
        summary["tocBlobPath"] = toc_output
        if args.estargz_toc_image:
            summary["tocImageManifestDigest"] = write_toc_image(args.estargz_toc_image, [result])
    print(json.dumps(summary, indent=2), file=sys.stderr if args.output == "-" else sys.stdout)
    return 0


def _image_platforms(args: argparse.Namespace) -> list[str] | None:
    """The platforms to convert, as nerdctl chooses them: those of --platform, every one with
    --all-platforms, else this machine's."""
    if args.all_platforms and args.platform:
        raise _UsageError("--platform and --all-platforms exclude each other")
    if args.all_platforms:
        return None
    return [spec for specs in args.platform for spec in specs] or [default_platform()]


def _record_options(args: argparse.Namespace) -> dict[str, Any]:
    """The workload records of image convert: their paths come first in every layer, as in nerdctl."""
    if not (args.estargz_record_in or args.zstdchunked_record_in):
        return {}
    if args.estargz_keep_diff_id:
        raise _UsageError("--estargz-keep-diff-id keeps the layer's order: it cannot take a workload record")
    return {"prioritized_files": _recorded_paths(args, None), "allow_missing_prioritized": True}


#: The flags of ``image convert`` that choose a lazy-pulling format or set its options.
_LAZY_FLAGS = ("format", "estargz", "zstdchunked", "zstdchunked_compression_level", "zstdchunked_chunk_size",
               "estargz_compression_level", "estargz_chunk_size", "estargz_min_chunk_size", "estargz_external_toc",
               "estargz_keep_diff_id", "estargz_record_in", "zstdchunked_record_in")


def _plain_format(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The plain format of --zstd or --uncompress and its options; refuse the lazy-format flags."""
    if args.zstd and args.uncompress:
        raise _UsageError("--zstd and --uncompress exclude each other")
    flag = "--zstd" if args.zstd else "--uncompress"
    given = [f"--{name.replace('_', '-')}" for name in _LAZY_FLAGS
             if getattr(args, name) and (name != "format" or args.format != FORMAT_ESTARGZ)]
    if given:
        raise _UsageError(f"{flag} writes plain layers without a TOC: it cannot take {', '.join(given)}")
    if args.uncompress:
        if args.zstd_compression_level is not None:
            raise _UsageError("--zstd-compression-level needs --zstd")
        return FORMAT_UNCOMPRESSED, {}
    return FORMAT_ZSTD, {"compression_level": args.zstd_compression_level}


def _lazy_format(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The lazy-pulling format of --format, --estargz or --zstdchunked and its options."""
    if args.zstd_compression_level is not None:
        raise _UsageError("--zstd-compression-level needs --zstd")
    if args.estargz and args.zstdchunked:
        raise _UsageError("--estargz and --zstdchunked exclude each other")
    layer_format = _convert_format(args)
    if args.estargz and layer_format != FORMAT_ESTARGZ:
        raise _UsageError(f"--estargz conflicts with --format {layer_format}")
    return layer_format, {**_layer_options(args, layer_format), **_record_options(args)}


def _cmd_image_convert(args: argparse.Namespace) -> int:
    from .image import convert_image
    from .push import DOCKER_PREFIX

    layer_format, options = _plain_format(args) if args.zstd or args.uncompress else _lazy_format(args)
    bars = _LayerBars() if not args.quiet and sys.stderr.isatty() else None
    if args.sign and not _is_registry_reference(args.destination.removeprefix(DOCKER_PREFIX)):
        raise _UsageError("--sign needs a registry DESTINATION (the signature is stored there)")
    result = convert_image(
        args.source, args.destination,
        insecure=args.insecure,
        sign_with=_private_key(args.sign) if args.sign else None,
        format=layer_format,
        platforms=_image_platforms(args),
        reuse=args.reuse,
        threads=args.threads,
        layer_jobs=args.layer_jobs,
        layer_progress=bars,
        overwrite=args.overwrite,
        **options,
    )
    if bars is not None:
        bars.draw()
    print(json.dumps(result.to_json(), indent=2))
    return 0


_PRIVATE_KEY_MODE = 0o600


def _private_key(path: str) -> Any:
    """The signing key at ``path`` (sign.py, and its PyNaCl, imported only when signing)."""
    from .sign import load_private_key

    return load_private_key(path)


def _public_key(path: str) -> Any:
    from .sign import load_public_key

    return load_public_key(path)


def _cmd_image_push(args: argparse.Namespace) -> int:
    from .push import push_layout

    result = push_layout(args.layout, args.destination, jobs=args.jobs, insecure=args.insecure,
                         sign_with=_private_key(args.sign) if args.sign else None)
    print(json.dumps(result.to_json(), indent=2))
    return 0


def _keygen_password() -> bytes:
    from .sign import PASSWORD_ENVIRONMENT

    if PASSWORD_ENVIRONMENT in os.environ:
        return os.environ[PASSWORD_ENVIRONMENT].encode()
    if not sys.stdin.isatty():
        raise _UsageError(f"set {PASSWORD_ENVIRONMENT} (standard input is not a terminal to ask on)")
    import getpass

    password = getpass.getpass("Password for the private key: ")
    if getpass.getpass("Again: ") != password:
        raise _UsageError("the passwords differ")
    return password.encode()


def _cmd_keygen(args: argparse.Namespace) -> int:
    from .sign import generate_key_pair

    private_path, public_path = f"{args.output_prefix}.key", f"{args.output_prefix}.pub"
    for path in (private_path, public_path):
        if os.path.lexists(path) and not args.overwrite:
            raise FileExistsError(f"{path} exists (pass --overwrite)")
    private, public = generate_key_pair(_keygen_password())
    with atomic_output(private_path) as out:
        os.fchmod(out.fileno(), _PRIVATE_KEY_MODE)
        out.write(private)
    with atomic_output(public_path) as out:
        out.write(public)
    print(json.dumps({"privateKey": private_path, "publicKey": public_path}, indent=2))
    return 0


def _cmd_sign(args: argparse.Namespace) -> int:
    from .push import parse_destination
    from .registry import RegistryClient
    from .sign import sign_image

    key = _private_key(args.key)
    ref = parse_destination(args.reference)
    with RegistryClient(ref.registry, scheme=ref.scheme, insecure=args.insecure) as client:
        digest = client.get_manifest(ref.repository, ref.reference).digest
        signature = sign_image(client, ref, digest, key)
    print(json.dumps({"reference": str(ref), "manifestDigest": digest, "signatureManifest": signature}, indent=2))
    return 0


#: The conversion option each format flag sets, in the order the flags are checked.
_FLAG_OPTIONS = {
    "estargz_external_toc": "external_toc",
    "estargz_keep_diff_id": "keep_diff_id",
    "estargz_toc_output": "external_toc",
    "estargz_toc_image": "external_toc",
    "zstdchunked_chunk_size": "chunk_size",
    "estargz_min_chunk_size": "min_chunk_size",
    "prioritized_file": "prioritized_files",
    "prioritized_files_from": "prioritized_files",
    "estargz_record_in": "prioritized_files",
    "zstdchunked_record_in": "prioritized_files",
}


def _layer_options(args: argparse.Namespace, layer_format: str) -> dict[str, Any]:
    """The per-layer conversion options of the format flags."""
    if args.estargz_keep_diff_id and not args.estargz_external_toc:
        raise _UsageError("--estargz-keep-diff-id needs --estargz-external-toc")
    chosen = dialect(layer_format)
    gzip = chosen.compression == "gzip"
    options: dict[str, Any] = {
        "compression_level": (DEFAULT_GZIP_LEVEL if args.estargz_compression_level is None
                              else args.estargz_compression_level) if gzip else args.zstdchunked_compression_level,
        "min_chunk_size": args.estargz_min_chunk_size,
        "external_toc": args.estargz_external_toc,
        "keep_diff_id": args.estargz_keep_diff_id,
    }
    if "chunk_size" in chosen.accepts:
        options["chunk_size"] = (args.estargz_chunk_size if gzip else args.zstdchunked_chunk_size) or DEFAULT_CHUNK_SIZE
    return options


def _convert_format(args: argparse.Namespace) -> str:
    """The output format from --format and the nerdctl-style --zstdchunked; refuse flags that
    the format's dialect does not accept."""
    layer_format: str = args.format
    if args.zstdchunked:
        if layer_format not in (FORMAT_ESTARGZ, FORMAT_ZSTD_CHUNKED_STARGZ):
            raise _UsageError(f"--zstdchunked conflicts with --format {layer_format}")
        layer_format = FORMAT_ZSTD_CHUNKED_STARGZ
    chosen = dialect(layer_format)
    for flag, option in _FLAG_OPTIONS.items():
        if getattr(args, flag, None) and option not in chosen.accepts:
            raise _UsageError(f"--{flag.replace('_', '-')} {chosen.refusal(option)}")
    return layer_format


class _UsageError(Exception):
    """A combination of flags that cannot work; reported like argparse errors (exit 2)."""


def _annotations(args: argparse.Namespace) -> dict[str, str]:
    """The annotations of --annotations (a JSON file) and --annotation KEY=VALUE, the latter winning."""
    annotations: dict[str, str] = {}
    if args.annotations:
        with open(args.annotations, encoding="utf-8") as f:
            document = json.load(f)
        found = document.get("annotations", document) if isinstance(document, dict) else None
        if not isinstance(found, dict):
            raise ValueError(f"{args.annotations}: expected a JSON object of annotations or a descriptor")
        annotations.update(found)
    for pair in args.annotation:
        key, sep, value = pair.partition("=")
        if not sep:
            raise _UsageError(f"--annotation {pair!r} is not KEY=VALUE")
        annotations[key] = value
    return annotations


def _open(args: argparse.Namespace, *, whole: bool = False) -> Reader:
    annotations = _annotations(args)
    if os.path.exists(args.blob) or not _is_registry_reference(args.blob):
        if args.key:
            raise _UsageError("--key applies to registry references (a signature is kept in the registry)")
        return open_blob(args.blob, toc_digest=args.toc_digest, toc=args.toc, annotations=annotations or None)
    layer: int | str | None = args.layer
    if isinstance(layer, str) and layer.lstrip("-").isdigit():
        layer = int(layer)
    from .registry import open_layer

    verify_with = _public_key(args.key) if args.key else None
    source, descriptor = open_layer(args.blob, layer, platform=args.platform, username=args.username,
                                    password=os.environ.get("ESTARGZ_REGISTRY_PASSWORD"), verify_with=verify_with,
                                    insecure=args.insecure)
    anchored = {**annotations, **descriptor.get("annotations", {})}  # the checked manifest's win
    local: Source = source
    try:
        if whole:  # every byte is read anyway: fetch the blob once, checked against its digest
            with source:
                spool = tempfile.TemporaryFile()
                try:
                    source.download(spool)
                except BaseException:
                    spool.close()
                    raise
            local = FileSource(spool, owned=True)
        reader = Reader(local, toc_digest=args.toc_digest, toc=_toc_source(args.toc),
                        annotations=anchored, owns_source=True)
    except BaseException:
        source.close()
        if isinstance(local, FileSource):
            local.close()
        raise
    reader.anchor = source.anchor
    return reader


def _toc_source(path: str | None) -> BytesSource | None:
    if path is None:
        return None
    with open(path, "rb") as f:
        return BytesSource(f.read())


def _is_registry_reference(text: str) -> bool:
    """``host[:port]/repo...`` (the host has a dot or a port, or is localhost), or an http(s) URL."""
    if text.startswith(("http://", "https://")):
        return True
    host, slash, _ = text.partition("/")
    return bool(slash) and ("." in host or ":" in host or host == "localhost")


def _cmd_info(args: argparse.Namespace) -> int:
    with _open(args) as blob:
        kinds = Counter(entry.type for entry in blob)
        files = {id(e): e for e in (blob.lookup(e.name) for e in blob if e.type == "reg")}
        prefetch = None
        if PREFETCH_LANDMARK in blob:
            chunks = blob.lookup(PREFETCH_LANDMARK).chunks
            prefetch = chunks[0].offset if chunks else None
        info: dict[str, object] = {
            "format": blob.format,
            "footer": {"kind": blob.footer.kind, "size": blob.footer.size},
            "tocOffset": blob.toc_offset,
            "tocDigest": blob.toc_digest,
            "tocVersion": blob.version,
            "blobSize": blob.size,
            "entries": len(blob),
            "types": dict(sorted(kinds.items())),
            "fileBytes": sum(e.size for e in files.values()),
            "chunks": sum(len(e.chunks) for e in files.values()),
            "landmark": (PREFETCH_LANDMARK if PREFETCH_LANDMARK in blob
                         else NO_PREFETCH_LANDMARK if NO_PREFETCH_LANDMARK in blob else None),
            "prefetchBytes": prefetch,
        }
        if blob.anchor is not None:
            info["anchor"] = blob.anchor.to_json()
    print(json.dumps(info, indent=2))
    return 0


def _mode_string(entry_type: str, mode: int) -> str:
    kind = {"dir": "d", "symlink": "l", "hardlink": "h", "char": "c", "block": "b", "fifo": "p"}.get(entry_type, "-")
    bits = ""
    for shift, special, letter in ((6, 0o4000, "s"), (3, 0o2000, "s"), (0, 0o1000, "t")):
        triple = (mode >> shift) & 7
        execute = "x" if triple & 1 else "-"
        if mode & special:
            execute = letter if triple & 1 else letter.upper()
        bits += ("r" if triple & 4 else "-") + ("w" if triple & 2 else "-") + execute
    return kind + bits


_C_ESCAPES = {"\\": "\\\\", "\a": "\\a", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\v": "\\v",
              "\f": "\\f", "\r": "\\r"}


def _escape(text: str, *, backslash: bool = True) -> str:
    """``text`` as ``ls -b`` prints it: C escapes, octal bytes for other non-printable characters,
    backslash doubled (unless not ``backslash``); so a name cannot start a new line or send
    terminal sequences."""
    out = []
    for char in text:
        if char == "\\" and not backslash:
            out.append(char)
        elif char in _C_ESCAPES:
            out.append(_C_ESCAPES[char])
        elif char.isprintable():
            out.append(char)
        else:
            out.extend(f"\\{byte:03o}" for byte in char.encode("utf-8", "surrogatepass"))
    return "".join(out)


def _cmd_ls(args: argparse.Namespace) -> int:
    out = sys.stdout
    with _open(args) as blob:
        for entry in blob:
            name = _escape(entry.name) + ("/" if entry.type == "dir" else "")
            if not args.long:
                out.write(name + "\n")
                continue
            owner = _escape(f"{entry.user_name or entry.uid}/{entry.group_name or entry.gid}")
            suffix = f" -> {_escape(entry.link_name)}" if entry.type in ("symlink", "hardlink") else ""
            out.write(f"{_mode_string(entry.type, entry.mode)} {owner:>15} {entry.size:>10} "
                      f"{_escape(entry.modtime) or '-':>20} {name}{suffix}\n")
    return 0


def _cmd_cat(args: argparse.Namespace) -> int:
    out = sys.stdout.buffer
    with _open(args) as blob:
        for name in args.names:
            with blob.open(name) as f:
                while block := f.read(BLOCK_SIZE):
                    out.write(block)
    out.flush()
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    with _open(args, whole=True) as blob:
        report = blob.verify(args.toc_digest)
        anchor = blob.anchor
    summary: dict[str, object] = {"ok": True, "tocDigest": report.toc_digest, "files": report.files,
                                  "chunks": report.chunks, "bytes": report.bytes}
    if anchor is not None:
        summary["anchor"] = anchor.to_json()
    if report.diff_id is not None:
        summary["diffID"] = report.diff_id
    if report.coverage is not None:
        coverage = report.coverage
        summary["covered"] = {"blobBytes": coverage.blob_bytes, "blobSize": blob.size,
                              "blobDigest": coverage.blob_digest, "units": coverage.units,
                              "tarEntries": coverage.tar_entries, "uncompressedBytes": coverage.uncompressed_bytes}
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_extract(args: argparse.Namespace) -> int:
    with _open(args) as blob:
        report = blob.extract(args.directory)
    for name, reason in report.skipped:
        print(f"estargz: skipped {_escape(name)}: {reason}", file=sys.stderr)
    print(json.dumps({"entries": report.entries, "bytes": report.bytes,
                      "skipped": len(report.skipped)}, indent=2))
    return 0


def _cmd_unpack(args: argparse.Namespace) -> int:
    with _open(args) as blob:
        if args.output == "-":
            blob.unpack(sys.stdout.buffer)
            return 0
        with atomic_output(args.output, inputs=(args.blob, args.toc)) as out:
            blob.unpack(out)
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _zstd_level(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 22:
        raise argparse.ArgumentTypeError("must be 1-22")
    return value


def _level(text: str) -> int:
    value = int(text)
    if value not in GZIP_ENGINES:
        raise argparse.ArgumentTypeError("must be 0-9")
    return value


def _platform_list(text: str) -> list[str]:
    """A comma-separated list of platforms, as nerdctl's --platform takes it."""
    specs = [spec.strip() for spec in text.split(",")]
    try:
        return [str(parse_platform(spec)) for spec in specs]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_format_options(c: argparse.ArgumentParser) -> None:
    """The flags that choose a format and its options, named as in nerdctl and ctr-remote."""
    c.add_argument("--format", choices=FORMATS, default=FORMAT_ESTARGZ,
                   help="estargz: gzip eStargz (default). zstd:chunked: containers/storage's, for podman, "
                        "CRI-O and skopeo (lossless, content-defined chunks). zstd:chunked-stargz: "
                        "stargz-snapshotter's, as nerdctl --zstdchunked writes it")
    c.add_argument("--zstdchunked", action="store_true",
                   help="as in nerdctl: the same as --format zstd:chunked-stargz")
    c.add_argument("--zstdchunked-compression-level", type=_zstd_level, default=None, metavar="N",
                   help=f"zstd level 1-22 for the zstd:chunked formats (default {DEFAULT_ZSTD_LEVEL}, or "
                        f"{DEFAULT_CONTAINERS_STORAGE_ZSTD_LEVEL} for zstd:chunked as podman uses)")
    c.add_argument("--zstdchunked-chunk-size", type=_positive, default=0, metavar="BYTES",
                   help=f"largest chunk per zstd frame (default 0 = {DEFAULT_CHUNK_SIZE})")
    c.add_argument("--estargz-compression-level", type=_level, default=None, metavar="N",
                   help=f"gzip level 0-9 (default {DEFAULT_GZIP_LEVEL}); each level is at least as dense as "
                        "the Go reference at the same level")
    c.add_argument("--estargz-chunk-size", type=_positive, default=0, metavar="BYTES",
                   help=f"largest chunk of a file in one gzip member (default 0 = {DEFAULT_CHUNK_SIZE})")
    c.add_argument("--estargz-min-chunk-size", type=_positive, default=0, metavar="BYTES",
                   help="let small files and chunks share a gzip member until it holds about BYTES "
                        "compressed bytes (smaller blobs; readers need eStargz v0.13+)")
    c.add_argument("--estargz-external-toc", action="store_true",
                   help="keep the TOC out of the blob, in a separate TOC blob (and TOC image)")
    c.add_argument("--estargz-keep-diff-id", action="store_true",
                   help="with --estargz-external-toc: keep every byte of the tar, so the diffID does not change")
    c.add_argument("--threads", type=_at_least_one, default=None, metavar="N",
                   help="compression threads (default: every CPU); never changes the output bytes")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


class _Parser(argparse.ArgumentParser):
    """An argument parser, for the commands too, that takes flags only in full: a typo or a
    prefix never selects another flag."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)


def _add_insecure(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--insecure", action="store_true",
                        help="allow plain HTTP and unverified TLS certificates for the registry (HTTPS is "
                             "tried first, without verification; plain HTTP when the registry does not speak TLS)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="estargz", description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"estargz {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, handler: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    c = command("convert", _cmd_convert,
                "Convert a layer tar (plain, gzip or zstd) to eStargz or zstd:chunked; print digests and "
                "annotations as JSON.")
    c.add_argument("input", help="layer tar to convert, or - for standard input")
    c.add_argument("output", help="blob to write, or - for standard output")
    _add_format_options(c)
    c.add_argument("--estargz-toc-output", metavar="FILE",
                   help="with --estargz-external-toc: where to write the TOC blob (default OUTPUT.toc.tar.gz)")
    c.add_argument("--estargz-toc-image", metavar="DIR",
                   help="with --estargz-external-toc: also write the TOC image as an OCI layout in DIR")
    c.add_argument("--estargz-record-in", metavar="FILE",
                   help="workload record (ctr-remote optimize --record-out JSON lines); its paths are "
                        "prioritized, missing ones allowed")
    c.add_argument("--zstdchunked-record-in", metavar="FILE", help="as --estargz-record-in, for zstd:chunked")
    c.add_argument("--record-layer-index", type=int, metavar="N",
                   help="with --estargz-record-in, use only the records of this layer index")
    c.add_argument("--prioritized-file", action="append", default=[], metavar="PATH",
                   help="put PATH (and its parent directories) first, before .prefetch.landmark; repeatable")
    c.add_argument("--prioritized-files-from", action="append", default=[], metavar="FILE",
                   help="read prioritized paths from FILE, one per line (# starts a comment)")
    c.add_argument("--allow-missing-prioritized", action="store_true",
                   help="skip prioritized paths that are not in the layer instead of failing")

    image = commands.add_parser("image", help="Work on whole images (OCI layouts and archives).",
                                description="Work on whole images (OCI layouts and archives).")
    image_commands = image.add_subparsers(dest="image_command", metavar="COMMAND", required=True)
    i = image_commands.add_parser(
        "convert", help="Convert every layer of an image; write an OCI layout or archive.",
        description="Convert every layer of an OCI layout, OCI archive or docker save archive to eStargz "
                    "or zstd:chunked (or plain zstd or uncompressed layers), and write the image (manifests, "
                    "configs, index, tags) as an OCI layout directory or archive (DESTINATION ending in .tar). "
                    "No daemon needed.")
    i.set_defaults(handler=_cmd_image_convert)
    i.add_argument("source", help="OCI layout directory, OCI archive, docker save archive, or registry "
                                  "reference HOST/REPO:TAG, HOST/REPO@DIGEST (docker:// prefix accepted)")
    i.add_argument("destination", help="OCI layout directory (new or empty), an OCI archive .tar, or a "
                                       "registry reference HOST/REPO:TAG (the image is pushed, tag last)")
    i.add_argument("--sign", metavar="KEY",
                   help="sign the pushed image with this private key (password from COSIGN_PASSWORD)")
    _add_insecure(i)
    _add_format_options(i)
    i.add_argument("--estargz", action="store_true",
                   help="as in nerdctl: convert to eStargz (the default format)")
    i.add_argument("--oci", action="store_true", help="as in nerdctl: OCI media types (the output always has them)")
    i.add_argument("--zstd", action="store_true",
                   help="as in nerdctl: plain zstd layers (tar+zstd, no TOC; diffIDs unchanged)")
    i.add_argument("--zstd-compression-level", type=_zstd_level, default=None, metavar="N",
                   help=f"with --zstd: zstd level 1-22 (default {DEFAULT_PLAIN_ZSTD_LEVEL})")
    i.add_argument("--uncompress", action="store_true",
                   help="as in nerdctl: uncompressed layers (tar, no TOC; diffIDs unchanged)")
    i.add_argument("--estargz-record-in", metavar="FILE",
                   help="workload record (ctr-remote optimize --record-out JSON lines); its paths are "
                        "prioritized in every layer, missing ones allowed")
    i.add_argument("--zstdchunked-record-in", metavar="FILE", help="as --estargz-record-in, for zstd:chunked")
    i.add_argument("--platform", action="append", default=[], type=_platform_list, metavar="OS/ARCH[/VARIANT],...",
                   help="convert only these platforms of a multi-platform image; comma-separated and repeatable "
                        "(default: this machine's)")
    i.add_argument("--all-platforms", action="store_true", help="convert every platform of a multi-platform image")
    i.add_argument("--reuse", action="store_true", help="copy layers already in the target format as they are")
    i.add_argument("--overwrite", action="store_true",
                   help="replace an existing destination (only once the conversion succeeded)")
    i.add_argument("--layer-jobs", type=_at_least_one, default=2, metavar="N",
                   help="layers converted at once (default 2)")

    p = image_commands.add_parser(
        "push", help="Push the image of an OCI layout to a registry.",
        description="Push the image of an OCI layout (and its -esgztoc TOC image, if any) to a registry: "
                    "blobs in chunks with resume, blobs already there skipped, manifests and the tag last.")
    p.set_defaults(handler=_cmd_image_push)
    p.add_argument("layout", help="OCI layout directory holding one image")
    p.add_argument("destination", help="registry reference HOST/REPO:TAG (docker:// prefix accepted)")
    p.add_argument("--sign", metavar="KEY",
                   help="sign the pushed image with this private key (password from COSIGN_PASSWORD)")
    p.add_argument("--jobs", type=_at_least_one, default=4, metavar="N", help="blobs sent at once (default 4)")
    _add_insecure(p)

    k = command("keygen", _cmd_keygen,
                "Write an ECDSA P-256 key pair for signing: PREFIX.key (encrypted as cosign does, "
                "password from COSIGN_PASSWORD or asked) and PREFIX.pub.")
    k.add_argument("--output-prefix", default="cosign", metavar="PREFIX", help="file name prefix (default cosign)")
    k.add_argument("--overwrite", action="store_true", help="replace existing key files")

    g = command("sign", _cmd_sign,
                "Sign the manifest a registry reference names (sigstore simple signing, stored as "
                "the sha256-<hex>.sig tag as cosign does).")
    g.add_argument("reference", help="HOST/REPO:TAG or HOST/REPO@DIGEST (docker:// prefix accepted)")
    g.add_argument("--key", required=True, metavar="KEY",
                   help="private key (encrypted sigstore/cosign PEM, password from COSIGN_PASSWORD; or PKCS#8 PEM)")
    _add_insecure(g)

    for name, handler, text in (
        ("info", _cmd_info, "Show the footer, TOC digest and entry counts of a blob as JSON."),
        ("ls", _cmd_ls, "List the entries of a blob in TOC order."),
        ("cat", _cmd_cat, "Write files from a blob to standard output (reads only their chunks)."),
        ("verify", _cmd_verify, "Check the TOC digest and every chunk and file digest of a blob."),
        ("extract", _cmd_extract, "Extract a blob into a directory (never writes outside it)."),
        ("unpack", _cmd_unpack, "Write the layer of a blob as a plain tar (without the TOC entry)."),
    ):
        sub = command(name, handler, text)
        sub.add_argument("blob", help="blob file (eStargz or zstd:chunked), or a registry reference "
                                      "HOST/REPO:TAG or HOST/REPO@DIGEST read lazily over HTTP")
        sub.add_argument("--toc-digest", metavar="DIGEST",
                         help="expected TOC digest (sha256:...); the blob is refused if it differs")
        sub.add_argument("--toc", metavar="FILE",
                         help="TOC blob of a blob written with an external TOC")
        sub.add_argument("--annotations", metavar="FILE",
                         help="JSON file with the layer's annotations (or its whole descriptor): "
                              "zstd:chunked positions locate the TOC, and the digests are checked")
        sub.add_argument("--annotation", action="append", default=[], metavar="KEY=VALUE",
                         help="one layer annotation, as with --annotations; repeatable")
        remote = sub.add_argument_group("registry references")
        remote.add_argument("--layer", metavar="N|DIGEST",
                            help="which layer of the image (index from 0, negative from the top, or digest); "
                                 "needed unless the image has one layer or the reference names a blob")
        remote.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                            help="platform of a multi-platform image (default: this machine's)")
        remote.add_argument("--username", help="registry user; the password comes from ESTARGZ_REGISTRY_PASSWORD")
        _add_insecure(remote)
        remote.add_argument("--key", metavar="PUB",
                            help="public key: require the image's signature by it, and read the layer "
                                 "anchored on the signed manifest")
        if name == "ls":
            sub.add_argument("-l", "--long", action="store_true", help="show type, mode, owner, size, time")
        elif name == "cat":
            sub.add_argument("names", nargs="+", metavar="NAME", help="file in the layer")
        elif name == "extract":
            sub.add_argument("directory", help="target directory (created if missing)")
        elif name == "unpack":
            sub.add_argument("output", help="tar file to write, or - for standard output")
    add_mount_commands(command)
    return parser


#: The signals that stop the CLI cleanly, and the word it reports.
_STOP_SIGNALS: dict[int, str] = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that temporary outputs are removed as on Ctrl-C."""


class _StopHandler:
    """Signal handler for SIGINT and SIGTERM: records the signal and raises KeyboardInterrupt or
    _Terminated in the main thread; further stop signals are ignored while the cleanup runs."""

    def __init__(self) -> None:
        self.received: int | None = None

    def __call__(self, signum: int, frame: object) -> None:
        self.received = signum
        for each in _STOP_SIGNALS:
            signal.signal(each, signal.SIG_IGN)
        raise KeyboardInterrupt() if signum == signal.SIGINT else _Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status (0 ok, 1 bad input or failed check, 2 usage,
    130 interrupted, 143 terminated)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if threading.current_thread() is not threading.main_thread():
        return _run(parser, args, _StopHandler())
    stops = _StopHandler()
    previous = {signum: signal.signal(signum, stops) for signum in _STOP_SIGNALS}
    try:
        return _run(parser, args, stops)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace, stops: _StopHandler) -> int:
    try:
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except BaseException as exc:  # noqa: BLE001 (re-raised by _report unless an input error)
        # The exception a signal raised can turn into another one in the code it interrupted
        # (a lock released twice): what counts is that the signal arrived.
        signum = stops.received or (signal.SIGINT if isinstance(exc, KeyboardInterrupt) else None)
        if signum is None:
            return _report(parser, exc)
        remove_leftovers()
        print(f"estargz: {_STOP_SIGNALS[signum]}", file=sys.stderr)
        return 128 + signum


#: The library's caller errors name keyword arguments; the CLI user set them with these flags.
_KEYWORD_FLAGS = {"overwrite=True": "--overwrite", "toc=": "--toc"}


def _report(parser: argparse.ArgumentParser, exc: BaseException) -> int:
    """Print the one-line message of an input or usage error and return the exit status;
    re-raise anything else."""
    if isinstance(exc, _UsageError):
        parser.error(str(exc))
    if isinstance(exc, BrokenPipeError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    if not isinstance(exc, (EStargzError, OSError, ValueError)):
        raise exc
    message = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        message = f"{exc.filename}: {exc.strerror}"
    if not isinstance(exc, EStargzError):
        for keyword, flag in _KEYWORD_FLAGS.items():
            message = message.replace(keyword, flag)
    print(f"estargz: error: {_escape(message, backslash=False)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
