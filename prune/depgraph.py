"""Channel dependency graph: which tensors' channel axes must be pruned together, traced on the ONNX graph.

Removing output channel c of a Conv changes every tensor that carries that channel on to the next Convs:
through Relu, MaxPool, Resize and Sigmoid unchanged, through a channel Concat at an offset, and through
a residual Add into the channels of the other summand, which must then be removed too. A *group* is such
a set of channels: one or more producing Convs (several when an Add ties them) and the consuming Convs that
read the group at some offset of their input. Groups that reach the model input or a graph output (the
1-channel side outputs of U²-Net) are not prunable. An op this module does not understand on a channel path
is an error rather than a guess, because a wrong guess produces a model that runs but computes nonsense.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from cutq_runtime.errors import ModelError

PASS_THROUGH = frozenset({"Relu", "LeakyRelu", "Sigmoid", "Clip", "Identity", "MaxPool", "AveragePool", "Resize", "Upsample"})
"""Ops whose output carries the channels of their first input unchanged (element-wise or spatial only)."""
SHAPE_ONLY = frozenset({"Shape"})
"""Ops that read a channel tensor's shape, not its values; they see the new channel count at run time."""


@dataclass(frozen=True)
class Span:
    """`length` channels of group `group` at channel `offset` of a Conv's input."""

    group: int
    offset: int
    length: int


@dataclass(frozen=True)
class Group:
    """Channels that must be kept or removed together."""

    index: int
    channels: int
    producers: tuple[str, ...]
    consumers: tuple[tuple[str, int], ...]  # (Conv name, channel offset in its input)
    prunable: bool
    reason: str = ""  # why not prunable


@dataclass(frozen=True)
class DepGraph:
    groups: tuple[Group, ...]
    output_group: dict[str, int]  # Conv name -> group of its output channels
    input_spans: dict[str, tuple[Span, ...]]  # Conv name -> layout of its input channels
    conv_order: tuple[str, ...]  # Conv names in topological order

    @property
    def prunable(self) -> tuple[Group, ...]:
        return tuple(g for g in self.groups if g.prunable)


class _Sets:
    """Union-find over raw group ids (one per Conv output and one for the model input)."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.channels: list[int] = []

    def add(self, channels: int) -> int:
        self.parent.append(len(self.parent))
        self.channels.append(channels)
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


Layout = tuple[tuple[int, int], ...]  # (raw group, length) runs along a tensor's channel axis


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    found = next((a for a in node.attribute if a.name == name), None)
    return default if found is None else onnx.helper.get_attribute_value(found)


def trace(model: onnx.ModelProto) -> DepGraph:
    """Trace `model` into channel groups; `ModelError` for anything that cannot be traced safely."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    sets = _Sets()
    layouts: dict[str, Layout] = {}
    fixed: dict[int, str] = {}
    for value in graph.input:
        if value.name not in inits:
            dims = value.type.tensor_type.shape.dim
            if len(dims) != 4 or not dims[1].dim_value:
                raise ModelError(f"input '{value.name}' is not an image tensor with a fixed channel count")
            raw = sets.add(dims[1].dim_value)
            layouts[value.name] = ((raw, dims[1].dim_value),)
            fixed[raw] = "model input"
    producers: dict[int, str] = {}
    output_raw: dict[str, int] = {}
    input_layout: dict[str, Layout] = {}
    weight_users: dict[str, str] = {}
    for node in graph.node:
        traced = [name for name in node.input if name in layouts]
        if not traced:
            continue
        where = f"{node.op_type} node '{node.name}'"
        if node.op_type == "Conv":
            _check_conv(node, inits, weight_users, where)
            if node.input[0] not in layouts:
                raise ModelError(f"{where}: a feature map is used as a weight")
            out_channels = int(inits[node.input[1]].dims[0])
            in_channels = sum(n for _, n in layouts[node.input[0]])
            if int(inits[node.input[1]].dims[1]) != in_channels:
                raise ModelError(f"{where}: weight expects {inits[node.input[1]].dims[1]} input channels, traced {in_channels}")
            raw = sets.add(out_channels)
            producers[raw] = node.name
            output_raw[node.name] = raw
            input_layout[node.name] = layouts[node.input[0]]
            layouts[node.output[0]] = ((raw, out_channels),)
        elif node.op_type in PASS_THROUGH:
            if traced != [node.input[0]]:
                raise ModelError(f"{where}: a channel tensor is used as a parameter")
            layouts[node.output[0]] = layouts[node.input[0]]
        elif node.op_type == "Add":
            if len(traced) != 2 or len(node.input) != 2:
                raise ModelError(f"{where}: only an Add of two traced feature maps (a residual) can be pruned")
            left, right = layouts[node.input[0]], layouts[node.input[1]]
            if [n for _, n in left] != [n for _, n in right]:
                raise ModelError(f"{where}: its two inputs are laid out differently along the channel axis")
            for (a, _), (b, _) in zip(left, right, strict=True):
                sets.union(a, b)
            layouts[node.output[0]] = left
        elif node.op_type == "Concat":
            if _attr(node, "axis", 0) not in (1, -3) or len(traced) != len(node.input):
                raise ModelError(f"{where}: only a channel (axis 1) Concat of traced feature maps can be pruned")
            layouts[node.output[0]] = tuple(run for name in node.input for run in layouts[name])
        elif node.op_type not in SHAPE_ONLY:
            raise ModelError(f"{where}: cannot trace channels through this op")
    for value in graph.output:
        if value.name not in layouts:
            raise ModelError(f"output '{value.name}' is not computed from the traced feature maps")
        for raw, _ in layouts[value.name]:
            fixed.setdefault(raw, f"reaches output '{value.name}'")
    return _finish(sets, fixed, producers, output_raw, input_layout)


