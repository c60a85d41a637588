"""Quantization steps on a tiny model built here: calibration, QDQ, tensor-level float nodes, export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from cutq import metrics
from cutq.quantize import gptq, mixed, pack, sensitivity, verify
from cutq.quantize.calibrate import CalibrationConfig, compute_ranges
from cutq.quantize.export import export
from cutq.quantize.pad import PadConfig, pad_conv_inputs
from cutq.quantize.qdq import QuantConfig, quantize_qdq
from cutq.quantize.rounding import RoundingConfig, max_abs_weight, round_weights
from cutq.quantize.thin import ThinConfig, split_thin_convs
from cutq_runtime import OutputError, models, new_session
from cutq_runtime.errors import CutqError

from .tiny import two_conv_model

INPUTS = [np.random.default_rng(i).standard_normal((1, 3, 16, 16)).astype(np.float32) for i in range(6)]


@pytest.fixture(scope="module")
def quantized() -> tuple[onnx.ModelProto, onnx.ModelProto]:
    model = two_conv_model()
    return model, quantize_qdq(model, compute_ranges(model, INPUTS), QuantConfig(float_head=False))


def _run(model: onnx.ModelProto, every_output: bool = False) -> list[np.ndarray]:
    """The first output on each input, or every output of each input."""
    session = verify.session_for(model)
    runs = [session.run(None, {"x": x}) for x in INPUTS]
    return [y for outputs in runs for y in (outputs if every_output else outputs[:1])]


def _exact(model: onnx.ModelProto) -> list[np.ndarray]:
    """The first output on each input, computed as the QDQ graph is written (no fused integer kernels)."""
    session = verify.session_for(model, exact=True)
    return [session.run(None, {"x": x})[0] for x in INPUTS]


def _weights(model: onnx.ModelProto) -> list[np.ndarray]:
    return [numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == TensorProto.INT8]


def test_qdq_quantizes_every_conv_and_stays_close(quantized) -> None:
    """The graph is right at either weight range (judged on its own arithmetic, which every CPU computes for the
    7-bit default); the default's integer kernels compute that arithmetic here, at most twice the 8-bit error."""
    model, qdq = quantized
    ops = [n.op_type for n in qdq.graph.node]
    assert ops.count("QuantizeLinear") >= 2 and ops.count("DequantizeLinear") >= 4
    assert mixed.float_nodes(qdq) == []
    full = quantize_qdq(model, compute_ranges(model, INPUTS), QuantConfig(float_head=False, weight_range="8bit"))
    assert max(np.abs(w).max() for w in _weights(full)) == 127
    assert max(np.abs(w).max() for w in _weights(qdq)) == 64  # no u8 x s8 pair can saturate a 16-bit sum
    full_error = max(np.abs(a - b).max() for a, b in zip(_run(model), _exact(full), strict=True))
    assert 0 < full_error < 0.1
    error = max(np.abs(a - b).max() for a, b in zip(_run(model), _run(qdq), strict=True))
    assert 0 < error < 2 * full_error
    for kernels, exact in zip(_run(qdq), _exact(qdq), strict=True):
        assert np.abs(kernels - exact).max() < 0.01  # requantization rounding only
    with pytest.raises(CutqError, match="weight range"):
        QuantConfig(weight_range="6bit")


