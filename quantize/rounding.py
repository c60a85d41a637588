"""Pipeline step: round the INT8 Convs' weights for the grid they actually use, then correct their biases.

The QDQ step rounds every weight to its nearest step of a 7-bit grid ([-64, 64], so that no CPU's integer
kernels saturate; see qdq.py). That doubles the step of the full 8-bit grid, and nearest rounding treats each
weight on its own. Two corrections win most of that back, both computed on the calibration photos:

- GPTQ rounding (`gptq.py`): the columns of each Conv's [O, C*kh*kw] weight matrix are rounded one at a time
  and each column's error is spread over the columns not yet rounded, through the inverse Gram matrix of the
  Conv's im2col inputs. The grid (the per-channel scale) stays the one the quantizer chose, so the file is
  stored and fused exactly as before.
- Bias correction: what rounding still shifts on average, (W - W_q) times the mean input patch, is added to
  the Conv's bias (int32, at the scale input scale x weight scale, which ONNX Runtime's fusion expects).

- Step search (optional, off by default, see `RoundingConfig.scales`): each output channel's step chosen from
  shares of the largest-weight step to minimise its output error on the calibration inputs, (w - w_q)^T H
  (w - w_q) with nearest rounding, H the Gram matrix (its diagonal where the full one is not kept).

The statistics come from the float model's inputs at up to `positions` sampled output positions per photo
and Conv (a seeded sample, so the same photos give the same bytes). Convs whose patch is wider than
`max_patch` (u2net's 512- and 1024-channel Convs at 10x10 and 20x20) get nearest rounding and the bias
correction only: inverting their Gram matrices would cost minutes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from cutq.prune.activations import capture
from cutq.prune.geometry import Geometry, im2col
from cutq.prune.reconstruct import sample_positions
from cutq_runtime.errors import CutqError

from .gptq import GptqConfig, round_to_grid
from .graph import copy_model, int8_conv_weights

METHODS = ("gptq", "nearest")


@dataclass(frozen=True)
class RoundingConfig:
    """How the INT8 Conv weights are rounded: GPTQ or nearest, with or without bias correction."""

    method: str = "gptq"
    bias_correction: bool = True
    positions: int = 2048  # sampled output positions per photo and Conv for the input statistics
    max_patch: int = 2304  # widest im2col patch (C*kh*kw) that gets GPTQ; wider ones are rounded to nearest
    # Candidate steps, as shares of max|w| / limit. Off by default: each channel's output error falls on average,
    # but the clipped large weights are the ones rare photos need, and the worst photo's mask got worse.
    scales: tuple[float, ...] = (1.0,)
    seed: int = 0
    gptq: GptqConfig = field(default_factory=GptqConfig)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise CutqError(f"rounding method '{self.method}' is not one of {', '.join(METHODS)}")

    @property
    def enabled(self) -> bool:
        return self.method == "gptq" or self.bias_correction or self.scales != (1.0,)


@dataclass(frozen=True)
class RoundingReport:
    gptq_convs: int  # Convs whose weights were re-rounded with GPTQ
    corrected_biases: int  # Convs whose bias absorbed the mean rounding error
    max_abs_weight: int  # the largest integer weight magnitude of any INT8 Conv afterwards


@dataclass
class _Conv:
    """One INT8 Conv: its node, the float weights it stands for, its grid, and where its integers live."""

    node: onnx.NodeProto
    weight: onnx.TensorProto  # the INT8 initializer
    scale: np.ndarray  # [O]
    float_weights: np.ndarray  # [O, C, kh, kw], from the float model
    scale_tensor: onnx.TensorProto  # the weight scale initializer
    bias: tuple[onnx.TensorProto, onnx.TensorProto] | None  # the int32 initializer and its scale initializer
    limit: int  # largest magnitude the grid allows


def round_weights(qdq: onnx.ModelProto, reference: onnx.ModelProto, tensors: Sequence[np.ndarray],
                  config: RoundingConfig | None = None,
                  progress: Callable[[str], None] = lambda message: None) -> tuple[onnx.ModelProto, RoundingReport]:
    """A copy of `qdq` whose INT8 Conv weights (and biases) are re-rounded using `reference`'s float weights and
    its inputs on `tensors`."""
    config = config or RoundingConfig()
    model = copy_model(qdq)
    convs = _int8_convs(model, reference)
    if not config.enabled or not convs or not tensors:
        return model, RoundingReport(0, 0, max_abs_weight(model))
    stats = _statistics(reference, convs, tensors, config, progress)
    rounded = 0
    for i, (conv, (gram, squares, mean)) in enumerate(zip(convs, stats, strict=True)):
        progress(f"rounding weights: Conv {i + 1}/{len(convs)}")
        w = conv.float_weights.reshape(len(conv.float_weights), -1).astype(np.float64)
        scale = _best_scale(w, conv.scale, gram, squares, conv.limit, config.scales)
        if config.method == "gptq" and gram is not None:
            q = round_to_grid(w, scale, gram, config.gptq, -conv.limit, conv.limit).astype(np.float64)
            rounded += 1
        else:
            q = np.clip(np.round(w / scale[:, None]), -conv.limit, conv.limit)
        shift = (w - q * scale[:, None]) @ mean if config.bias_correction else np.zeros(len(w))
        _store(conv, q, scale, shift)
    corrected = sum(c.bias is not None for c in convs) if config.bias_correction else 0
    return model, RoundingReport(rounded, corrected, max_abs_weight(model))


def _best_scale(w: np.ndarray, scale: np.ndarray, gram: np.ndarray | None, squares: np.ndarray, limit: int,
                shares: Sequence[float]) -> np.ndarray:
    """Per output channel, the step among `shares` x `scale` whose nearest rounding changes the output least."""
    errors = []
    for share in shares:
        step = scale[:, None] * share
        d = w - np.clip(np.round(w / step), -limit, limit) * step
        errors.append(((d @ gram) * d).sum(axis=1) if gram is not None else (d * d) @ squares)
    best = np.argmin(np.stack(errors), axis=0)
    return scale * np.asarray(shares)[best]


def _store(conv: _Conv, q: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> None:
    """Write the integers and the (new) step, and re-express the bias, plus `shift`, at the new bias scale."""
    conv.weight.CopyFrom(numpy_helper.from_array(q.reshape(conv.float_weights.shape).astype(np.int8), conv.weight.name))
    conv.scale_tensor.CopyFrom(numpy_helper.from_array(scale.astype(np.float32), conv.scale_tensor.name))
    if conv.bias is None:
        return
    tensor, bias_scale = conv.bias
    old = np.broadcast_to(numpy_helper.to_array(bias_scale).astype(np.float64), tuple(tensor.dims))
    bias = numpy_helper.to_array(tensor).astype(np.float64) * old + shift
    new = (old / conv.scale * scale).astype(np.float32)  # input scale x the new weight scale
    info = np.iinfo(np.int32)
    values = np.clip(np.round(bias / new.astype(np.float64)), info.min, info.max).astype(np.int32)
    tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    bias_scale.CopyFrom(numpy_helper.from_array(new.reshape(numpy_helper.to_array(bias_scale).shape), bias_scale.name))


def _int8_convs(model: onnx.ModelProto, reference: onnx.ModelProto) -> list[_Conv]:
    """Every INT8 Conv with per-output-channel symmetric scales whose float original (`W` for `W_quantized`) is
    in `reference`."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    originals = {t.name: t for t in reference.graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    found = []
    for node, dq, weight in int8_conv_weights(graph):
        if dq.input[1] not in inits:
            continue
        scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
        zero = numpy_helper.to_array(inits[dq.input[2]]) if len(dq.input) > 2 and dq.input[2] in inits else np.zeros(1)
        original = originals.get(weight.name.removesuffix("_quantized"))
        if scale.shape != (weight.dims[0],) or np.any(zero) or original is None:
            continue
        floats = numpy_helper.to_array(original).astype(np.float32)
        if floats.shape != tuple(weight.dims):
            continue
        limit = int(np.abs(numpy_helper.to_array(weight)).max())  # the grid's edge: the largest weight sits on it
        found.append(_Conv(node, weight, scale, floats, inits[dq.input[1]], _bias(node, producer, inits), max(limit, 1)))
    return found


