"""Pipeline step: sensitivity, i.e. which Conv breaks the masks when it runs in INT8.

Every Conv output of the quantized model is compared with the same tensor of the float model on a few
images (SQNR, in dB). Errors accumulate along the network, so a node is ranked by the SQNR it loses
relative to the Conv outputs feeding it: the node where the error jumps is the one to keep in float.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from .graph import copy_model, readers
from .verify import session_for

_PASS_THROUGH_LIMIT = 64  # how far back to look for feeding Conv outputs, in nodes


@dataclass(frozen=True)
class NodeSensitivity:
    """A Conv node, the SQNR of its output against float, and the dB it loses relative to its inputs."""

    node: str
    sqnr_db: float
    drop_db: float


def conv_outputs(model: onnx.ModelProto) -> dict[str, str]:
    """Conv node name -> the tensor to compare: its Relu's output when a Relu follows, else its own.

    The quantizer folds a Relu into the Conv (the Conv then produces the Relu's tensor name), so the
    float model's Relu output is the name both models share."""
    consumers = readers(model.graph)
    result = {}
    for node in model.graph.node:
        if node.op_type == "Conv":
            after = consumers.get(node.output[0], [])
            relu = len(after) == 1 and after[0].op_type == "Relu"
            result[node.name] = after[0].output[0] if relu else node.output[0]
    return result


def activations(model: onnx.ModelProto, tensors: Sequence[str], inputs: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
    """The named intermediate tensors for each input, by exposing them as extra graph outputs."""
    probe = copy_model(model)
    existing = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=t) for t in tensors if t not in existing)
    session = session_for(probe)
    name = session.get_inputs()[0].name
    return [session.run(list(tensors), {name: x}) for x in inputs]


def _sqnr(reference: list[np.ndarray], candidate: list[np.ndarray]) -> float:
    signal = sum(float(np.sum(r.astype(np.float64) ** 2)) for r in reference)
    noise = sum(float(np.sum((r.astype(np.float64) - c) ** 2)) for r, c in zip(reference, candidate, strict=True))
    return 10 * np.log10(max(signal, 1e-12) / max(noise, 1e-12))


def _feeding_convs(model: onnx.ModelProto) -> dict[str, set[str]]:
    """For each Conv, the Conv nodes whose outputs reach its input through non-Conv nodes only."""
    producers = {out: node for node in model.graph.node for out in node.output}
    result: dict[str, set[str]] = {}
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        found: set[str] = set()
        stack, seen = [node.input[0]], set()
        while stack and len(seen) < _PASS_THROUGH_LIMIT:
            tensor = stack.pop()
            if tensor in seen:
                continue
            seen.add(tensor)
            producer = producers.get(tensor)
            if producer is None:
                continue
            if producer.op_type == "Conv":
                found.add(producer.name)
            elif producer.op_type != "DequantizeLinear" or producer.input[0] in producers:
                stack.extend(producer.input)
        result[node.name] = found
    return result


class Probe:
    """The float model's Conv outputs on a few images, collected once and compared with every candidate."""

    def __init__(self, reference: onnx.ModelProto, inputs: Sequence[np.ndarray]) -> None:
        self.inputs = list(inputs)
        self.outputs = conv_outputs(reference)
        self.reference = activations(reference, list(self.outputs.values()), self.inputs)
        self.feeding = _feeding_convs(reference)
        self.relu_outputs = {n.output[0] for n in reference.graph.node if n.op_type == "Relu"}


def rank(probe: Probe, quantized: onnx.ModelProto, skip: Sequence[str] = ()) -> list[NodeSensitivity]:
    """Conv nodes of `quantized`, the most damaging first (largest local SQNR drop)."""
    # A folded Relu is applied by the QuantizeLinear after the Conv: apply it here too.
    q_acts = [[np.maximum(a, 0) if n in probe.relu_outputs else a for n, a in zip(probe.outputs.values(), acts, strict=True)]
              for acts in activations(quantized, list(probe.outputs.values()), probe.inputs)]
    sqnr = {
        node: _sqnr([a[i] for a in probe.reference], [a[i] for a in q_acts]) for i, node in enumerate(probe.outputs)
    }
    feeding = probe.feeding
    rows = []
    for node, value in sqnr.items():
        upstream = [sqnr[f] for f in feeding.get(node, ()) if f in sqnr]
        baseline = min(upstream) if upstream else value  # a first layer sees only the input's own Q/DQ
        rows.append(NodeSensitivity(node, value, baseline - value))
    return sorted((r for r in rows if r.node not in set(skip)), key=lambda r: (-r.drop_db, r.node))
