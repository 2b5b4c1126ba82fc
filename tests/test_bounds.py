"""Parse bounds: hostile TOCs and tar-splits end in a typed error (or open correctly) within the
documented budgets, checked in a subprocess under an address-space and CPU-time limit.

Hostile blobs are built by hand here: an eStargz TOC in a gzip member, a TOC in a zstd skippable
frame (stargz-style zstd:chunked), or a containers/storage TOC with its tar-split. Valid layers
that are merely large are converted from a tar, so their TOC and tar stream agree.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import zlib

import pytest
import zstandard
from helpers import sha256

import estargz
from estargz.footer import (
    gzip_footer,
    skippable_frame,
    zstd_chunked_footer_40,
    zstd_chunked_footer_64,
)
from estargz.tarstream import BLOCK, iter_entries, padding, ustar_header
from estargz.toc import TOC_NAME

MiB = 1 << 20
#: The budgets of docs/format.md ("Limits and budgets"): address space, and CPU seconds (the
#: interpreter's start and imports included).
MEMORY_LIMIT = 256 * MiB
CPU_LIMIT = 3
EMPTY = sha256(b"")

# Opens the blob read from stdin, walks every entry (with its mtime), reads every regular file,
# verifies, and reads the tar-split if there is one; prints "OK" or the error's class name.
_READ_ALL = """
import estargz
blob = sys.stdin.buffer.read()
try:
    with estargz.open(blob) as reader:
        for entry in list(reader):
            entry.mtime
            if entry.is_file():
                reader.read(entry.name)
        reader.verify()
        if reader.footer.tar_split is not None:
            reader.tar_split()
except estargz.EStargzError as exc:
    print(type(exc).__name__, exc)
else:
    print("OK")
"""
_WORKLOAD = f"""
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_LIMIT}, {MEMORY_LIMIT}))
resource.setrlimit(resource.RLIMIT_CPU, ({CPU_LIMIT}, {CPU_LIMIT}))
{_READ_ALL}"""
#: The issue's budget for any blob under 1 MB, held by the largest TOCs: CPU seconds (interpreter
#: start included), with the peak resident memory measured against ``MEMORY_LIMIT`` instead of
#: capping the address space (which holds more than what is resident).
BUDGET_CPU_LIMIT = 2
# The same, then the process's peak resident set (VmHWM, its own since exec) in KiB.
_PEAK_WORKLOAD = f"""
import resource, sys
resource.setrlimit(resource.RLIMIT_CPU, ({BUDGET_CPU_LIMIT}, {BUDGET_CPU_LIMIT}))
{_READ_ALL}
with open("/proc/self/status") as status:
    print(next(line.split()[1] for line in status if line.startswith("VmHWM:")))
"""


#: The children run from bytecode, as an installed package does (pip writes it), even where
#: PYTHONDONTWRITEBYTECODE is set: compiling the package is no part of reading a blob.
_CHILD_ENVIRONMENT = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}


def outcome(blob: bytes) -> str:
    """The class name of the error opening and reading ``blob`` raises, or "OK", within the budgets."""
    assert len(blob) < MiB
    done = subprocess.run([sys.executable, "-c", _WORKLOAD], check=False, input=blob, capture_output=True, timeout=120,
                          env=_CHILD_ENVIRONMENT)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    assert "\n" not in done.stdout.decode().strip(), "the error message is not one line"
    return done.stdout.decode().split(" ", 1)[0].strip()


def outcome_and_peak(blob: bytes) -> tuple[str, int]:
    """The outcome of reading ``blob`` as :func:`outcome` gives it, and the peak RSS in bytes."""
    assert len(blob) < MiB
    done = subprocess.run([sys.executable, "-c", _PEAK_WORKLOAD], check=False, input=blob, capture_output=True,
                          timeout=120, env=_CHILD_ENVIRONMENT)
    assert done.returncode == 0, f"exit {done.returncode}: " + done.stderr.decode(errors="replace")[-2000:]
    result, peak_kib = done.stdout.decode().strip().split("\n")
    return result.split(" ", 1)[0], int(peak_kib) * 1024


def estargz_blob(toc_json: bytes) -> bytes:
    """An eStargz blob without data: the TOC member and the footer."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, 31)
    tar = ustar_header(TOC_NAME, len(toc_json)) + toc_json + bytes(padding(len(toc_json)) + 2 * BLOCK)
    return deflater.compress(tar) + deflater.flush() + gzip_footer(0)


