"""estargz.testing.check_blob: the conformance check other implementations can run on their blobs.

It must accept what estargz and the Go reference write for a layer, in every format, and reject a
blob that holds a different layer.
"""

from __future__ import annotations

import io
import json
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings

import estargz
from estargz.testing import Layer, LayerEntry, check_blob, layers, tar_bytes

SMALL = Layer((
    LayerEntry("etc", kind="dir", mode=0o755),
    LayerEntry("etc/hostname", content=b"box\n", mode=0o644, uid=1000, gid=1000, uname="user", gname="grp"),
    LayerEntry("etc/motd", content=b"hello\n" * 300, xattrs={"user.note": b"\xff\x00"}),
    LayerEntry("etc/link", kind="symlink", linkname="hostname"),
    LayerEntry("etc/hard", kind="hardlink", linkname="etc/hostname"),
), "pax")


def convert(layer: Layer, **options) -> tuple[bytes, estargz.BuildResult]:
    out = io.BytesIO()
    result = estargz.convert(io.BytesIO(tar_bytes(layer)), out, **options)
    return out.getvalue(), result


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layer=layers(chunk_size=1000))
@pytest.mark.parametrize("layer_format", estargz.FORMATS)
def test_estargz_blobs_conform(layer_format, layer):
    options = {} if layer_format == estargz.FORMAT_ZSTD_CHUNKED else {"chunk_size": 1000}
    try:
        blob, result = convert(layer, format=layer_format, **options)
    except estargz.UnsupportedInputError:  # e.g. names containers/storage cannot hold
        return
    check_blob(blob, layer, annotations=result.annotations)


def test_a_different_layer_is_rejected():
    blob, _ = convert(SMALL)
    other = Layer(SMALL.entries[:2] + (LayerEntry("etc/motd", content=b"changed\n"),) + SMALL.entries[3:], "pax")
    with pytest.raises(AssertionError, match="etc/motd"):
        check_blob(blob, other)


@pytest.mark.interop
@pytest.mark.parametrize("zstd", [False, True], ids=["gzip", "zstd"])
def test_go_reference_blobs_conform(go_checker, tmp_path, zstd):
    source = tmp_path / "layer.tar"
    source.write_bytes(tar_bytes(SMALL))
    flags = ["--zstdchunked"] if zstd else []
    built = subprocess.run([go_checker, "build", *flags, "--chunk-size", "64", "--procs", "1", str(source),
                            str(tmp_path / "go.blob")], capture_output=True, check=True)
    check_blob(tmp_path / "go.blob", SMALL, toc_digest=json.loads(built.stdout)["tocDigest"])