def test_rounding_for_the_grid_lowers_the_error_and_keeps_it_saturation_free(quantized) -> None:
    """GPTQ rounding and bias correction on the float model's own inputs; the per-channel step search too."""
    model, qdq = quantized
    plain, report = round_weights(qdq, model, INPUTS, RoundingConfig(method="nearest", bias_correction=False, scales=(1.0,)))
    assert report.gptq_convs == report.corrected_biases == 0
    assert [w.tolist() for w in _weights(plain)] == [w.tolist() for w in _weights(qdq)]  # nothing to change
    rounded, report = round_weights(qdq, model, INPUTS, RoundingConfig())
    assert report.gptq_convs == report.corrected_biases == 2 and report.max_abs_weight <= 64
    assert max_abs_weight(rounded) == report.max_abs_weight
    reference = _run(model)
    errors = [np.mean([np.abs(a - b).mean() for a, b in zip(reference, _run(m), strict=True)]) for m in (qdq, rounded)]
    assert errors[1] < errors[0]
    again, _ = round_weights(qdq, model, INPUTS, RoundingConfig())
    assert again.SerializeToString() == rounded.SerializeToString()
    searched, report = round_weights(qdq, model, INPUTS, RoundingConfig(scales=(1.0, 0.9, 0.8)))
    assert report.max_abs_weight <= 64
    assert np.mean([np.abs(a - b).mean() for a, b in zip(reference, _run(searched), strict=True)]) < errors[0]
    with pytest.raises(CutqError, match="rounding method"):
        RoundingConfig(method="stochastic")


def test_portability_check_compares_kernels_with_the_arithmetic(quantized) -> None:
    _, qdq = quantized
    masks = verify.masks(verify.session_for(qdq), INPUTS)
    check = verify.portability(qdq, INPUTS, masks)
    assert check.portable and check.ssim_min > 0.99 and check.max_abs < 0.05
    # masks that depart from the file's arithmetic (here: the float model's) are reported as not portable
    other = verify.masks(verify.session_for(two_conv_model(seed=1)), INPUTS)
    assert not verify.portability(qdq, INPUTS, other).portable


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


def _shared_feature_model() -> onnx.ModelProto:
    """Like a U²-Net decoder stage: a residual sum feeds a float side-output Conv and, through a MaxPool,
    the rest of the (quantized) network."""
    rng = np.random.default_rng(3)

    def conv(name: str, x: str, y: str, cin: int, cout: int) -> list:
        w = numpy_helper.from_array(rng.standard_normal((cout, cin, 3, 3)).astype(np.float32) * 0.3, f"w_{name}")
        return [helper.make_node("Conv", [x, w.name], [y], name=name, pads=[1, 1, 1, 1]), w]

    parts = [conv("conv_a", "x", "ca", 3, 4), conv("conv_b", "a", "cb", 4, 4), conv("side", "s", "y1", 4, 1),
             conv("conv_c", "p", "cc", 4, 4), conv("side_2", "c", "y2", 4, 1)]
    nodes = [parts[0][0], helper.make_node("Relu", ["ca"], ["a"], name="relu_a"), parts[1][0],
             helper.make_node("Relu", ["cb"], ["b"], name="relu_b"), helper.make_node("Add", ["a", "b"], ["s"], name="add"),
             parts[2][0], helper.make_node("MaxPool", ["s"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             parts[3][0], helper.make_node("Relu", ["cc"], ["c"], name="relu_c"), parts[4][0]]
    graph = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, None) for y in ("y1", "y2")],
                              [p[1] for p in parts])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_float_head_reads_quantized_features(tmp_path: Path) -> None:
    """The side Convs keep float weights but read their features through Q/DQ, like every other reader:
    `side` reads a residual sum the MaxPool path quantizes anyway, `side_2` a map only it reads. So ONNX
    Runtime runs the Add as one INT8 op instead of in float."""
    model = _shared_feature_model()
    assert mixed.output_head(model) == ["side", "side_2"]
    qdq = quantize_qdq(model, compute_ranges(model, INPUTS))
    assert mixed.float_nodes(qdq) == ["side", "side_2"]
    producers = {o: n.op_type for n in qdq.graph.node for o in n.output}
    for name in ("side", "side_2"):
        side = next(n for n in qdq.graph.node if n.name == name)
        assert producers[side.input[0]] == "DequantizeLinear" and side.input[1] not in producers
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(qdq.SerializeToString(), options, providers=["CPUExecutionProvider"])
    fused = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert "QLinearAdd" in fused and "Add" not in fused, fused
    for a, b in zip(_run(model, every_output=True), _run(qdq, every_output=True), strict=True):
        assert np.abs(a - b).max() < 0.05 * (np.ptp(a) or 1.0)


