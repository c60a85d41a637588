"""The pruner: choose the channels to keep in each group, then slice every Conv that touches them.

Producers lose output filters (weight axis 0 and bias); consumers lose the matching input channels (weight
axis 1) at each group's offset in their input, which is how a Concat is followed. U²-Net's Resize sizes
are computed from `Shape` of the live tensor, so no constant in the graph records a channel count; the
stored shape annotations (value_info) are dropped so nothing stale remains.

A removed channel is not zero: U²-Net's batch norm is folded into its Convs, so a channel can sit at a
large, nearly constant value (u2netp's Conv_765 channel 14 stays near 226 after its Relu) that the next
Conv's bias was trained to cancel. Slicing it out shifts every consumer's output by that constant times
its weights. With the channel means measured on calibration photos, `apply` adds the mean contribution
of each removed channel to the consumer's bias ("bias compensation"), so what is lost is only the
channel's variation around its mean, which is what the `activation` criterion ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from cutq.quantize.graph import copy_model
from cutq.quantize.mixed import drop_unused_initializers
from cutq_runtime.errors import CutqError

from .activations import Moments
from .depgraph import DepGraph, feature_shapes
from .geometry import Geometry
from .importance import Scores

MAX_RATIO = 0.9
MAX_FRACTION = 0.99  # of a group's channels


@dataclass(frozen=True)
class PruneConfig:
    """Remove `ratio` of the Conv parameters (weights and biases, which is all of U²-Net's parameters).

    The ratio counts parameters, not channels, like the published figures it is compared with. Removing a
    fraction f of every group's channels removes about 1-(1-f)² of the parameters, so `channel_fraction` finds
    the f that removes `ratio`. Kept channel counts are rounded to `multiple` (INT8 kernels work on blocks of 4
    to 16 channels, so odd counts waste the rest).

    No group is cut below `min_channels` (or its own width, if narrower): ONNX Runtime's INT8 Conv takes a much
    slower path with fewer than 16 output channels.
    """

    ratio: float
    multiple: int = 4
    min_channels: int = 16
    # Groups narrower than `narrow_below` channels lose `narrow_share` times the fraction the wider groups lose.
    # U²-Net's parameters sit in its wide, low-resolution groups and its MACs in the narrow, full-resolution
    # ones, so a share below 1 keeps more quality per parameter (a size limit) and costs MACs (latency).
    narrow_share: float = 1.0
    narrow_below: int = 256
    # (size, channels): narrow groups on size x size maps with at least that many channels keep every channel (only
    # with factoring, which meets the ratio; see `spare`).
    spare: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        if not 0 < self.ratio <= MAX_RATIO:
            raise CutqError(f"`ratio` must be in (0, {MAX_RATIO}], got {self.ratio}")
        if self.multiple < 1 or self.min_channels < 1:
            raise CutqError(f"channel multiple and minimum must be >= 1, got {self.multiple}, {self.min_channels}")
        if self.narrow_share < 0 or self.narrow_below < 1:
            raise CutqError(f"narrow share must be >= 0 and narrow width >= 1, got {self.narrow_share}, {self.narrow_below}")
        if any(size < 1 or channels < 1 for size, channels in self.spare):
            raise CutqError(f"`spare` sizes and channel counts must be >= 1, got {self.spare}")

    def fractions(self, graph: DepGraph, fraction: float) -> dict[int, float]:
        """Group index -> fraction of its channels removed, when the wide groups lose `fraction`."""
        return {g.index: fraction if g.channels >= self.narrow_below else min(fraction * self.narrow_share, MAX_FRACTION)
                for g in graph.prunable}


def spare(model: onnx.ModelProto, graph: DepGraph, fractions: Mapping[int, float],
          keep: tuple[tuple[int, int], ...]) -> dict[int, float]:
    """`fractions` with 0 for every group on size x size maps (its producers' outputs) with at least `channels`
    channels, for each (size, channels) in `keep`.

    Where a narrow group loses channels matters more than how many it loses: on u2net, sparing the few groups whose
    loss costs the masks most buys more fidelity per MAC than removing fewer channels everywhere.
    """
    if not keep:
        return dict(fractions)
    shapes = feature_shapes(model)
    outputs = {n.name: n.output[0] for n in model.graph.node}
    spared = dict(fractions)
    for group in graph.prunable:
        sizes = {shapes[outputs[p]][1] for p in group.producers if outputs.get(p) in shapes}
        if any(size in sizes and group.channels >= channels for size, channels in keep):
            spared[group.index] = 0.0
    return spared


@dataclass(frozen=True)
class ConvSlice:
    """The original channel indices a pruned Conv keeps (None: all of them)."""

    outputs: np.ndarray | None
    inputs: np.ndarray | None


def kept_count(channels: int, fraction: float, multiple: int, floor: int = 1) -> int:
    """Channels left after removing `fraction` of them, rounded to a multiple when that leaves at least one block,
    and never fewer than `floor` (nor more than `channels`)."""
    wanted = channels * (1 - fraction)
    rounded = round(wanted / multiple) * multiple
    kept = rounded if rounded >= multiple else max(1, round(wanted))
    return min(channels, max(kept, floor))


def parameters(graph: DepGraph, shapes: Mapping[str, tuple[int, ...]], kept: Mapping[int, int]) -> int:
    """Conv parameters (weights + biases) once each group keeps `kept[group]` channels (all when absent)."""
    total = 0
    for conv, shape in shapes.items():
        out = kept.get(graph.output_group[conv], shape[0])
        inputs = sum(kept.get(span.group, span.length) for span in graph.input_spans[conv])
        total += out * inputs * int(np.prod(shape[2:])) + out
    return total


def channel_fraction(graph: DepGraph, shapes: Mapping[str, tuple[int, ...]], config: PruneConfig) -> float:
    """The smallest fraction of every prunable group's channels (of the wide groups', see `PruneConfig`) whose
    removal removes `config.ratio` of the parameters (`shapes`: Conv name -> weight shape), by bisection: the
    count only falls as the fraction grows."""
    full = parameters(graph, shapes, {})

    def removed(fraction: float) -> float:
        shares = config.fractions(graph, fraction)
        kept = {g.index: kept_count(g.channels, shares[g.index], config.multiple, config.min_channels)
                for g in graph.prunable}
        return 1 - parameters(graph, shapes, kept) / full

    low, high = 0.0, MAX_FRACTION
    if removed(high) < config.ratio:
        raise CutqError(f"`ratio` {config.ratio} removes more parameters than the prunable channels hold "
                        f"(at most {removed(high):.2f} with `min_channels` {config.min_channels})")
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if removed(middle) < config.ratio else (low, middle)
    return high


def select(graph: DepGraph, scores: Scores, fraction: float | Mapping[int, float], multiple: int,
           floor: int = 1) -> dict[int, np.ndarray]:
    """The highest-scoring channels of each prunable group, `fraction` of them removed (one for all groups, or
    per group index), at least `floor` kept, in their original order (ties: lower index)."""
    keep = {}
    for group in graph.prunable:
        share = fraction if isinstance(fraction, float | int) else fraction[group.index]
        score = np.asarray(scores[group.index], dtype=np.float64)
        if score.shape != (group.channels,):
            raise CutqError(f"criterion gave {score.shape} scores for a group of {group.channels} channels")
        order = np.argsort(-score, kind="stable")
        keep[group.index] = np.sort(order[: kept_count(group.channels, share, multiple, floor)])
    return keep


def apply(model: onnx.ModelProto, graph: DepGraph, keep: Mapping[int, np.ndarray],
          input_moments: Mapping[str, Moments] | None = None) -> tuple[onnx.ModelProto, dict[str, ConvSlice]]:
    """A pruned copy of `model` and, per Conv, the original channels it kept; the model is checked by onnx.

    With `input_moments` (Conv name -> moments of its input in `model`), each Conv that loses input channels
    has their mean contribution added to its bias.
    """
    for index in keep:
        if not graph.groups[index].prunable:
            raise CutqError(f"channel group {index} is not prunable ({graph.groups[index].reason})")
    pruned = copy_model(model)
    inits = {i.name: i for i in pruned.graph.initializer}
    slices = {}
    for node in pruned.graph.node:
        if node.op_type != "Conv" or node.name not in graph.output_group:
            continue
        out = keep.get(graph.output_group[node.name])
        spans = graph.input_spans[node.name]
        inputs = None
        if any(s.group in keep for s in spans):
            inputs = np.concatenate([s.offset + keep.get(s.group, np.arange(s.length)) for s in spans])
        slices[node.name] = ConvSlice(out, inputs)
        if inputs is not None and input_moments is not None:
            _compensate(pruned, node, inits, inputs, input_moments[node.name])
        _slice(inits[node.input[1]], out, inputs)
        if len(node.input) > 2 and node.input[2]:
            _slice(inits[node.input[2]], out, None)
    del pruned.graph.value_info[:]
    onnx.checker.check_model(pruned)
    return pruned, slices


def _compensate(model: onnx.ModelProto, node: onnx.NodeProto, inits: dict[str, onnx.TensorProto], kept: np.ndarray,
                moments: Moments) -> None:
    """Add the mean contribution of the input channels not in `kept` to the Conv's bias (created if absent)."""
    weight = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
    removed = np.setdiff1d(np.arange(weight.shape[1]), kept)
    coverage = Geometry.of(node, weight).coverage(moments.size)
    shift = np.einsum("ocij,ij,c->o", weight[:, removed], coverage, moments.mean[removed])
    if len(node.input) < 3 or not node.input[2]:
        name = f"{node.name}.bias"
        model.graph.initializer.append(numpy_helper.from_array(np.zeros(len(weight), np.float32), name))
        inits[name] = model.graph.initializer[-1]
        del node.input[2:]
        node.input.append(name)
    bias = inits[node.input[2]]
    bias.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(bias) + shift).astype(np.float32), bias.name))


