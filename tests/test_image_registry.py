"""Converted images through a real registry: convert_image, skopeo push and pull, lazy reads.

A two-layer OCI layout (a gzip layer and an uncompressed one, holding copies of stdlib modules,
directories, symlinks and a hardlink) is converted with estargz.convert_image in each format
(and eStargz with an external TOC and the diffIDs kept), pushed with Debian's skopeo to the
session's docker-registry (conftest.py), pulled back into a fresh layout and inspected: the
manifest, the config and every layer blob must come back as they were written, and each pulled
layer must open, verify and hold the source layer's files. Layers are also read lazily straight
from the registry with estargz.registry.open_layer. With an external TOC, the ``-esgztoc`` TOC
image is pushed and pulled as well.
"""

from __future__ import annotations

import gzip
import io
import json
import pydoc_data.topics
import random
import subprocess
import tarfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import zstandard
from helpers import sha256

import estargz
from estargz.image import REF_NAME_ANNOTATION, convert_image
from estargz.registry import RegistryClient, open_layer

pytestmark = pytest.mark.interop

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
TAR = "application/vnd.oci.image.layer.v1.tar"
TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
TAR_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MTIME = 1700000000
TAG = "v1"
TOC_TAG = TAG + estargz.TOC_IMAGE_TAG_SUFFIX
LANDMARKS = {estargz.PREFETCH_LANDMARK, estargz.NO_PREFETCH_LANDMARK, estargz.TOC_NAME}
SMALL_FILE = "usr/share/doc/estargz/README"
SMALL_TEXT = b"read lazily from the registry\n" * 4


@dataclass(frozen=True)
class Variant:
    id: str
    format: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def external_toc(self) -> bool:
        return bool(self.options.get("external_toc"))

    @property
    def lossless(self) -> bool:
        """The converted layers decompress to the source tars (same diffIDs)."""
        return self.format == estargz.FORMAT_ZSTD_CHUNKED or bool(self.options.get("keep_diff_id"))


VARIANTS = [
    Variant("estargz", estargz.FORMAT_ESTARGZ),
    Variant("zstd-chunked", estargz.FORMAT_ZSTD_CHUNKED),
    Variant("zstd-chunked-stargz", estargz.FORMAT_ZSTD_CHUNKED_STARGZ),
    Variant("estargz-external-toc", estargz.FORMAT_ESTARGZ, {"external_toc": True, "keep_diff_id": True}),
]


# -- the source image ---------------------------------------------------------------------------

Tree = dict[str, tuple[str, Any]]
"""name -> ("reg", bytes) | ("dir", None) | ("symlink", target) | ("hardlink", target)."""


def python_layer() -> Tree:
    """The json package and textwrap as they are installed, a directory tree, symlinks, a hardlink."""
    tree: Tree = {"usr": ("dir", None), "usr/lib": ("dir", None), "usr/lib/python3": ("dir", None),
                  "usr/lib/python3/json": ("dir", None), "usr/bin": ("dir", None), "etc": ("dir", None)}
    for path in sorted(Path(json.__file__).parent.glob("*.py")):
        tree[f"usr/lib/python3/json/{path.name}"] = ("reg", path.read_bytes())
    tree["usr/lib/python3/textwrap.py"] = ("reg", Path(textwrap.__file__).read_bytes())
    tree["etc/os-release"] = ("reg", b"ID=estargz-test\nVERSION_ID=1\n")
    tree["usr/lib/python3/current"] = ("symlink", "json")
    tree["usr/bin/textwrap"] = ("symlink", "../lib/python3/textwrap.py")
    tree["etc/os-release.hardlink"] = ("hardlink", "etc/os-release")
    return tree


