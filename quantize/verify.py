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

# Kernels that do not saturate reproduce the exact arithmetic up to requantization rounding (mask SSIM 0.99 and
# above), saturating ones fall far below: 0.98 keeps a margin on both sides.
PORTABLE_SSIM = 0.98


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
                disabled_optimizers: Sequence[str] = (), arena: bool = True, exact: bool = False) -> ort.InferenceSession:
    """An in-memory session; `threads=None` uses every core.

    `exact=True` disables every graph optimization: each DequantizeLinear -> float Conv -> QuantizeLinear
    runs as written, which is the quantized model's own arithmetic on any CPU, where the optimized session
    fuses them into the host's integer kernels.

    `arena=False` for callers that keep many outputs alive across sessions (the prune's refit): ONNX Runtime's
    CPU arena would hold on to the memory of every output kept.
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = arena
    if threads:
        options.intra_op_num_threads = threads
    if exact:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
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


@dataclass(frozen=True)
class Portability:
    """The integer kernels' masks against the same file's exact quantized arithmetic, on this host.

    They agree (up to the kernels' own rounding of each requantization) when no product sum saturates; a
    variant that saturates here departs from its own arithmetic, and would depart on other CPUs too."""

    ssim_min: float
    max_abs: float  # largest mask difference, 0..1
    portable: bool


def portability(model: onnx.ModelProto, tensors: Sequence[np.ndarray], kernels: Sequence[np.ndarray] | None = None,
                disabled_optimizers: Sequence[str] = (), min_ssim: float = PORTABLE_SSIM) -> Portability:
    """Compare the kernels' masks (`kernels`, computed here when not given) with the exact arithmetic's."""
    if kernels is None:
        kernels = masks(session_for(model, disabled_optimizers=disabled_optimizers), tensors)
    exact = masks(session_for(model, exact=True), tensors)
    agreement = compare(exact, kernels)
    worst = max(float(np.abs(a - b).max()) for a, b in zip(exact, kernels, strict=True))
    return Portability(agreement.ssim_min, worst, agreement.ssim_min >= min_ssim)
