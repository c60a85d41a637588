"""`cutq quantize` end to end on the real u2netp: calibration, search, verification, export, serving."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from cutq.quantize import calibration_set, verify
from cutq.quantize.calibrate import compute_ranges
from cutq.quantize.equalize import EqualizeConfig, equalize
from cutq.quantize.graph import GraphConfig, preprocess_graph
from cutq.quantize.opset import OpsetConfig, upgrade_opset
from cutq.quantize.pipeline import QuantizeJob, QuantizeResult, run
from cutq.quantize.qdq import quantize_qdq
from cutq_runtime import new_session, remove
from cutq_runtime.models import resolve

from .conftest import CALIBRATION, davis_dir, decode_rgba
from .tiny import save_tiny


@pytest.fixture(scope="module")
def result(u2netp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> QuantizeResult:
    davis = davis_dir()
    if davis is None:
        pytest.skip("needs davis-val for a scene-split calibration/verification set")
    out = tmp_path_factory.mktemp("q") / "u2netp-int8.onnx"
    return run(QuantizeJob(model=str(u2netp_path), out=out, calib_dir=davis))  # as `make quantize` does for u2netp


def test_fidelity_on_held_out_photos(result: QuantizeResult) -> None:
    assert len(result.fidelity.ssim_per_image) == 24
    assert result.fidelity.ssim_mean >= 0.99  # the u2netp-int8 targets: mean >= 0.99, min >= 0.97
    assert result.fidelity.ssim_min >= 0.97
    assert result.fidelity.mae_mean < 0.005


def test_centering_mends_what_breaks_naive_int8(result: QuantizeResult, u2netp_path: Path) -> None:
    """Conv_787 reads Conv_765's near-constant channel 14: INT8 without centering is broken (even with
    equalization and a float head); centered, no decoder Conv needs to stay float."""
    manifest = json.loads(result.export.manifest_path.read_text())
    centered = {(c["producer"], c["channel"]) for c in {s["step"]: s for s in manifest["steps"]}["center"]["channels"]}
    assert ("Conv_765", 14) in centered
    assert result.float_nodes == () and result.float_mac_share < 0.01
    model, _ = preprocess_graph(upgrade_opset(onnx.load(u2netp_path), OpsetConfig())[0], GraphConfig())
    davis = davis_dir()
    images = calibration_set.load(sorted((davis / "images").glob("*.jpg"))[::20], resolve(str(u2netp_path)).input).tensors
    equalized, _ = equalize(model, images, EqualizeConfig())
    uncentered = quantize_qdq(equalized, compute_ranges(equalized, images))
    fidelity = verify.compare(verify.masks(verify.session_for(model), images),
                              verify.masks(verify.session_for(uncentered), images))
    assert fidelity.ssim_min < 0.7


def _optimized_ops(path: Path, out: Path, disabled: list[str]) -> set[str]:
    """The op types of the graph ONNX Runtime runs for `path` at its default level, without `disabled`."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(out)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled or None)
    return {node.op_type for node in onnx.load(out).graph.node}