def _slice(tensor: onnx.TensorProto, axis0: np.ndarray | None, axis1: np.ndarray | None) -> None:
    array = numpy_helper.to_array(tensor)
    if axis0 is not None:
        array = array[axis0]
    if axis1 is not None:
        array = array[:, axis1]
    tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array), tensor.name))


def replace_weights(model: onnx.ModelProto, conv: str, weight: np.ndarray, bias: np.ndarray | None) -> None:
    """Overwrite one Conv's weight (and bias) in place, keeping the initializer names."""
    node = next(n for n in model.graph.node if n.name == conv)
    inits = {i.name: i for i in model.graph.initializer}
    inits[node.input[1]].CopyFrom(numpy_helper.from_array(weight.astype(np.float32), node.input[1]))
    if bias is not None:
        inits[node.input[2]].CopyFrom(numpy_helper.from_array(bias.astype(np.float32), node.input[2]))


def replace_convs(model: onnx.ModelProto, ranks: Mapping[str, int],
                  build: Callable[[onnx.NodeProto, int], tuple[list[onnx.TensorProto], list[onnx.NodeProto]]]
                  ) -> onnx.ModelProto:
    """A copy of `model` in which each Conv named in `ranks` is replaced by the nodes `build(node, rank)` returns,
    with the initializers it returns; the initializers nothing reads any more and the (now stale) value_info are
    dropped, and the result is checked by onnx. The factorings of `lowrank` and `separable` share this."""
    replaced = copy_model(model)
    nodes = []
    for node in replaced.graph.node:
        if node.name not in ranks:
            nodes.append(node)
            continue
        initializers, pair = build(node, ranks[node.name])
        replaced.graph.initializer.extend(initializers)
        nodes += pair
    del replaced.graph.node[:]
    replaced.graph.node.extend(nodes)
    drop_unused_initializers(replaced.graph)
    del replaced.graph.value_info[:]
    onnx.checker.check_model(replaced)
    return replaced
