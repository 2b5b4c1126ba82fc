"""Whole-image conversion (estargz.image.convert_image): OCI layouts, OCI archives and docker save
archives in; OCI layouts and archives out.

The source images are built here with tarfile, gzip, zstandard, json and hashlib. The output is
checked independently: every blob against its digest and size, diffIDs against the sha256 of the
decompressed layer (gzip / zstandard), file contents against the source layers; estargz.open
checks the format, annotations and chunk digests. The interop test uses Debian's skopeo.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zstandard
from helpers import sha256

import estargz
from estargz.image import REF_NAME_ANNOTATION, REUSED, ImageResult, convert_image
from estargz.plain import FORMAT_UNCOMPRESSED, FORMAT_ZSTD

FORMATS = [estargz.FORMAT_ESTARGZ, estargz.FORMAT_ZSTD_CHUNKED, estargz.FORMAT_ZSTD_CHUNKED_STARGZ]
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TYPES = {
    "tar": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "docker-gzip": "application/vnd.docker.image.rootfs.diff.tar.gzip",
}
LANDMARKS = {".prefetch.landmark", ".no.prefetch.landmark", "stargz.index.json"}
SKOPEO_DATA = Path(__file__).parent / "data" / "debian-v0.12" / "skopeo" / "oci-zstdchunked-small"
IMAGE_NAME = "io.containerd.image.name"
LAYER_DIGEST = "containerd.io/snapshot/stargz/layer.digest"


# -- building sources ---------------------------------------------------------------------------

def layer_tar(files: dict[str, bytes]) -> bytes:
    """A layer tar with the parent directories of ``files``, deterministic."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({"/".join(n.split("/")[:i]) for n in files for i in range(1, n.count("/") + 1)})
        for name in dirs:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1700000000
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1700000000
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def compress(tar: bytes, kind: str) -> bytes:
    if kind in ("gzip", "docker-gzip"):
        return gzip.compress(tar, mtime=0)
    if kind == "zstd":
        return zstandard.ZstdCompressor().compress(tar)
    return tar


def decompress(blob: bytes) -> bytes:
    if blob[:2] == b"\x1f\x8b":
        return gzip.decompress(blob)
    if blob[:4] == b"\x28\xb5\x2f\xfd":
        return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob), read_across_frames=True).read()
    return blob


