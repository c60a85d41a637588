"""A dependency-free progress bar for terminals (downloads and folders on small devices).

The `cutq` CLI passes a rich-based callback instead; both speak the same `ProgressFn` signature.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

ProgressFn = Callable[[int, int], None]
"""Called as `progress(done, total)`; `total` is 0 when unknown."""


class TextProgress:
    """Redraws one line on stderr, at most ten times a second; silent when stderr is not a terminal."""

    def __init__(self, label: str, unit: str = "", stream: TextIO | None = None) -> None:
        self.label = label
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty()
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if done < total and now - self._last < 0.1:
            return
        self._last = now
        if total:
            width = 30
            filled = int(width * done / total)
            bar = "#" * filled + "-" * (width - filled)
            text = f"\r{self.label} [{bar}] {100 * done // total:3d}% {_fmt(done, self.unit)}/{_fmt(total, self.unit)}"
        else:
            text = f"\r{self.label} {_fmt(done, self.unit)}"
        self.stream.write(text)
        if total and done >= total:
            self.stream.write("\n")
        self.stream.flush()


def _fmt(value: int, unit: str) -> str:
    if unit == "B":
        return f"{value / 1e6:.1f} MB"
    return str(value)