def _check_conv(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto], users: dict[str, str], where: str) -> None:
    if not node.name or node.name in users.values():
        raise ModelError(f"{where}: every Conv needs a unique name, so pruned and unpruned layers can be matched")
    if _attr(node, "group", 1) != 1:
        raise ModelError(f"{where}: grouped/depthwise convolutions are not supported")
    for name in node.input[1:3]:
        if name not in inits:
            raise ModelError(f"{where}: its weights or bias are computed, not stored")
        if users.setdefault(name, node.name) != node.name:
            raise ModelError(f"{where}: shares the initializer '{name}' with '{users[name]}'")


def _finish(sets: _Sets, fixed: dict[int, str], producers: dict[int, str], output_raw: dict[str, int],
            input_layout: dict[str, Layout]) -> DepGraph:
    """Number the merged groups in order of first appearance and collect their members."""
    number: dict[int, int] = {}
    for raw in range(len(sets.parent)):
        number.setdefault(sets.find(raw), len(number))
    group_of = [number[sets.find(raw)] for raw in range(len(sets.parent))]
    channels = {group_of[raw]: sets.channels[raw] for raw in range(len(sets.parent))}
    for raw in range(len(sets.parent)):
        if sets.channels[raw] != channels[group_of[raw]]:
            raise ModelError(f"channels tied by an Add differ in count ({sets.channels[raw]} vs {channels[group_of[raw]]})")
    reasons: dict[int, str] = {}
    for raw, reason in fixed.items():
        reasons.setdefault(group_of[raw], reason)
    spans: dict[str, tuple[Span, ...]] = {}
    consumers: dict[int, list[tuple[str, int]]] = {g: [] for g in channels}
    for conv, layout in input_layout.items():
        offsets = np.cumsum([0, *[n for _, n in layout]])
        spans[conv] = tuple(Span(group_of[raw], int(o), n) for (raw, n), o in zip(layout, offsets, strict=False))
        for span in spans[conv]:
            consumers[span.group].append((conv, span.offset))
    made: dict[int, list[str]] = {g: [] for g in channels}
    for raw, conv in producers.items():
        made[group_of[raw]].append(conv)
    groups = []
    for g in range(len(channels)):
        reason = reasons.get(g) or ("a single channel" if channels[g] < 2 else "")
        groups.append(Group(g, channels[g], tuple(made[g]), tuple(consumers[g]), not reason, reason))
    return DepGraph(tuple(groups), {conv: group_of[raw] for conv, raw in output_raw.items()}, spans,
                    tuple(output_raw))


def conv_weights(model: onnx.ModelProto) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Conv name -> (weight, bias) as numpy arrays, for the criteria and the reconstruction."""
    inits = {i.name: i for i in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        if node.op_type == "Conv":
            bias = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] else None
            found[node.name] = (numpy_helper.to_array(inits[node.input[1]]), bias)
    return found


def feature_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, int, int]]:
    """Tensor -> (channels, height, width) of every 4-D map, as far as shape inference knows them (0: unknown; U²-Net's
    input size is fixed, so it knows them all)."""
    inferred = onnx.shape_inference.infer_shapes(model).graph
    found = {}
    for value in (*inferred.value_info, *inferred.input, *inferred.output):
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        if len(dims) == 4:
            found[value.name] = (dims[1], dims[2], dims[3])
    return found
