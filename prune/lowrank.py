"""Low-rank factorisation of U²-Net's wide Convs, where its parameters are.

Most of u2net's parameters sit in a few dozen 3x3 Convs of 256-1024 channels at 10x10 to 40x40; most of its
MACs sit in the Convs of narrow groups at 80x80 to 320x320. Removing channels is a poor way to shrink the wide
Convs: their output maps are highly redundant, but no single channel can go without losing what only it
carries. So the wide Convs keep every channel and are factored instead (Zhang et al. 2015, "Accelerating Very Deep Convolutional
Networks"): with P the top-r principal axes of the Conv's output Y over calibration photos and μ its mean,

    Y ≈ μ + P Pᵀ (Y − μ)   =   Conv1x1[P, μ]( Convkxk[Pᵀ W, Pᵀ (b − μ)](X) )

a kxk Conv to r channels, then a 1x1 Conv back to all of them, with C·Cin·k² weights becoming r·(Cin·k² + C).
Nothing is fitted by gradient descent; P comes from one eigendecomposition per Conv. The ranks are chosen
together: starting from the largest rank that saves anything, the rank that loses the least output variance
(as a fraction of each Conv's own) per parameter saved is lowered, 16 at a time, until the model has no more
than the parameters asked for.

This "output" method was `cutq prune`'s default until the separable factoring (`separable`) gave better masks
for fewer MACs; it stays reachable from Python (`LowRankConfig(method="output")`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from cutq_runtime.errors import CutqError

from .activations import capture
from .depgraph import conv_weights
from .pruner import replace_convs

METHODS = ("separable", "output")
UNREACHABLE = ("the requested ratio needs more parameters removed than factoring the wide Convs can give; "
               "raise `narrow_fraction` or lower `ratio`")


@dataclass(frozen=True)
class LowRankConfig:
    """How `cutq prune` factors a model that has a Conv of at least `min_weights` weights (u2net; u2netp has none
    and loses channels instead).

    Either way, `narrow_fraction` of the channels of every group narrower than `PruneConfig.narrow_below` are
    removed first (those Convs hold the MACs, and removing channels also shrinks the Resize, Concat and MaxPool
    work between them: a latency knob); None takes the method's default (`narrow`). Then, with `method`
    "separable" (the default, `separable.py`), every 3x3 Conv of at least `min_macs` MACs and at least
    `min_outputs` output channels becomes a 3x1 and a 1x3 Conv, all keeping the one share of their weights that
    meets the parameter ratio. With "output" (this module), Convs of at least `min_weights` weights that read no
    removed channel are factored by their outputs to meet the ratio; the output statistics are measured on up to
    `images` calibration photos: they are cheap (one forward pass each) and more photos gave better axes. Ranks
    are multiples of `multiple` either way (ONNX Runtime's INT8 Conv works on blocks of 16 channels).
    """

    narrow_fraction: float | None = None
    min_weights: int = 500_000
    multiple: int = 16
    images: int = 64
    method: str = "separable"
    min_macs: int = 100_000_000
    # Convs with fewer outputs stay whole. Factored Convs of 64 or fewer outputs are most of those `cutq quantize`
    # keeps in float (the 3x1 half feeds the 1x3 half through a signed map with a few very loud channels); left
    # whole (65) they cost MACs but need no float Conv, which pays once narrow channels are removed too.
    min_outputs: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise CutqError(f"factoring method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not 0 <= self.narrow < 1:
            raise CutqError(f"`narrow_fraction` must be in [0, 1), got {self.narrow_fraction}")
        if self.min_weights < 1 or self.multiple < 1 or self.images < 1:
            raise CutqError("low-rank minimum weights, rank multiple and photo count must be >= 1")
        if self.min_outputs < 0 or (self.min_outputs and self.method != "separable"):
            raise CutqError("`min_outputs` applies only to the separable method, and is >= 0")

    @property
    def narrow(self) -> float:
        """`narrow_fraction`, or the method's default: none for separable (its factoring costs the masks less than
        removing channels does), 0.2 for output (which cost nothing measurable there)."""
        if self.narrow_fraction is not None:
            return self.narrow_fraction
        return 0.0 if self.method == "separable" else 0.2


@dataclass(frozen=True)
class Spectrum:
    """A Conv output's mean and principal axes (columns of `axes`, by decreasing `variance`)."""

    mean: np.ndarray
    variance: np.ndarray
    axes: np.ndarray

    def lost(self, rank: int) -> float:
        """Fraction of the output variance outside the top `rank` axes."""
        total = float(self.variance.sum())
        return float(self.variance[rank:].sum() / total) if total > 0 else 0.0


