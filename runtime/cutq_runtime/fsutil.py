"""Atomic file writes and hashing.

Everything cutq writes (cut-outs, downloaded models, variants) goes through `atomic_writer`, so an
interrupted run never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

_CHUNK = 1 << 20
NAME_MAX = 255  # bytes in one file name on Linux, macOS and Windows file systems
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def temp_prefix(name: str, room: int) -> str:
    """`.name`, the start of a temp file's name beside `name`, or a hash of it when `room` more bytes would pass
    the file-name limit: an output named near 255 bytes must not fail for its temp file's sake."""
    raw = os.fsencode(name)  # the bytes on disk: a name that is not valid UTF-8 round-trips through surrogates
    if len(raw) + 1 + room <= NAME_MAX:
        return f".{name}"
    return f".{hashlib.sha256(raw).hexdigest()[:16]}"


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open a temp file beside `path`; rename it over `path` only if the block finishes without error."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(target.name, 14) + ".", suffix=".part", dir=target.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; results should get the usual permissions
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_writer(path) as handle:
        handle.write(data)


def file_digest(path: str | os.PathLike[str], algorithm: str = "md5") -> str:
    """Hex digest of a file, read in chunks so a 176 MB model does not sit in memory twice."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
