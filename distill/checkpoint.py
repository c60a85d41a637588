"""Checkpoints that make a long fine-tune resumable, and the fingerprint that says whether one still applies.

A checkpoint holds the trainable weights (by initializer name), the optimizer state, the epochs done and the
losses so far. It is written after every epoch through a temp file and a rename, so an interrupted run leaves
either the previous checkpoint or the new one, never half of one. It is only resumed when its fingerprint
(student, teacher, images and every setting that changes the numbers) matches the current run's.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from cutq_runtime.errors import OutputError
from cutq_runtime.fsutil import atomic_write_bytes

from ._torch import require_torch

FORMAT = 1


def fingerprint(student: onnx.ModelProto, teacher: onnx.ModelProto, images: Sequence[np.ndarray],
                settings: dict[str, Any]) -> str:
    """sha256 over both models' bytes, every image tensor and the settings that affect the trained weights."""
    digest = hashlib.sha256(f"cutq-distill-{FORMAT}".encode())
    for model in (student, teacher):
        digest.update(hashlib.sha256(model.SerializeToString(deterministic=True)).digest())
    for image in images:
        digest.update(str((image.dtype.str, image.shape)).encode() + np.ascontiguousarray(image).tobytes())
    digest.update(repr(sorted(settings.items())).encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class Checkpoint:
    fingerprint: str
    epochs_done: int
    weights: dict[str, Any]  # initializer name -> torch.Tensor
    optimizer: dict[str, Any]
    epoch_losses: tuple[float, ...]


def save(path: Path, checkpoint: Checkpoint) -> None:
    """Write atomically: the previous checkpoint stays intact until the new one is complete."""
    torch = require_torch()
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "fingerprint": checkpoint.fingerprint, "epochs_done": checkpoint.epochs_done,
                "weights": checkpoint.weights, "optimizer": checkpoint.optimizer,
                "epoch_losses": list(checkpoint.epoch_losses)}, buffer)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as exc:
        raise OutputError(f"{path}: cannot write checkpoint ({exc.strerror or exc})") from exc


def load(path: Path) -> tuple[Checkpoint | None, str | None]:
    """(checkpoint, None), or (None, why it cannot be used) for a missing, unreadable or foreign file."""
    if not path.exists():
        return None, None
    torch = require_torch()
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file  # noqa: BLE001
        return None, f"{path}: not a readable checkpoint ({exc.__class__.__name__}); starting over"
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        return None, f"{path}: not a cutq fine-tune checkpoint; starting over"
    return Checkpoint(raw["fingerprint"], int(raw["epochs_done"]), raw["weights"], raw["optimizer"],
                      tuple(float(v) for v in raw["epoch_losses"])), None
