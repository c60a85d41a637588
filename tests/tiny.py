"""Tiny ONNX models built inside the tests: a U²-Net-shaped one and one that is not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def save_tiny(path: Path, u2net_like: bool = True) -> Path:
    """A 1x1 conv + sigmoid: input [1,3,8,8] -> [1,1,8,8] when U²-Net-like, else [1,2,8,8]."""
    out_channels = 1 if u2net_like else 2
    weight = numpy_helper.from_array(np.full((out_channels, 3, 1, 1), 0.5, np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Sigmoid", ["c"], ["y"])]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, out_channels, 8, 8])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def two_conv_model(seed: int = 0) -> onnx.ModelProto:
    """x[1,3,16,16] -> Conv(a) -> Relu -> Conv(b) -> Sigmoid -> y[1,1,16,16]: the smallest U²-Net-shaped net."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.5, "wa"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "ba"),
        numpy_helper.from_array(rng.standard_normal((1, 8, 3, 3)).astype(np.float32) * 0.5, "wb"),
        numpy_helper.from_array(np.zeros(1, np.float32), "bb"),
    ]
    pads = helper.make_attribute("pads", [1, 1, 1, 1])
    conv_a = helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="conv_a")
    conv_a.attribute.append(pads)
    conv_b = helper.make_node("Conv", ["r", "wb", "bb"], ["b"], name="conv_b")
    conv_b.attribute.append(pads)
    nodes = [conv_a, helper.make_node("Relu", ["a"], ["r"], name="relu"), conv_b,
             helper.make_node("Sigmoid", ["b"], ["y"], name="sigmoid")]
    graph = helper.make_graph(
        nodes, "two_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 16, 16])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model
