"""Go's JSON conventions: string literals as encoding/json and json-iterator write them, and
RFC 3339 times as ``time.Time`` formats and parses them.

Both escape ``"`` and ``\\``, write ``\\n``, ``\\r``, ``\\t`` short, every other control character as
``\\u00XX`` (lowercase hex), HTML-escape ``<``, ``>``, ``&``, escape U+2028/U+2029, and replace each
byte of invalid UTF-8 with ``\\ufffd``; DEL and all other characters are written raw. Go >= 1.22's
encoding/json writes backspace and form feed as ``\\b``/``\\f``; json-iterator and older Go write
``\\u0008``/``\\u000c``.

Strings decoded with ``surrogateescape`` carry invalid bytes as lone surrogates; each becomes
``\\ufffd``, as Go does for each invalid byte.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from .errors import FormatError, LimitError

__all__ = ["quote", "go_escape_dumped", "decode_value", "raw_decode_strict", "Time", "format_rfc3339nano",
           "parse_rfc3339"]

_SPECIAL = re.compile('["\\\\\x00-\x1f<>&\u2028\u2029\ud800-\udfff]')
#: What Go escapes and Python's ``json.dumps(..., ensure_ascii=False)`` writes raw.
_HTML_AND_SEPARATORS = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                        "\u2028": "\\u2028", "\u2029": "\\u2029"}
_RAW_AFTER_DUMPS = re.compile("[<>&\u2028\u2029\ud800-\udfff]")
#: Go writes each byte of invalid UTF-8 (a lone surrogate here) as this escape.
_INVALID = "\\ufffd"
#: The whitespace JSON allows around values.
_JSON_SPACE = " \t\r\n"
_TIME = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})"
                   r"(?:[.,]([0-9]+))?(Z|[+-][0-9]{2}:[0-9]{2})")

Time = tuple[int, int]
"""A point in time as (seconds since the Unix epoch, nanoseconds in [0, 1e9))."""


def _table(short_bf: bool) -> dict[str, str]:
    table = {chr(c): f"\\u{c:04x}" for c in range(0x20)}
    table.update({"\n": "\\n", "\r": "\\r", "\t": "\\t", '"': '\\"', "\\": "\\\\"})
    table.update(_HTML_AND_SEPARATORS)
    if short_bf:
        table.update({"\b": "\\b", "\f": "\\f"})
    return table


_LONG, _SHORT = _table(False), _table(True)


def _replacer(table: dict[str, str]) -> Callable[[re.Match[str]], str]:
    def replace(match: re.Match[str]) -> str:
        return table.get(match.group(), _INVALID)
    return replace


_REPLACE_LONG, _REPLACE_SHORT = _replacer(_LONG), _replacer(_SHORT)
_REPLACE_DUMPED = _replacer(_HTML_AND_SEPARATORS)


def quote(text: str, *, short_bf: bool = False) -> str:
    """``text`` as a Go JSON string literal, quotes included.

    ``short_bf`` selects Go >= 1.22 encoding/json (``\\b``, ``\\f``); the default matches
    json-iterator and Go <= 1.21 (``\\u0008``, ``\\u000c``).
    """
    return '"' + _SPECIAL.sub(_REPLACE_SHORT if short_bf else _REPLACE_LONG, text) + '"'


def go_escape_dumped(text: str) -> str:
    """Python ``json.dumps(..., ensure_ascii=False)`` output as Go's encoding/json writes it (with
    ``\\b``/``\\f`` short, as Go >= 1.22 and Python do): HTML characters and U+2028/U+2029
    escaped, each lone surrogate as ``\\ufffd``."""
    if text.isascii() and "<" not in text and ">" not in text and "&" not in text:
        return text
    return _RAW_AFTER_DUMPS.sub(_REPLACE_DUMPED, text)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
#: ``raw_decode`` of a decoder as strict as :func:`decode_value`: the value at a position and the
#: position after it.
raw_decode_strict = _DECODER.raw_decode


def decode_value(text: str) -> tuple[Any, str]:
    """The JSON value ``text`` starts with (after whitespace), decoded as strictly as Go does
    (``NaN`` and ``Infinity`` refused), and the rest of ``text`` without whitespace, which a
    caller wanting one value alone requires to be empty. ValueError or RecursionError when
    there is no valid JSON value."""
    start = len(text) - len(text.lstrip(_JSON_SPACE))
    value, end = _DECODER.raw_decode(text, start)
    return value, text[end:].strip(_JSON_SPACE)


# --- RFC 3339 times ------------------------------------------------------------------------------


def _civil_from_days(days: int) -> tuple[int, int, int]:
    """(year, month, day) of a day count since 1970-01-01, proleptic Gregorian (H. Hinnant)."""
    days += 719468
    era, doe = divmod(days, 146097)
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


def _days_from_civil(year: int, month: int, day: int) -> int:
    year -= month <= 2
    era, yoe = divmod(year, 400)
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _days_in_month(year: int, month: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def format_rfc3339nano(seconds: int, nanos: int = 0) -> str:
    """Go ``t.UTC().Format(time.RFC3339Nano)`` (also its JSON form, without quotes).

    The fraction appears only when ``nanos`` is not 0, trailing zeros trimmed. Years outside
    0..9999 raise :class:`LimitError`, as Go's MarshalJSON fails on them.
    """
    extra, nanos = divmod(nanos, 1_000_000_000)
    days, clock = divmod(seconds + extra, 86400)
    year, month, day = _civil_from_days(days)
    if not 0 <= year <= 9999:
        raise LimitError(f"time {seconds}s is outside years 0..9999")
    hour, rest = divmod(clock, 3600)
    fraction = "." + f"{nanos:09d}".rstrip("0") if nanos else ""
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{rest // 60:02d}:{rest % 60:02d}{fraction}Z"


def parse_rfc3339(text: str) -> Time:
    """Parse a time as Go's ``time.Parse(time.RFC3339, text)`` does, into UTC (seconds, nanos).

    Fractional seconds of any length are accepted (truncated to nanoseconds), zones ``Z`` or
    ``+hh:mm``/``-hh:mm``. Raises :class:`FormatError` otherwise.
    """
    match = _TIME.fullmatch(text)
    if not match:
        raise FormatError(f"invalid RFC 3339 time {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    if not (1 <= month <= 12 and 1 <= day <= _days_in_month(year, month)
            and hour < 24 and minute < 60 and second < 60):
        raise FormatError(f"RFC 3339 time {text!r} out of range")
    nanos = int((match.group(7) or "")[:9].ljust(9, "0"))
    zone = match.group(8)
    offset = 0
    if zone != "Z":
        zone_hours, zone_minutes = int(zone[1:3]), int(zone[4:6])
        if zone_hours > 24 or zone_minutes > 59:  # Go accepts up to +24:00
            raise FormatError(f"RFC 3339 time {text!r}: bad zone offset")
        offset = (zone_hours * 3600 + zone_minutes * 60) * (-1 if zone[0] == "-" else 1)
    days = _days_from_civil(year, month, day)
    return days * 86400 + hour * 3600 + minute * 60 + second - offset, nanos
