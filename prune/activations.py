"""Reading intermediate feature maps with onnxruntime, for the criteria, the compensation and the reconstruction.

The requested tensors become the outputs of a copy of the model cut down to the nodes they depend on:
onnxruntime runs every node of a graph whatever outputs are asked for, and the reconstruction asks for
early layers many times. onnxruntime never fuses a graph output away, so the values are the ones the
unmodified graph computes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from cutq.quantize.graph import copy_model
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
    cut = copy_model(model)
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
    session = session_for(with_outputs(model, names), arena=False)
    feed = session.get_inputs()[0].name
    for tensor in tensors:
        yield dict(zip(names, session.run(names, {feed: tensor}), strict=True))


@dataclass(frozen=True)
class Moments:
    """Per-channel mean and standard deviation of one feature map over every position of every image,
    and its spatial size (the bias compensation needs it to know how much of a kernel falls on padding)."""

    mean: np.ndarray
    std: np.ndarray
    size: tuple[int, int]


def moments(model: onnx.ModelProto, names: Sequence[str], tensors: Sequence[np.ndarray]) -> dict[str, Moments]:
    """`Moments` of the feature maps `names` over `tensors` (float64 sums: means of ~10⁵ positions per image)."""
    names = list(dict.fromkeys(names))
    sums = {name: 0.0 for name in names}
    squares = {name: 0.0 for name in names}
    sizes: dict[str, tuple[int, int]] = {}
    count = {name: 0 for name in names}
    for values in capture(model, names, tensors):
        for name in names:
            value = values[name]
            sums[name] = sums[name] + value.sum(axis=(0, 2, 3), dtype=np.float64)
            squares[name] = squares[name] + np.square(value, dtype=np.float64).sum(axis=(0, 2, 3))
            count[name] += value.size // value.shape[1]
            sizes[name] = tuple(value.shape[2:])
    found = {}
    for name in names:
        mean = sums[name] / count[name]
        found[name] = Moments(mean, np.sqrt(np.maximum(squares[name] / count[name] - mean**2, 0.0)), sizes[name])
    return found


def conv_input_moments(model: onnx.ModelProto, convs: Sequence[str], tensors: Sequence[np.ndarray]) -> dict[str, Moments]:
    """Conv name -> `Moments` of the tensor it reads (after Relu/MaxPool/Resize/Concat), for each of `convs`."""
    reads = {n.name: n.input[0] for n in model.graph.node if n.op_type == "Conv"}
    found = moments(model, [reads[conv] for conv in convs], tensors)
    return {conv: found[reads[conv]] for conv in convs}


class Frontier:
    """Runs a model over fixed images in consecutive pieces, keeping between pieces only the live tensors.

    The reconstruction refits U²-Net one wave of Convs at a time, and each wave must see the network with
    every earlier wave already refit. Running the whole network again for each of ~110 waves costs ~110
    forward passes; here each piece runs only the nodes not yet run, from the cached tensors they read, so
    the total is about one forward pass. Nodes are identified by position, so the weights may change between
    pieces as long as the graph's structure does not; a node's weights are read when the node runs.
    """

    def __init__(self, model: onnx.ModelProto, tensors: Sequence[np.ndarray]) -> None:
        inferred = onnx.shape_inference.infer_shapes(model)
        self.types = {v.name: v.type.tensor_type.elem_type
                      for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
        nodes = model.graph.node
        self.producer = {out: i for i, node in enumerate(nodes) for out in node.output}
        self.consumers: dict[str, list[int]] = {}
        for i, node in enumerate(nodes):
            for name in node.input:
                self.consumers.setdefault(name, []).append(i)
        feed = next(i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer})
        self.done: set[int] = set()
        self.cache = [{feed: t} for t in tensors]

    def advance(self, model: onnx.ModelProto, wanted: Sequence[str]) -> list[dict[str, np.ndarray]]:
        """Per image, the `wanted` tensors, computed by running the nodes they need that have not run yet."""
        have = set(self.cache[0]) if self.cache else set()
        run: set[int] = set()
        stack = [w for w in wanted if w not in have]
        while stack:
            i = self.producer[stack.pop()]
            if i not in run:
                run.add(i)
                stack.extend(n for n in model.graph.node[i].input if n and n not in have and n in self.producer)
        self.done |= run
        live = {out for i in run for out in model.graph.node[i].output
                if out in wanted or any(c not in self.done for c in self.consumers.get(out, []))}
        if run:
            piece = self._piece(model, sorted(run), have, sorted(live))
            session = session_for(piece, arena=False)
            feeds = [i.name for i in piece.graph.input]
            for cached in self.cache:
                cached.update(zip(sorted(live), session.run(sorted(live), {n: cached[n] for n in feeds}), strict=True))
        for cached in self.cache:  # forget what no node left to run reads
            for name in [n for n in cached if n not in wanted and all(c in self.done for c in self.consumers.get(n, []))]:
                del cached[name]
        return [{w: cached[w] for w in wanted} for cached in self.cache]

    def _piece(self, model: onnx.ModelProto, nodes: list[int], have: set[str], outputs: list[str]) -> onnx.ModelProto:
        graph = model.graph
        chosen = [graph.node[i] for i in nodes]
        reads = {n for node in chosen for n in node.input if n}
        inits = [t for t in graph.initializer if t.name in reads]
        stored = {t.name for t in inits}
        inputs = sorted(n for n in reads if n in have and n not in stored)

        def value(name: str) -> onnx.ValueInfoProto:
            return helper.make_tensor_value_info(name, self.types.get(name, TensorProto.FLOAT), None)

        piece = helper.make_graph(chosen, "piece", [value(n) for n in inputs], [value(n) for n in outputs], inits)
        return helper.make_model(piece, opset_imports=model.opset_import, ir_version=model.ir_version)
