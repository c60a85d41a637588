"""Reading intermediate feature maps with onnxruntime, for the activation criterion and the reconstruction.

The requested tensors become the outputs of a copy of the model cut down to the nodes they depend on:
onnxruntime runs every node of a graph whatever outputs are asked for, and the reconstruction asks for
early layers many times. onnxruntime never fuses a graph output away, so the values are the ones the
unmodified graph computes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from cutq.quantize.verify import session_for


def with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of `model` whose outputs are `names` (float tensors), without the nodes they do not need."""
    producers = {out: node for node in model.graph.node for out in node.output}
    needed: set[str] = set()
    stack = list(names)
    while stack:
        name = stack.pop()
        node = producers.get(name)
        if node is not None and node.name + "\0" + node.output[0] not in needed:
            needed.add(node.name + "\0" + node.output[0])
            stack.extend(node.input)
    cut = onnx.ModelProto()
    cut.CopyFrom(model)
    kept = [n for n in cut.graph.node if n.name + "\0" + n.output[0] in needed]
    del cut.graph.node[:]
    cut.graph.node.extend(kept)
    used = {i for n in kept for i in n.input}
    inits = [i for i in cut.graph.initializer if i.name in used]
    del cut.graph.initializer[:]
    cut.graph.initializer.extend(inits)
    del cut.graph.output[:]
    cut.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in dict.fromkeys(names))
    return cut


def capture(model: onnx.ModelProto, names: Sequence[str], tensors: Sequence[np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    """For each input tensor, `{name: value}` of the requested feature maps; one image at a time to bound memory."""
    names = list(dict.fromkeys(names))
    session = session_for(with_outputs(model, names))
    feed = session.get_inputs()[0].name
    for tensor in tensors:
        yield dict(zip(names, session.run(names, {feed: tensor}), strict=True))
