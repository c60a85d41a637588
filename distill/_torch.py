"""The one place cutq imports torch, so a missing optional dependency is a clear message, not a traceback."""

from __future__ import annotations

import importlib
from types import ModuleType

from cutq_runtime.errors import CutqError

TRAIN_EXTRA_HINT = "fine-tuning needs torch: pip install 'cutq[train]' (installs torch==2.13.0, the CPU build)"


def require_torch() -> ModuleType:
    """Return the torch module, or raise `CutqError` telling the user which extra to install."""
    try:
        return importlib.import_module("torch")
    except ImportError as exc:
        raise CutqError(TRAIN_EXTRA_HINT) from exc