def zstd_blob(toc_json: bytes) -> bytes:
    """A stargz-style zstd:chunked blob without data: the TOC frame and the 40-byte footer."""
    compressed = zstandard.ZstdCompressor(level=19).compress(toc_json)
    return skippable_frame(compressed) + zstd_chunked_footer_40(8, len(compressed), len(toc_json))


def cs_blob(entries: list[dict], tar_split: bytes) -> bytes:
    """A containers/storage zstd:chunked blob without data: TOC frame, tar-split frame, footer."""
    compressed_split = zstandard.ZstdCompressor(level=19).compress(tar_split)
    toc_json = json.dumps({"version": 1, "entries": entries or None,
                           "tarSplitDigest": sha256(compressed_split)}, separators=(",", ":")).encode()
    compressed = zstandard.ZstdCompressor(level=19).compress(toc_json)
    blob = skippable_frame(compressed) + skippable_frame(compressed_split)
    split_at = 8 + len(compressed) + 8
    return blob + zstd_chunked_footer_64(8, len(compressed), len(toc_json),
                                         (split_at, len(compressed_split), len(tar_split)))


def toc(*entries: dict) -> bytes:
    return json.dumps({"version": 1, "entries": list(entries)}).encode()


STARGZ_BLOBS = {"estargz": estargz_blob, "zstd": zstd_blob}
stargz_formats = pytest.mark.parametrize("make", STARGZ_BLOBS.values(), ids=STARGZ_BLOBS.keys())
all_formats = pytest.mark.parametrize("fmt", estargz.FORMATS)