def data_layer() -> Tree:
    """pydoc's topics (about 750 kB of text), 256 kB of noise, a small file, an empty one, links."""
    rng = random.Random(20240607)
    return {
        "usr": ("dir", None), "usr/share": ("dir", None), "usr/share/pydoc": ("dir", None),
        "usr/share/pydoc/topics.py": ("reg", Path(pydoc_data.topics.__file__).read_bytes()),
        "usr/share/noise.bin": ("reg", rng.randbytes(256 << 10)),
        "usr/share/doc": ("dir", None), "usr/share/doc/estargz": ("dir", None),
        SMALL_FILE: ("reg", SMALL_TEXT),
        "usr/share/empty": ("reg", b""),
        "usr/share/empty-dir": ("dir", None),
        "usr/share/doc/latest": ("symlink", "estargz/README"),
    }


def tar_of(tree: Tree) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, (kind, value) in tree.items():
            info = tarfile.TarInfo(name)
            info.mtime, info.mode = MTIME, 0o755 if kind == "dir" else 0o644
            data = None
            if kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "symlink":
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, value, 0o777
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, value
            else:
                info.size, data = len(value), io.BytesIO(value)
            tar.addfile(info, data)
    return out.getvalue()


@dataclass
class Source:
    root: Path
    trees: list[Tree]
    diff_ids: list[str]


def write_blob(root: Path, data: bytes, media_type: str) -> dict[str, Any]:
    (root / "blobs" / "sha256" / sha256(data)[7:]).write_bytes(data)
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data)}


def source_layout(root: Path) -> Source:
    """An OCI layout tagged v1: linux/amd64, a gzip layer under an uncompressed one."""
    (root / "blobs" / "sha256").mkdir(parents=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    trees = [python_layer(), data_layer()]
    tars = [tar_of(tree) for tree in trees]
    layers = [write_blob(root, gzip.compress(tars[0], mtime=0), TAR_GZIP), write_blob(root, tars[1], TAR)]
    layers[0]["annotations"] = {"org.example.layer": "python"}
    config = {"architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/usr/bin"]},
              "rootfs": {"type": "layers", "diff_ids": [sha256(t) for t in tars]},
              "history": [{"created_by": "python layer"}, {"created_by": "data layer"}]}
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": write_blob(root, json.dumps(config).encode(), OCI_CONFIG), "layers": layers}
    descriptor = write_blob(root, json.dumps(manifest, indent=2).encode(), OCI_MANIFEST)
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {**descriptor, "annotations": {REF_NAME_ANNOTATION: TAG}}]}))
    return Source(root, trees, [sha256(t) for t in tars])


# -- reading layouts and layers -----------------------------------------------------------------

def read_blob(root: Path, descriptor: dict[str, Any]) -> bytes:
    data = (root / "blobs" / "sha256" / descriptor["digest"][7:]).read_bytes()
    assert sha256(data) == descriptor["digest"] and len(data) == descriptor["size"]
    return data


def decompress(blob: bytes) -> bytes:
    """The layer tar: gzip members or zstd frames (skippable frames skipped), concatenated."""
    if blob[:2] == b"\x1f\x8b":
        return gzip.decompress(blob)
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob), read_across_frames=True)
    return reader.read()


def tagged(root: Path, tag: str) -> dict[str, Any]:
    """The index.json entry of ``tag``."""
    entries = [m for m in json.loads((root / "index.json").read_text())["manifests"]
               if m.get("annotations", {}).get(REF_NAME_ANNOTATION) == tag]
    assert len(entries) == 1, f"{root}: {len(entries)} entries tagged {tag}"
    return entries[0]


def tree_of(reader: estargz.Reader) -> Tree:
    """The layer's entries as a Tree (hardlinks as themselves, landmarks left out)."""
    tree: Tree = {}
    for entry in reader:
        if entry.name in LANDMARKS or entry.name in ("", "."):
            continue
        if entry.type == "reg":
            tree[entry.name] = ("reg", reader.read(entry.name))
        elif entry.type == "dir":
            tree[entry.name] = ("dir", None)
        elif entry.type in ("symlink", "hardlink"):
            tree[entry.name] = (entry.type, entry.link_name)
        else:
            tree[entry.name] = (entry.type, None)
    return tree