def test_variant_files_manifest_and_serving(result: QuantizeResult, tmp_path: Path) -> None:
    written = result.export
    assert written.size_bytes < 0.4 * result.source_size
    manifest = json.loads(written.manifest_path.read_text())
    assert [s["step"] for s in manifest["steps"]] == ["opset", "graph", "center", "equalize", "calibrate", "quantize",
                                                      "resize_ties", "rounding", "mixed_precision", "thin_convs",
                                                      "pad_inputs", "pack_int4"]
    steps = {s["step"]: s for s in manifest["steps"]}
    assert steps["pack_int4"]["convs"] == [] and "requires" not in manifest  # 4-bit weights are opt-in
    assert "Conv_945" in steps["thin_convs"]["split"]  # the full-resolution side-output Conv, 64 -> 1 channel
    assert steps["pad_inputs"]["convs"] == ["Conv_0"]  # the RGB Conv reads a 4th, zero channel
    assert manifest["schema_version"] == 1 and "images" not in steps["calibrate"]  # the photos are in one place:
    calibration = manifest["calibration"]
    assert len(calibration["images"]) == 16 and len(calibration["fingerprint"]) == 64 and calibration["seed"] == 0
    assert set(calibration["images"]).isdisjoint(manifest["verification"]["images"])
    assert steps["equalize"]["max_output_change"] < 1e-3 and steps["equalize"]["channels"]
    assert steps["equalize"]["tensor_headroom"] == 3.0
    assert manifest["verification"]["ssim_min"] == pytest.approx(result.fidelity.ssim_min)
    # 7-bit weights: no CPU's integer kernels can saturate, and here they computed the file's own arithmetic
    cpu = manifest["cpu"]
    assert cpu["weight_range"] == "7bit" and cpu["max_abs_weight"] <= 64 and cpu["exact_on"] == "any"
    assert cpu["check"]["portable"] and cpu["check"]["kernels_vs_arithmetic_ssim_min"] >= 0.99
    assert cpu["build_host"]["machine"] and "flags" in cpu["build_host"]
    # every upsampling between 8-bit maps rounds its ties the same on every CPU (u2netp: 33 of its 38 Resizes)
    assert len(steps["resize_ties"]["resizes"]) == 33 and steps["resize_ties"]["skipped"] == []
    assert steps["rounding"]["gptq_convs"] > 0 and steps["rounding"]["max_abs_weight"] == cpu["max_abs_weight"]
    assert b"QLinearConv" in written.ort_path.read_bytes()  # INT8 kernels fused in, not Q/DQ around float ops
    # served without NCHWc: it would reorder full-resolution maps to and from the float head's layout
    assert new_session(written.onnx_path).disabled_optimizers == ("NchwcTransformer",)
    assert "ReorderInput" in _optimized_ops(written.onnx_path, tmp_path / "all.onnx", [])
    served = _optimized_ops(written.onnx_path, tmp_path / "hinted.onnx", manifest["session"]["disabled_optimizers"])
    assert "ReorderInput" not in served
    # every residual Add runs in INT8, the one in front of the full-resolution side output too
    assert "QLinearAdd" in served and "Add" not in served
    photo = (CALIBRATION / "chelsea.png").read_bytes()
    for path in (written.onnx_path, written.ort_path):
        alpha = decode_rgba(remove(photo, session=new_session(path)))[..., 3]
        assert 0 < alpha.mean() < 255 and alpha.shape == (300, 451)
    reference = decode_rgba(remove(photo, session=new_session("u2netp")))[..., 3]
    ours = decode_rgba(remove(photo, session=new_session(written.onnx_path)))[..., 3]
    assert np.abs(ours - reference).mean() < 8


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "cutq"), "quantize", *args],
                          capture_output=True, text=True, check=False, env={**os.environ, "COLUMNS": "200"})


def test_bad_input_is_a_clear_error(tmp_path: Path, u2netp_path: Path) -> None:
    proc = _cli("--model", str(u2netp_path), "--calib-dir", str(tmp_path / "absent"), "--out", str(tmp_path / "o.onnx"))
    assert proc.returncode == 2 and "no such folder" in proc.stderr
    (tmp_path / "empty").mkdir()
    proc = _cli("--model", str(u2netp_path), "--calib-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "o.onnx"))
    assert proc.returncode == 2 and "no images found" in proc.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(4):
        (bad / f"scene{i}_00000.jpg").write_bytes(b"not a jpeg")
    (bad / "cat_00000.png").write_bytes((CALIBRATION / "chelsea.png").read_bytes())
    proc = _cli("--model", str(u2netp_path), "--calib-dir", str(bad), "--out", str(tmp_path / "o.onnx"))
    assert proc.returncode == 2 and "readable image(s), need at least 2" in proc.stderr and "scene" in proc.stderr
    proc = _cli("--model", str(save_tiny(tmp_path / "two.onnx", u2net_like=False)), "--out", str(tmp_path / "o.onnx"))
    assert proc.returncode == 2 and "not a U²-Net-like model" in proc.stderr
    proc = _cli("--model", str(u2netp_path), "--out", str(u2netp_path))
    assert proc.returncode == 2 and "refusing to overwrite" in proc.stderr
    assert not list(tmp_path.glob("o.*"))


def test_int4_weights_make_a_smaller_variant_served_like_int8(u2netp_path: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    proc = _cli("--model", str(u2netp_path), "--int4-min-weights", "30000", "--calib-count", "4", "--verify-count", "2",
                "--max-float-nodes", "0", "--cache-dir", str(cache))
    assert proc.returncode in (0, 1), proc.stderr  # 1: SSIM target missed, the model is still written
    assert proc.returncode == 0 or "raise --int4-min-weights" in proc.stderr
    assert "4-bit weights:" in proc.stderr
    path = cache / f"{u2netp_path.stem}-int8w4.onnx"
    manifest = json.loads(path.with_suffix(".json").read_text())
    step = next(s for s in manifest["steps"] if s["step"] == "pack_int4")
    assert step["min_weights"] == 30000 and step["convs"] and step["weights"] < step["int8_weights"]
    assert manifest["requires"] == {"onnxruntime": "1.23"} and "4-bit" in manifest["description"]
    int4 = [t for t in onnx.load(path).graph.initializer if t.data_type == onnx.TensorProto.INT4]
    assert len(int4) == len(step["convs"])
    alpha = decode_rgba(remove((CALIBRATION / "chelsea.png").read_bytes(), session=new_session(path)))[..., 3]
    assert 0 < alpha.mean() < 255