def spectra(source: onnx.ModelProto, outputs: Mapping[str, np.ndarray | None], tensors: Sequence[np.ndarray],
            progress: Callable[[str], None] = lambda message: None) -> dict[str, Spectrum]:
    """Conv name -> `Spectrum` of its output in `source` (only the channels in `outputs[name]`, all when None)."""
    produced = {n.name: n.output[0] for n in source.graph.node if n.op_type == "Conv"}
    sums: dict[str, np.ndarray] = {}
    products: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for i, values in enumerate(capture(source, [produced[name] for name in outputs], tensors), 1):
        progress(f"low-rank statistics: photo {i}/{len(tensors)}")
        for name, kept in outputs.items():
            y = values[produced[name]][0]
            y = (y if kept is None else y[kept]).reshape(len(y) if kept is None else len(kept), -1).astype(np.float64)
            sums[name] = sums.get(name, 0.0) + y.sum(axis=1)
            products[name] = products.get(name, 0.0) + y @ y.T
            counts[name] = counts.get(name, 0) + y.shape[1]
    found = {}
    for name in outputs:
        mean = sums[name] / counts[name]
        variance, axes = np.linalg.eigh(products[name] / counts[name] - np.outer(mean, mean))
        found[name] = Spectrum(mean, np.maximum(variance[::-1], 0.0), np.ascontiguousarray(axes[:, ::-1]))
    return found


def allocate(shapes: Mapping[str, tuple[int, ...]], found: Mapping[str, Spectrum], excess: int,
             multiple: int) -> dict[str, int]:
    """Ranks for the Convs of `shapes` (weight shapes) that remove at least `excess` parameters, losing the least
    output variance per parameter; a Conv left out of the result is not factored. `CutqError` if it cannot."""

    def cost(name: str, rank: int) -> int:
        return _factored_size(shapes[name], rank)

    def full(name: str) -> int:
        return _size(shapes[name])

    ranks: dict[str, int] = {}
    top = {name: (full(name) // (cost(name, 1) - shapes[name][0])) // multiple * multiple for name in shapes}

    def size(name: str) -> int:  # parameters now: whole, or factored at its current rank
        return full(name) if name not in ranks else cost(name, ranks[name])

    def lower(name: str) -> int:  # the next rank down: the top one if not factored yet
        return top[name] if name not in ranks else ranks[name] - multiple

    def rate(name: str) -> float:  # variance lost per parameter saved by that step; inf if it saves nothing
        new = lower(name)
        gain = size(name) - cost(name, new) if new >= multiple else 0
        if gain <= 0:
            return np.inf
        return (found[name].lost(new) - (found[name].lost(ranks[name]) if name in ranks else 0.0)) / gain

    saved = 0
    while saved < excess:
        best = min(shapes, key=rate)
        if rate(best) == np.inf:
            raise CutqError(UNREACHABLE)
        before = size(best)
        ranks[best] = lower(best)
        saved += before - size(best)
    return dict(sorted(ranks.items()))


def most_saved(shapes: Mapping[str, tuple[int, ...]], multiple: int) -> int:
    """The most parameters `allocate` can remove from Convs of these weight shapes: each at the lowest rank."""
    return sum(max(0, _size(shape) - _factored_size(shape, multiple)) for shape in shapes.values())


def _size(shape: tuple[int, ...]) -> int:
    """Weights and biases of a Conv with this weight shape."""
    return int(np.prod(shape)) + shape[0]


def _factored_size(shape: tuple[int, ...], rank: int) -> int:
    """Weights and biases of the kxk Conv to `rank` channels and the 1x1 Conv back."""
    out, *rest = shape
    return rank * (int(np.prod(rest)) + out) + rank + out


def factor(model: onnx.ModelProto, found: Mapping[str, Spectrum], ranks: Mapping[str, int]) -> onnx.ModelProto:
    """A copy of `model` with each Conv of `ranks` replaced by a kxk Conv to its rank and a 1x1 Conv back.

    The kxk Conv keeps the node's name and attributes; the 1x1 Conv (`<name>.expand`) writes the original
    output tensor, so every consumer and any later step that looks for the tensor is unchanged."""
    weights = conv_weights(model)

    def build(node: onnx.NodeProto, rank: int) -> tuple[list[onnx.TensorProto], list[onnx.NodeProto]]:
        weight, bias = weights[node.name]
        spectrum = found[node.name]
        axes = spectrum.axes[:, :rank]
        bias = np.zeros(len(weight)) if bias is None else bias.astype(np.float64)
        reduce_w = np.einsum("cr,cikl->rikl", axes, weight.astype(np.float64))
        reduce_b = axes.T @ (bias - spectrum.mean)
        names = [f"{node.name}.{part}" for part in ("reduce.weight", "reduce.bias", "expand.weight", "expand.bias")]
        arrays = (reduce_w, reduce_b, axes[:, :, None, None], spectrum.mean)
        initializers = [numpy_helper.from_array(array.astype(np.float32), name)
                        for array, name in zip(arrays, names, strict=True)]
        reduced = f"{node.output[0]}.rank{rank}"
        reduce = helper.make_node("Conv", [node.input[0], names[0], names[1]], [reduced], name=node.name)
        reduce.attribute.extend(node.attribute)
        expand = helper.make_node("Conv", [reduced, names[2], names[3]], [node.output[0]], name=f"{node.name}.expand",
                                  kernel_shape=[1, 1])
        return initializers, [reduce, expand]

    return replace_convs(model, ranks, build)
