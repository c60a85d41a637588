"""Pipeline step: accuracy-aware search for the fewest float nodes that reach the target fidelity.

Greedy: quantize everything, then while the masks on the search images are below the target SSIM,
rank the still-quantized Convs by sensitivity and move the worst one to float. The search images are
the calibration images; the verification images are kept for the final, honest measurement.
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
    max_float_nodes: int = 12
    probe_images: int = 3


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
    current = quantized
    fidelity = verify.compare(expected, verify.masks(verify.session_for(current), images))
    chosen: list[FloatNode] = []
    if on_step:
        on_step(0, fidelity)
    while fidelity.ssim_min < config.target_ssim and len(chosen) < config.max_float_nodes:
        ranking = sensitivity.rank(reference, current, images[: config.probe_images], skip=[c.node for c in chosen])
        if not ranking:
            break
        worst = ranking[0]
        current = mixed.keep_float(quantized, reference, [c.node for c in chosen] + [worst.node])
        after = verify.compare(expected, verify.masks(verify.session_for(current), images))
        chosen.append(FloatNode(worst.node, worst.drop_db, fidelity.ssim_min, after.ssim_min))
        fidelity = after
        if on_step:
            on_step(len(chosen), fidelity)
    return SearchResult(current, tuple(chosen), fidelity, fidelity.ssim_min >= config.target_ssim)
