"""Pipeline step: store the weights of the large INT8 Convs at 4 bits, run them at 8.

Almost all of U²-Net's bytes are Conv weights in its wide, low-resolution stages, where few of its MACs
are. Each such weight is re-quantized to a signed 4-bit integer (per output channel, symmetric, the scale
set by the channel's largest weight: an MSE-chosen clip lost more mask SSIM on u2net-p50), rounded with
GPTQ on the calibration photos when they are given (`gptq.py`; nearest rounding otherwise), and stored as
an INT4 initializer followed by `Cast(to=INT8)`. The Cast has a constant input, so ONNX Runtime folds it
when the session is created and the Conv is fused into QLinearConv as before: the file shrinks and the
session runs exactly as fast as the all-INT8 one. A direct INT4 DequantizeLinear would not be fused, and
the Convs would run in float at about twice the latency. The bias, quantized as int32 with the scale
input scale x weight scale (which ONNX Runtime's fusion expects), is re-quantized with the new weight scale.

INT4 tensors need opset 21, so the model's default-domain opset is raised to 21 (every op U²-Net uses
keeps its meaning). ONNX Runtime has a CPU kernel for the INT4 Cast from 1.23 on (1.22.1 and older refuse
the file when the session is created), so the manifest records `requires.onnxruntime` and cutq_runtime
says so before loading.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cutq_runtime.errors import CutqError

from .gptq import GptqConfig, input_grams, round_to_grid
from .graph import copy_model, int8_conv_weights
from .mixed import drop_unused_initializers

INT4_OPSET = 21
INT4_MIN_IR = 10
MIN_ONNXRUNTIME = "1.23"


@dataclass(frozen=True)
class PackConfig:
    """Convs with at least `min_weights` INT8 weights get 4-bit weights; 0 leaves every Conv at 8 bits."""

    min_weights: int = 0
    rounding: str = "gptq"  # or "nearest"; GPTQ needs calibration tensors and falls back to nearest without
    gptq: GptqConfig = field(default_factory=GptqConfig)

    def __post_init__(self) -> None:
        if self.min_weights < 0:
            raise CutqError(f"`min_weights` (4-bit storage) must be >= 0, got {self.min_weights}")
        if self.rounding not in ("gptq", "nearest"):
            raise CutqError(f"4-bit `rounding` must be 'gptq' or 'nearest', not {self.rounding!r}")

    @property
    def enabled(self) -> bool:
        return self.min_weights > 0


@dataclass(frozen=True)
class PackReport:
    convs: tuple[str, ...]  # Convs whose weights are stored at 4 bits
    weights: int  # how many weights that is
    int8_weights: int  # all INT8 Conv weights in the model, for the share
    rounding: str = "nearest"  # what was used: "gptq" or "nearest"


def pack_int4(model: onnx.ModelProto, config: PackConfig | None = None, tensors: Sequence[np.ndarray] = (),
              progress: Callable[[str], None] = lambda message: None) -> tuple[onnx.ModelProto, PackReport]:
    """A copy of a QDQ model with the weights of its large INT8 Convs stored at 4 bits.

    `tensors` are calibration inputs for GPTQ rounding (config.rounding "gptq"); without them each weight
    is rounded to its nearest 4-bit step."""
    config = config or PackConfig()
    if not config.enabled:  # the default: no copy of the model, nothing read
        return model, PackReport((), 0, 0)
    out = copy_model(model)
    graph = out.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    chosen: list[tuple[onnx.NodeProto, onnx.NodeProto, np.ndarray]] = []  # (Conv, weight DQ, float weights)
    total = 0
    for node, dq, weight in int8_conv_weights(graph):
        size = int(np.prod(weight.dims))
        total += size
        if size >= config.min_weights and _per_channel_symmetric(dq, inits, weight):
            scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float32)
            q = numpy_helper.to_array(weight).astype(np.float32)
            chosen.append((node, dq, q * scale.reshape(-1, *[1] * (q.ndim - 1))))
    gptq = config.rounding == "gptq" and bool(tensors) and bool(chosen)
    grams = input_grams(model, [c for c, _, _ in chosen], [w.shape for _, _, w in chosen], tensors,
                        lambda done: progress(f"4-bit weights: input statistics, photo {done}/{len(tensors)}")) if gptq else []
    casts: list[onnx.NodeProto] = []
    for i, (node, dq, w) in enumerate(chosen):
        q4, scale4 = _to_int4(w)
        if gptq:
            progress(f"4-bit weights: GPTQ rounding, Conv {i + 1}/{len(chosen)}")
            q4 = round_to_grid(w.reshape(len(w), -1), scale4, grams[i], config.gptq).reshape(w.shape)
        name = f"{dq.input[0]}_int4"
        graph.initializer.extend([_int4_tensor(name, q4), numpy_helper.from_array(scale4, f"{dq.input[1]}_int4")])
        casts.append(helper.make_node("Cast", [name], [f"{name}_as_int8"], name=f"{name}_widen", to=TensorProto.INT8))
        dq.input[0], dq.input[1] = f"{name}_as_int8", f"{dq.input[1]}_int4"
        if len(node.input) > 2 and node.input[2]:
            _requantize_bias(graph, producer, inits, node, scale4)
    if chosen:
        nodes = casts + list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes)
        drop_unused_initializers(graph)
        for opset in out.opset_import:
            if opset.domain in ("", "ai.onnx"):
                opset.version = max(opset.version, INT4_OPSET)
        out.ir_version = max(out.ir_version, INT4_MIN_IR)
    report = PackReport(tuple(c.name for c, _, _ in chosen), sum(w.size for _, _, w in chosen), total,
                        "gptq" if gptq else "nearest")
    return out, report


def _per_channel_symmetric(dq: onnx.NodeProto, inits: dict, weight: onnx.TensorProto) -> bool:
    """Only per-output-channel scales with zero points of 0 are re-quantized (what cutq's QDQ step writes)."""
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    scale = numpy_helper.to_array(inits[dq.input[1]]) if dq.input[1] in inits else None
    zero = numpy_helper.to_array(inits[dq.input[2]]) if len(dq.input) > 2 and dq.input[2] in inits else np.zeros(1)
    return scale is not None and scale.shape == (weight.dims[0],) and axis == 0 and not np.any(zero)


def _to_int4(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel 4-bit values in [-8, 7] and their scales (largest weight -> 7)."""
    flat = w.reshape(w.shape[0], -1)
    scale = np.maximum(np.abs(flat).max(axis=1) / 7, np.finfo(np.float32).tiny).astype(np.float32)
    q4 = np.clip(np.round(flat / scale[:, None]), -8, 7).astype(np.int8).reshape(w.shape)
    return q4, scale


def _int4_tensor(name: str, q4: np.ndarray) -> onnx.TensorProto:
    """INT4 initializer: two's-complement nibbles, two per byte, the first element in the low nibble."""
    nibbles = (q4.reshape(-1).astype(np.int16) & 0xF).astype(np.uint8)
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    packed = (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8)
    return helper.make_tensor(name, TensorProto.INT4, q4.shape, packed.tobytes(), raw=True)


def _requantize_bias(graph: onnx.GraphProto, producer: dict, inits: dict, conv: onnx.NodeProto,
                     weight_scale: np.ndarray) -> None:
    """Re-quantize the int32 bias to input scale x the new weight scale, the product QLinearConv is fused with."""
    bias_dq, input_dq = producer.get(conv.input[2]), producer.get(conv.input[0])
    if bias_dq is None or bias_dq.op_type != "DequantizeLinear" or input_dq is None or input_dq.op_type != "DequantizeLinear":
        return
    if bias_dq.input[0] not in inits or input_dq.input[1] not in inits:
        return
    bias = numpy_helper.to_array(inits[bias_dq.input[0]]).astype(np.float64)
    bias *= numpy_helper.to_array(inits[bias_dq.input[1]]).astype(np.float64)
    scale = (numpy_helper.to_array(inits[input_dq.input[1]]).astype(np.float32) * weight_scale).astype(np.float32)
    values = np.clip(np.round(bias / scale), np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)
    name = f"{bias_dq.input[0]}_w4"
    graph.initializer.extend([numpy_helper.from_array(values, name), numpy_helper.from_array(scale, f"{name}_scale")])
    bias_dq.input[0], bias_dq.input[1] = name, f"{name}_scale"
