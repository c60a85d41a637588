"""Error types. Every message names the file or model it is about, because users run cutq over folders."""

from __future__ import annotations


class CutqError(Exception):
    """Base class: anything cutq reports to a user as a clean one-line error."""


class ImageError(CutqError, ValueError):
    """An input image that cannot be used (corrupt, truncated, empty, too large, unsupported)."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")


class ModelError(CutqError):
    """A model name that is unknown, a file that is not a usable U²-Net model, or a failed fetch."""


class ChecksumError(ModelError):
    """A model file whose bytes do not match the registry or manifest: truncated, corrupt or tampered."""


class OutputError(CutqError, OSError):
    """An output that cannot be written (unwritable folder, would overwrite an input)."""