# -- skopeo, the registry -----------------------------------------------------------------------

@dataclass
class Pushed:
    variant: Variant
    source: Source
    converted: Path
    result: estargz.ImageResult
    manifest: dict[str, Any]
    manifest_raw: bytes
    config_raw: bytes
    toc_blobs: dict[str, bytes]
    """Layer digest -> its TOC blob (external TOC only), from the converted layout."""
    registry: str
    repository: str
    work: Path

    def ref(self, tag: str = TAG) -> str:
        return f"{self.registry}/{self.repository}:{tag}"


def skopeo_run(skopeo: Path, *args: str) -> bytes:
    proc = subprocess.run([str(skopeo), *args], capture_output=True, timeout=120, check=False,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"skopeo {' '.join(args)}: {proc.stderr.decode(errors='replace')}"
    return proc.stdout


def push(skopeo: Path, layout: Path, tag: str, ref: str) -> None:
    """Push as is: --preserve-digests makes skopeo fail rather than change any manifest or blob."""
    skopeo_run(skopeo, "copy", "-q", "--preserve-digests", "--dest-tls-verify=false",
               f"oci:{layout}:{tag}", f"docker://{ref}")


def pull(skopeo: Path, ref: str, layout: Path, tag: str) -> None:
    skopeo_run(skopeo, "copy", "-q", "--preserve-digests", "--src-tls-verify=false",
               f"docker://{ref}", f"oci:{layout}:{tag}")


@pytest.fixture(scope="module", params=VARIANTS, ids=lambda v: v.id)
def pushed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, skopeo: Path,
           docker_registry: Any) -> Pushed:
    """The source image converted in one variant and pushed (with its TOC image, if any)."""
    variant: Variant = request.param
    work = tmp_path_factory.mktemp(variant.id)
    source = source_layout(work / "src")
    converted = work / "converted"
    result = convert_image(source.root, converted, format=variant.format, **variant.options)
    entry = tagged(converted, TAG)
    manifest_raw = read_blob(converted, entry)
    manifest = json.loads(manifest_raw)
    toc_blobs: dict[str, bytes] = {}
    if variant.external_toc:
        toc_manifest = json.loads(read_blob(converted, tagged(converted, TOC_TAG)))
        toc_blobs = {layer["annotations"][estargz.LAYER_DIGEST_ANNOTATION]: read_blob(converted, layer)
                     for layer in toc_manifest["layers"]}
    pushed = Pushed(variant, source, converted, result, manifest, manifest_raw,
                    read_blob(converted, manifest["config"]), toc_blobs, docker_registry.host,
                    f"estargz/image-{variant.id}", work)
    push(skopeo, converted, TAG, pushed.ref())
    if variant.external_toc:
        push(skopeo, converted, TOC_TAG, pushed.ref(TOC_TAG))
    return pushed


# -- tests --------------------------------------------------------------------------------------

def test_converted_layout(pushed: Pushed) -> None:
    """What was pushed: two layers in the variant's format, diffIDs matching, source files inside."""
    variant, manifest = pushed.variant, pushed.manifest
    media_type = TAR_GZIP if variant.format == estargz.FORMAT_ESTARGZ else TAR_ZSTD
    assert [layer["mediaType"] for layer in manifest["layers"]] == [media_type, media_type]
    assert manifest["layers"][0]["annotations"]["org.example.layer"] == "python"
    config = json.loads(pushed.config_raw)
    by_digest = {r.blob_digest: r for r in pushed.result.layers.values() if isinstance(r, estargz.BuildResult)}
    assert config["rootfs"]["diff_ids"] == [by_digest[layer["digest"]].diff_id for layer in manifest["layers"]]
    if variant.lossless:
        assert config["rootfs"]["diff_ids"] == pushed.source.diff_ids
    else:
        assert config["rootfs"]["diff_ids"] != pushed.source.diff_ids
    for layer in manifest["layers"]:
        assert layer["annotations"].items() >= by_digest[layer["digest"]].annotations.items()
    assert [m.ref_names for m in pushed.result.manifests] == [(TAG,)]
    if variant.external_toc:
        assert [m.ref_names for m in pushed.result.toc_images] == [(TOC_TAG,)]
        assert set(pushed.toc_blobs) == {layer["digest"] for layer in manifest["layers"]}
    else:
        assert pushed.result.toc_images == ()