def files_of(tar: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        return {m.name: t.extractfile(m).read() for m in t if m.isreg()}


BASE = {"etc/os-release": b"ID=test\n", "bin/sh": b"\x7fELF" + bytes(range(256)) * 40}
APP = {"app/main.py": b"print('hello')\n" * 500, "app/data.bin": os.urandom(3000)}
LIB = {"usr/lib/libfoo.so": b"lib" * 4000}
EXTRA = {"opt/arm/readme": b"arm64 only\n"}


@dataclass
class Layout:
    """An OCI image layout written blob by blob."""

    root: Path
    layers: dict[str, dict[str, bytes]] = field(default_factory=dict)
    """Blob digest -> the files of that layer."""
    diff_ids: dict[str, str] = field(default_factory=dict)
    """Blob digest -> its diffID."""

    def __post_init__(self) -> None:
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')

    def blob(self, data: bytes, media_type: str, **extra: object) -> dict:
        (self.root / "blobs" / "sha256" / sha256(data)[7:]).write_bytes(data)
        return {"mediaType": media_type, "digest": sha256(data), "size": len(data), **extra}

    def layer(self, files: dict[str, bytes], kind: str, annotations: dict | None = None) -> dict:
        tar = layer_tar(files)
        blob = compress(tar, kind)
        self.layers[sha256(blob)], self.diff_ids[sha256(blob)] = files, sha256(tar)
        return self.blob(blob, LAYER_TYPES[kind], **({"annotations": annotations} if annotations else {}))

    def image(self, layers: list[dict], arch: str = "amd64", variant: str = "", docker: bool = False) -> dict:
        config = {"architecture": arch, "os": "linux", "config": {"Env": ["PATH=/bin"]},
                  "rootfs": {"type": "layers", "diff_ids": [self.diff_ids[d["digest"]] for d in layers]},
                  "history": [{"created_by": "test"}]}
        if variant:
            config["variant"] = variant
        config_type = "application/vnd.docker.container.image.v1+json" if docker else OCI_CONFIG
        manifest = {"schemaVersion": 2,
                    "mediaType": "application/vnd.docker.distribution.manifest.v2+json" if docker else OCI_MANIFEST,
                    "config": self.blob(json.dumps(config).encode(), config_type), "layers": layers}
        platform = {"architecture": arch, "os": "linux", **({"variant": variant} if variant else {})}
        return self.blob(json.dumps(manifest, indent=2).encode(), manifest["mediaType"], platform=platform)

    def index(self, manifests: list[dict]) -> dict:
        return self.blob(json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}).encode(),
                         OCI_INDEX)

    def tag(self, *entries: tuple[dict, str | None]) -> None:
        manifests = []
        for descriptor, ref in entries:
            entry = {k: v for k, v in descriptor.items() if k != "platform"}
            if ref:
                entry["annotations"] = {REF_NAME_ANNOTATION: ref}
            manifests.append(entry)
        (self.root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": manifests}))


def two_platform_layout(root: Path) -> Layout:
    """Tag v1: an index of linux/amd64 (gzip, zstd, docker gzip and the gzip layer again) and
    linux/arm64/v8 (the same gzip layer, an uncompressed one); tag amd64-only: the amd64 manifest."""
    layout = Layout(root)
    base = layout.layer(BASE, "gzip", {"org.example.layer": "base"})
    amd64 = layout.image([base, layout.layer(APP, "zstd"), layout.layer(LIB, "docker-gzip"), base])
    arm64 = layout.image([base, layout.layer(EXTRA, "tar")], arch="arm64", variant="v8")
    layout.tag((layout.index([amd64, arm64]), "v1"), (amd64, "amd64-only"))
    return layout


def tar_directory(directory: Path, archive: Path, prefix: str = "") -> Path:
    with tarfile.open(archive, "w") as tar:
        for path in sorted(directory.rglob("*")):
            tar.add(path, prefix + path.relative_to(directory).as_posix(), recursive=False)
    return archive


# -- checking the output ------------------------------------------------------------------------

@dataclass
class Checked:
    index: dict
    tags: dict[str, dict]
    """Tag -> index.json entry."""
    images: dict[str, list[tuple[dict, dict]]]
    """Platform -> [(layer descriptor, config diffID)]."""
    manifests: dict[str, dict]
    """Platform -> manifest."""


def read_blob(root: Path, descriptor: dict) -> bytes:
    assert descriptor["digest"].startswith("sha256:")
    data = (root / "blobs" / "sha256" / descriptor["digest"][7:]).read_bytes()
    assert sha256(data) == descriptor["digest"] and len(data) == descriptor["size"]
    return data


def check_layout(root: Path, fmt: str, source: Layout | None = None, lossless: bool = False,
                 toc_blobs: dict[str, bytes] | None = None) -> Checked:
    """Check every blob, manifest, config and layer of the layout at ``root``."""
    assert json.loads((root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((root / "index.json").read_text())
    assert index["schemaVersion"] == 2 and index.get("mediaType", OCI_INDEX) == OCI_INDEX
    checked = Checked(index, {}, {}, {})
    media_type = LAYER_TYPES["gzip"] if fmt == estargz.FORMAT_ESTARGZ else LAYER_TYPES["zstd"]

    def manifest(descriptor: dict) -> None:
        assert descriptor["mediaType"] == OCI_MANIFEST
        document = json.loads(read_blob(root, descriptor))
        assert document["mediaType"] == OCI_MANIFEST and document["schemaVersion"] == 2
        if document["layers"] and LAYER_DIGEST in document["layers"][0].get("annotations", {}):
            return  # a TOC image
        assert document["config"]["mediaType"] == OCI_CONFIG
        config = json.loads(read_blob(root, document["config"]))
        diff_ids = config["rootfs"]["diff_ids"]
        assert len(diff_ids) == len(document["layers"])
        platform = f"{config['os']}/{config['architecture']}" + (f"/{config['variant']}" if "variant" in config else "")
        if "platform" in descriptor:
            assert descriptor["platform"]["architecture"] == config["architecture"]
        for layer, diff_id in zip(document["layers"], diff_ids):
            blob = read_blob(root, layer)
            assert layer["mediaType"] == media_type
            assert sha256(decompress(blob)) == diff_id
            toc = (toc_blobs or {}).get(layer["digest"])
            with estargz.open(blob, annotations=layer["annotations"], toc=toc) as reader:
                assert reader.format == fmt
                reader.verify()
                files = {e.name: reader.read(e.name) for e in reader if e.is_file() and e.name not in LANDMARKS}
            if source is not None:
                original = [d for d, f in source.layers.items() if f == files]
                assert original, f"layer {layer['digest']} holds no source layer's files"
                if lossless:
                    assert diff_id == source.diff_ids[original[0]]
        checked.images[platform] = list(zip(document["layers"], diff_ids))
        checked.manifests[platform] = document

    for entry in index["manifests"]:
        ref = entry.get("annotations", {}).get(REF_NAME_ANNOTATION)
        if ref:
            checked.tags[ref] = entry
        if entry["mediaType"] == OCI_INDEX:
            nested = json.loads(read_blob(root, entry))
            assert nested["mediaType"] == OCI_INDEX
            for child in nested["manifests"]:
                assert "platform" in child
                manifest(child)
        else:
            manifest(entry)
    return checked


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# -- tests --------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_two_platform_layout(tmp_path: Path, fmt: str) -> None:
    source = two_platform_layout(tmp_path / "src")
    result = convert_image(tmp_path / "src", tmp_path / "out", format=fmt)
    checked = check_layout(tmp_path / "out", fmt, source, lossless=fmt == estargz.FORMAT_ZSTD_CHUNKED)
    assert set(checked.images) == {"linux/amd64", "linux/arm64/v8"}
    assert set(checked.tags) == {"v1", "amd64-only"}
    # each source blob converted once, the duplicate gzip layer shared by both platforms
    assert set(result.layers) == set(source.layers)
    assert all(isinstance(r, estargz.BuildResult) for r in result.layers.values())
    amd64 = checked.images["linux/amd64"]
    assert amd64[0][0]["digest"] == amd64[3][0]["digest"] == checked.images["linux/arm64/v8"][0][0]["digest"]
    # annotations: the format's, plus the source layer's own
    assert amd64[0][0]["annotations"]["org.example.layer"] == "base"
    assert amd64[0][0]["annotations"].items() >= result.layers[amd64_source_digest(source)].annotations.items()
    # the diffIDs are the converted layers'
    by_blob = {r.blob_digest: r for r in result.layers.values() if isinstance(r, estargz.BuildResult)}
    for layer, diff_id in amd64 + checked.images["linux/arm64/v8"]:
        assert by_blob[layer["digest"]].diff_id == diff_id
    # the tag amd64-only names the same converted manifest as the index's amd64 entry
    nested = json.loads(read_blob(tmp_path / "out", checked.tags["v1"]))
    assert checked.tags["amd64-only"]["digest"] == nested["manifests"][0]["digest"]
    assert nested["manifests"][1]["platform"] == {"architecture": "arm64", "os": "linux", "variant": "v8"}
    platforms = {m.platform: m for m in result.manifests}
    assert set(platforms) == {"linux/amd64", "linux/arm64/v8"}
    assert set(platforms["linux/amd64"].ref_names) == {"v1", "amd64-only"}
    assert platforms["linux/arm64/v8"].ref_names == ("v1",)
    assert platforms["linux/amd64"].digest == checked.tags["amd64-only"]["digest"]
    assert result.skipped == () and result.toc_images == ()
    assert leftovers(tmp_path) == []


def amd64_source_digest(source: Layout) -> str:
    return next(d for d, f in source.layers.items() if f == BASE)


def test_oci_archive_to_archive(tmp_path: Path) -> None:
    two_platform_layout(tmp_path / "src")
    archive = tar_directory(tmp_path / "src", tmp_path / "src.tar", prefix="./")  # as tar -C src -cf src.tar .
    result = convert_image(archive, tmp_path / "out.tar", format=estargz.FORMAT_ZSTD_CHUNKED, layer_jobs=3)
    assert result.destination == str(tmp_path / "out.tar")
    with tarfile.open(tmp_path / "out.tar") as tar:
        names = tar.getnames()
        assert {"oci-layout", "index.json"} <= set(names)
        assert all(m.mtime == 0 and m.uid == 0 for m in tar)
        tar.extractall(tmp_path / "extracted", filter="data")
    checked = check_layout(tmp_path / "extracted", estargz.FORMAT_ZSTD_CHUNKED, lossless=True)
    assert set(checked.tags) == {"v1", "amd64-only"}
    assert leftovers(tmp_path) == []


def test_platform_filter(tmp_path: Path) -> None:
    two_platform_layout(tmp_path / "src")
    result = convert_image(tmp_path / "src", tmp_path / "arm", platforms=["linux/arm64"])
    checked = check_layout(tmp_path / "arm", estargz.FORMAT_ESTARGZ)
    assert set(checked.images) == {"linux/arm64/v8"} and set(checked.tags) == {"v1"}
    assert [m.platform for m in result.manifests] == ["linux/arm64/v8"]
    assert len(result.layers) == 2
    convert_image(tmp_path / "src", tmp_path / "v8", platforms=["linux/arm64/v8", "linux/amd64"])
    assert set(check_layout(tmp_path / "v8", estargz.FORMAT_ESTARGZ).images) == {"linux/arm64/v8", "linux/amd64"}
    with pytest.raises(estargz.NotFoundError, match="linux/s390x"):
        convert_image(tmp_path / "src", tmp_path / "none", platforms=["linux/s390x"])
    assert not (tmp_path / "none").exists() and leftovers(tmp_path) == []
    with pytest.raises(ValueError):
        convert_image(tmp_path / "src", tmp_path / "none", platforms=["linux"])


def test_partial_index_and_attestations(tmp_path: Path) -> None:
    """Index entries whose manifest is absent (partial multi-platform exports) and attestation
    manifests are skipped; a requested platform whose manifest is absent is an error."""
    layout = Layout(tmp_path / "src")
    amd64 = layout.image([layout.layer(BASE, "gzip")])
    absent = {"mediaType": OCI_MANIFEST, "digest": sha256(b"absent"), "size": 6,
              "platform": {"os": "linux", "architecture": "riscv64"}}
    attestation = layout.blob(b'{"schemaVersion":2}', OCI_MANIFEST,
                              platform={"os": "unknown", "architecture": "unknown"}, annotations={"vnd.docker.reference.type": "attestation-manifest",
                                           "vnd.docker.reference.digest": amd64["digest"]})
    layout.tag((layout.index([amd64, absent, attestation]), "v1"))
    result = convert_image(tmp_path / "src", tmp_path / "out")
    assert set(result.skipped) == {absent["digest"], attestation["digest"]}
    checked = check_layout(tmp_path / "out", estargz.FORMAT_ESTARGZ, layout)
    assert len(json.loads(read_blob(tmp_path / "out", checked.tags["v1"]))["manifests"]) == 1
    with pytest.raises(estargz.NotFoundError):
        convert_image(tmp_path / "src", tmp_path / "riscv", platforms=["linux/riscv64"])
    assert not (tmp_path / "riscv").exists() and leftovers(tmp_path) == []


def test_keep_diff_id_external_toc(tmp_path: Path) -> None:
    source = two_platform_layout(tmp_path / "src")
    result = convert_image(tmp_path / "src", tmp_path / "out", external_toc=True, keep_diff_id=True)
    out = tmp_path / "out"
    index = json.loads((out / "index.json").read_text())
    refs = {e["annotations"][REF_NAME_ANNOTATION]: e for e in index["manifests"]}
    assert set(refs) == {"v1", "amd64-only", "v1-esgztoc", "amd64-only-esgztoc"}
    toc_blobs: dict[str, bytes] = {}
    toc_layers: dict[str, set[str]] = {}
    for tag in ("v1-esgztoc", "amd64-only-esgztoc"):
        manifest = json.loads(read_blob(out, refs[tag]))
        assert json.loads(read_blob(out, manifest["config"])) == {}
        digests = [layer["digest"] for layer in manifest["layers"]]
        assert digests == sorted(digests)
        toc_layers[tag] = {layer["annotations"][LAYER_DIGEST] for layer in manifest["layers"]}
        for layer in manifest["layers"]:
            toc_blobs[layer["annotations"][LAYER_DIGEST]] = read_blob(out, layer)
    checked = check_layout(out, estargz.FORMAT_ESTARGZ, source, lossless=True, toc_blobs=toc_blobs)
    all_layers = {d["digest"] for layers in checked.images.values() for d, _ in layers}
    assert toc_layers["v1-esgztoc"] == all_layers and len(all_layers) == 4
    assert toc_layers["amd64-only-esgztoc"] == {d["digest"] for d, _ in checked.images["linux/amd64"]}
    # keep-diff-id: the configs are the source's, byte for byte
    for layers in checked.images.values():
        assert all(diff_id in source.diff_ids.values() for _, diff_id in layers)
    assert sorted(m.ref_names for m in result.toc_images) == [("amd64-only-esgztoc",), ("v1-esgztoc",)]


def test_external_toc_changes_diff_ids(tmp_path: Path) -> None:
    source = two_platform_layout(tmp_path / "src")
    result = convert_image(tmp_path / "src", tmp_path / "out", external_toc=True, platforms=["linux/arm64"])
    toc_blobs = {r.blob_digest: r.external_toc for r in result.layers.values()}
    checked = check_layout(tmp_path / "out", estargz.FORMAT_ESTARGZ, source, toc_blobs=toc_blobs)
    assert all(diff_id not in source.diff_ids.values() for _, diff_id in checked.images["linux/arm64/v8"])
    assert [m.ref_names for m in result.toc_images] == [("v1-esgztoc",)]


def docker_save(path: Path, images: list[tuple[list[dict[str, bytes]], list[str]]],
                symlinks: bool = False) -> list[list[str]]:
    """A legacy ``docker save`` archive; return each image's diffIDs (layers may repeat)."""
    staging = path.with_suffix(".d")
    staging.mkdir()
    entries, all_diff_ids = [], []
    for layers, tags in images:
        names, diff_ids = [], []
        for files in layers:
            tar = layer_tar(files)
            layer_id = hashlib.sha256(b"id" + tar).hexdigest()
            (staging / layer_id).mkdir(exist_ok=True)
            if symlinks:
                (staging / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
                (staging / "blobs" / "sha256" / sha256(tar)[7:]).write_bytes(tar)
                link = staging / layer_id / "layer.tar"
                if not link.is_symlink():
                    link.symlink_to(f"../blobs/sha256/{sha256(tar)[7:]}")
            else:
                (staging / layer_id / "layer.tar").write_bytes(tar)
            names.append(f"{layer_id}/layer.tar")
            diff_ids.append(sha256(tar))
        config = json.dumps({"architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
        (staging / f"{sha256(config)[7:]}.json").write_bytes(config)
        entries.append({"Config": f"{sha256(config)[7:]}.json", "RepoTags": tags, "Layers": names})
        all_diff_ids.append(diff_ids)
    (staging / "manifest.json").write_text(json.dumps(entries))
    tar_directory(staging, path)
    return all_diff_ids


@pytest.mark.parametrize("symlinks", [False, True], ids=["legacy", "blob-symlinks"])
def test_docker_save(tmp_path: Path, symlinks: bool) -> None:
    diff_ids = docker_save(tmp_path / "save.tar", [([BASE, APP, BASE], ["example.com/app:1.0", "app:latest"]),
                                                   ([BASE], [])], symlinks=symlinks)
    result = convert_image(tmp_path / "save.tar", tmp_path / "out", format=estargz.FORMAT_ZSTD_CHUNKED)
    checked = check_layout(tmp_path / "out", estargz.FORMAT_ZSTD_CHUNKED)
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    names = [e.get("annotations", {}) for e in index["manifests"]]
    assert names == [{IMAGE_NAME: "example.com/app:1.0", REF_NAME_ANNOTATION: "1.0"},
                     {IMAGE_NAME: "app:latest", REF_NAME_ANNOTATION: "latest"}, {}]
    assert all(e["platform"] == {"os": "linux", "architecture": "amd64"} for e in index["manifests"])
    # zstd:chunked is lossless: every diffID stays
    manifest = json.loads(read_blob(tmp_path / "out", checked.tags["1.0"]))
    config = json.loads(read_blob(tmp_path / "out", manifest["config"]))
    assert config["rootfs"]["diff_ids"] == diff_ids[0]
    assert len(result.layers) == 2 and set(result.layers) == set(diff_ids[0])
    assert sorted(m.ref_names for m in result.manifests) == [(), ("1.0", "latest")]


def test_docker_save_oci_style(tmp_path: Path) -> None:
    """Newer docker save: an OCI layout (docker media types here) plus manifest.json."""
    layout = Layout(tmp_path / "src")
    manifest = layout.image([layout.layer(BASE, "docker-gzip"), layout.layer(APP, "tar")], docker=True)
    index = {"schemaVersion": 2, "manifests": [{**manifest, "annotations": {
        IMAGE_NAME: "docker.io/library/app:latest", REF_NAME_ANNOTATION: "latest"}}]}
    (layout.root / "index.json").write_text(json.dumps(index))
    document = json.loads(read_blob(layout.root, manifest))
    (layout.root / "manifest.json").write_text(json.dumps([{
        "Config": "blobs/sha256/" + document["config"]["digest"][7:], "RepoTags": ["app:latest"],
        "Layers": ["blobs/sha256/" + layer["digest"][7:] for layer in document["layers"]]}]))
    archive = tar_directory(layout.root, tmp_path / "save.tar")
    convert_image(archive, tmp_path / "out")
    checked = check_layout(tmp_path / "out", estargz.FORMAT_ESTARGZ, layout)
    assert checked.tags["latest"]["annotations"][IMAGE_NAME] == "docker.io/library/app:latest"
    assert checked.tags["latest"]["mediaType"] == OCI_MANIFEST


def test_reuse(tmp_path: Path) -> None:
    source = two_platform_layout(tmp_path / "src")
    first = convert_image(tmp_path / "src", tmp_path / "once")
    again = convert_image(tmp_path / "once", tmp_path / "twice", reuse=True)
    assert set(again.layers.values()) == {REUSED}
    assert set(again.layers) == {r.blob_digest for r in first.layers.values()}
    # blobs byte-identical, hence manifests and configs too
    blobs = lambda root: {p.name: p.read_bytes() for p in (root / "blobs" / "sha256").iterdir()}
    assert blobs(tmp_path / "twice") == blobs(tmp_path / "once")
    assert (tmp_path / "twice" / "index.json").read_bytes() == (tmp_path / "once" / "index.json").read_bytes()
    # without reuse (or to another format) they are converted
    assert REUSED not in convert_image(tmp_path / "once", tmp_path / "again", layer_jobs=1).layers.values()
    check_layout(tmp_path / "twice", estargz.FORMAT_ESTARGZ, source)


def test_reuse_mixed_and_skopeo_layers(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "src")
    esgz = io.BytesIO()
    built = estargz.convert(io.BytesIO(layer_tar(APP)), esgz)
    esgz_descriptor = layout.blob(esgz.getvalue(), LAYER_TYPES["gzip"], annotations=built.annotations)
    layout.layers[built.blob_digest], layout.diff_ids[built.blob_digest] = APP, built.diff_id
    same_blob = layout.blob(esgz.getvalue(), LAYER_TYPES["gzip"])  # in another manifest, without annotations
    other = io.BytesIO()
    other_built = estargz.convert(io.BytesIO(layer_tar(LIB)), other, chunk_size=1024)
    unannotated = layout.blob(other.getvalue(), LAYER_TYPES["gzip"])  # eStargz, but no annotations say so
    layout.layers[other_built.blob_digest], layout.diff_ids[other_built.blob_digest] = LIB, other_built.diff_id
    plain = layout.layer(BASE, "gzip")
    layout.tag((layout.image([esgz_descriptor, plain]), "a"),
               (layout.image([same_blob, unannotated], arch="arm64"), "b"))
    result = convert_image(tmp_path / "src", tmp_path / "out", reuse=True)
    assert result.layers[built.blob_digest] == REUSED
    assert isinstance(result.layers[plain["digest"]], estargz.BuildResult)
    assert isinstance(result.layers[other_built.blob_digest], estargz.BuildResult)
    assert (tmp_path / "out" / "blobs" / "sha256" / built.blob_digest[7:]).read_bytes() == esgz.getvalue()
    checked = check_layout(tmp_path / "out", estargz.FORMAT_ESTARGZ, layout)
    assert checked.images["linux/amd64"][0][0]["annotations"] == built.annotations
    assert checked.images["linux/arm64"][0][0]["annotations"] == built.annotations
    assert checked.images["linux/arm64"][1][0]["digest"] != other_built.blob_digest
    # skopeo 1.9's zstd:chunked layer (legacy annotation names) is reused as containers/storage zstd:chunked
    skopeo = convert_image(SKOPEO_DATA, tmp_path / "skopeo", format=estargz.FORMAT_ZSTD_CHUNKED, reuse=True)
    assert list(skopeo.layers.values()) == [REUSED]
    assert [m.digest for m in skopeo.manifests] == [json.loads((SKOPEO_DATA / "index.json").read_text())
                                                    ["manifests"][0]["digest"]]
    assert REUSED not in convert_image(SKOPEO_DATA, tmp_path / "stargz", format=estargz.FORMAT_ZSTD_CHUNKED_STARGZ,
                                       reuse=True).layers.values()


def test_corrupt_blob_leaves_no_destination(tmp_path: Path) -> None:
    source = two_platform_layout(tmp_path / "src")
    victim = next(d for d, f in source.layers.items() if f == LIB)
    path = tmp_path / "src" / "blobs" / "sha256" / victim[7:]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(estargz.VerificationError, match=victim):
        convert_image(tmp_path / "src", tmp_path / "out", layer_jobs=3)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
    # an existing destination is kept as it was, even with overwrite
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("x")
    with pytest.raises(estargz.VerificationError):
        convert_image(tmp_path / "src", tmp_path / "out", overwrite=True)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep"] and leftovers(tmp_path) == []


def test_interrupted_conversion(tmp_path: Path) -> None:
    """An exception while layers convert (here from the progress callback) stops every worker and
    leaves the existing destination as it was."""
    layout = Layout(tmp_path / "src")
    layers = [layout.layer({f"f{n}": os.urandom(1 << 20) * 2}, "gzip") for n in range(4)]
    layout.tag((layout.image(layers), "big"))
    (tmp_path / "out.tar").write_bytes(b"previous")

    def interrupt(done: int, total: int) -> None:
        if done > total // 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert_image(tmp_path / "src", tmp_path / "out.tar", overwrite=True, progress=interrupt, chunk_size=64 << 10)
    assert (tmp_path / "out.tar").read_bytes() == b"previous" and leftovers(tmp_path) == []


@pytest.mark.parametrize("what", ["manifest", "config", "size"])
def test_corrupt_manifest_or_config(tmp_path: Path, what: str) -> None:
    layout = Layout(tmp_path / "src")
    manifest = layout.image([layout.layer(BASE, "gzip")])
    if what == "size":
        manifest["size"] += 1
        target = None
    else:
        document = json.loads(read_blob(layout.root, manifest))
        target = manifest if what == "manifest" else document["config"]
    layout.tag((manifest, "x"))
    if target is not None:
        path = layout.root / "blobs" / "sha256" / target["digest"][7:]
        path.write_bytes(path.read_bytes().replace(b'"linux"', b'"LINUX"').replace(b'"layers"', b'"LAYERS"'))
    with pytest.raises(estargz.VerificationError):
        convert_image(tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_broken_layer_with_right_digest(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "src")
    broken = gzip.compress(b"not a tar" * 100)
    layout.layers[sha256(broken)], layout.diff_ids[sha256(broken)] = {}, sha256(b"not a tar" * 100)
    layout.tag((layout.image([layout.layer(BASE, "gzip"), layout.blob(broken, LAYER_TYPES["gzip"])]), "x"))
    with pytest.raises(estargz.FormatError):
        convert_image(tmp_path / "src", tmp_path / "out.tar")
    assert not (tmp_path / "out.tar").exists() and leftovers(tmp_path) == []


def test_unsupported_layer(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "src")
    layer = layout.layer(BASE, "gzip")
    layer["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip+encrypted"
    layout.tag((layout.image([layer]), "x"))
    with pytest.raises(estargz.UnsupportedInputError, match="encrypted"):
        convert_image(tmp_path / "src", tmp_path / "out")


@pytest.mark.parametrize("digest", ["sha256:../../../../etc/passwd", "sha256:" + "../" * 21 + "a",
                                    "sha256:/etc/passwd", "sha256:" + "A" * 64])
def test_digest_path_traversal(tmp_path: Path, digest: str) -> None:
    layout = two_platform_layout(tmp_path / "src")
    index = json.loads((layout.root / "index.json").read_text())
    index["manifests"][0]["digest"] = digest
    (layout.root / "index.json").write_text(json.dumps(index))
    with pytest.raises(estargz.FormatError, match="digest"):
        convert_image(tmp_path / "src", tmp_path / "out")


def test_names_outside_the_source(tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(layer_tar(BASE))
    # manifest.json naming a file outside the archive
    staging = tmp_path / "save"
    staging.mkdir()
    config = json.dumps({"os": "linux", "architecture": "amd64",
                         "rootfs": {"type": "layers", "diff_ids": [sha256(layer_tar(BASE))]}}).encode()
    (staging / "config.json").write_bytes(config)
    (staging / "manifest.json").write_text(json.dumps([{"Config": "config.json", "Layers": ["../secret"]}]))
    with pytest.raises(estargz.FormatError, match="outside"):
        convert_image(tar_directory(staging, tmp_path / "save.tar"), tmp_path / "out")
    with pytest.raises(estargz.FormatError, match="outside"):
        convert_image(staging, tmp_path / "out")
    # a symlink leading out of the archive, and out of a layout directory
    (staging / "layer.tar").symlink_to("../../secret")
    (staging / "manifest.json").write_text(json.dumps([{"Config": "config.json", "Layers": ["layer.tar"]}]))
    with pytest.raises(estargz.FormatError, match="outside"):
        convert_image(tar_directory(staging, tmp_path / "save2.tar"), tmp_path / "out")
    layout = Layout(tmp_path / "src")
    layer = layout.layer(BASE, "tar")
    layout.tag((layout.image([layer]), "x"))
    blob = layout.root / "blobs" / "sha256" / layer["digest"][7:]
    blob.unlink()
    blob.symlink_to(tmp_path / "secret")
    with pytest.raises(estargz.FormatError, match="outside"):
        convert_image(tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_destination_rules(tmp_path: Path) -> None:
    two_platform_layout(tmp_path / "src")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(FileExistsError):
        convert_image(tmp_path / "src", tmp_path / "busy")
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["file"]
    (tmp_path / "empty").mkdir()
    convert_image(tmp_path / "src", tmp_path / "empty", platforms=["linux/arm64"])
    check_layout(tmp_path / "empty", estargz.FORMAT_ESTARGZ)
    convert_image(tmp_path / "src", tmp_path / "busy", overwrite=True, platforms=["linux/arm64"])
    assert not (tmp_path / "busy" / "file").exists()
    check_layout(tmp_path / "busy", estargz.FORMAT_ESTARGZ)
    (tmp_path / "layout.tar").write_bytes(b"x")
    with pytest.raises(FileExistsError):
        convert_image(tmp_path / "src", tmp_path / "layout.tar")
    convert_image(tmp_path / "src", tmp_path / "layout.tar", overwrite=True, platforms=["linux/arm64"])
    assert tarfile.is_tarfile(tmp_path / "layout.tar")
    assert leftovers(tmp_path) == []


def test_deterministic_and_progress(tmp_path: Path) -> None:
    source = two_platform_layout(tmp_path / "src")
    calls: list[tuple[int, int]] = []
    convert_image(tmp_path / "src", tmp_path / "a", layer_jobs=1, threads=1, progress=lambda d, t: calls.append((d, t)))
    parallel: list[tuple[int, int]] = []
    convert_image(tmp_path / "src", tmp_path / "b", layer_jobs=4, threads=3,
                  progress=lambda d, t: parallel.append((d, t)))
    assert (tmp_path / "a" / "index.json").read_bytes() == (tmp_path / "b" / "index.json").read_bytes()
    total = sum((tmp_path / "src" / "blobs" / "sha256" / d[7:]).stat().st_size for d in source.layers)
    for reported in (calls, parallel):
        assert reported and all(t == total for _, t in reported) and reported[-1][0] == total
        assert [d for d, _ in reported] == sorted(d for d, _ in reported)


def test_bad_options(tmp_path: Path) -> None:
    two_platform_layout(tmp_path / "src")
    with pytest.raises(TypeError, match="toc_digest"):
        convert_image(tmp_path / "src", tmp_path / "out", toc_digest="sha256:" + "0" * 64)
    with pytest.raises(ValueError):
        convert_image(tmp_path / "src", tmp_path / "out", format="gzip")
    with pytest.raises(ValueError, match="external"):  # from estargz.convert, on the first layer
        convert_image(tmp_path / "src", tmp_path / "out", format=estargz.FORMAT_ZSTD_CHUNKED, external_toc=True)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_result_json(tmp_path: Path) -> None:
    two_platform_layout(tmp_path / "src")
    result = convert_image(tmp_path / "src", tmp_path / "out", platforms=["linux/arm64"])
    assert isinstance(result, ImageResult)
    summary = json.loads(json.dumps(result.to_json()))
    assert summary["format"] == "estargz" and summary["manifests"][0]["platform"] == "linux/arm64/v8"
    assert all(v["format"] == "estargz" for v in summary["layers"].values())


# -- interop with skopeo ------------------------------------------------------------------------

@pytest.mark.interop
@pytest.mark.parametrize("fmt", [estargz.FORMAT_ESTARGZ, estargz.FORMAT_ZSTD_CHUNKED])
def test_skopeo_reads_and_copies(tmp_path: Path, skopeo: Path, fmt: str) -> None:
    two_platform_layout(tmp_path / "src")
    convert_image(tmp_path / "src", tmp_path / "out", format=fmt)
    checked = check_layout(tmp_path / "out", fmt)

    def run(*args: str) -> str:
        proc = subprocess.run([str(skopeo), *args], capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    raw = run("inspect", "--raw", f"oci:{tmp_path / 'out'}:amd64-only")
    assert json.loads(raw) == checked.manifests["linux/amd64"]
    assert all(layer["annotations"] for layer in json.loads(raw)["layers"])
    run("copy", "-q", f"oci:{tmp_path / 'out'}:amd64-only", f"oci:{tmp_path / 'copy'}:amd64-only")
    copied = json.loads(run("inspect", "--raw", f"oci:{tmp_path / 'copy'}:amd64-only"))
    assert copied["layers"] == checked.manifests["linux/amd64"]["layers"]
    check_layout(tmp_path / "copy", fmt)
    convert_image(tmp_path / "src", tmp_path / "out.tar", format=fmt, platforms=["linux/amd64"])
    assert json.loads(run("inspect", "--raw", f"oci-archive:{tmp_path / 'out.tar'}:amd64-only")) == copied
    run("copy", "-q", "--all", f"oci:{tmp_path / 'out'}:v1", f"oci:{tmp_path / 'all'}:v1")
    assert json.loads(run("inspect", "--raw", f"oci:{tmp_path / 'all'}:v1")) == json.loads(
        read_blob(tmp_path / "out", checked.tags["v1"]))
    assert set(check_layout(tmp_path / "all", fmt).images) == {"linux/amd64", "linux/arm64/v8"}


# -- plain outputs (nerdctl --zstd, --uncompress) -----------------------------------------------

PLAIN = {FORMAT_ZSTD: LAYER_TYPES["zstd"], FORMAT_UNCOMPRESSED: LAYER_TYPES["tar"]}


def check_plain_layout(root: Path, fmt: str, source: Layout) -> dict[str, list[dict]]:
    """Check a plain-format layout against ``source``: media types, blob digests, diffIDs equal to
    the source's, and layers holding the source layers' tar bytes. Platform -> layer descriptors."""
    images: dict[str, list[dict]] = {}
    index = json.loads((root / "index.json").read_text())
    pending = list(index["manifests"])
    while pending:
        entry = pending.pop()
        document = json.loads(read_blob(root, entry))
        if entry["mediaType"] == OCI_INDEX:
            pending.extend(document["manifests"])
            continue
        config = json.loads(read_blob(root, document["config"]))
        for layer, diff_id in zip(document["layers"], config["rootfs"]["diff_ids"], strict=True):
            assert layer["mediaType"] == PLAIN[fmt]
            assert not set(layer.get("annotations", {})) - {"org.example.layer"}
            tar = decompress(read_blob(root, layer))
            assert diff_id in source.diff_ids.values() and sha256(tar) == diff_id
            assert files_of(tar) == next(source.layers[d] for d, i in source.diff_ids.items() if i == diff_id)
        images[f"{config['os']}/{config['architecture']}"] = document["layers"]
    return images


@pytest.mark.parametrize("fmt", list(PLAIN))
def test_plain_formats_keep_the_tar_and_the_diff_ids(tmp_path: Path, fmt: str) -> None:
    source = two_platform_layout(tmp_path / "src")
    result = convert_image(tmp_path / "src", tmp_path / "out", format=fmt)
    assert result.format == fmt
    images = check_plain_layout(tmp_path / "out", fmt, source)
    assert set(images) == {"linux/amd64", "linux/arm64"}
    assert images["linux/amd64"][0]["annotations"] == {"org.example.layer": "base"}
    # a layer already in the target format is copied, byte for byte; the others are re-encoded
    plain_layer = APP if fmt == FORMAT_ZSTD else EXTRA
    copied = {d for d, r in result.layers.items() if r == REUSED}
    assert copied == {d for d, files in source.layers.items() if files == plain_layer}
    layer_digests = {layer["digest"] for layers in images.values() for layer in layers}
    assert copied <= layer_digests
    for outcome in result.layers.values():
        if outcome != REUSED:
            assert outcome.media_type == PLAIN[fmt] and outcome.blob_digest in layer_digests
    # back to eStargz: the files of every source layer
    convert_image(tmp_path / "out", tmp_path / "back", format=estargz.FORMAT_ESTARGZ, platforms=None)
    assert set(check_layout(tmp_path / "back", estargz.FORMAT_ESTARGZ, source).images) == {
        "linux/amd64", "linux/arm64/v8"}


def test_plain_zstd_is_reproducible_with_any_thread_count(tmp_path: Path) -> None:
    two_platform_layout(tmp_path / "src")
    outputs = []
    for threads in (1, 2, 3):
        out = tmp_path / f"out{threads}"
        convert_image(tmp_path / "src", out, format=FORMAT_ZSTD, threads=threads, compression_level=19)
        outputs.append({p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()})
    assert outputs[0] == outputs[1] == outputs[2]
    source_blobs = {p.read_bytes() for p in (tmp_path / "src" / "blobs" / "sha256").iterdir()}
    converted = [data for data in outputs[0].values()
                 if data.startswith(b"\x28\xb5\x2f\xfd") and data not in source_blobs]
    assert converted
    for blob in converted:
        frame = zstandard.get_frame_parameters(blob)
        assert frame.has_checksum and frame.content_size == zstandard.CONTENTSIZE_UNKNOWN


def test_plain_zstd_re_encodes_lazy_zstd_layers(tmp_path: Path) -> None:
    source = two_platform_layout(tmp_path / "src")
    convert_image(tmp_path / "src", tmp_path / "chunked", format=estargz.FORMAT_ZSTD_CHUNKED)
    lazy = {layer["digest"] for layers in check_layout(tmp_path / "chunked", estargz.FORMAT_ZSTD_CHUNKED).images
            .values() for layer, _ in layers}
    result = convert_image(tmp_path / "chunked", tmp_path / "out", format=FORMAT_ZSTD)
    assert REUSED not in result.layers.values() and set(result.layers) == lazy
    images = check_plain_layout(tmp_path / "out", FORMAT_ZSTD, source)
    assert not lazy & {layer["digest"] for layers in images.values() for layer in layers}


@pytest.mark.parametrize("fmt, options, message", [
    (FORMAT_ZSTD, {"chunk_size": 1 << 20}, "takes no chunk_size"),
    (FORMAT_ZSTD, {"external_toc": True}, "takes no external_toc"),
    (FORMAT_ZSTD, {"compression_level": 23}, "must be 1-22"),
    (FORMAT_UNCOMPRESSED, {"compression_level": 3}, "no compression level"),
])
def test_plain_format_options_refused(tmp_path: Path, fmt: str, options: dict, message: str) -> None:
    two_platform_layout(tmp_path / "src")
    with pytest.raises(ValueError, match=message):
        convert_image(tmp_path / "src", tmp_path / "out", format=fmt, **options)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt", list(PLAIN))
def test_plain_formats_refuse_bad_layers(tmp_path: Path, fmt: str) -> None:
    layout = Layout(tmp_path / "src")
    tar = layer_tar(BASE)
    truncated = gzip.compress(tar)[:-40]
    layout.layers[sha256(truncated)], layout.diff_ids[sha256(truncated)] = BASE, sha256(tar)
    layout.tag((layout.image([layout.blob(truncated, LAYER_TYPES["gzip"])]), "truncated"))
    with pytest.raises(estargz.FormatError, match="cannot decompress"):
        convert_image(tmp_path / "src", tmp_path / "out", format=fmt)
    other = gzip.compress(layer_tar(APP))
    layout.layers[sha256(other)], layout.diff_ids[sha256(other)] = APP, sha256(tar)
    layout.tag((layout.image([layout.blob(other, LAYER_TYPES["gzip"])]), "wrong-diff-id"))
    with pytest.raises(estargz.VerificationError, match="diffID"):
        convert_image(tmp_path / "src", tmp_path / "out", format=fmt)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


@pytest.mark.interop
@pytest.mark.parametrize("fmt", list(PLAIN))
def test_skopeo_copies_plain_layouts(tmp_path: Path, skopeo: Path, fmt: str) -> None:
    source = two_platform_layout(tmp_path / "src")
    convert_image(tmp_path / "src", tmp_path / "out", format=fmt, platforms=["linux/amd64"])
    layers = check_plain_layout(tmp_path / "out", fmt, source)["linux/amd64"]

    def run(*args: str) -> str:
        proc = subprocess.run([str(skopeo), *args], capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    run("copy", "-q", "--preserve-digests", "--dest-oci-accept-uncompressed-layers",
        f"oci:{tmp_path / 'out'}:amd64-only", f"oci:{tmp_path / 'copy'}:amd64-only")
    inspected = json.loads(run("inspect", f"oci:{tmp_path / 'copy'}:amd64-only"))
    assert inspected["Layers"] == [layer["digest"] for layer in layers]
    raw = json.loads(run("inspect", "--raw", f"oci:{tmp_path / 'copy'}:amd64-only"))
    assert [layer["mediaType"] for layer in raw["layers"]] == [PLAIN[fmt]] * len(layers)
    assert check_plain_layout(tmp_path / "copy", fmt, source)["linux/amd64"] == layers