def _bias(node: onnx.NodeProto, producer: dict, inits: dict) -> tuple[onnx.TensorProto, onnx.TensorProto] | None:
    """The Conv's int32 bias initializer and its scale initializer, when it is quantized that way."""
    dq = producer.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits or dq.input[1] not in inits:
        return None
    tensor = inits[dq.input[0]]
    if tensor.data_type != TensorProto.INT32:
        return None
    return tensor, inits[dq.input[1]]


def _statistics(reference: onnx.ModelProto, convs: Sequence[_Conv], tensors: Sequence[np.ndarray], config: RoundingConfig,
                progress: Callable[[str], None]) -> list[tuple[np.ndarray | None, np.ndarray, np.ndarray]]:
    """Per Conv, over its sampled im2col inputs: X^T X (None for patches wider than `max_patch`), the sum of
    squares of each column (the Gram's diagonal) and the mean patch."""
    nodes = {n.name: n for n in reference.graph.node}
    refs = [nodes.get(c.node.name) for c in convs]
    if any(r is None or r.op_type != "Conv" for r in refs):
        raise CutqError("the float reference lacks some of the quantized model's Convs")
    geometries = [Geometry.of(r, c.float_weights) for r, c in zip(refs, convs, strict=True)]
    sizes = [c.float_weights[0].size for c in convs]
    grams: list[np.ndarray | None] = [np.zeros((d, d)) if d <= config.max_patch else None for d in sizes]
    sums = [np.zeros(d) for d in sizes]
    squares = [np.zeros(d) for d in sizes]
    count = [0] * len(convs)
    for image, values in enumerate(capture(reference, [r.input[0] for r in refs], tensors)):
        progress(f"rounding weights: input statistics, photo {image + 1}/{len(tensors)}")
        for k, (ref, geometry) in enumerate(zip(refs, geometries, strict=True)):
            x = values[ref.input[0]][0]
            ys, xs = sample_positions((config.seed, image, k), geometry.output_size(x.shape[1:]), config.positions)
            cols = im2col(x, geometry, ys, xs).astype(np.float64)
            sums[k] += cols.sum(axis=0)
            squares[k] += (cols * cols).sum(axis=0)
            count[k] += len(cols)
            gram = grams[k]
            if gram is not None:
                gram += cols.T @ cols
    return [(g, q, s / max(n, 1)) for g, q, s, n in zip(grams, squares, sums, count, strict=True)]


def max_abs_weight(model: onnx.ModelProto) -> int:
    """The largest |integer weight| over every Conv weight stored as INT8 (the quantity saturation depends on)."""
    return max((int(np.abs(numpy_helper.to_array(w).astype(np.int32)).max()) for _, _, w in int8_conv_weights(model.graph)),
               default=0)
