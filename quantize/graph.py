"""Pipeline step: graph pre-processing before quantization.

ONNX Runtime's `quant_pre_process` runs symbolic shape inference (so every activation has a shape the
quantizer can use) and its own graph optimizer, which folds constants and fuses patterns that would
otherwise get separate Q/DQ pairs.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnxruntime.quantization.shape_inference import quant_pre_process

from cutq_runtime.errors import ModelError


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A deep copy, for steps that return a changed model and leave their input as it was."""
    copied = onnx.ModelProto()
    copied.CopyFrom(model)
    return copied


def int8_conv_weights(graph: onnx.GraphProto) -> list[tuple[onnx.NodeProto, onnx.NodeProto, onnx.TensorProto]]:
    """(Conv, its weight's DequantizeLinear, the INT8 initializer) for every Conv of a QDQ graph whose weights are
    stored as INT8: the Convs ONNX Runtime fuses into integer kernels."""
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    found = []
    for node in graph.node:
        dq = producer.get(node.input[1]) if node.op_type == "Conv" else None
        weight = inits.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if weight is not None and weight.data_type == onnx.TensorProto.INT8:
            found.append((node, dq, weight))
    return found


def readers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes that read it, in graph order."""
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


@dataclass(frozen=True)
class GraphConfig:
    """Which parts of ONNX Runtime's pre-processing to run."""

    optimize: bool = True
    symbolic_shapes: bool = True


@dataclass(frozen=True)
class GraphReport:
    nodes_before: int
    nodes_after: int


def preprocess_graph(model: onnx.ModelProto, config: GraphConfig | None = None) -> tuple[onnx.ModelProto, GraphReport]:
    """Shape-infer and optimize; the model's inputs, outputs and function are unchanged."""
    config = config or GraphConfig()
    with tempfile.TemporaryDirectory(prefix="cutq-graph-") as tmp:
        out = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(
                model, out, skip_optimization=not config.optimize, skip_symbolic_shape=not config.symbolic_shapes
            )
        except Exception as exc:  # shape inference raises many unrelated types
            raise ModelError(f"graph pre-processing failed: {exc}") from exc
        processed = onnx.load(out)
    return processed, GraphReport(len(model.graph.node), len(processed.graph.node))
