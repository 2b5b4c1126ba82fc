"""Packaging: the supported Python versions, the license, and an sdist that carries its tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: The oldest Python that pyproject.toml's requires-python admits.
OLDEST_PYTHON = "3.10"


def test_code_needs_nothing_newer_than_the_oldest_supported_python() -> None:
    """No interpreter of that version is at hand, so vermin checks syntax and stdlib APIs
    (functions, modules and keyword arguments) against it."""
    result = subprocess.run(
        [sys.executable, "-c", "import sys, vermin; sys.exit(vermin.main())",
         "--no-tips", "--violations", "--eval-annotations", f"-t={OLDEST_PYTHON}-",
         str(ROOT / "estargz"), str(ROOT / "tests")],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"requires-python = \">={OLDEST_PYTHON}\"" in (ROOT / "pyproject.toml").read_text()


#: What a build leaves in a checkout; copied along, stale egg-info would decide the sdist's files.
BUILD_LEFTOVERS = ("*.egg-info", "build", "dist", "__pycache__", ".git", ".pytest_cache", ".hypothesis")


def _build_sdist(outdir: Path) -> Path:
    """Build the sdist from a clean copy of this checkout."""
    source = outdir / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*BUILD_LEFTOVERS), symlinks=True)
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(outdir), str(source)],
                   check=True, capture_output=True)
    (sdist,) = outdir.glob("estargz-*.tar.gz")
    return sdist


@pytest.fixture(scope="module")
def sdist_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist, built from this checkout and extracted."""
    work = tmp_path_factory.mktemp("sdist")
    with tarfile.open(_build_sdist(work / "dist")) as archive:
        # Python 3.10 before 3.10.12 has no extraction filters; this archive is our own build.
        archive.extractall(work / "tree", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    (tree,) = (work / "tree").iterdir()
    return tree


def test_sdist_carries_license_docs_and_what_its_tests_need(sdist_tree: Path) -> None:
    wanted = ["LICENSE", "CHANGELOG.md", "README.md", "tests/conftest.py", "tests/helpers.py", "tests/run.sh"]
    wanted += [str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")]
    wanted += [str(p.relative_to(ROOT)) for p in (ROOT / "tests" / "data").rglob("*") if p.is_file()]
    wanted += [str(p.relative_to(ROOT)) for p in (ROOT / "estargz").rglob("*.py")]
    assert [name for name in wanted if not (sdist_tree / name).is_file()] == []
    assert (sdist_tree / "LICENSE").read_bytes() == (ROOT / "LICENSE").read_bytes()
    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()
    metadata = (sdist_tree / "PKG-INFO").read_text()
    assert "License-Expression: Apache-2.0" in metadata.splitlines()


def test_sdist_tests_pass_from_the_extracted_sdist(sdist_tree: Path) -> None:
    where = subprocess.run([sys.executable, "-c", "import estargz; print(estargz.__file__)"], cwd=sdist_tree,
                           capture_output=True, text=True, check=True)
    assert Path(where.stdout.strip()).is_relative_to(sdist_tree)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_vectors.py"],
                            cwd=sdist_tree, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout


def test_wheel_built_from_the_sdist_imports_every_module(sdist_tree: Path, tmp_path: Path) -> None:
    """The wheel a user's pip builds from the sdist holds every module of the package: each one
    imports from the unpacked wheel alone, whatever this checkout's install provides."""
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"),
                    str(sdist_tree)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("estargz-*.whl")
    unpacked = tmp_path / "wheel"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(unpacked)
    modules = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (ROOT / "estargz").rglob("*.py"))
    # __main__ runs the CLI when imported: it is located, not imported.
    script = ("import importlib, importlib.util, sys\n"
              "for name in sys.argv[1:]:\n"
              "    name = name.removesuffix('.__init__')\n"
              "    print(importlib.util.find_spec(name).origin if name.endswith('__main__')\n"
              "          else importlib.import_module(name).__file__)\n")
    result = subprocess.run([sys.executable, "-P", "-c", script, *modules], cwd=tmp_path, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(unpacked)})
    assert result.returncode == 0, result.stderr[-3000:]
    files = result.stdout.split()
    assert len(files) == len(modules)
    assert [f for f in files if not Path(f).is_relative_to(unpacked)] == []
