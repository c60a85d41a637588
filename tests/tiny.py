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
