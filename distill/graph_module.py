"""An ONNX graph as a trainable `torch.nn.Module`, by interpreting the graph node by node.

Interpreting (rather than converting to a hand-written U²-Net class) means any channel count works: a pruned
model is the same graph with smaller Conv shapes, and the trained weights go back into the same initializers,
so the exported model keeps the student's exact structure. Conv weights and biases become parameters named
after their initializers; every other initializer and every `Constant` is a fixed tensor. Shape subgraphs
(Shape/Gather/Slice/Concat/Cast feeding Resize) are evaluated from the actual tensors on every call, as
onnxruntime does. Only the ops U²-Net exports use are supported; anything else is refused when the module is
built, naming the node.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from cutq_runtime.errors import ModelError

from ._torch import require_torch

torch = require_torch()
F = torch.nn.functional
Tensor = Any  # torch.Tensor; kept loose so this module's annotations do not need torch at import time
Kernel = Callable[[list], list]

_DTYPES = {
    onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16, onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.INT32: torch.int32, onnx.TensorProto.BOOL: torch.bool,
}


@dataclass(frozen=True)
class _Step:
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    kernel: Kernel


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


def _spatial_pad(pads: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """ONNX pads [begin..., end...] -> (symmetric padding for torch, or an explicit F.pad for asymmetric pads)."""
    half = len(pads) // 2
    begin, end = tuple(pads[:half]), tuple(pads[half:])
    if begin == end:
        return begin, None
    explicit: list[int] = []
    for b, e in zip(reversed(begin), reversed(end), strict=True):  # F.pad wants last dimension first
        explicit += [b, e]
    return (0,) * half, tuple(explicit)


def _conv(node: onnx.NodeProto, a: dict[str, Any]) -> Kernel:
    if a.get("auto_pad", "NOTSET") != "NOTSET":
        raise ModelError(f"Conv {node.name}: auto_pad={a['auto_pad']} is not supported; export with explicit pads")
    padding, explicit = _spatial_pad(a.get("pads", [0, 0, 0, 0]))
    strides, dilations, group = a.get("strides", 1), a.get("dilations", 1), a.get("group", 1)

    def run(xs: list) -> list:
        x = xs[0] if explicit is None else F.pad(xs[0], explicit)
        return [F.conv2d(x, xs[1], xs[2] if len(xs) > 2 else None, strides, padding, dilations, group)]
    return run


def _maxpool(node: onnx.NodeProto, a: dict[str, Any]) -> Kernel:
    if a.get("auto_pad", "NOTSET") != "NOTSET" or a.get("storage_order", 0):
        raise ModelError(f"MaxPool {node.name}: auto_pad and storage_order are not supported")
    kernel = tuple(a["kernel_shape"])
    padding, explicit = _spatial_pad(a.get("pads", [0] * 2 * len(kernel)))
    strides, dilations, ceil = a.get("strides", 1), a.get("dilations", 1), bool(a.get("ceil_mode", 0))

    def run(xs: list) -> list:
        x = xs[0] if explicit is None else F.pad(xs[0], explicit, value=float("-inf"))
        return [F.max_pool2d(x, kernel, strides, padding, dilations, ceil_mode=ceil)]
    return run


def _resize(node: onnx.NodeProto, a: dict[str, Any]) -> Kernel:
    mode, coords = a.get("mode", "nearest"), a.get("coordinate_transformation_mode", "half_pixel")
    if mode == "linear" and coords in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        options: dict[str, Any] = {"mode": "bilinear", "align_corners": coords == "align_corners"}
    elif mode == "nearest" and coords == "asymmetric" and a.get("nearest_mode", "round_prefer_floor") == "floor":
        options = {"mode": "nearest"}
    else:
        raise ModelError(f"Resize {node.name}: mode={mode}, coordinate_transformation_mode={coords} is not supported")

    def run(xs: list) -> list:
        x = xs[0]
        sizes = xs[3] if len(xs) > 3 and xs[3] is not None and xs[3].numel() else None
        scales = xs[2] if len(xs) > 2 and xs[2] is not None and xs[2].numel() else None
        if x.dim() != 4:
            raise ModelError(f"Resize {node.name}: only 4-D (NCHW) inputs are supported, got {x.dim()}-D")
        if sizes is not None:
            size = [int(v) for v in sizes.tolist()]
            if size[:2] != list(x.shape[:2]):
                raise ModelError(f"Resize {node.name}: resizing batch or channels is not supported")
            if coords == "pytorch_half_pixel" and min(size[2:]) == 1:
                raise ModelError(f"Resize {node.name}: pytorch_half_pixel to a size of 1 is not supported")
            return [F.interpolate(x, size=size[2:], **options)]
        if scales is None:
            raise ModelError(f"Resize {node.name}: neither scales nor sizes given")
        factors = [float(v) for v in scales.tolist()]
        if factors[:2] != [1.0, 1.0]:
            raise ModelError(f"Resize {node.name}: resizing batch or channels is not supported")
        return [F.interpolate(x, scale_factor=factors[2:], recompute_scale_factor=False, **options)]
    return run


def _gather(node: onnx.NodeProto, a: dict[str, Any]) -> Kernel:
    axis = a.get("axis", 0)

    def run(xs: list) -> list:
        data, index = xs[0], xs[1].long()
        dim = axis % data.dim()
        index = torch.where(index < 0, index + data.shape[dim], index)
        picked = torch.index_select(data, dim, index.reshape(-1))
        return [picked.reshape((*data.shape[:dim], *index.shape, *data.shape[dim + 1:]))]
    return run


def _unsqueeze(node: onnx.NodeProto, a: dict[str, Any]) -> Kernel:
    def run(xs: list) -> list:
        axes = a["axes"] if "axes" in a else xs[1].tolist()
        x = xs[0]
        rank = x.dim() + len(axes)
        for axis in sorted(int(v) % rank for v in axes):
            x = x.unsqueeze(axis)
        return [x]
    return run


def _slice(node: onnx.NodeProto, a: dict[str, Any]) -> Kernel:
    def run(xs: list) -> list:
        data = xs[0]
        starts, ends = xs[1].tolist(), xs[2].tolist()
        axes = xs[3].tolist() if len(xs) > 3 and xs[3] is not None else list(range(len(starts)))
        steps = xs[4].tolist() if len(xs) > 4 and xs[4] is not None else [1] * len(starts)
        if any(s <= 0 for s in steps):
            raise ModelError(f"Slice {node.name}: only positive steps are supported")
        index = [slice(None)] * data.dim()
        for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
            index[int(axis)] = slice(int(start), int(end), int(step))
        return [data[tuple(index)]]
    return run


def _shape(node: onnx.NodeProto, a: dict[str, Any]) -> Kernel:
    start, end = a.get("start", 0), a.get("end")
    return lambda xs: [torch.tensor(list(xs[0].shape)[start:end], dtype=torch.int64)]


def _cast(node: onnx.NodeProto, a: dict[str, Any]) -> Kernel:
    if a["to"] not in _DTYPES:
        raise ModelError(f"Cast {node.name}: target type {a['to']} is not supported")
    dtype = _DTYPES[a["to"]]
    return lambda xs: [xs[0].to(dtype)]


def _elementwise(fn: Callable[..., Tensor]) -> Callable[[onnx.NodeProto, dict[str, Any]], Kernel]:
    return lambda node, a: (lambda xs: [fn(*xs)])


_KERNELS: dict[str, Callable[[onnx.NodeProto, dict[str, Any]], Kernel]] = {
    "Conv": _conv, "MaxPool": _maxpool, "Resize": _resize, "Gather": _gather, "Unsqueeze": _unsqueeze,
    "Slice": _slice, "Shape": _shape, "Cast": _cast,
    "Relu": _elementwise(torch.relu), "Sigmoid": _elementwise(torch.sigmoid), "Add": _elementwise(torch.add),
    "Identity": _elementwise(lambda x: x),
    "Concat": lambda node, a: (lambda xs: [torch.cat(xs, dim=a["axis"])]),
}
SUPPORTED_OPS = frozenset(_KERNELS) | {"Constant"}


def _constant(node: onnx.NodeProto) -> np.ndarray:
    a = _attrs(node)
    if "value" in a:
        return numpy_helper.to_array(a["value"])
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in a:
            return np.asarray(a[key], dtype)
    raise ModelError(f"Constant {node.name}: only value, value_float(s) and value_int(s) are supported")


def trainable_initializers(graph: onnx.GraphProto) -> list[str]:
    """Initializers that are Conv weights or biases, in graph order: the ones fine-tuning changes."""
    used = {name for n in graph.node if n.op_type == "Conv" for name in n.input[1:3] if name}
    return [t.name for t in graph.initializer if t.name in used and t.data_type == onnx.TensorProto.FLOAT]


class GraphModule(torch.nn.Module):
    """`forward(*inputs)` returns the graph outputs in order; `logits=True` returns the inputs of output Sigmoids.

    `channels_last` stores 4-D weights and inputs as NHWC, which oneDNN trains about 20% faster on CPU.
    """

    def __init__(self, model: onnx.ModelProto, channels_last: bool = False) -> None:
        super().__init__()
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        graph = model.graph
        unsupported = sorted({f"{n.op_type} ({n.name})" for n in graph.node
                              if n.op_type not in SUPPORTED_OPS or n.domain not in ("", "ai.onnx")})
        if unsupported:
            raise ModelError(f"cannot fine-tune this graph: unsupported op(s) {', '.join(unsupported[:5])}")
        trainable = set(trainable_initializers(graph))
        self.keys: dict[str, str] = {}  # initializer name -> parameter attribute name
        self.params = torch.nn.ParameterDict()
        self.fixed: dict[str, Tensor] = {}
        for init in graph.initializer:
            array = numpy_helper.to_array(init).copy()
            if init.name in trainable:
                key = self._key_for(init.name)
                tensor = torch.from_numpy(array)
                tensor = tensor.contiguous(memory_format=self.memory_format) if tensor.dim() == 4 else tensor
                self.params[key] = torch.nn.Parameter(tensor)
            else:
                self.fixed[init.name] = torch.from_numpy(array)
        init_names = {t.name for t in graph.initializer}
        self.input_names = [i.name for i in graph.input if i.name not in init_names]
        self.output_names = [o.name for o in graph.output]
        producers = {out: n for n in graph.node for out in n.output}
        self.logit_names = [producers[o].input[0] if o in producers and producers[o].op_type == "Sigmoid" else o
                            for o in self.output_names]
        self.steps: list[_Step] = []
        for node in graph.node:
            if node.op_type == "Constant":
                self.fixed[node.output[0]] = torch.from_numpy(np.array(_constant(node)))
            else:
                kernel = _KERNELS[node.op_type](node, _attrs(node))
                self.steps.append(_Step(node.name or node.output[0], tuple(node.input), tuple(node.output), kernel))
        self._last_use = self._last_uses()

    def _key_for(self, name: str) -> str:
        key = re.sub(r"\W", "_", name)
        while key in self.params:
            key += "_"
        self.keys[name] = key
        return key

    def _last_uses(self) -> dict[str, int]:
        """Step index after which a tensor can be dropped: keeps memory at inference close to the live set."""
        keep = set(self.output_names) | set(self.logit_names)
        last: dict[str, int] = {}
        for i, step in enumerate(self.steps):
            for name in step.inputs:
                if name and name not in keep:
                    last[name] = i
        return last

    def named_initializers(self) -> Iterator[tuple[str, Tensor]]:
        """(initializer name, parameter) for every trainable initializer."""
        for name, key in self.keys.items():
            yield name, self.params[key]

    def forward(self, *inputs: Tensor, logits: bool = False) -> tuple[Tensor, ...]:
        if len(inputs) != len(self.input_names):
            raise ModelError(f"the graph takes {len(self.input_names)} input(s), got {len(inputs)}")
        inputs = tuple(x.contiguous(memory_format=self.memory_format) if x.dim() == 4 else x for x in inputs)
        env: dict[str, Tensor] = {**self.fixed, **dict(zip(self.input_names, inputs, strict=True))}
        env.update((name, self.params[key]) for name, key in self.keys.items())
        for i, step in enumerate(self.steps):
            results = step.kernel([env[name] if name else None for name in step.inputs])
            env.update(zip(step.outputs, results, strict=False))
            for name in step.inputs:
                if self._last_use.get(name) == i and name not in self.fixed and name not in self.keys:
                    env.pop(name, None)
        return tuple(env[name] for name in (self.logit_names if logits else self.output_names))
