"""Pipeline step: activation range equalization, moving outlier channel ranges into the next Convs' weights.

U²-Net's activations are quantized per tensor, so one channel with a large range sets the step size for
all the others. In u2netp's last decoder block the upsampled branch reaches 44 while the skip branch it is
concatenated with stays near 10, which leaves the skip branch two bits fewer. (A near-constant channel is
a different problem, handled before this step by `center`.) Relu, MaxPool, linear Resize, Concat and
residual Add are all positively homogeneous, so dividing a channel's producing filter (weights and bias)
by s and multiplying the matching input channel of every consuming Conv by s leaves the float model's
function unchanged while shrinking that channel's range s times (cross-layer equalization, Nagel et al.
2019, applied to activation ranges). The channels that move together are exactly the pruning groups, so
the dependency graph of `cutq.prune` is reused; groups that reach the model input or an output are left
alone.

Only outliers move: a channel is scaled down to `headroom` times the typical range around it, at most
`max_scale` times, because the consumers' weights grow by the same factor and their per-channel weight
scales are set by their largest weight. "Around it" is judged twice, among its group's channels and
among all channels of each tensor a consumer Conv reads it from (with its own, looser headroom), and the
larger scale wins. The second view matters at U²-Net's decoder Concats, where one branch can be several
times louder than the other one: it then sets the Concat's shared 8-bit step and the quiet branch loses
two or more bits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from cutq.prune.activations import capture
from cutq.prune.depgraph import DepGraph, Group, trace
from cutq_runtime.errors import CutqError, ModelError

from .graph import copy_model
from .verify import session_for

TOLERANCE = 1e-3
"""Largest output difference (relative to the output's range) the rescaled float model may show."""


@dataclass(frozen=True)
class EqualizeConfig:
    """Which channels count as outliers and how far they may be scaled."""

    enabled: bool = True
    quantile: float = 0.75  # a group's typical channel range is this quantile of its channel ranges
    headroom: float = 2.0  # channels above headroom x their group's typical range are scaled down to it
    # the same within each tensor a Conv reads; looser, because it scales whole branches of a Concat and
    # leaves the quiet branch less room on photos unlike the calibration ones (u2net does best with 2)
    tensor_headroom: float = 3.0
    max_scale: float = 8.0

    def __post_init__(self) -> None:
        if self.tensor_headroom < 1:
            raise CutqError(f"`tensor_headroom` must be >= 1, got {self.tensor_headroom}")


@dataclass(frozen=True)
class Scaled:
    """One equalized channel: the Convs producing it, its index in their output, range before and factor."""

    producers: tuple[str, ...]
    channel: int
    range_before: float
    scale: float


@dataclass(frozen=True)
class EqualizeReport:
    channels: tuple[Scaled, ...]
    max_output_change: float = 0.0  # of the float model, relative to its output range: rounding only


@dataclass(frozen=True)
class Ranges:
    """Per-channel largest magnitude over the calibration images: of each group (over every tensor a
    consumer reads it from), and of each whole tensor that a Conv reads."""

    groups: dict[int, np.ndarray]
    tensors: dict[str, np.ndarray]
    reads: dict[str, str]  # Conv -> the tensor it reads

    def scales(self, group: Group, config: EqualizeConfig) -> np.ndarray:
        """Per-channel divisors (>= 1): the largest asked for by the group's own channels or by any tensor
        a consumer reads the group from, each judged against its own typical range."""
        own = self.groups[group.index]
        scale = scales_for(own, _typical(own, config), config.headroom, config)
        for conv, offset in group.consumers:
            tensor = self.tensors[self.reads[conv]]
            seen = tensor[offset:offset + group.channels]
            scale = np.maximum(scale, scales_for(seen, _typical(tensor, config), config.tensor_headroom, config))
        return scale


def _typical(ranges: np.ndarray, config: EqualizeConfig) -> float:
    return float(np.quantile(ranges, config.quantile))


def channel_ranges(model: onnx.ModelProto, graph: DepGraph, tensors: Sequence[np.ndarray]) -> Ranges:
    """Per-channel ranges (largest magnitude) of every prunable group and of every tensor their consumers read.

    Magnitude, not maximum: most channels follow a Relu, but a Conv with no activation after it (the 3x1
    half of a factored Conv, a centered channel) is signed, and its most negative value uses the 8-bit
    grid as much as its largest one. In a separably factored u2net (`cutq prune`) the 3x1 halves reach
    magnitudes of 210 where their median channel stays near 4."""
    reads = {n.name: n.input[0] for n in model.graph.node if n.op_type == "Conv"}
    groups = {g.index: g for g in graph.prunable}
    wanted = sorted({reads[conv] for g in groups.values() for conv, _ in g.consumers})
    whole: dict[str, np.ndarray] = {}
    for values in capture(model, wanted, tensors):
        for name in wanted:
            seen = np.abs(values[name]).max(axis=(0, 2, 3))
            whole[name] = np.maximum(whole[name], seen) if name in whole else seen
    ranges = {index: np.max([whole[reads[conv]][offset:offset + group.channels] for conv, offset in group.consumers],
                            axis=0) if group.consumers else np.zeros(group.channels)
              for index, group in groups.items()}
    return Ranges(ranges, whole, reads)


def scales_for(ranges: np.ndarray, typical: float, headroom: float, config: EqualizeConfig) -> np.ndarray:
    """Per-channel divisors (>= 1, at most `config.max_scale`): channels above `headroom` x `typical` come
    down to it."""
    if typical <= 0:
        return np.ones_like(ranges)
    return np.clip(ranges / (headroom * typical), 1.0, config.max_scale)


def equalize(model: onnx.ModelProto, tensors: Sequence[np.ndarray],
             config: EqualizeConfig | None = None) -> tuple[onnx.ModelProto, EqualizeReport]:
    """A copy of `model` with the same function and outlier channels' ranges moved into consumer weights."""
    config = config or EqualizeConfig()
    if not config.enabled:
        return model, EqualizeReport(())
    graph = trace(model)
    ranges = channel_ranges(model, graph, tensors)
    out = copy_model(model)
    array = EditableInitializers(out, np.float32)
    convs = {n.name: n for n in out.graph.node if n.op_type == "Conv"}
    done = []
    for group in graph.prunable:
        scale = ranges.scales(group, config)
        moved = np.flatnonzero(scale > 1.0)
        if not len(moved):
            continue
        for conv in group.producers:
            node = convs[conv]
            array(node.input[1])[moved] /= scale[moved, None, None, None]
            if len(node.input) > 2 and node.input[2]:
                array(node.input[2])[moved] /= scale[moved]
        for conv, offset in group.consumers:
            array(convs[conv].input[1])[:, offset + moved] *= scale[None, moved, None, None]
        done += [Scaled(group.producers, int(c), float(ranges.groups[group.index][c]), float(scale[c])) for c in moved]
    array.store()
    change = output_change(model, out, tensors[0])
    if change > TOLERANCE:
        raise ModelError(f"range equalization changed the float model's output by {change:.2%} of its range; "
                         "a channel path holds an op that does not commute with scaling (turn it off: `EqualizeConfig.enabled`)")
    return out, EqualizeReport(tuple(done), change)


class EditableInitializers:
    """A model's initializers as numpy arrays of `dtype`, edited in place and written back (as float32) once
    by `store`: the Conv weight and bias edits of equalization and centering."""

    def __init__(self, model: onnx.ModelProto, dtype: type = np.float32) -> None:
        self.inits = {t.name: t for t in model.graph.initializer}
        self.dtype = dtype
        self.arrays: dict[str, np.ndarray] = {}

    def __call__(self, name: str) -> np.ndarray:
        if name not in self.arrays:
            self.arrays[name] = numpy_helper.to_array(self.inits[name]).astype(self.dtype, copy=True)
        return self.arrays[name]

    def store(self) -> None:
        for name, value in self.arrays.items():
            self.inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32, copy=False), name))


def output_change(before: onnx.ModelProto, after: onnx.ModelProto, tensor: np.ndarray) -> float:
    """Largest difference of any output between two models on one input, relative to that output's range."""
    feed = before.graph.input[0].name
    worst = 0.0
    pairs = zip(session_for(before).run(None, {feed: tensor}), session_for(after).run(None, {feed: tensor}), strict=True)
    for a, b in pairs:
        span = float(a.max() - a.min()) or 1.0
        worst = max(worst, float(np.abs(a - b).max()) / span)
    return worst
