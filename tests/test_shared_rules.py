"""The rules shared by several modules (digests, platforms, Go's JSON) hold alike wherever they apply."""

from __future__ import annotations

import hashlib
import importlib.resources
from typing import Any

import pytest

import estargz
from estargz.cstoc import decode_cs_toc
from estargz.digests import digest_of, is_digest, split_digest
from estargz.errors import FormatError, UnsupportedInputError
from estargz.gojson import decode_value
from estargz.oci import parse_platform, platform_matches
from estargz.toc import TOCEntry, decode_toc, encode_toc

SHA384 = "sha384:" + hashlib.sha384(b"layer").hexdigest()


def test_a_sha384_digest_is_taken_wherever_digests_are() -> None:
    assert estargz.parse_reference(f"127.0.0.1:5000/app@{SHA384}").digest == SHA384
    toc = ('{"version":1,"entries":[{"type":"reg","name":"a","digest":"%s"}]}' % SHA384).encode()
    assert decode_cs_toc(toc)[1][0].digest == SHA384
    assert split_digest(SHA384) == ("sha384", SHA384.partition(":")[2])
    assert digest_of(b"layer", "sha384") == SHA384


@pytest.mark.parametrize("value, error", [
    ("md5:" + "0" * 32, UnsupportedInputError),
    ("sha256:XYZ", FormatError),
    ("sha256:" + "A" * 64, FormatError),
    ("sha512:" + "0" * 64, FormatError),
    ("sha256", FormatError),
    (None, FormatError),
])
def test_what_is_not_a_digest_is_refused(value: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        split_digest(value)
    assert not is_digest(value)
    if isinstance(value, str):
        with pytest.raises(ValueError, match="invalid digest"):
            estargz.parse_reference(f"127.0.0.1:5000/app@{value}")


@pytest.mark.parametrize("platform, wanted, expected", [
    ({"os": "linux", "architecture": "arm64"}, "linux/arm64/v8", True),
    ({"os": "linux", "architecture": "arm64", "variant": "v8"}, "linux/arm64", True),
    ({"os": "linux", "architecture": "arm", "variant": "v7"}, "linux/arm", True),
    ({"os": "linux", "architecture": "arm", "variant": "v6"}, "linux/arm/v7", False),
    ({"os": "linux", "architecture": "arm"}, "linux/arm/v7", False),
    ({"os": "linux", "architecture": "amd64"}, "linux/arm64", False),
    ({"os": "windows", "architecture": "amd64"}, "linux/amd64", False),
    (None, "linux/amd64", False),
])
def test_platforms_match_as_registries_and_layouts_expect(platform: dict[str, Any] | None, wanted: str,
                                                          expected: bool) -> None:
    assert platform_matches(platform, parse_platform(wanted)) is expected


@pytest.mark.parametrize("text", ["linux", "linux/", "/amd64", "linux/arm/v7/extra", ""])
def test_a_platform_that_is_not_os_arch_variant_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="invalid platform"):
        parse_platform(text)


def test_toc_names_with_lone_surrogates_are_written_as_go_writes_invalid_utf8() -> None:
    data = encode_toc([TOCEntry(name="a\ud800<", type="reg")])
    assert b'"name": "a\\ufffd\\u003c"' in data
    assert decode_toc(data)[1][0].name == "a\ufffd<"


def test_go_json_values_are_decoded_strictly() -> None:
    assert decode_value(' {"a": [1, "x"]}\n x ') == ({"a": [1, "x"]}, "x")
    for text in ("NaN", "[Infinity]", "-Infinity", ""):
        with pytest.raises(ValueError):
            decode_value(text)


def test_the_package_ships_its_type_hints() -> None:
    assert importlib.resources.files("estargz").joinpath("py.typed").is_file()