def converted(members: list[tarfile.TarInfo], fmt: str) -> bytes:
    """The blob ``estargz.convert`` writes in format ``fmt`` for a tar of the empty ``members``."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            tar.addfile(member)
    blob = io.BytesIO()
    estargz.convert(io.BytesIO(layer.getvalue()), blob, format=fmt)
    return blob.getvalue()


def member(name: str, link_to: str | None = None) -> tarfile.TarInfo:
    """An empty regular file, or a hardlink to ``link_to``."""
    info = tarfile.TarInfo(name)
    if link_to is not None:
        info.type, info.linkname = tarfile.LNKTYPE, link_to
    return info


# --------------------------------------------------------------------------------------------
# JSON shapes
# --------------------------------------------------------------------------------------------

@stargz_formats
def test_deeply_nested_json_in_the_toc(make):
    nested = b'{"version": 1, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b', "entries": []}'
    assert outcome(make(nested)) == "FormatError"


def test_deeply_nested_json_in_a_tar_split_record():
    record = b'{"type":2,"x":' + b"[" * 100_000 + b"]" * 100_000 + b',"position":0}\n'
    assert outcome(cs_blob([], record)) == "FormatError"


@stargz_formats
def test_entries_array_twice_is_refused(make):
    """Entries are converted as they are parsed, so a second array cannot replace the first."""
    entry = '{"name": "a", "type": "dir"}'
    assert outcome(make(f'{{"version": 1, "entries": [{entry}], "Entries": [{entry}]}}'.encode())) == "FormatError"


@stargz_formats
@pytest.mark.parametrize("kind", ["", "file", "chunky"])
def test_unknown_entry_type(make, kind):
    assert outcome(make(toc({"name": "x", "type": kind}))) == "FormatError"


# --------------------------------------------------------------------------------------------
# names
# --------------------------------------------------------------------------------------------

@stargz_formats
def test_name_150000_directories_deep(make):
    entry = {"name": "a/" * 150_000 + "f", "type": "reg", "digest": EMPTY}
    assert outcome(make(toc(entry))) == "LimitError"


def test_containers_storage_name_150000_directories_deep():
    assert outcome(cs_blob([{"type": "dir", "name": "a/" * 150_000}], b"")) == "LimitError"


@stargz_formats
def test_many_deep_names_with_distinct_implicit_parents(make):
    """Each name brings 1000 implicit parent directories of its own, names up to 2 KB long."""
    entries = [{"name": f"x{i}/" + "a/" * 1000 + "f", "type": "reg", "digest": EMPTY} for i in range(300)]
    assert outcome(make(toc(*entries))) == "LimitError"


MANY_ENTRIES = 400_000


def minimal_entries() -> list[dict]:
    """The smallest entries a TOC can hold, each its own directory: 33 bytes of JSON apiece."""
    return [{"type": "dir", "name": f"d{i:06d}/"} for i in range(MANY_ENTRIES)]


def minimal_toc(entries: list[dict]) -> bytes:
    return json.dumps({"version": 1, "entries": entries}, separators=(",", ":")).encode()


def file_records(entries: list[dict]) -> bytes:
    """A tar-split of one file record per entry, named as the entry (no header segments)."""
    return b"".join(b'{"type":1,"name":"%s","payload":null,"position":%d}\n' % (entry["name"].encode(), index)
                    for index, entry in enumerate(entries))


@pytest.mark.parametrize("make", [
    lambda entries: estargz_blob(minimal_toc(entries)),
    lambda entries: zstd_blob(minimal_toc(entries)),
    lambda entries: cs_blob(entries, file_records(entries)),
], ids=["estargz", "zstd", "containers-storage"])
def test_toc_of_400000_minimal_entries_within_the_budget(make):
    """A sub-megabyte blob whose TOC inflates to 13 MB of minimal entries (and, for
    containers/storage, whose tar-split holds 400,000 records) is read, then refused by verify
    (it has no tar stream, and the tar-split no headers), within the CPU and memory budgets."""
    result, peak = outcome_and_peak(make(minimal_entries()))
    assert result == "VerificationError"
    assert peak < MEMORY_LIMIT


@all_formats
def test_files_2000_directories_deep_are_read(fmt):
    """Lookups of deep names cost as much as the name is long, not its square."""
    assert outcome(converted([member("a/" * 2000 + f"f{i}") for i in range(400)], fmt)) == "OK"


@stargz_formats
def test_deep_names_the_tar_stream_lacks_are_refused(make):
    """The same names in a TOC alone: read within the budgets, then refused by verify."""
    entries = [{"name": "a/" * 2000 + f"f{i}", "type": "reg", "digest": EMPTY} for i in range(400)]
    assert outcome(make(toc(*entries))) == "VerificationError"


@stargz_formats
@pytest.mark.parametrize("entry", [
    {"name": "a\0b", "type": "dir"},
    {"name": "s", "type": "symlink", "linkName": "t\0"},
    {"name": "a", "type": "dir", "xattrs": {"user.a\0b": ""}},
    {"name": "a", "type": "dir", "xattrs": {"": ""}},
], ids=["name", "link", "xattr", "empty-xattr"])
def test_nul_characters_and_empty_xattr_names(make, entry):
    assert outcome(make(toc(entry))) == "FormatError"


def test_containers_storage_name_with_nul():
    assert outcome(cs_blob([{"type": "dir", "name": "a\0"}], b"")) == "FormatError"


# --------------------------------------------------------------------------------------------
# hardlinks
# --------------------------------------------------------------------------------------------

@all_formats
@pytest.mark.parametrize("order", ["forward", "backward"])
def test_hardlink_chain_of_20000_links(fmt, order):
    """Each link names the one before it in the tar; "backward" numbers the names the other way."""
    names = [f"h{i}" for i in range(20_000)]
    if order == "backward":
        names.reverse()
    links = [member(name, target) for name, target in zip(names, ["f", *names])]
    assert outcome(converted([member("f"), *links], fmt)) == "OK"


@stargz_formats
@pytest.mark.parametrize("order", ["forward", "backward"])
def test_hardlink_chain_the_tar_stream_lacks_is_refused(make, order):
    """A chain in a TOC alone, in either order: resolved within the budgets, then refused by verify."""
    links = [{"name": f"h{i}", "type": "hardlink", "linkName": f"h{i + 1}"} for i in range(20_000)]
    links[-1]["linkName"] = "f"
    if order == "backward":
        links.reverse()
    assert outcome(make(toc({"name": "f", "type": "reg", "digest": EMPTY}, *links))) == "VerificationError"


# --------------------------------------------------------------------------------------------
# numbers and times
# --------------------------------------------------------------------------------------------

@stargz_formats
@pytest.mark.parametrize("field", ["uid", "gid", "mode", "devMajor", "devMinor"])
def test_negative_ids_and_modes(make, field):
    assert outcome(make(toc({"name": "a", "type": "char", field: -1}))) == "LimitError"


def test_containers_storage_negative_uid():
    assert outcome(cs_blob([{"type": "dir", "name": "a", "uid": -5}], b"")) == "LimitError"


@stargz_formats
@pytest.mark.parametrize("modtime", ["0000-01-01T00:00:00Z", "9999-12-31T23:59:59-01:00"])
def test_modtime_out_of_range(make, modtime):
    assert outcome(make(toc({"name": "a", "type": "dir", "modtime": modtime}))) == "LimitError"


@stargz_formats
@pytest.mark.parametrize("modtime", ["99999-01-01T00:00:00Z", "yesterday"])
def test_unparsable_modtime_reads_as_no_time(make, modtime):
    """Go's reader takes a modtime it cannot parse as the zero time."""
    with estargz.open(make(toc({"name": "a", "type": "dir", "modtime": modtime}))) as reader:
        assert reader.lookup("a").mtime is None


