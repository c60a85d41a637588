"""Controls: two one-Conv QDQ models that tell whether a CPU's INT8 kernels saturate, and two quantized Resizes.

x86 CPUs without VNNI multiply u8 activations by s8 weights with VPMADDUBSW, which adds each pair of products
into a signed 16-bit value with saturation: 255 x 127 + 255 x 127 = 64770 clips to 32767. Both controls feed u8
activations of 240-255 into a 1x1 Conv over 256 input channels; `full` has s8 weights of magnitude 96-127
(pairs of one sign clip), `7bit` of magnitude 48-64 (a pair stays <= 32640, it cannot clip).

All scales are powers of two and every sum stays below 2^24, so the exact arithmetic (ORT_DISABLE_ALL:
DequantizeLinear -> float Conv -> QuantizeLinear) is exact integer arithmetic, and a kernel that does not clip
matches it bit for bit.

A third model, `resize`, is U²-Net's quantized 2x bilinear upsampling (DequantizeLinear -> Resize linear,
pytorch_half_pixel -> QuantizeLinear, zero point 0 as after a ReLU) on random u8 values, as the quantizer writes
it; `resize-ties` is the same after `cutq quantize`'s ties step (quantize/ties.py), which moves its rounding ties
off .5. Both outputs are compared with the host's: the first shows whether a CPU rounds the ties differently,
the second must match everywhere. Built natively with `onnx`; the emulated runs only load
the files (each `control-<name>.onnx` with its input `control-<name>.npy`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cutq.quantize.ties import break_resize_ties

CHANNELS, OUTPUTS, SIDE = 256, 32, 8
X_SCALE, W_SCALE = 2.0**-4, 2.0**-7
WEIGHT_RANGES = {"full": (96, 127), "7bit": (48, 64)}


def _model(nodes, init, x_shape, y_shape) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "control", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, y_shape)], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def control_input(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """u8 activations near the top of the range, and the float input that quantizes to exactly them."""
    codes = rng.integers(240, 256, size=(1, CHANNELS, SIDE, SIDE))
    return codes, (codes * X_SCALE).astype(np.float32)


def control_model(codes: np.ndarray, low: int, high: int, rng: np.random.Generator) -> onnx.ModelProto:
    weights = rng.integers(low, high + 1, size=(OUTPUTS, CHANNELS, 1, 1)) * rng.choice([-1, 1], size=(OUTPUTS, CHANNELS, 1, 1))
    exact = np.einsum("nchw,oc->nohw", codes, weights[:, :, 0, 0])  # int64, the true accumulators
    y_scale = 2.0 ** np.ceil(np.log2(np.abs(exact).max() * X_SCALE * W_SCALE / 127))  # fits [-127, 127] around 128
    init = [
        numpy_helper.from_array(np.array(X_SCALE, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0, np.uint8), "x_zero"),
        numpy_helper.from_array(weights.astype(np.int8), "w_q"),
        numpy_helper.from_array(np.array(W_SCALE, np.float32), "w_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "w_zero"),
        numpy_helper.from_array(np.array(y_scale, np.float32), "y_scale"),
        numpy_helper.from_array(np.array(128, np.uint8), "y_zero"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w_dq"]),
        helper.make_node("Conv", ["x_dq", "w_dq"], ["y_f"]),
        helper.make_node("QuantizeLinear", ["y_f", "y_scale", "y_zero"], ["y"]),
    ]
    return _model(nodes, init, [1, CHANNELS, SIDE, SIDE], [1, OUTPUTS, SIDE, SIDE])


def resize_model() -> onnx.ModelProto:
    init = [numpy_helper.from_array(np.array(0.0731, np.float32), "s"), numpy_helper.from_array(np.array(0, np.uint8), "z"),
            numpy_helper.from_array(np.array([], np.float32), "roi"), numpy_helper.from_array(np.array([], np.float32), "scales"),
            numpy_helper.from_array(np.array([1, 16, 80, 80], np.int64), "sizes")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["x_q"]),
             helper.make_node("DequantizeLinear", ["x_q", "s", "z"], ["x_dq"]),
             helper.make_node("Resize", ["x_dq", "roi", "scales", "sizes"], ["r"], mode="linear",
                              coordinate_transformation_mode="pytorch_half_pixel"),
             helper.make_node("QuantizeLinear", ["r", "s", "z"], ["y"])]
    return _model(nodes, init, [1, 16, 40, 40], [1, 16, 80, 80])


def build(folder: Path) -> list[Path]:
    """Write control-full, control-7bit, control-resize and control-resize-ties (.onnx, with the input as .npy);
    return the model paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    codes, feed = control_input(rng)
    paths = []
    for name, (low, high) in WEIGHT_RANGES.items():
        paths.append(folder / f"control-{name}.onnx")
        onnx.save(control_model(codes, low, high, rng), paths[-1])
        np.save(paths[-1].with_suffix(".npy"), feed)
    feed = (rng.integers(0, 256, (1, 16, 40, 40)) * np.float32(0.0731)).astype(np.float32)
    for name, model in (("resize", resize_model()), ("resize-ties", break_resize_ties(resize_model())[0])):
        paths.append(folder / f"control-{name}.onnx")
        onnx.save(model, paths[-1])
        np.save(paths[-1].with_suffix(".npy"), feed)
    return paths
