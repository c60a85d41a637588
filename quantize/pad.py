"""Pipeline step: pad INT8 Convs' input channels to a multiple of 4 (U²-Net's RGB Conv gets a 4th, zero one).

ONNX Runtime's INT8 Conv is slow on 3 input channels, and U²-Net's first Conv reads the 3 colour channels
at full resolution, so that one Conv took far more of a run than its share of the MACs.

The rewrite pads the quantized input (uint8, before it is dequantized) with its zero point, which
dequantizes to exactly 0, and gives the weights a zero slice for the new channel. The integer sums are
the same, so the outputs are bit for bit the same.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .graph import copy_model
from .mixed import drop_unused_initializers


@dataclass(frozen=True)
class PadConfig:
    """Pad INT8 Convs' input channels up to a multiple of `multiple` (ungrouped Convs only)."""

    enabled: bool = True
    multiple: int = 4


def pad_conv_inputs(model: onnx.ModelProto, config: PadConfig | None = None) -> tuple[onnx.ModelProto, tuple[str, ...]]:
    """A copy of `model` in which each INT8 Conv's input channels are padded to `config.multiple`; and their names.

    Only Convs in QDQ form qualify: activation read through DequantizeLinear(QuantizeLinear(...)) and weights
    through a DequantizeLinear of a constant. Float Convs and anything else are left alone.
    """
    config = config or PadConfig()
    if not config.enabled:
        return model, ()
    out = copy_model(model)
    graph = out.graph
    producers = {o: n for n in graph.node for o in n.output}
    inits = {t.name: t for t in graph.initializer}
    reads = Counter(name for n in graph.node for name in set(n.input))
    padded: list[str] = []
    for node in list(graph.node):
        plan = _plan(node, producers, inits, reads, config.multiple)
        if plan is None:
            continue
        x_dq, w_dq, extra = plan
        w = numpy_helper.to_array(inits[w_dq.input[0]])
        _pad_activation(graph, node, x_dq, extra, w.ndim)
        wide = np.concatenate([w, np.zeros((w.shape[0], extra, *w.shape[2:]), w.dtype)], axis=1)
        name = f"{w_dq.input[0]}_padded"
        graph.initializer.append(numpy_helper.from_array(wide, name))
        w_dq.input[0] = name
        padded.append(node.name)
    drop_unused_initializers(graph)
    return out, tuple(padded)


def _plan(node: onnx.NodeProto, producers: dict[str, onnx.NodeProto], inits: dict[str, onnx.TensorProto],
          reads: Counter[str], multiple: int) -> tuple[onnx.NodeProto, onnx.NodeProto, int] | None:
    """(activation DequantizeLinear, weight DequantizeLinear, channels to add) for a Conv that qualifies."""
    if node.op_type != "Conv" or len(node.input) < 2:
        return None
    if any(a.name == "group" and a.i != 1 for a in node.attribute):
        return None
    x_dq, w_dq = producers.get(node.input[0]), producers.get(node.input[1])
    if x_dq is None or w_dq is None or x_dq.op_type != "DequantizeLinear" or w_dq.op_type != "DequantizeLinear":
        return None
    x_q = producers.get(x_dq.input[0])
    if x_q is None or x_q.op_type != "QuantizeLinear" or w_dq.input[0] not in inits:
        return None
    channels = inits[w_dq.input[0]].dims[1]
    extra = -channels % multiple
    # Weights read by another node too would change under it; U²-Net never shares them.
    shared = reads[w_dq.input[0]] > 1 or reads[w_dq.output[0]] > 1
    return (x_dq, w_dq, extra) if extra and not shared else None


def _pad_activation(graph: onnx.GraphProto, conv: onnx.NodeProto, x_dq: onnx.NodeProto, extra: int, rank: int) -> None:
    """conv reads DequantizeLinear(Pad(q, zero point)) instead of DequantizeLinear(q): `extra` channels at the end."""
    quantized, scale, zero = x_dq.input[0], x_dq.input[1], x_dq.input[2] if len(x_dq.input) > 2 else ""
    ends = [0] * rank
    ends[1] = extra
    pads = numpy_helper.from_array(np.array([0] * rank + ends, np.int64), f"{conv.name}_input_pads")
    graph.initializer.append(pads)
    wide = f"{quantized}_padded_{conv.name}"
    pad = helper.make_node("Pad", [quantized, pads.name, *([zero] if zero else [])], [wide], name=f"{conv.name}_input_pad")
    dq = helper.make_node("DequantizeLinear", [wide, scale, *([zero] if zero else [])], [f"{wide}_dequantized"],
                          name=f"{conv.name}_input_dequantize")
    position = list(graph.node).index(conv)
    graph.node.insert(position, dq)
    graph.node.insert(position, pad)
    conv.input[0] = dq.output[0]
