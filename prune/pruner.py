"""The pruner: choose the channels to keep in each group, then slice every Conv that touches them.

Producers lose output filters (weight axis 0 and bias); consumers lose the matching input channels (weight
axis 1) at each group's offset in their input, which is how a Concat is followed. U²-Net's Resize sizes
are computed from `Shape` of the live tensor, so no constant in the graph records a channel count; the
stored shape annotations (value_info) are dropped so nothing stale remains.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from cutq_runtime.errors import CutqError

from .depgraph import DepGraph
from .importance import Scores

MAX_RATIO = 0.9


@dataclass(frozen=True)
class PruneConfig:
    """`ratio` of the channels removed from every prunable group; kept counts rounded to `multiple`
    (INT8 kernels work on blocks of 4 to 16 channels, so odd counts waste the remainder)."""

    ratio: float
    multiple: int = 4

    def __post_init__(self) -> None:
        if not 0 < self.ratio <= MAX_RATIO:
            raise CutqError(f"--ratio must be in (0, {MAX_RATIO}], got {self.ratio}")
        if self.multiple < 1:
            raise CutqError(f"channel multiple must be >= 1, got {self.multiple}")


@dataclass(frozen=True)
class ConvSlice:
    """The original channel indices a pruned Conv keeps (None: all of them)."""

    outputs: np.ndarray | None
    inputs: np.ndarray | None


def kept_count(channels: int, config: PruneConfig) -> int:
    """Channels left after removing `ratio` of them, rounded to a multiple when that leaves at least one block."""
    wanted = channels * (1 - config.ratio)
    rounded = round(wanted / config.multiple) * config.multiple
    kept = rounded if rounded >= config.multiple else max(1, round(wanted))
    return min(channels, kept)


def select(graph: DepGraph, scores: Scores, config: PruneConfig) -> dict[int, np.ndarray]:
    """The highest-scoring channels of each prunable group, in their original order (ties: lower index)."""
    keep = {}
    for group in graph.prunable:
        score = np.asarray(scores[group.index], dtype=np.float64)
        if score.shape != (group.channels,):
            raise CutqError(f"criterion gave {score.shape} scores for a group of {group.channels} channels")
        order = np.argsort(-score, kind="stable")
        keep[group.index] = np.sort(order[: kept_count(group.channels, config)])
    return keep


def apply(model: onnx.ModelProto, graph: DepGraph,
          keep: Mapping[int, np.ndarray]) -> tuple[onnx.ModelProto, dict[str, ConvSlice]]:
    """A pruned copy of `model` and, per Conv, the original channels it kept; the model is checked by onnx."""
    for index in keep:
        if not graph.groups[index].prunable:
            raise CutqError(f"channel group {index} is not prunable ({graph.groups[index].reason})")
    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
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
        _slice(inits[node.input[1]], out, inputs)
        if len(node.input) > 2 and node.input[2]:
            _slice(inits[node.input[2]], out, None)
    del pruned.graph.value_info[:]
    onnx.checker.check_model(pruned)
    return pruned, slices


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