def test_containers_storage_modtime_in_year_zero():
    entry = {"type": "dir", "name": "a", "modtime": "0000-06-01T00:00:00Z"}
    assert outcome(cs_blob([entry], b"")) == "LimitError"


# --------------------------------------------------------------------------------------------
# tar-split
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tar_split", [
    b"\n" * (200 * MiB),
    b'{"type":2,"payload":"' + b"A" * (200 * MiB) + b'","position":0}\n',
], ids=["newlines", "one-segment"])
def test_tar_split_far_larger_than_its_toc(tar_split):
    """200 MiB of tar-split in a few KB of zstd, for a layer without entries."""
    assert outcome(cs_blob([], tar_split)) == "LimitError"



def test_tar_split_with_far_more_records_than_the_toc_has_entries():
    """5000 TOC entries allow a 6 MB tar-split, but not 200000 records in it."""
    entries = [{"type": "dir", "name": f"d{i}/" + "x" * 30} for i in range(5000)]
    records = b"".join(b'{"type":2,"position":%d}\n' % i for i in range(200_000))
    assert outcome(cs_blob(entries, records)) == "LimitError"

# --------------------------------------------------------------------------------------------
# JSON values Go reads differently from Python
# --------------------------------------------------------------------------------------------

@stargz_formats
def test_entries_as_an_object(make):
    assert outcome(make(b'{"version": 1, "entries": {}}')) == "FormatError"


@stargz_formats
def test_unpaired_surrogate_escape_reads_as_replacement_character(make):
    """Go's decoder turns an unpaired ``\\ud800`` into U+FFFD; so does the reader."""
    blob = make(b'{"version": 1, "entries": [{"name": "a\\ud800", "type": "dir"}]}')
    with estargz.open(blob) as reader:
        assert [entry.name for entry in reader] == ["a\ufffd"]


def test_containers_storage_unpaired_surrogate_escape():
    """In a containers/storage TOC only U+DC80..U+DCFF stand for raw name bytes."""
    assert outcome(cs_blob([{"type": "dir", "name": "a\ud800"}], b"")) == "FormatError"


# --------------------------------------------------------------------------------------------
# tar headers
# --------------------------------------------------------------------------------------------

def pax_tar(records: dict[str, str]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("a")
        info.pax_headers = records
        tar.addfile(info, io.BytesIO(b""))
    return out.getvalue()


@pytest.mark.parametrize("records", [
    {"mtime": "9" * 5000},
    {"atime": "-" + "9" * 5000},
    {"mtime": "9223372036854775808"},
    {"uid": "9" * 5000},
    {"gid": "-9223372036854775809"},
    {"size": "18446744073709551616"},
], ids=["mtime-5000-digits", "atime-5000-digits", "mtime-2^63", "uid-5000-digits", "gid-below-int64", "size-2^64"])
def test_pax_numbers_outside_64_bits(records):
    with pytest.raises(estargz.FormatError, match="^tar (PAX )?header: .*(64 bits|invalid time)"):
        estargz.convert(io.BytesIO(pax_tar(records)), io.BytesIO())


def test_pax_time_at_the_lower_int64_bound():
    entry, = iter_entries(io.BytesIO(pax_tar({"mtime": "-9223372036854775808.25"})))
    assert entry.mtime == (-(1 << 63) - 1, 750_000_000)


def test_pax_record_without_a_length_is_refused():
    # A record after a well-formed one, with no "LENGTH " prefix: it must not be read as empty.
    data = b"10 path=a\nk=v\n"
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        pax = tarfile.TarInfo("pax")
        pax.type, pax.size = tarfile.XHDTYPE, len(data)
        tar.addfile(pax, io.BytesIO(data))
        tar.addfile(tarfile.TarInfo("a"), io.BytesIO(b""))
    code = f"""
import io, resource
resource.setrlimit(resource.RLIMIT_CPU, (3, 3))
from estargz.tarstream import iter_entries
from estargz import FormatError
try:
    list(iter_entries(io.BytesIO({out.getvalue()!r})))
except FormatError as exc:
    print("refused:", exc)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "refused: tar PAX header: malformed record", proc.stderr
