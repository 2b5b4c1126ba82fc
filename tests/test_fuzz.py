"""Fuzzing every blob format: mutated blobs are rejected with an EStargzError or read as verified
content, within the CPU and memory budgets (see tests/fuzzing.py for the invariant).

The cases are drawn by hypothesis from fixed seeds: by default the first ``SUITE_CASES`` of each
variant (about a minute in all), the same on every machine; with ``ESTARGZ_FUZZ_SECONDS`` as many
as that total time allows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import fuzzing
import pytest

import estargz


@pytest.fixture(scope="module")
def worker() -> Iterator[fuzzing.Worker]:
    worker = fuzzing.Worker()
    yield worker
    worker.close()


@pytest.mark.parametrize("variant", list(fuzzing.VARIANTS))
def test_mutated_blobs_are_rejected_or_verified(variant: str, worker: fuzzing.Worker) -> None:
    seconds, cases = fuzzing.suite_budget()
    stats = fuzzing.fuzz(variant, seconds / len(fuzzing.VARIANTS), worker, cases)
    print(fuzzing.table([stats]))
    assert stats.cases > 0
    if stats.failures:
        classes = f"{len(stats.failures)} failure classes in {stats.cases} cases"
        pytest.fail(f"{classes}:\n{stats.report()}", pytrace=False)


@pytest.fixture(scope="module")
def bases() -> dict[str, fuzzing.Base]:
    return {name: fuzzing.build_base(name) for name in fuzzing.VARIANTS}


@pytest.mark.parametrize("variant", list(fuzzing.VARIANTS))
def test_a_toc_mutation_reaches_the_entries(variant: str, bases: dict[str, fuzzing.Base]) -> None:
    """The harness re-encodes the TOC and fixes the tail, so the reader sees the changed field."""
    base = bases[variant]
    index = next(i for i, e in enumerate(json.loads(base.parts.toc_json)["entries"]) if e.get("name") == "c")
    mutation = {"op": "toc", "what": "field", "entry": index, "field": "size", "value": {"delta": 1}}
    blob = fuzzing.apply(base.parts, [mutation])
    with pytest.raises(estargz.VerificationError):
        estargz.open(blob.blob, toc=blob.toc, annotations=blob.annotations, toc_digest=base.toc_digest)
    reader = estargz.open(blob.blob, toc=blob.toc, annotations=blob.annotations)
    assert reader.lookup("c").size == len(fuzzing.FILES["c"]) + 1


@pytest.mark.parametrize("variant", ["zstd-chunked", "zstd-chunked-annotations"])
def test_a_tar_split_mutation_reaches_the_records(variant: str, bases: dict[str, fuzzing.Base]) -> None:
    """The harness recompresses the tar-split and fixes the TOC's tarSplitDigest and the tail."""
    base = bases[variant]
    records = [json.loads(line) for line in base.parts.tar_split.splitlines()]
    index = next(i for i, r in enumerate(records) if r.get("name") == "c")
    mutation = {"op": "tar_split", "what": "field", "entry": index, "field": "name", "value": {"v": "d"}}
    blob = fuzzing.apply(base.parts, [mutation])
    reader = estargz.open(blob.blob, annotations=blob.annotations)
    with pytest.raises(estargz.VerificationError, match="disagree"):
        reader.tar_split()


def test_member_mutations_keep_every_member_intact(bases: dict[str, fuzzing.Base]) -> None:
    """Swapping two gzip members leaves a blob whose members all inflate, with the same bytes."""
    base = bases["estargz"]
    members = fuzzing.data_members(base.parts.data, zstd=False)
    swapped = fuzzing.apply(base.parts, [{"op": "member", "action": "swap", "i": 1, "j": 2}])
    assert swapped.blob.startswith(members[0] + members[2] + members[1])
    assert len(swapped.blob) == len(fuzzing.serialize(base.parts).blob)


def test_the_invariant_refuses_altered_and_unverified_bytes(bases: dict[str, fuzzing.Base]) -> None:
    base = bases["estargz"]
    reader = estargz.open(fuzzing.serialize(base.parts).blob)
    altered = b"y" * len(fuzzing.FILES["c"])
    for pinned in (True, False):
        check = fuzzing.Check(base, reader, pinned=pinned)
        check.content("read", "c", fuzzing.FILES["c"])
        check.content("read", "./link", fuzzing.FILES["dir/a.txt"])
        with pytest.raises(fuzzing.InvariantError, match="bytes for 'c'"):
            check.content("read", "c", altered)
    with pytest.raises(fuzzing.InvariantError, match="does not resolve"):
        fuzzing.Check(base, reader, pinned=False).content("unpack", "no-such-file", b"x")


BUDGET_SCRIPT = """
import pathlib, signal, sys
import fuzzing

signal.signal(signal.SIGXCPU, fuzzing._on_cpu_limit)

def spin(bases, case, scratch):
    while True:
        pass

def hoard(bases, case, scratch):
    block = bytearray(fuzzing.RSS_BUDGET + (32 << 20))
    block[::4096] = bytes(len(block[::4096]))
    return {"rejections": [], "failures": [], "mode": "pinned"}

def idle(bases, case, scratch):
    return {"rejections": [], "failures": [], "mode": "pinned"}

fuzzing.run_case = {"spin": spin, "hoard": hoard, "idle": idle}[sys.argv[1]]
outcome, restart = fuzzing._run_budgeted({}, {}, pathlib.Path("."))
print(restart, *[f["class"] for f in outcome["failures"]], sep="\\n")
"""

#: Runs BUDGET_SCRIPT (argv[1]) from a process that holds more than the RSS budget itself.
LARGE_PARENT_SCRIPT = """
import subprocess, sys
import fuzzing
block = bytearray(fuzzing.RSS_BUDGET + (64 << 20))
block[::4096] = bytes(len(block[::4096]))
sys.exit(subprocess.run([sys.executable, "-c", *sys.argv[1:]]).returncode)
"""


def _budget_run(*args: str) -> list[str]:
    """The lines BUDGET_SCRIPT prints: whether the worker restarts, then the failure classes."""
    env = {**os.environ, "PYTHONPATH": str(Path(estargz.__file__).parent.parent)}
    result = subprocess.run([sys.executable, "-c", *args], capture_output=True, text=True,
                            cwd=Path(fuzzing.__file__).parent, env=env, timeout=120, check=True)
    return result.stdout.split("\n")[:-1]


@pytest.mark.parametrize(("case", "failure"), [("spin", "case: BudgetExceeded"), ("hoard", "budget: RSS")])
def test_a_case_over_budget_is_a_failure_and_restarts_the_worker(case: str, failure: str) -> None:
    """The CPU and memory budgets, applied to stand-ins for a case that spins or hoards memory."""
    restart, *classes = _budget_run(BUDGET_SCRIPT, case)
    assert restart == "True"
    assert any(c.startswith(failure) for c in classes), classes


def test_the_memory_budget_counts_the_worker_alone() -> None:
    """A worker started by a large process (the test suite) does not inherit that process's peak."""
    assert _budget_run(LARGE_PARENT_SCRIPT, BUDGET_SCRIPT, "idle") == ["False"]
