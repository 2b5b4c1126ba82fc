"""pytest-benchmark cases: ``python -m pytest benchmarks`` (the test suite does not collect them).

They run on a tar of part of the standard library (about 30 MB), built once per session.
"""

from __future__ import annotations

import io
import sysconfig
import tarfile
from pathlib import Path

import pytest

import estargz

_PACKAGES = ("email", "json", "asyncio", "unittest", "concurrent", "xml", "encodings", "idlelib",
             "pydoc_data", "lib2to3", "test/support")


@pytest.fixture(scope="session")
def layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    path = tmp_path_factory.mktemp("bench") / "layer.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in _PACKAGES:
            if (stdlib / name).exists():
                tar.add(stdlib / name, arcname=f"usr/lib/python3/{name}")
    return path


@pytest.fixture(scope="session")
def blob(layer: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bench") / "layer.esgz"
    estargz.convert(layer, path)
    return path


@pytest.mark.parametrize("level", [1, 6, 9])
def test_convert(benchmark, layer: Path, level: int) -> None:
    result = benchmark(lambda: estargz.convert(layer, io.BytesIO(), compression_level=level))
    benchmark.extra_info["blob_size"] = result.blob_size
    benchmark.extra_info["layer_size"] = layer.stat().st_size


def test_open_and_read_one_file(benchmark, blob: Path) -> None:
    def read_one() -> bytes:
        with estargz.open(blob) as reader:
            return reader.read("usr/lib/python3/json/__init__.py")

    assert benchmark(read_one).startswith(b"r")


def test_verify(benchmark, blob: Path) -> None:
    def verify() -> int:
        with estargz.open(blob) as reader:
            return reader.verify().files

    assert benchmark(verify) > 100
