"""Pipeline step: accuracy-aware search for the fewest float nodes that reach the target fidelity.

Greedy: quantize everything; while the masks on the search images are below the target SSIM, rank the
still-quantized Convs by sensitivity (cheap), try the top few in float for real (SSIM of the masks), and
keep the one with the best gain per cost, the cost being its share of the model's MACs (a float Conv at
full resolution can cost a tenth of the FP32 run time; a small one a fraction of a percent). The Convs
feeding the worst-ranked one are tried too: the error that shows at a Conv's output often enters at a
cheaper Conv upstream.
Stop at the target, or when no candidate improves the worst image, so no
node is left in float (and slow) for nothing. The search images are the calibration images; the
verification images are kept for the final, honest measurement.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from cutq import modelstats
from cutq_runtime.errors import CutqError

from . import mixed, sensitivity, verify


@dataclass(frozen=True)
class SearchConfig:
    """Stop when the worst search image reaches `target_ssim`, or after `max_float_nodes` nodes."""

    target_ssim: float = 0.98
    max_float_nodes: int = 8
    probe_images: int = 3
    candidates: int = 4
    min_gain: float = 0.002
    cost_floor: float = 0.01  # added to each node's MAC share, so near-free nodes are not favoured endlessly

    def __post_init__(self) -> None:
        if not 0 <= self.target_ssim <= 1 or self.max_float_nodes < 0:
            raise CutqError(f"`target_ssim` must be in [0, 1] and `max_float_nodes` >= 0, got {self.target_ssim} "
                            f"and {self.max_float_nodes}")


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
    float_mac_share: float  # share of the model's Conv MACs that run in float (head + chosen nodes)


def search(reference: onnx.ModelProto, quantized: onnx.ModelProto, images: Sequence[np.ndarray],
           config: SearchConfig | None = None,
           on_step: Callable[[int, verify.Fidelity], None] | None = None) -> SearchResult:
    """Keep the fewest Convs in float that bring the search images' SSIM min to the target."""
    config = config or SearchConfig()
    expected = verify.masks(verify.session_for(reference), images)

    def measure(model: onnx.ModelProto) -> verify.Fidelity:
        return verify.compare(expected, verify.masks(verify.session_for(model), images))

    probe = sensitivity.Probe(reference, images[: config.probe_images])
    macs = modelstats.macs_by_conv(reference, _input_shape(reference))
    total = sum(macs.values()) or 1
    current, fidelity = quantized, measure(quantized)
    chosen: list[FloatNode] = []
    if on_step:
        on_step(0, fidelity)
    while fidelity.ssim_min < config.target_ssim and len(chosen) < config.max_float_nodes:
        names = [c.node for c in chosen]
        ranking = sensitivity.rank(probe, current, skip=names)
        trials = []
        for candidate in _candidates(ranking, probe.feeding, config.candidates, names):
            model = mixed.keep_float(quantized, reference, [*names, candidate.node])
            trials.append((measure(model), candidate, model))
        if not trials:
            break
        useful = [t for t in trials if t[0].ssim_min >= fidelity.ssim_min + config.min_gain]
        if not useful:
            break
        best, candidate, model = max(useful, key=lambda t: (t[0].ssim_min - fidelity.ssim_min)
                                     / (macs.get(t[1].node, 0) / total + config.cost_floor))
        chosen.append(FloatNode(candidate.node, candidate.drop_db, fidelity.ssim_min, best.ssim_min))
        current, fidelity = model, best
        if on_step:
            on_step(len(chosen), fidelity)
    share = sum(macs.get(n, 0) for n in mixed.float_nodes(current)) / total
    return SearchResult(current, tuple(chosen), fidelity, fidelity.ssim_min >= config.target_ssim, share)


def _input_shape(model: onnx.ModelProto) -> tuple[int, ...]:
    """The model's fixed input shape; U²-Net's 1x3x320x320 where a dimension is symbolic."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    fallback = (1, 3, 320, 320)
    if len(dims) != len(fallback):
        return fallback
    return tuple(d.dim_value if d.dim_value > 0 else f for d, f in zip(dims, fallback, strict=True))


def _candidates(ranking: Sequence[sensitivity.NodeSensitivity], feeding: dict[str, set[str]], count: int,
                skip: Sequence[str]) -> list[sensitivity.NodeSensitivity]:
    """The `count` worst-ranked Convs, then the Convs feeding the worst one."""
    chosen = list(ranking[:count])
    if chosen:
        by_name = {r.node: r for r in ranking}
        upstream = sorted(feeding.get(chosen[0].node, set()) - set(skip) - {r.node for r in chosen})
        chosen += [by_name[n] for n in upstream if n in by_name]
    return chosen