def test_padding_the_rgb_conv_to_four_channels_is_exact(quantized) -> None:
    """The INT8 Conv that reads 3 channels reads a zero-point 4th; the float head Conv (8 inputs) and the
    float model are left alone, and every output is bit for bit the same."""
    model, qdq = quantized
    padded, names = pad_conv_inputs(qdq)
    assert names == ("conv_a",)
    pad = next(n for n in padded.graph.node if n.op_type == "Pad")
    weights = {t.name: numpy_helper.to_array(t) for t in padded.graph.initializer}
    assert weights[pad.input[1]].tolist() == [0, 0, 0, 0, 0, 1, 0, 0]
    wide = next(v for k, v in weights.items() if k.endswith("_padded"))
    assert wide.shape[1] == 4 and not wide[:, 3].any()
    for a, b in zip(_run(qdq, every_output=True), _run(padded, every_output=True), strict=True):
        np.testing.assert_array_equal(a, b)
    assert pad_conv_inputs(model)[1] == ()  # float Convs are not padded
    assert pad_conv_inputs(qdq, PadConfig(enabled=False)) == (qdq, ())
    assert pad_conv_inputs(qdq, PadConfig(multiple=8))[1] == ("conv_a",)
    assert pad_conv_inputs(qdq, PadConfig(multiple=1))[1] == ()


@pytest.mark.parametrize(("outputs", "attrs"), [(1, {"pads": [1, 1, 1, 1]}),
                                                (2, {"pads": [0, 1, 2, 1], "strides": [2, 1], "dilations": [1, 2]})])
def test_thin_conv_split_is_exact(outputs: int, attrs: dict) -> None:
    rng = np.random.default_rng(5)
    w = numpy_helper.from_array(rng.standard_normal((outputs, 24, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(outputs).astype(np.float32), "b")
    conv = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="side", kernel_shape=[3, 3], **attrs)
    graph = helper.make_graph([conv], "thin", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 24, 11, 13])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    split, names = split_thin_convs(model)
    assert names == ("side",) and [n.op_type for n in split.graph.node] == ["Conv", "Conv"]
    assert sorted(i.name for i in split.graph.initializer) == ["b", "side_tap_sum", "side_tap_weights"]
    x = rng.standard_normal((1, 24, 11, 13)).astype(np.float32)
    before, after = (verify.session_for(m).run(None, {"x": x})[0] for m in (model, split))
    assert before.shape == after.shape
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-4)
    assert split_thin_convs(model, ThinConfig(max_outputs=outputs - 1))[1] == ()
    assert split_thin_convs(model, ThinConfig(enabled=False))[0] is model


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


