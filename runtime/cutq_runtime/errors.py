"""Error types. Every message names the file or model it is about, because users run cutq over folders."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator


class CutqError(Exception):
    """Base class: anything cutq reports to a user as a clean one-line error."""


class ImageError(CutqError, ValueError):
    """An input image that cannot be used (corrupt, truncated, empty, too large, unsupported).

    `kind` says which, so a server can answer with the right status: "empty", "corrupt", "not_image",
    "unsupported" or "too_large"."""

    def __init__(self, source: str, reason: str, kind: str = "corrupt") -> None:
        self.source = source
        self.reason = reason
        self.kind = kind
        super().__init__(f"{source}: {reason}")


class ModelError(CutqError):
    """A model name that is unknown, a file that is not a usable U²-Net model, or a failed fetch."""


class ChecksumError(ModelError):
    """A model file whose bytes do not match the registry or manifest: truncated, corrupt or tampered."""


class OutputError(CutqError, OSError):
    """An output that cannot be written (unwritable folder, would overwrite an input)."""


class CutqWarning(UserWarning):
    """Something that still runs but may give wrong results, e.g. a variant whose integer kernels are not
    exact on this CPU. A class of its own so callers can filter it or turn it into an error."""


@contextlib.contextmanager
def shown_warnings(show: Callable[[str], None]) -> Iterator[None]:
    """Print each `CutqWarning` raised inside as one clean line through `show`; other warnings as Python would.

    Python's default filters still decide what is shown (`-W ignore::...` silences it), so a model load warns
    once, without the source line Python's own format adds."""
    with warnings.catch_warnings(record=True) as caught:
        yield
    for item in caught:
        if issubclass(item.category, CutqWarning):
            show(str(item.message))
        else:
            warnings.showwarning(item.message, item.category, item.filename, item.lineno, item.file, item.line)
