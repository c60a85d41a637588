"""Quantization steps on a tiny model built here: calibration, QDQ, tensor-level float nodes, export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from cutq import metrics
from cutq.quantize import mixed, sensitivity, verify
from cutq.quantize.calibrate import CalibrationConfig, compute_ranges
from cutq.quantize.export import export
from cutq.quantize.qdq import QuantConfig, quantize_qdq
from cutq_runtime import OutputError, models, new_session
from cutq_runtime.errors import CutqError

from .tiny import two_conv_model

INPUTS = [np.random.default_rng(i).standard_normal((1, 3, 16, 16)).astype(np.float32) for i in range(6)]


@pytest.fixture(scope="module")
def quantized() -> tuple[onnx.ModelProto, onnx.ModelProto]:
    model = two_conv_model()
    return model, quantize_qdq(model, compute_ranges(model, INPUTS), QuantConfig(float_head=False))


def _run(model: onnx.ModelProto) -> list[np.ndarray]:
    session = verify.session_for(model)
    return [session.run(None, {"x": x})[0] for x in INPUTS]


def test_qdq_quantizes_every_conv_and_stays_close(quantized) -> None:
    model, qdq = quantized
    ops = [n.op_type for n in qdq.graph.node]
    assert ops.count("QuantizeLinear") >= 2 and ops.count("DequantizeLinear") >= 4
    assert mixed.float_nodes(qdq) == []
    error = max(np.abs(a - b).max() for a, b in zip(_run(model), _run(qdq), strict=True))
    assert 0 < error < 0.1


def test_keep_float_makes_exactly_that_node_float(quantized) -> None:
    model, qdq = quantized
    partly = mixed.keep_float(qdq, model, ["conv_b"])
    assert mixed.float_nodes(partly) == ["conv_b"]
    conv_b = next(n for n in partly.graph.node if n.name == "conv_b")
    # the quantizer folded conv_a's Relu into its output's u8 range; the float bypass restores it
    assert conv_b.input[0] == "r_relu" and conv_b.input[1] == "wb_float"
    assert [n.op_type for n in partly.graph.node if n.output[0] == "r_relu"] == ["Relu"]
    full_error = [np.abs(a - b).mean() for a, b in zip(_run(model), _run(qdq), strict=True)]
    part_error = [np.abs(a - b).mean() for a, b in zip(_run(model), _run(partly), strict=True)]
    assert np.mean(part_error) < np.mean(full_error)
    all_float = mixed.keep_float(qdq, model, ["conv_a", "conv_b"])
    assert mixed.float_nodes(all_float) == ["conv_a", "conv_b"]
    # outputs stay quantized for their INT8 consumers, so only the conv inputs and weights became exact
    all_error = [np.abs(a - b).mean() for a, b in zip(_run(model), _run(all_float), strict=True)]
    assert np.mean(all_error) < np.mean(part_error)
    with pytest.raises(CutqError, match="no such node"):
        mixed.keep_float(qdq, model, ["conv_z"])


def test_output_head_stays_float() -> None:
    model = two_conv_model()
    assert mixed.output_head(model) == ["conv_b", "sigmoid"]
    qdq = quantize_qdq(model, compute_ranges(model, INPUTS))
    assert mixed.float_nodes(qdq) == ["conv_b"]
    producers = {o: n.op_type for n in qdq.graph.node for o in n.output}
    assert producers["y"] == "Sigmoid" and producers["b"] == "Conv"  # no Q/DQ after the head's Conv
    assert producers[next(n for n in qdq.graph.node if n.name == "conv_a").input[0]] == "DequantizeLinear"


def test_sensitivity_ranks_every_conv(quantized) -> None:
    model, qdq = quantized
    rows = sensitivity.rank(sensitivity.Probe(model, INPUTS[:2]), qdq)
    assert sorted(r.node for r in rows) == ["conv_a", "conv_b"]
    assert all(np.isfinite(r.sqnr_db) for r in rows)


def test_calibration_methods_and_config_errors() -> None:
    model = two_conv_model()
    minmax = compute_ranges(model, INPUTS, CalibrationConfig("minmax"))
    percentile = compute_ranges(model, INPUTS, CalibrationConfig("percentile", percentile=99.0))
    _, hi = minmax.data["a"].range_value
    _, phi = percentile.data["a"].range_value
    assert phi < hi  # the percentile clips the tail the min-max keeps
    entropy = compute_ranges(model, INPUTS, CalibrationConfig("entropy"))
    assert entropy.data["a"].range_value[1] < hi  # a real KL search, not the min-max range
    with pytest.raises(CutqError, match="not one of"):
        CalibrationConfig("kmeans")
    with pytest.raises(CutqError, match="weight type"):
        QuantConfig(weight_type="s4")
    with pytest.raises(CutqError, match="at least one image"):
        compute_ranges(model, [])


def test_quantization_is_deterministic() -> None:
    model = two_conv_model()
    first = quantize_qdq(model, compute_ranges(model, INPUTS)).SerializeToString()
    second = quantize_qdq(model, compute_ranges(model, INPUTS)).SerializeToString()
    assert first == second


def test_export_writes_onnx_ort_and_manifest(quantized, tmp_path: Path) -> None:
    model, qdq = quantized
    source = tmp_path / "source.onnx"
    onnx.save(model, source)
    result = export(qdq, tmp_path / "out" / "tiny-int8.onnx", {"name": "tiny-int8", "steps": []}, source=source)
    assert result.onnx_path.is_file() and result.ort_path and result.ort_path.is_file()
    assert result.manifest_path.name == "tiny-int8.json"
    session = new_session(result.ort_path)  # the manifest's per-file checksum is checked on load
    assert session.inference.get_outputs()[0].shape == [1, 1, 16, 16]
    with pytest.raises(OutputError, match="source model"):
        export(qdq, source, {}, source=source)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot write"):
        export(qdq, blocker / "x.onnx", {})
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["tiny-int8.json", "tiny-int8.onnx", "tiny-int8.ort"]
    listed = [(i.name, i.path) for i in models.list_models(tmp_path / "out") if i.kind == "variant"]
    assert listed == [("tiny-int8", result.onnx_path)]


def test_ssim_reference_values() -> None:
    a = np.zeros((32, 32))
    a[8:24, 8:24] = 1
    assert metrics.ssim(a, a) == pytest.approx(1.0)
    assert metrics.ssim(a, 1 - a) < 0
    assert metrics.mae(a, a * 0.5) == pytest.approx(0.125)
    assert metrics.iou(a, a) == 1.0 and metrics.iou(a, np.zeros_like(a)) == 0.0
