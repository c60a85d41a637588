"""Pipeline step: centering near-constant channels, so their offset leaves the 8-bit range and their
variation gets the steps.

After batch-norm folding some U²-Net channels are almost constant: u2netp's Conv_765 channel 14 stays
between 226.0 and 228.1 on every calibration photo, and Conv_787 reads it with large weights whose bias
cancels the offset. A per-tensor 8-bit step sized for 228 is coarser than the channel's whole variation,
so in INT8 Conv_787 sees a constant plus rounding noise times large weights. Equalization cannot help:
scaling the channel down scales its variation down with it. This is what kept Conv_787 and Conv_920 float.

The offset can move instead. Where the producing Conv is followed by a Relu that never clips the channel
on the calibration photos (its minimum stays above zero), and the channel reaches its consuming Convs only
through MaxPool, Resize and Concat (each commutes with adding a constant), the producer's bias drops by
`shift` (chosen so that the Relu still has `margin` calibration ranges to spare), each consumer's bias
absorbs its weights times `shift`, and the channel, now only its variation, is scaled up by `gain`
(the consumers' weights are divided by it) to span about as many 8-bit steps as its neighbours.

Not exact at the image border: a consumer's zero padding stands for the channel's 0, which after the shift
means -shift. The manifest records the float model's largest output change; verification always measures
the INT8 model against the unmodified FP32 model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from cutq.prune.activations import capture
from cutq.prune.depgraph import Group, trace

from .equalize import EditableInitializers, output_change
from .graph import copy_model, readers

_COMMUTES_WITH_SHIFT = frozenset({"MaxPool", "Resize", "Concat"})


@dataclass(frozen=True)
class CenterConfig:
    """Which channels count as near-constant, and how far they move."""

    enabled: bool = True
    margin: float = 1.0  # the shift stops this many calibration ranges (max - min) below the channel's minimum
    min_removed: float = 0.5  # only channels whose shift removes at least this share of their maximum
    max_gain: float = 32.0  # the centered channel is scaled up to its group's typical range, at most this much
    quantile: float = 0.75  # a group's typical channel range is this quantile of its channels' maxima


@dataclass(frozen=True)
class Centered:
    """One centered channel: its producing Conv and index, calibration range, shift and gain."""

    producer: str
    channel: int
    low: float
    high: float
    shift: float
    gain: float


@dataclass(frozen=True)
class CenterReport:
    channels: tuple[Centered, ...]
    max_output_change: float = 0.0  # of the float model, relative to its output range: image border only


def center(model: onnx.ModelProto, tensors: Sequence[np.ndarray],
           config: CenterConfig | None = None) -> tuple[onnx.ModelProto, CenterReport]:
    """A copy of `model` whose near-constant channels are centered and scaled up, with the offset in the
    consumers' biases."""
    config = config or CenterConfig()
    if not config.enabled:
        return model, CenterReport(())
    candidates = _candidates(model)
    if not candidates:
        return model, CenterReport(())
    low, high = _ranges(model, [producer.output[0] for _, producer in candidates], tensors)
    out = copy_model(model)
    param = EditableInitializers(out, np.float64)  # shift and gain in double, stored as float32
    convs = {n.name: n for n in out.graph.node if n.op_type == "Conv"}
    done = []
    for group, producer in candidates:
        lo, hi = low[producer.output[0]], high[producer.output[0]]
        typical = float(np.quantile(np.maximum(hi, 0), config.quantile))
        for c in range(group.channels):
            shift = lo[c] - config.margin * (hi[c] - lo[c])
            if lo[c] <= 0 or shift < config.min_removed * hi[c]:
                continue
            gain = float(np.clip(typical / max(hi[c] - shift, 1e-12), 1.0, config.max_gain))
            node = convs[producer.name]
            param(node.input[1])[c] *= gain
            param(node.input[2])[c] = gain * (param(node.input[2])[c] - shift)
            for conv, offset in group.consumers:
                weight = param(convs[conv].input[1])
                param(convs[conv].input[2])[:] += weight[:, offset + c].sum(axis=(1, 2)) * shift
                weight[:, offset + c] /= gain
            done.append(Centered(producer.name, c, float(lo[c]), float(hi[c]), float(shift), gain))
    if not done:
        return model, CenterReport(())
    param.store()
    return out, CenterReport(tuple(done), output_change(model, out, tensors[0]))


def _candidates(model: onnx.ModelProto) -> list[tuple[Group, onnx.NodeProto]]:
    """Groups made by one Conv + Relu whose channels reach only Convs, through ops that commute with a shift,
    and whose Convs all have stored biases to absorb it."""
    users = readers(model.graph)
    nodes = {n.name: n for n in model.graph.node}
    inits = {t.name for t in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    found = []
    for group in trace(model).prunable:
        if len(group.producers) != 1:
            continue  # tied by a residual Add: the other summand would need the same shift
        producer = nodes[group.producers[0]]
        after = users.get(producer.output[0], [])
        convs = [producer, *(nodes[c] for c, _ in group.consumers)]
        if (len(after) == 1 and after[0].op_type == "Relu" and _reaches_only_convs(after[0].output[0], users, outputs)
                and all(len(n.input) > 2 and n.input[2] in inits for n in convs)):
            found.append((group, producer))
    return found


def _reaches_only_convs(tensor: str, users: dict[str, list[onnx.NodeProto]], outputs: set[str]) -> bool:
    stack, seen = [tensor], {tensor}
    while stack:
        name = stack.pop()
        if name in outputs:
            return False
        for node in users.get(name, []):
            if node.op_type == "Conv":
                if node.input[0] != name:
                    return False
                continue
            if node.op_type not in _COMMUTES_WITH_SHIFT or not _shift_passes(node, name):
                return False
            if node.output[0] not in seen:
                seen.add(node.output[0])
                stack.append(node.output[0])
    return True


def _shift_passes(node: onnx.NodeProto, name: str) -> bool:
    """Whether adding a constant to input `name` of `node` adds the same constant to its output."""
    if node.op_type == "Concat":
        return True
    if node.input[0] != name:
        return False  # a scale or size input
    # crop-and-resize writes a constant outside the crop, which does not move with the shift
    modes = [a.s for a in node.attribute if a.name == "coordinate_transformation_mode"]
    return modes != [b"tf_crop_and_resize"]


def _ranges(model: onnx.ModelProto, names: Sequence[str],
            tensors: Sequence[np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per-channel min and max of each named (pre-activation) tensor over the calibration images."""
    low: dict[str, np.ndarray] = {}
    high: dict[str, np.ndarray] = {}
    for values in capture(model, names, tensors):
        for name in names:
            lo, hi = values[name].min(axis=(0, 2, 3)), values[name].max(axis=(0, 2, 3))
            low[name] = np.minimum(low[name], lo) if name in low else lo
            high[name] = np.maximum(high[name], hi) if name in high else hi
    return low, high
