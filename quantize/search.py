"""Pipeline step: accuracy-aware search for the fewest float nodes that reach the target fidelity.

Greedy: quantize everything; while the masks on the search images are below the target SSIM, rank the
still-quantized Convs by sensitivity (cheap), try the top few in float for real (SSIM of the masks), and
keep the one that helps most. Stop at the target, or when no candidate improves the worst image, so no
node is left in float (and slow) for nothing. The search images are the calibration images; the
verification images are kept for the final, honest measurement.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from . import mixed, sensitivity, verify


@dataclass(frozen=True)
class SearchConfig:
    """Stop when the worst search image reaches `target_ssim`, or after `max_float_nodes` nodes."""

    target_ssim: float = 0.98
    max_float_nodes: int = 8
    probe_images: int = 3
    candidates: int = 4
    min_gain: float = 0.002


@dataclass(frozen=True)
class FloatNode:
    """A node kept in float, with the evidence for it."""

    node: str
    drop_db: float
    ssim_min_before: float
    ssim_min_after: float


@dataclass(frozen=True)
class SearchResult:
    model: onnx.ModelProto
    float_nodes: tuple[FloatNode, ...]
    fidelity: verify.Fidelity  # on the search images
    reached: bool


def search(reference: onnx.ModelProto, quantized: onnx.ModelProto, images: Sequence[np.ndarray],
           config: SearchConfig | None = None,
           on_step: Callable[[int, verify.Fidelity], None] | None = None) -> SearchResult:
    """Keep the fewest Convs in float that bring the search images' SSIM min to the target."""
    config = config or SearchConfig()
    expected = verify.masks(verify.session_for(reference), images)

    def measure(model: onnx.ModelProto) -> verify.Fidelity:
        return verify.compare(expected, verify.masks(verify.session_for(model), images))

    probe = sensitivity.Probe(reference, images[: config.probe_images])
    current, fidelity = quantized, measure(quantized)
    chosen: list[FloatNode] = []
    if on_step:
        on_step(0, fidelity)
    while fidelity.ssim_min < config.target_ssim and len(chosen) < config.max_float_nodes:
        names = [c.node for c in chosen]
        ranking = sensitivity.rank(probe, current, skip=names)
        trials = []
        for candidate in ranking[: config.candidates]:
            model = mixed.keep_float(quantized, reference, [*names, candidate.node])
            trials.append((measure(model), candidate, model))
        if not trials:
            break
        best, candidate, model = max(trials, key=lambda t: (t[0].ssim_min, t[0].ssim_mean))
        if best.ssim_min < fidelity.ssim_min + config.min_gain:
            break
        chosen.append(FloatNode(candidate.node, candidate.drop_db, fidelity.ssim_min, best.ssim_min))
        current, fidelity = model, best
        if on_step:
            on_step(len(chosen), fidelity)
    return SearchResult(current, tuple(chosen), fidelity, fidelity.ssim_min >= config.target_ssim)
