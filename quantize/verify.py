"""Pipeline step: verification, i.e. how close a variant's masks are to the FP32 model's.

Masks are compared as the runtime serves them before resizing: the fused output, min-max normalised,
at model resolution (320x320). The verification images never overlap the calibration images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from cutq import metrics
from cutq_runtime.postprocess import normalize


@dataclass(frozen=True)
class Fidelity:
    """Mask agreement with FP32 over the verification set."""

    ssim_min: float
    ssim_mean: float
    mae_mean: float
    ssim_per_image: tuple[float, ...]

    def meets(self, target_ssim: float) -> bool:
        return self.ssim_min >= target_ssim


def session_for(model: onnx.ModelProto, threads: int | None = None,
                disabled_optimizers: Sequence[str] = (), arena: bool = True) -> ort.InferenceSession:
    """An in-memory session; `threads=None` uses every core.

    `arena=False` for callers that keep many outputs alive across sessions (the prune's refit): with ONNX
    Runtime's CPU arena, pruning u2net with 64 calibration photos peaked at 11.3 GB, without it at 7.6 GB.
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = arena
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(disabled_optimizers) or None)


def masks(session: ort.InferenceSession, tensors: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Normalised fused masks for each input tensor."""
    name = session.get_inputs()[0].name
    output = session.get_outputs()[0].name
    return [normalize(session.run([output], {name: t})[0]) for t in tensors]


def compare(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> Fidelity:
    """SSIM (min, mean) and MAE of candidate masks against reference masks, image by image."""
    scores = tuple(metrics.ssim(r, c) for r, c in zip(reference, candidate, strict=True))
    errors = [metrics.mae(r, c) for r, c in zip(reference, candidate, strict=True)]
    return Fidelity(min(scores), float(np.mean(scores)), float(np.mean(errors)), scores)
