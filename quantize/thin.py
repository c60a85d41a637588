"""Pipeline step: run float Convs with very few output channels as a 1x1 Conv plus a tap-summing Conv.

ONNX Runtime's float Conv works on output channels in blocks of 8 or 16 (its NCHWc layout), so a Conv
with one output channel does up to 16 times the useful work. U²-Net's side-output Convs are such Convs
(64 -> 1 channel, 3x3), and the first of them runs at full resolution, where that waste is a noticeable share of
a run. Split in two it does the same arithmetic in a different order:

    y = sum over taps t=(i, j) of shift_t( sum over c of W[m, c, i, j] * x[c] ) + b

The 1x1 Conv computes every tap's channel sum at once (M*kh*kw output channels, a full block), the second
Conv adds the shifted tap maps with a one-hot kernel, taking the original padding, strides and
dilations. A zero-padded input gives zero tap sums, so the borders are exact too; the results differ
from the direct Conv by float rounding only.

Running the 1x1 Conv in INT8 as well was measured and made the file no faster, so it is not done.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .graph import copy_model
from .mixed import drop_unused_initializers


@dataclass(frozen=True)
class ThinConfig:
    """Which float Convs are split: at most `max_outputs` output channels, and fewer tap sums than inputs."""

    enabled: bool = True
    max_outputs: int = 2


def split_thin_convs(model: onnx.ModelProto, config: ThinConfig | None = None) -> tuple[onnx.ModelProto, tuple[str, ...]]:
    """A copy of `model` in which each thin float Conv is a 1x1 Conv plus a tap-summing Conv; and their names."""
    config = config or ThinConfig()
    if not config.enabled:
        return model, ()
    out = copy_model(model)
    graph = out.graph
    inits = {t.name: t for t in graph.initializer}
    nodes: list[onnx.NodeProto] = []
    split: list[str] = []
    for node in graph.node:
        weight = inits.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute} if weight is not None else {}
        if weight is None or attrs.get("group", 1) != 1:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(weight)
        outputs, channels, kh, kw = w.shape
        taps = kh * kw
        if outputs > config.max_outputs or taps == 1 or outputs * taps >= channels:
            nodes.append(node)
            continue
        nodes += _split(node, w, attrs, graph)
        split.append(node.name)
    del graph.node[:]
    graph.node.extend(nodes)
    drop_unused_initializers(graph)
    return out, tuple(split)


def _split(node: onnx.NodeProto, w: np.ndarray, attrs: dict, graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The two Convs replacing `node`, with their initializers added to `graph`."""
    outputs, channels, kh, kw = w.shape
    taps = kh * kw
    # tap sums: channel m * taps + (i * kw + j) holds sum over c of W[m, c, i, j] * x[c]
    per_tap = w.reshape(outputs, channels, taps).transpose(0, 2, 1).reshape(outputs * taps, channels, 1, 1)
    one_hot = np.zeros((outputs, taps, kh, kw), dtype=w.dtype)
    for t in range(taps):
        one_hot[:, t, t // kw, t % kw] = 1
    names = (f"{node.name}_tap_weights", f"{node.name}_tap_sum")
    graph.initializer.extend([numpy_helper.from_array(np.ascontiguousarray(per_tap), names[0]),
                              numpy_helper.from_array(one_hot, names[1])])
    tap_maps = f"{node.output[0]}_taps"
    first = helper.make_node("Conv", [node.input[0], names[0]], [tap_maps], name=f"{node.name}_taps", kernel_shape=[1, 1])
    kept = {k: v for k, v in attrs.items() if k in ("pads", "strides", "dilations", "auto_pad")}
    second = helper.make_node("Conv", [tap_maps, names[1], *node.input[2:]], list(node.output), name=node.name,
                              kernel_shape=[kh, kw], group=outputs, **kept)
    return [first, second]
