"""Shared fixtures of the test suite."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

INTEROP_DIR = Path(__file__).parent / "interop"
BUILD_CHECKER = INTEROP_DIR / "build_checker.sh"
CHECKER_PACKAGES = "golang-go golang-github-containerd-stargz-snapshotter-dev"
#: Installing the Debian packages and compiling can take a while on a cold machine.
BUILD_TIMEOUT = 1800


def _checker_unavailable(reason: str, output: str) -> None:
    """Fail in CI (interop tests must run there), skip elsewhere."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"Go interop checker did not build in CI: {reason}\n{output}", pytrace=False)
    pytest.skip(f"Go checker unavailable: {reason} (needs root to apt-get install {CHECKER_PACKAGES})")


def _build_checker() -> Path:
    command = ["bash", str(BUILD_CHECKER)]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=BUILD_TIMEOUT)
    except FileNotFoundError as exc:
        _checker_unavailable(f"cannot run {' '.join(command)}: {exc}", "")
    except subprocess.TimeoutExpired as exc:
        output = "\n".join(x.decode(errors="replace") if isinstance(x, bytes) else (x or "")
                           for x in (exc.stdout, exc.stderr))
        _checker_unavailable(f"{BUILD_CHECKER.name} timed out after {BUILD_TIMEOUT} s", output)
    output = f"$ {' '.join(command)}\n--- stdout ---\n{proc.stdout}--- stderr ---\n{proc.stderr}"
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        last = lines[-1].strip() if lines else "no output"
        _checker_unavailable(f"{BUILD_CHECKER.name} exited {proc.returncode}: {last}", output)
    lines = proc.stdout.strip().splitlines()
    binary = Path(lines[-1].strip()) if lines else None
    if binary is None or not (binary.is_file() and os.access(binary, os.X_OK)):
        _checker_unavailable(f"{BUILD_CHECKER.name} printed no executable path", output)
    return binary


@pytest.fixture(scope="session")
def go_checker() -> Path:
    """Path of the Go interop checker (tests/interop), built from Debian packages on first use.

    tests/run.sh builds it beforehand and passes the path in ``ESTARGZ_CHECKER``; otherwise
    tests/interop/build_checker.sh is run here (it installs missing Debian packages with
    apt-get, which needs root). When the checker cannot be built the interop tests are skipped,
    except in CI (``CI=true``), where they fail.
    """
    given = os.environ.get("ESTARGZ_CHECKER")
    if given and os.path.isfile(given) and os.access(given, os.X_OK):
        return Path(given)
    return _build_checker()
