"""The exception family: every error estargz raises on bad input derives from EStargzError."""

from __future__ import annotations

__all__ = [
    "EStargzError",
    "FormatError",
    "VerificationError",
    "LimitError",
    "UnsupportedInputError",
    "NotFoundError",
    "RegistryError",
]


class EStargzError(Exception):
    """Base class of every error raised by estargz."""


class FormatError(EStargzError):
    """A blob, footer, TOC or tar stream is malformed."""


class VerificationError(EStargzError):
    """A digest or size does not match what the TOC or the caller promised."""


class LimitError(FormatError):
    """A value in the input is outside the bounds estargz accepts (hostile or corrupt input)."""


class UnsupportedInputError(EStargzError):
    """A well-formed input that estargz deliberately does not convert (e.g. sparse files)."""


class NotFoundError(EStargzError, KeyError):
    """A named entry or prioritized file does not exist."""

    def __str__(self) -> str:  # KeyError would add quotes around the message
        return str(self.args[0]) if self.args else ""


class RegistryError(EStargzError):
    """A registry could not be reached, refused access, or failed (``status``: the HTTP status, if any)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
