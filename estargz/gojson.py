"""Go-compatible JSON string literals, as written by encoding/json and json-iterator.

Both escape ``"`` and ``\\``, write ``\\n``, ``\\r``, ``\\t`` short, every other control character as
``\\u00XX`` (lowercase hex), HTML-escape ``<``, ``>``, ``&``, escape U+2028/U+2029, and replace each
byte of invalid UTF-8 with ``\\ufffd``; DEL and all other characters are written raw. Go >= 1.22's
encoding/json writes backspace and form feed as ``\\b``/``\\f``; json-iterator and older Go write
``\\u0008``/``\\u000c``.

Strings decoded with ``surrogateescape`` carry invalid bytes as lone surrogates; each becomes
``\\ufffd``, as Go does for each invalid byte.
"""

from __future__ import annotations

import re

__all__ = ["quote"]

_SPECIAL = re.compile('["\\\\\x00-\x1f<>&\u2028\u2029\ud800-\udfff]')


def _table(short_bf: bool) -> dict[str, str]:
    table = {chr(c): f"\\u{c:04x}" for c in range(0x20)}
    table.update({"\n": "\\n", "\r": "\\r", "\t": "\\t", '"': '\\"', "\\": "\\\\",
                  "<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                  "\u2028": "\\u2028", "\u2029": "\\u2029"})
    if short_bf:
        table.update({"\b": "\\b", "\f": "\\f"})
    return table


_LONG, _SHORT = _table(False), _table(True)


def _replacer(table: dict[str, str]):  # noqa: ANN202 - a re.sub callback
    def replace(match: re.Match[str]) -> str:
        return table.get(match.group(), "\\ufffd")  # lone surrogates: invalid UTF-8
    return replace


_REPLACE_LONG, _REPLACE_SHORT = _replacer(_LONG), _replacer(_SHORT)


def quote(text: str, *, short_bf: bool = False) -> str:
    """``text`` as a Go JSON string literal, quotes included.

    ``short_bf`` selects Go >= 1.22 encoding/json (``\\b``, ``\\f``); the default matches
    json-iterator and Go <= 1.21 (``\\u0008``, ``\\u000c``).
    """
    return '"' + _SPECIAL.sub(_REPLACE_SHORT if short_bf else _REPLACE_LONG, text) + '"'