def test_registry_manifest_and_config(pushed: Pushed, skopeo: Path) -> None:
    """The registry serves the converted manifest and config byte for byte."""
    ref = f"docker://{pushed.ref()}"
    raw = skopeo_run(skopeo, "inspect", "--raw", "--tls-verify=false", ref)
    assert raw == pushed.manifest_raw
    remote = json.loads(raw)
    assert remote["layers"] == pushed.manifest["layers"]  # digest, size, mediaType, annotations
    for remote_layer, layer in zip(remote["layers"], pushed.manifest["layers"], strict=True):
        for key in ("digest", "size", "mediaType", "annotations"):
            assert remote_layer[key] == layer[key]
    config = skopeo_run(skopeo, "inspect", "--config", "--raw", "--tls-verify=false", ref)
    assert config == pushed.config_raw
    assert json.loads(config)["rootfs"]["diff_ids"] == json.loads(pushed.config_raw)["rootfs"]["diff_ids"]
    with RegistryClient(pushed.registry, insecure=True) as client:
        assert client.get_manifest(pushed.repository, TAG).digest == sha256(pushed.manifest_raw)


def test_pull_back(pushed: Pushed, skopeo: Path) -> None:
    """Pulled into a fresh layout: the same manifest, config and blobs; every layer opens,
    verifies and holds its source layer's files."""
    fresh = pushed.work / "fresh"
    pull(skopeo, pushed.ref(), fresh, TAG)
    entry = tagged(fresh, TAG)
    assert entry["digest"] == sha256(pushed.manifest_raw)
    pulled = json.loads(read_blob(fresh, entry))
    assert pulled == pushed.manifest
    assert read_blob(fresh, pulled["config"]) == pushed.config_raw
    diff_ids = json.loads(pushed.config_raw)["rootfs"]["diff_ids"]
    for layer, tree, diff_id in zip(pulled["layers"], pushed.source.trees, diff_ids, strict=True):
        blob = read_blob(fresh, layer)
        assert blob == read_blob(pushed.converted, layer)
        assert sha256(decompress(blob)) == diff_id
        toc = pushed.toc_blobs.get(layer["digest"])
        with estargz.open(blob, annotations=layer["annotations"], toc=toc) as reader:
            assert reader.format == pushed.variant.format
            report = reader.verify()
            landmarks = sum(1 for e in reader if e.name in LANDMARKS and e.is_file())
            assert report.files == sum(1 for kind, _ in tree.values() if kind == "reg") + landmarks
            if pushed.variant.format == estargz.FORMAT_ZSTD_CHUNKED:  # the tar rebuilt from tar-split
                assert report.diff_id == diff_id
            assert tree_of(reader) == tree


