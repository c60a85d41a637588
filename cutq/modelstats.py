"""Static size figures of an ONNX model: parameter count and multiply-accumulates at a given input size.

Shared by `cutq bench` and `cutq prune`, so both report the same numbers. MACs count Conv and Gemm/MatMul
only (U²-Net's cost is >99% Conv); shapes come from ONNX shape inference with the input pinned to the
model's fixed size, because the released models declare symbolic batch and spatial dimensions.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import shape_inference


def parameter_count(model: onnx.ModelProto) -> int:
    """Weights and biases of every Conv and Gemm, read through a QDQ model's DequantizeLinear, so an INT8
    variant has the same count as its float source (scales and zero points are not parameters)."""
    sizes = {i.name: int(np.prod(i.dims)) for i in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    return sum(
        sizes.get(_weight_source(name, producers), 0)
        for node in model.graph.node
        if node.op_type in ("Conv", "Gemm")
        for name in node.input[1:3]
    )


def _static_input(model: onnx.ModelProto, shape: tuple[int, ...]) -> onnx.ModelProto:
    pinned = onnx.ModelProto()
    pinned.CopyFrom(model)
    inits = {i.name for i in pinned.graph.initializer}
    graph_input = next(i for i in pinned.graph.input if i.name not in inits)
    dims = graph_input.type.tensor_type.shape.dim
    for dim, size in zip(dims, shape, strict=True):
        dim.Clear()
        dim.dim_value = size
    return shape_inference.infer_shapes(pinned, data_prop=True)


def conv_macs(model: onnx.ModelProto, input_shape: tuple[int, ...] = (1, 3, 320, 320)) -> int:
    """Multiply-accumulates of every Conv for one input of `input_shape`."""
    return sum(macs_by_conv(model, input_shape).values())


def macs_by_conv(model: onnx.ModelProto, input_shape: tuple[int, ...] = (1, 3, 320, 320)) -> dict[str, int]:
    """Conv node name -> its multiply-accumulates for one input of `input_shape`."""
    inferred = _static_input(model, input_shape)
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*inferred.graph.value_info, *inferred.graph.output]
    }
    weights = {i.name: list(i.dims) for i in inferred.graph.initializer}
    producers = {out: node for node in inferred.graph.node for out in node.output}
    result = {}
    for node in inferred.graph.node:
        if node.op_type != "Conv":
            continue
        out_shape = shapes.get(node.output[0])
        w_shape = weights.get(_weight_source(node.input[1], producers))
        if not out_shape or not w_shape or 0 in out_shape:
            raise ValueError(f"cannot infer the shape of Conv '{node.name}'")
        result[node.name] = int(np.prod(out_shape)) * int(np.prod(w_shape[1:]))
    return result


def _weight_source(name: str, producers: dict[str, onnx.NodeProto]) -> str:
    """The initializer behind a Conv weight, looking through a QDQ model's DequantizeLinear and the Cast that
    widens 4-bit weights (see `quantize/pack.py`)."""
    node = producers.get(name)
    while node is not None and node.op_type in ("DequantizeLinear", "Cast"):
        name = node.input[0]
        node = producers.get(name)
    return name
