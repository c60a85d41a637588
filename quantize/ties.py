"""Pipeline step: give each quantized bilinear Resize an output scale that no CPU rounds differently.

U²-Net upsamples its 8-bit feature maps 2x with a bilinear Resize between a DequantizeLinear and a
QuantizeLinear of the same scale. ONNX Runtime runs that Resize in float. With half-pixel coordinates the
interpolation weights of a 2x upsampling are sixteenths (9/16, 3/16, 3/16, 1/16), so in units of the input
scale the result is an integer over 16, and one output in sixteen lands exactly on .5 before it is rounded back
to 8 bits. Which way such a tie goes depends on the last bit of the float arithmetic: ONNX Runtime's aarch64
build (FMA contraction, other summation order) sends some of them the other way than x86 does, and one level off
at the first upsampling grows into visibly different masks on a Raspberry Pi.

The fix moves every tie off .5 by the same amount on every CPU: the output scale becomes
`scale / (1 + 2**-13)`. In output levels a value t becomes t * (1 + 2**-13):
- a tie k + 1/2 moves up by at least 2**-14 (6e-5), hundreds of times the float error of the interpolation
  (at most a few units in the last place of t <= 255, about 2e-5 at t = 255 and far less near 0; the inputs
  are all >= 0 when the zero point is 0, so nothing cancels), so every CPU rounds it up;
- any other value moves by at most 255 * 2**-13 = 0.031, less than its distance to a rounding boundary
  (1/16), so it rounds as before.

Only Resizes whose input and output zero points are 0 (all of U²-Net's: they follow a ReLU) are changed; the
readers of the output (DequantizeLinear) take the new scale with it, so the model computes what it did up to
that 1.0001 factor. Other ratios than 2x have interpolation weights that are not sixteenths; their exact ties
are rare and the same change removes them too where they happen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from .graph import copy_model, readers

NUDGE = 2.0**-13  # see the module docstring for why this size


@dataclass(frozen=True)
class TiesConfig:
    """Whether to move the quantized Resizes' rounding ties off .5."""

    enabled: bool = True


@dataclass(frozen=True)
class TiesReport:
    resizes: tuple[str, ...]  # the Resizes whose output scale changed
    skipped: tuple[str, ...]  # quantized linear Resizes left as they were (a nonzero zero point)


def break_resize_ties(model: onnx.ModelProto, config: TiesConfig | None = None) -> tuple[onnx.ModelProto, TiesReport]:
    """A copy of a QDQ model whose quantized linear Resizes round the same on every CPU."""
    config = config or TiesConfig()
    model = copy_model(model)
    if not config.enabled:
        return model, TiesReport((), ())
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    read = readers(graph)
    changed: list[str] = []
    skipped: list[str] = []
    for node in graph.node:
        pair = _quantized_pair(node, producer, read)
        if pair is None:
            continue
        dq, q = pair
        zero_points = [inits.get(n.input[2]) if len(n.input) > 2 else None for n in (dq, q)]
        if any(z is not None and numpy_helper.to_array(z).any() for z in zero_points) or q.input[1] not in inits:
            skipped.append(node.name)
            continue
        scale = numpy_helper.to_array(inits[q.input[1]]).astype(np.float64)
        name = f"{q.output[0]}_tie_scale"
        graph.initializer.append(numpy_helper.from_array((scale / (1 + NUDGE)).astype(np.float32), name))
        q.input[1] = name
        for reader in read.get(q.output[0], []):
            if reader.op_type == "DequantizeLinear":  # it undoes this Quantize, so it takes the same scale
                reader.input[1] = name
        changed.append(node.name)
    return model, TiesReport(tuple(changed), tuple(skipped))


def _quantized_pair(node: onnx.NodeProto, producer: dict, read: dict) -> tuple[onnx.NodeProto, onnx.NodeProto] | None:
    """(DequantizeLinear in, QuantizeLinear out) of a linear Resize that sits between them; else None."""
    if node.op_type != "Resize":
        return None
    mode = next((a.s for a in node.attribute if a.name == "mode"), b"nearest")
    dq = producer.get(node.input[0])
    out = read.get(node.output[0], [])
    if mode != b"linear" or dq is None or dq.op_type != "DequantizeLinear" or len(out) != 1:
        return None
    return (dq, out[0]) if out[0].op_type == "QuantizeLinear" else None
