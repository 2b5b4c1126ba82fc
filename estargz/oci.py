"""OCI and Docker image media types, and platforms: parse ``os/arch[/variant]``, match descriptors."""

from __future__ import annotations

import platform as _platform
from collections.abc import Mapping
from typing import Any, NamedTuple

__all__ = [
    "OCI_MANIFEST_MEDIA_TYPE", "OCI_INDEX_MEDIA_TYPE", "OCI_CONFIG_MEDIA_TYPE", "OCI_LAYER_MEDIA_TYPE",
    "GZIP_LAYER_MEDIA_TYPE", "ZSTD_LAYER_MEDIA_TYPE", "DOCKER_MANIFEST_MEDIA_TYPE",
    "DOCKER_MANIFEST_LIST_MEDIA_TYPE", "DOCKER_CONFIG_MEDIA_TYPE", "IMAGE_MANIFEST_MEDIA_TYPES",
    "INDEX_MEDIA_TYPES", "CONFIG_MEDIA_TYPES", "LAYER_MEDIA_TYPES", "Platform", "parse_platform",
    "platform_matches", "platform_text", "default_platform",
]

OCI_MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
GZIP_LAYER_MEDIA_TYPE = OCI_LAYER_MEDIA_TYPE + "+gzip"
ZSTD_LAYER_MEDIA_TYPE = OCI_LAYER_MEDIA_TYPE + "+zstd"
DOCKER_MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
_DOCKER_LAYER_MEDIA_TYPE = "application/vnd.docker.image.rootfs.diff.tar"

IMAGE_MANIFEST_MEDIA_TYPES = (OCI_MANIFEST_MEDIA_TYPE, DOCKER_MANIFEST_MEDIA_TYPE)
INDEX_MEDIA_TYPES = (OCI_INDEX_MEDIA_TYPE, DOCKER_MANIFEST_LIST_MEDIA_TYPE)
CONFIG_MEDIA_TYPES = (OCI_CONFIG_MEDIA_TYPE, DOCKER_CONFIG_MEDIA_TYPE)
#: Layer media types of source images, and the OCI type each stands for.
LAYER_MEDIA_TYPES = {
    OCI_LAYER_MEDIA_TYPE: OCI_LAYER_MEDIA_TYPE,
    GZIP_LAYER_MEDIA_TYPE: GZIP_LAYER_MEDIA_TYPE,
    ZSTD_LAYER_MEDIA_TYPE: ZSTD_LAYER_MEDIA_TYPE,
    _DOCKER_LAYER_MEDIA_TYPE: OCI_LAYER_MEDIA_TYPE,
    _DOCKER_LAYER_MEDIA_TYPE + ".gzip": GZIP_LAYER_MEDIA_TYPE,
}

#: ``platform.machine()`` names in OCI spelling (architecture, and variant where one is implied).
_ARCHITECTURES = {
    "x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm/v7",
    "armv6l": "arm/v6", "i386": "386", "i686": "386", "ppc64le": "ppc64le", "s390x": "s390x",
    "riscv64": "riscv64",
}
#: The variant an architecture has when a descriptor names none.
_DEFAULT_VARIANTS = {"arm64": "v8"}


class Platform(NamedTuple):
    """A wanted platform: ``variant`` None matches every variant of the architecture."""

    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        return "/".join(part for part in self if part)


def parse_platform(text: str) -> Platform:
    """``os/arch[/variant]`` as a :class:`Platform`; ValueError for anything else."""
    parts = text.split("/") if isinstance(text, str) else []
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"invalid platform {text!r} (expected os/arch[/variant])")
    return Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


def _variant(architecture: str, variant: object) -> object:
    return variant or _DEFAULT_VARIANTS.get(architecture)


def platform_matches(platform: Mapping[str, Any] | None, wanted: Platform) -> bool:
    """Whether a descriptor's or config's ``platform`` object is ``wanted``; an arm64 platform
    without a variant is v8."""
    if not platform or platform.get("os") != wanted.os or platform.get("architecture") != wanted.architecture:
        return False
    return wanted.variant is None or (
        _variant(wanted.architecture, platform.get("variant")) == _variant(wanted.architecture, wanted.variant))


def platform_text(platform: Mapping[str, Any]) -> str:
    """``os/arch[/variant]`` of a platform object, ``?`` standing for an absent os or arch."""
    parts = [str(platform.get("os", "?")), str(platform.get("architecture", "?"))]
    return "/".join(parts + ([str(platform["variant"])] if platform.get("variant") else []))


def default_platform() -> str:
    """``linux/<this machine's architecture>`` in OCI spelling, e.g. ``linux/amd64``."""
    machine = _platform.machine().lower()
    return "linux/" + _ARCHITECTURES.get(machine, machine)
