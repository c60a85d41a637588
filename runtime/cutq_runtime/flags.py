"""Library messages name settings; command lines name flags. This module maps one to the other.

A library message writes a setting as its Python name in backticks (`max_pixels`), which is what a caller of the
API passes. A command line shows the message through `for_cli`, which puts the flag in its place (--max-pixels).
Settings a command has no flag for keep their Python name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# The flags both `cutq remove` and `python -m cutq_runtime remove` spell this way.
RUNTIME_FLAGS: Mapping[str, str] = {
    "out": "--out",
    "out_dir": "--out-dir",
    "bgcolor": "--bgcolor",
    "max_pixels": "--max-pixels",
    "max_bytes": "--max-bytes",
    "workers": "--workers",
    "strict_cpu": "--strict-cpu",
}

_SETTING = re.compile(r"`([A-Za-z_][A-Za-z0-9_.]*)`")


def for_cli(message: str, flags: Mapping[str, str] = RUNTIME_FLAGS) -> str:
    """`message` with each backticked setting that has a flag in `flags` replaced by that flag."""
    return _SETTING.sub(lambda match: flags.get(match.group(1), match.group(0)), message)