def _fused(model: onnx.ModelProto, tmp_path: Path) -> list[str]:
    """The op types ONNX Runtime runs after its graph optimizations, read back from the optimized model."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"],
                         disabled_optimizers=["NchwcTransformer"])
    return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]


def test_int4_weights_are_stored_small_and_still_fused_into_int8_convs(quantized, tmp_path: Path) -> None:
    _, qdq = quantized
    unchanged, report = pack.pack_int4(qdq, pack.PackConfig(min_weights=0))
    assert report.convs == () and unchanged.SerializeToString() == qdq.SerializeToString()
    packed, report = pack.pack_int4(qdq, pack.PackConfig(min_weights=1))
    assert len(report.convs) == 2 and report.weights == report.int8_weights > 0
    int4 = [t for t in packed.graph.initializer if t.data_type == TensorProto.INT4]
    assert len(int4) == 2 and all(len(t.raw_data) == (int(np.prod(t.dims)) + 1) // 2 for t in int4)
    assert next(o.version for o in packed.opset_import if o.domain in ("", "ai.onnx")) >= pack.INT4_OPSET
    # The INT4 Cast is folded at load time, so ONNX Runtime fuses the same integer Convs as in the INT8 model.
    assert _fused(packed, tmp_path).count("QLinearConv") == _fused(qdq, tmp_path).count("QLinearConv") == 2
    fp32 = _run(quantized[0])
    error8, error4 = (np.mean([np.abs(a - b).mean() for a, b in zip(fp32, _run(m), strict=True)]) for m in (qdq, packed))
    assert error8 < error4 < 0.25 * np.mean([np.abs(a).mean() for a in fp32])  # 4 bits cost accuracy, but bounded
    # ONNX Runtime reads the packed nibbles back as the 4-bit values computed from the INT8 weights.
    inits = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    producer = {o: n for n in qdq.graph.node for o in n.output}
    dq = producer[next(n for n in qdq.graph.node if n.op_type == "Conv").input[1]]
    want, _ = pack._to_int4(inits[dq.input[0]] * inits[dq.input[1]].reshape(-1, 1, 1, 1))
    stored = next(t for t in int4 if t.name == f"{dq.input[0]}_int4")
    weights = helper.make_tensor("w", TensorProto.INT4, stored.dims, stored.raw_data, raw=True)
    reader = helper.make_model(helper.make_graph(
        [helper.make_node("Cast", ["w"], ["y"], to=TensorProto.INT8)], "read", [],
        [helper.make_tensor_value_info("y", TensorProto.INT8, None)], [weights]),
        opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    got = ort.InferenceSession(reader.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})[0]
    assert got.dtype == np.int8 and np.array_equal(got, want) and want.min() < 0 < want.max()
    again, _ = pack.pack_int4(qdq, pack.PackConfig(min_weights=1))
    assert again.SerializeToString() == packed.SerializeToString()


def test_int4_threshold_leaves_small_convs_at_eight_bits(quantized) -> None:
    _, qdq = quantized
    sizes = sorted(numpy_helper.to_array(t).size for t in qdq.graph.initializer if t.data_type == TensorProto.INT8)
    _, report = pack.pack_int4(qdq, pack.PackConfig(min_weights=sizes[-1]))
    assert len(report.convs) == 1 and report.weights == sizes[-1] < report.int8_weights


def test_a_variant_needing_a_newer_onnxruntime_is_refused_by_name(quantized, tmp_path: Path) -> None:
    path = tmp_path / "needs-future.onnx"
    onnx.save(quantized[1], path)
    models.write_manifest(path, {"name": "needs-future", "requires": {"onnxruntime": "999.1"}})
    with pytest.raises(CutqError, match=r"needs-future.onnx: needs onnxruntime >= 999.1"):
        new_session(str(path))
    with pytest.raises(CutqError, match=r"needs-future\.json: requires: must be an object"):
        models.write_manifest(path, {"name": "needs-future", "requires": "onnxruntime"})  # cutq never writes it
    path.with_suffix(".json").write_text('{"name": "needs-future", "requires": "onnxruntime"}')
    with pytest.raises(CutqError, match=r"needs-future\.json: requires: must be an object"):  # nor loads it
        new_session(str(path))
    models.write_manifest(path, {"name": "needs-future", "requires": {"onnxruntime": "1.0"}})
    assert new_session(str(path)).name


def test_gptq_rounding_lowers_the_output_error_of_correlated_inputs() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 24)) @ rng.standard_normal((24, 24))  # correlated inputs
    w = rng.standard_normal((6, 24))
    _, scale = pack._to_int4(w.reshape(6, 24, 1, 1).astype(np.float32))
    nearest = np.clip(np.round(w / scale[:, None]), -8, 7)
    rounded = gptq.round_to_grid(w, scale, x.T @ x)
    assert rounded.dtype == np.int8 and rounded.min() >= -8 and rounded.max() <= 7
    assert not np.array_equal(rounded, nearest)
    error = {name: np.square(x @ (w - q * scale[:, None]).T).sum() for name, q in (("gptq", rounded), ("nearest", nearest))}
    assert error["gptq"] < 0.7 * error["nearest"]
    # Uncorrelated inputs leave nothing to compensate: GPTQ is nearest rounding then.
    assert np.array_equal(gptq.round_to_grid(w, scale, np.eye(24)), nearest)


def test_gptq_packing_uses_the_calibration_inputs(quantized) -> None:
    _, qdq = quantized
    nearest, report = pack.pack_int4(qdq, pack.PackConfig(min_weights=1, rounding="nearest"), INPUTS)
    assert report.rounding == "nearest"
    rounded, report = pack.pack_int4(qdq, pack.PackConfig(min_weights=1), INPUTS)
    assert report.rounding == "gptq" and report.convs
    int8 = _run(qdq)
    error = [np.mean([np.abs(a - b).mean() for a, b in zip(int8, _run(m), strict=True)]) for m in (nearest, rounded)]
    assert error[1] < error[0]
    assert pack.pack_int4(qdq, pack.PackConfig(min_weights=1), INPUTS)[0].SerializeToString() == rounded.SerializeToString()
    with pytest.raises(CutqError, match="4-bit `rounding`"):
        pack.PackConfig(rounding="stochastic")


def _resize_qdq(zero_point: int) -> onnx.ModelProto:
    """x -> Quantize -> Dequantize -> Resize (2x, linear, pytorch_half_pixel) -> Quantize -> y, one u8 scale."""
    init = [numpy_helper.from_array(np.array(0.0731, np.float32), "s"),
            numpy_helper.from_array(np.array(zero_point, np.uint8), "z"),
            numpy_helper.from_array(np.array([], np.float32), "roi"),
            numpy_helper.from_array(np.array([1.0, 1.0, 2.0, 2.0], np.float32), "scales")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["x_q"]),
             helper.make_node("DequantizeLinear", ["x_q", "s", "z"], ["x_dq"]),
             helper.make_node("Resize", ["x_dq", "roi", "scales"], ["r"], name="up", mode="linear",
                              coordinate_transformation_mode="pytorch_half_pixel"),
             helper.make_node("QuantizeLinear", ["r", "s", "z"], ["y"])]
    graph = helper.make_graph(nodes, "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 24, 24])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 4, 48, 48])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _upsample_sixteenths(codes: np.ndarray) -> np.ndarray:
    """16x the 2x half-pixel bilinear upsampling of integer codes, in integers: taps 1/4, 3/4, edges clamped."""
    for axis in (2, 3):
        padded = np.concatenate([codes.take([0], axis), codes, codes.take([-1], axis)], axis)
        n = codes.shape[axis]
        prev, here, nxt = (padded.take(range(i, i + n), axis) for i in (0, 1, 2))
        codes = np.stack([prev + 3 * here, 3 * here + nxt], axis + 1).reshape(
            *codes.shape[:axis], 2 * n, *codes.shape[axis + 1:])
    return codes


def test_quantized_resize_rounds_its_ties_the_same_on_every_cpu() -> None:
    """After the ties step the integer codes out of the quantized 2x upsampling are exactly the interpolation of
    the codes in, ties rounded up: integer arithmetic, the same on any CPU. Without it a sixteenth of the outputs
    are ties, which the float arithmetic rounds as its last bit falls (here: to even, so some go down)."""
    from cutq.quantize.ties import break_resize_ties

    codes = np.random.default_rng(0).integers(0, 256, (1, 4, 24, 24))
    feed = {"x": (codes * np.float32(0.0731)).astype(np.float32)}
    expected = (_upsample_sixteenths(codes) + 8) // 16
    plain = _resize_qdq(0)
    fixed, report = break_resize_ties(plain)
    assert report.resizes == ("up",) and report.skipped == ()
    for exact in (False, True):
        assert np.array_equal(verify.session_for(fixed, exact=exact).run(None, feed)[0], expected)
    assert (verify.session_for(plain).run(None, feed)[0] != expected).any()
    assert break_resize_ties(_resize_qdq(7))[1].skipped == ("up",)  # signed inputs: the bound does not hold
