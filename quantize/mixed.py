"""Pipeline step: mixed precision, i.e. chosen Conv nodes of a QDQ model run in float.

Excluding a node from ONNX Runtime's quantizer does not keep it float: the Q/DQ pairs of the tensors
around it stay, so it still sees quantized inputs. Here a node is made float at the tensor level: its
activation inputs bypass their Q/DQ pair (it reads the float tensor), and its weight and bias come from
the float model instead of DequantizeLinear. Its output stays quantized for the next INT8 consumer.
ONNX Runtime's quantizer folds a Conv's Relu into the Conv output's quantization (the u8 range starts at
0, so QuantizeLinear clips); a bypass that reads such a tensor gets an explicit Relu back.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx
from onnx import helper, numpy_helper

from cutq_runtime.errors import CutqError

from .graph import copy_model

_QUANTIZED_SUFFIX = "_quantized"


def output_head(model: onnx.ModelProto) -> list[str]:
    """Nodes between the last feature maps and the graph outputs: walking back from the outputs, every
    node up to (not including) a Relu or residual Add. In U²-Net that is the side-output convs, their
    Resize, the fusion Concat and Conv, and the Sigmoids."""
    producers = {out: node for node in model.graph.node for out in node.output}
    head: set[str] = set()
    stack = [output.name for output in model.graph.output]
    while stack:
        node = producers.get(stack.pop())
        if node is None or node.name in head or node.op_type in ("Relu", "Add"):
            continue
        head.add(node.name)
        stack.extend(name for name in node.input if name in producers)
    return sorted(head)


def float_nodes(qdq: onnx.ModelProto) -> list[str]:
    """Names of Conv nodes whose weights are not dequantized, i.e. that run in float (whatever they read)."""
    producers = {out: node for node in qdq.graph.node for out in node.output}
    return [
        node.name
        for node in qdq.graph.node
        if node.op_type == "Conv"
        and not (producers.get(node.input[1]) is not None and producers[node.input[1]].op_type == "DequantizeLinear")
    ]


def keep_float(qdq: onnx.ModelProto, reference: onnx.ModelProto, nodes: Iterable[str]) -> onnx.ModelProto:
    """A copy of `qdq` in which each named node reads float inputs, weights and bias."""
    model = copy_model(qdq)
    wanted = set(nodes)
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    originals = {init.name: init for init in reference.graph.initializer}
    relus = {out for node in reference.graph.node if node.op_type == "Relu" for out in node.output}
    found = set()
    for node in graph.node:
        if node.name not in wanted:
            continue
        found.add(node.name)
        for k, name in enumerate(node.input):
            dq = producers.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producers.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[k] = _float_activation(graph, producers, relus, q.input[0])
            else:
                node.input[k] = _float_initializer(graph, originals, dq.input[0])
    missing = wanted - found
    if missing:
        raise CutqError(f"no such node(s) in the model: {', '.join(sorted(missing))}")
    _prune(graph)
    return model


def _float_activation(graph: onnx.GraphProto, producers: dict[str, onnx.NodeProto], relus: set[str], name: str) -> str:
    """The float tensor before a Q/DQ pair; with its Relu restored when the quantizer folded it away."""
    producer = producers.get(name)
    if name not in relus or producer is None or producer.op_type == "Relu":
        return name
    restored = f"{name}_relu"
    if restored not in producers:
        position = list(graph.node).index(producer) + 1
        relu = helper.make_node("Relu", [name], [restored], name=f"{producer.name}_float_relu")
        graph.node.insert(position, relu)
        producers[restored] = relu
    return restored


def _float_initializer(graph: onnx.GraphProto, originals: dict[str, onnx.TensorProto], quantized: str) -> str:
    """Add the float original of a quantized initializer (`W_quantized` -> `W`) under a fresh name."""
    if not quantized.endswith(_QUANTIZED_SUFFIX) or quantized[: -len(_QUANTIZED_SUFFIX)] not in originals:
        raise CutqError(f"cannot find the float original of initializer '{quantized}'")
    name = quantized[: -len(_QUANTIZED_SUFFIX)] + "_float"
    if not any(init.name == name for init in graph.initializer):
        array = numpy_helper.to_array(originals[quantized[: -len(_QUANTIZED_SUFFIX)]])
        graph.initializer.append(numpy_helper.from_array(array, name))
    return name


def _prune(graph: onnx.GraphProto) -> None:
    """Drop Q/DQ nodes nobody reads any more, then initializers nobody reads."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for node in graph.node for i in node.input} | outputs
        dead = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.output[0] not in used]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    drop_unused_initializers(graph)


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Remove initializers that no node reads any more, in place."""
    used = {i for node in graph.node for i in node.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