def test_lazy_read_from_registry(pushed: Pushed) -> None:
    """open_layer + estargz.open read one small file of the big layer with a few ranged requests."""
    toc_source = None
    if pushed.variant.external_toc:
        layer_digest = pushed.manifest["layers"][1]["digest"]
        toc_digest = sha256(pushed.toc_blobs[layer_digest])
        toc_source, toc_descriptor = open_layer(pushed.ref(TOC_TAG), toc_digest, insecure=True)
        assert toc_descriptor["annotations"] == {estargz.LAYER_DIGEST_ANNOTATION: layer_digest}
    source, descriptor = open_layer(pushed.ref(), 1, insecure=True)
    try:
        assert descriptor == pushed.manifest["layers"][1]
        assert source.size == descriptor["size"]
        with estargz.open(source, annotations=descriptor["annotations"], toc=toc_source) as reader:
            assert reader.format == pushed.variant.format
            opened = source.bytes_transferred
            assert reader.read(SMALL_FILE) == SMALL_TEXT
            assert reader.lookup("usr/share/doc/latest").link_name == "estargz/README"
            small = source.bytes_transferred
            assert small - opened < 64 << 10
            assert small < 0.05 * source.size, (small, source.size)
            assert source.requests <= 4
            # a piece of a big file: its chunk (the whole file, at the default chunk size) up to it
            with reader.open("usr/share/pydoc/topics.py") as f:
                f.seek(100_000)
                piece = f.read(200)
            assert piece == Path(pydoc_data.topics.__file__).read_bytes()[100_000:100_200]
            assert source.bytes_transferred < 0.75 * source.size, (source.bytes_transferred, source.size)
    finally:
        source.close()
        if toc_source is not None:
            toc_source.close()


def test_lazy_read_python_layer(pushed: Pushed) -> None:
    """The small gzip-sourced layer read lazily too: a file, and the hardlink to it."""
    toc = pushed.toc_blobs.get(pushed.manifest["layers"][0]["digest"])
    source, descriptor = open_layer(pushed.ref(), 0, insecure=True)
    with source, estargz.open(source, annotations=descriptor["annotations"], toc=toc) as reader:
        assert reader.read("usr/lib/python3/json/scanner.py") == (Path(json.__file__).parent / "scanner.py").read_bytes()
        assert reader.read("etc/os-release.hardlink") == b"ID=estargz-test\nVERSION_ID=1\n"
        assert source.bytes_transferred < source.size


def test_toc_image(pushed: Pushed, skopeo: Path) -> None:
    """With an external TOC the -esgztoc image is in the registry: one TOC blob per layer, each
    naming its layer in containerd.io/snapshot/stargz/layer.digest."""
    if not pushed.variant.external_toc:
        with pytest.raises(estargz.NotFoundError):
            open_layer(pushed.ref(TOC_TAG), 0, insecure=True)
        return
    ref = f"docker://{pushed.ref(TOC_TAG)}"
    raw = skopeo_run(skopeo, "inspect", "--raw", "--tls-verify=false", ref)
    assert raw == read_blob(pushed.converted, tagged(pushed.converted, TOC_TAG))
    toc_manifest = json.loads(raw)
    layer_digests = [layer["digest"] for layer in pushed.manifest["layers"]]
    named = [layer["annotations"][estargz.LAYER_DIGEST_ANNOTATION] for layer in toc_manifest["layers"]]
    assert sorted(named) == sorted(layer_digests)
    assert all(layer["mediaType"] == TAR_GZIP for layer in toc_manifest["layers"])
    fresh = pushed.work / "fresh-toc"
    pull(skopeo, pushed.ref(TOC_TAG), fresh, TOC_TAG)
    assert tagged(fresh, TOC_TAG)["digest"] == sha256(raw)
    for layer in toc_manifest["layers"]:
        toc = read_blob(fresh, layer)
        assert toc == pushed.toc_blobs[layer["annotations"][estargz.LAYER_DIGEST_ANNOTATION]]
    # the pulled TOC opens the pulled layer; the layer alone has no TOC
    main = pushed.work / "fresh"
    if not main.exists():
        pull(skopeo, pushed.ref(), main, TAG)
    layer = pushed.manifest["layers"][1]
    blob = read_blob(main, layer)
    toc_layer = next(t for t in toc_manifest["layers"]
                     if t["annotations"][estargz.LAYER_DIGEST_ANNOTATION] == layer["digest"])
    with estargz.open(blob, annotations=layer["annotations"], toc=read_blob(fresh, toc_layer)) as reader:
        reader.verify(layer["annotations"][estargz.TOC_DIGEST_ANNOTATION])
        assert reader.read(SMALL_FILE) == SMALL_TEXT
    with pytest.raises(estargz.EStargzError):
        estargz.open(blob, annotations=layer["annotations"])
