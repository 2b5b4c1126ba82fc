"""The ``mount`` and ``umount`` subcommands of the CLI."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable

from .chunkcache import DEFAULT_CACHE_SIZE
from .errors import EStargzError
from .ordering import PREFETCH_MODES

__all__ = ["add_mount_commands"]

_SIZE = re.compile(r"(\d+)([KMGT]?)(i?B)?", re.IGNORECASE)
_UNITS = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}
#: Figures printed every this many seconds with a bare ``--stats``.
_DEFAULT_STATS_INTERVAL = 1.0


def _size(text: str) -> int:
    """``512M``, ``2G``, ``1048576``: bytes (binary units)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 256M or 1G")
    return int(match.group(1)) << _UNITS[match.group(2).upper()]


def _layer(text: str | None) -> int | str | None:
    return int(text) if text is not None and text.lstrip("-").isdigit() else text


def _cmd_mount(args: argparse.Namespace) -> int:
    if args.daemon:
        return _daemonize(args)
    from .mountfs import mount
    stats = mount(args.source, args.mountpoint, layer=_layer(args.layer), platform=args.platform,
                  toc_digest=args.toc_digest, prefetch=args.prefetch, cache_size=args.cache_size,
                  cache_dir=args.cache_dir, cache_dir_size=args.cache_dir_size, stats_interval=args.stats,
                  username=args.username, password=os.environ.get("ESTARGZ_REGISTRY_PASSWORD"),
                  insecure=args.insecure)
    print(json.dumps(stats.to_json()), file=sys.stderr)
    return 0


def _daemonize(args: argparse.Namespace) -> int:
    """Run the mount in a new session in the background; return once it is mounted."""
    command = [sys.executable, "-m", "estargz", "mount", args.source, args.mountpoint,
               "--prefetch", args.prefetch, "--cache-size", str(args.cache_size),
               "--cache-dir-size", str(args.cache_dir_size)]
    for flag, value in (("--layer", args.layer), ("--platform", args.platform), ("--toc-digest", args.toc_digest),
                        ("--cache-dir", args.cache_dir), ("--stats", args.stats), ("--username", args.username)):
        if value is not None:
            command += [flag, str(value)]
    if args.insecure:
        command.append("--insecure")
    from .mountfs import wait_for_mount
    log = open(args.log, "ab") if args.log else open(os.devnull, "wb")  # noqa: SIM115 (handed to the child)
    with log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                   start_new_session=True)
    if not wait_for_mount(os.path.abspath(args.mountpoint), process):
        if process.poll() is None:
            process.terminate()
        process.wait()
        where = f" (see {args.log})" if args.log else " (run without --daemon to see why)"
        raise EStargzError(f"the mount did not start{where}")
    print(json.dumps({"mountpoint": os.path.abspath(args.mountpoint), "pid": process.pid}))
    return 0


def _cmd_umount(args: argparse.Namespace) -> int:
    from .mountfs import unmount
    unmount(args.mountpoint)
    return 0


def add_mount_commands(command: Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]
                       ) -> None:
    """Add ``mount`` and ``umount`` through the CLI's ``command(name, handler, help)``."""
    m = command("mount", _cmd_mount,
                "Mount a layer blob or a whole image read-only with FUSE; files are fetched lazily, "
                "chunk by chunk, each checked against its digest. Prints what was fetched on exit.")
    m.add_argument("source", help="blob file, OCI layout directory, or registry reference HOST/REPO:TAG "
                                  "(an image: its layers merged) or HOST/REPO@DIGEST (an image or a blob)")
    m.add_argument("mountpoint", help="an existing directory")
    m.add_argument("--layer", metavar="N|DIGEST", help="mount only this layer of the image")
    m.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                   help="platform of a multi-platform image (default: this machine's)")
    m.add_argument("--toc-digest", metavar="DIGEST", help="expected TOC digest of a blob file")
    m.add_argument("--prefetch", choices=PREFETCH_MODES, default="landmark",
                   help="fetch in the background: landmark = the prioritized files (default), all = "
                        "those, then every other file, none = only what is read")
    m.add_argument("--cache-size", type=_size, default=DEFAULT_CACHE_SIZE, metavar="SIZE",
                   help=f"memory for verified chunks (default {DEFAULT_CACHE_SIZE >> 20}M)")
    m.add_argument("--cache-dir", metavar="DIR", help="also keep chunks in DIR (content-addressed, re-checked)")
    m.add_argument("--cache-dir-size", type=_size, default=1 << 30, metavar="SIZE",
                   help="bytes kept in --cache-dir (default 1G)")
    m.add_argument("--stats", type=float, nargs="?", const=_DEFAULT_STATS_INTERVAL, metavar="SECONDS",
                   help=f"print the figures as a JSON line every SECONDS (default {_DEFAULT_STATS_INTERVAL:g})")
    m.add_argument("-d", "--daemon", action="store_true", help="run in the background once mounted")
    m.add_argument("--log", metavar="FILE", help="with --daemon: append messages and figures to FILE")
    m.add_argument("--username", help="registry user; the password comes from ESTARGZ_REGISTRY_PASSWORD")
    m.add_argument("--insecure", action="store_true",
                   help="allow plain HTTP and unverified TLS certificates for the registry")
    u = command("umount", _cmd_umount, "Unmount a file system that mount made (as fusermount3 -u).")
    u.add_argument("mountpoint")
