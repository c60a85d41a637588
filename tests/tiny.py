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


def residual_concat_model(seed: int = 0, extra_op: str | None = None) -> onnx.ModelProto:
    """An RSU block in miniature, input [1, 3, H, W] with H, W free:

        conv_in(3->8) relu -> a ---------------------------------------------+
        a -> conv_1(8->6) relu -> b -> maxpool -> conv_2(6->6) relu -> resize x2 -> c
        concat(c, b) (12 channels) -> conv_3(12->8) relu -> add(., a) -> conv_side(8->1) -> sigmoid -> y

    `extra_op` (e.g. "Neg") is inserted after conv_1's relu, to make a graph the pruner cannot trace.
    """
    rng = np.random.default_rng(seed)
    shapes = {"in": (8, 3), "1": (6, 8), "2": (6, 6), "3": (8, 12), "side": (1, 8)}
    inits = [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    for key, (out_c, in_c) in shapes.items():
        inits.append(numpy_helper.from_array(rng.standard_normal((out_c, in_c, 3, 3)).astype(np.float32) * 0.4, f"w{key}"))
        inits.append(numpy_helper.from_array(rng.standard_normal(out_c).astype(np.float32) * 0.1, f"b{key}"))

    def conv(key: str, x: str, y: str) -> onnx.NodeProto:
        return helper.make_node("Conv", [x, f"w{key}", f"b{key}"], [y], name=f"conv_{key}", pads=[1, 1, 1, 1])

    nodes = [
        conv("in", "x", "c_in"), helper.make_node("Relu", ["c_in"], ["a"], name="relu_in"),
        conv("1", "a", "c_1"), helper.make_node("Relu", ["c_1"], ["b"], name="relu_1"),
        helper.make_node("MaxPool", ["b"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
        conv("2", "p", "c_2"), helper.make_node("Relu", ["c_2"], ["r_2"], name="relu_2"),
        helper.make_node("Resize", ["r_2", "", "scales"], ["c"], name="up", mode="linear"),
        helper.make_node("Concat", ["c", "b"], ["cat"], name="cat", axis=1),
        conv("3", "cat", "c_3"), helper.make_node("Relu", ["c_3"], ["r_3"], name="relu_3"),
        helper.make_node("Add", ["r_3", "a"], ["s"], name="add"),
        conv("side", "s", "c_side"), helper.make_node("Sigmoid", ["c_side"], ["y"], name="sigmoid"),
    ]
    if extra_op:
        nodes.insert(4, helper.make_node(extra_op, ["b"], ["b_odd"], name="odd"))
        nodes[5].input[0] = "b_odd"
    graph = helper.make_graph(
        nodes, "rsu_tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, "h", "w"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def outputs(model: onnx.ModelProto, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """The first output of `model` (input "x") for each input."""
    from cutq.quantize import verify

    session = verify.session_for(model)
    return [session.run(None, {"x": x})[0] for x in inputs]


def int8_error(model: onnx.ModelProto, inputs: list[np.ndarray], reference: list[np.ndarray], border: int = 0) -> float:
    """Mean absolute error of `model` quantized entirely to INT8 (calibrated on `inputs`, no float head)
    against `reference`, leaving out a `border`-pixel frame."""
    from cutq.quantize.calibrate import compute_ranges
    from cutq.quantize.qdq import QuantConfig, quantize_qdq

    quantized = quantize_qdq(model, compute_ranges(model, inputs), QuantConfig(float_head=False))
    inner = (..., slice(border, -border or None), slice(border, -border or None))
    return float(np.mean([np.abs(q - r)[inner].mean() for q, r in zip(outputs(quantized, inputs), reference, strict=True)]))
