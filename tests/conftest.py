"""Shared fixtures of the test suite."""

from __future__ import annotations

import ctypes.util
import http.client
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

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


SKOPEO_PACKAGE = "skopeo"
#: apt-get update and install of a Debian package and its dependencies.
APT_INSTALL_TIMEOUT = 900


def _unavailable(tool: str, reason: str, output: str = "") -> None:
    """Fail in CI (the tests that need ``tool`` must run there), skip elsewhere."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{tool} is not available in CI: {reason}\n{output}", pytrace=False)
    pytest.skip(f"{tool} unavailable: {reason} (needs root to apt-get install {tool})")


def _apt_get(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(["apt-get", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          env=env, timeout=APT_INSTALL_TIMEOUT)


def _apt_install(package: str) -> None:
    """``apt-get install package`` (after ``apt-get update`` if the first try fails); root only.
    Skips (or fails in CI) when that cannot be done."""
    if shutil.which("apt-get") is None:
        _unavailable(package, f"{package} is not installed and there is no apt-get")
    if os.geteuid() != 0:
        _unavailable(package, f"{package} is not installed and this is not root")
    install = ("install", "-y", "--no-install-recommends", package)
    try:
        proc = _apt_get(*install)
        if proc.returncode != 0:
            update = _apt_get("update")
            proc = _apt_get(*install)
            proc.stderr = update.stderr + proc.stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        _unavailable(package, f"apt-get install {package} failed: {exc}")
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        _unavailable(package, f"apt-get install {package} exited {proc.returncode}: "
                              f"{lines[-1].strip() if lines else 'no output'}", proc.stdout + proc.stderr)


@pytest.fixture(scope="session")
def skopeo() -> Path:
    """Path of the ``skopeo`` binary (Debian's; bookworm ships 1.9.3).

    ``ESTARGZ_SKOPEO`` may name it; otherwise it is looked up on PATH and, when missing,
    installed with ``apt-get install --no-install-recommends skopeo`` (which needs root). When
    it cannot be had the skopeo tests are skipped, except in CI (``CI=true``), where they fail.
    """
    given = os.environ.get("ESTARGZ_SKOPEO")
    if given and os.path.isfile(given) and os.access(given, os.X_OK):
        return Path(given)
    found = shutil.which("skopeo")
    if found is None:
        _apt_install(SKOPEO_PACKAGE)
        found = shutil.which("skopeo")
        if found is None:
            _unavailable(SKOPEO_PACKAGE, "apt-get installed skopeo but it is not on PATH")
    return Path(found)


FUSE_PACKAGES = ("fuse3", "libfuse3-3")
FUSE_DEVICE = "/dev/fuse"


@pytest.fixture(scope="session")
def fuse() -> None:
    """FUSE for the mount tests: ``/dev/fuse``, libfuse 3 with ``fusermount3`` (Debian's fuse3 and
    libfuse3-3, installed with apt-get when missing, root only) and the mfusepy binding (extra
    ``estargz[mount]``). Skipped when unavailable, except in CI (``CI=true``), where it fails."""
    if not os.path.exists(FUSE_DEVICE):
        _unavailable("fuse", f"{FUSE_DEVICE} does not exist")
    if shutil.which("fusermount3") is None or ctypes.util.find_library("fuse3") is None:
        for package in FUSE_PACKAGES:
            _apt_install(package)
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as exc:
        _unavailable("mfusepy", f"cannot import mfusepy: {exc} (pip install 'estargz[mount]')")


REGISTRY_PACKAGE = "docker-registry"
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
#: Seconds for a started registry to answer ``GET /v2/``.
REGISTRY_START_TIMEOUT = 20


def _install_registry() -> None:
    """``apt-get install docker-registry`` without letting its postinst start the service (which
    would listen on every interface): a temporary policy-rc.d that refuses every start."""
    created = not POLICY_RC_D.exists() and os.geteuid() == 0
    if created:
        POLICY_RC_D.write_text("#!/bin/sh\n# estargz tests: no service starts during apt-get install\nexit 101\n")
        POLICY_RC_D.chmod(0o755)
    try:
        _apt_install(REGISTRY_PACKAGE)
    finally:
        if created:
            POLICY_RC_D.unlink(missing_ok=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _registry_answers(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/v2/")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


@dataclass(frozen=True)
class LocalRegistry:
    """A docker-registry (distribution 2.8) serving plain HTTP on 127.0.0.1."""

    host: str
    """``127.0.0.1:PORT``: the registry part of references."""
    url: str
    """``http://127.0.0.1:PORT``."""
    storage: Path


@pytest.fixture(scope="session")
def docker_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """A real OCI registry on loopback: Debian's ``docker-registry``, started for the session
    on a free port of 127.0.0.1 with storage in a temporary directory, stopped at the end.

    ``ESTARGZ_DOCKER_REGISTRY`` may name the binary; otherwise it is looked up on PATH and, when
    missing, installed with apt-get (root only). Skipped when unavailable, except in CI.
    """
    binary = os.environ.get("ESTARGZ_DOCKER_REGISTRY") or shutil.which(REGISTRY_PACKAGE)
    if binary is None:
        _install_registry()
        binary = shutil.which(REGISTRY_PACKAGE)
        if binary is None:
            _unavailable(REGISTRY_PACKAGE, "apt-get installed docker-registry but it is not on PATH")
    root = tmp_path_factory.mktemp("registry")
    log_path = root / "registry.log"
    last_output = ""
    for _ in range(3):  # another process may take the free port before the registry binds it
        port = _free_port()
        config = root / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {root / 'storage'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{port}\n  secret: estargz-tests\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([str(binary), "serve", str(config)], stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + REGISTRY_START_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None and not _registry_answers(port):
            time.sleep(0.1)
        if proc.poll() is None and _registry_answers(port):
            break
        proc.kill()
        proc.wait()
        last_output = log_path.read_text(errors="replace")
    else:
        _unavailable(REGISTRY_PACKAGE, "docker-registry did not start", last_output)
    try:
        yield LocalRegistry(f"127.0.0.1:{port}", url, root / "storage")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


#: Byte strings longer than this are compared by their first difference, not by pytest's diff
#: (whose cost grows with the square of their length: minutes for a blob).
_LONG_BYTES = 4096


def pytest_assertrepr_compare(op: str, left: object, right: object) -> list[str] | None:
    """For ``==`` of long byte strings: their lengths and where they first differ."""
    if op != "==" or not isinstance(left, (bytes, bytearray)) or not isinstance(right, (bytes, bytearray)):
        return None
    if max(len(left), len(right)) <= _LONG_BYTES:
        return None
    first = next((i for i, (a, b) in enumerate(zip(left, right)) if a != b), min(len(left), len(right)))
    return [f"byte strings differ: lengths {len(left)} and {len(right)}, first difference at offset {first}",
            f"left[{first}:{first + 32}] = {bytes(left[first:first + 32])!r}",
            f"right[{first}:{first + 32}] = {bytes(right[first:first + 32])!r}"]
