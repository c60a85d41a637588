"""Late upsampling: exact where a 1x1 kernel commutes with the Resize, a fit that lowers the error where a 3x3
does not, and u2netp through the pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from cutq import modelstats
from cutq.prune import upsample
from cutq.prune.pipeline import PruneJob, run
from cutq.prune.pruner import PruneConfig

from .conftest import CALIBRATION
from .tiny import outputs, residual_concat_model

X = [np.random.default_rng(i).standard_normal((1, 3, 16, 16)).astype(np.float32) for i in range(4)]
EVERY = upsample.LateUpsampleConfig(min_macs=0, max_widening=2.0)  # conv_3 widens 6 -> 8 channels


def pointwise_site() -> onnx.ModelProto:
    """The tiny RSU with conv_3 as a 1x1 Conv: up(Wa * x) is then exactly Wa * up(x)."""
    model = residual_concat_model()
    weight = next(t for t in model.graph.initializer if t.name == "w3")
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight)[:, :, 1:2, 1:2].copy(), "w3"))
    conv = next(n for n in model.graph.node if n.name == "conv_3")
    next(a for a in conv.attribute if a.name == "pads").ints[:] = [0, 0, 0, 0]
    return model


def test_a_pointwise_site_moves_exactly() -> None:
    model = pointwise_site()
    moved, report = upsample.late_upsample(model, X, EVERY)
    assert report.sites == ("conv_3",) and report.error_after < 1e-6
    assert "Concat" not in {n.op_type for n in moved.graph.node}
    for a, b in zip(outputs(model, X), outputs(moved, X), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)  # a wrong interpolation of the patches would not fit exactly
    coarse = numpy_helper.to_array(next(t for t in moved.graph.initializer if t.name == "conv_3.coarse.weight"))
    original = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w3"))
    np.testing.assert_allclose(coarse, original[:, :6], atol=1e-4)  # c (6 channels) comes first in the Concat


def test_a_3x3_site_is_fit_closer_than_the_reused_kernel() -> None:
    model = residual_concat_model()
    assert upsample.find_sites(model, 0) == []  # by default a Conv that widens x stays: its Resize would grow
    sites = upsample.find_sites(model, 0, max_widening=2.0)
    assert [(s.conv, s.channels) for s in sites] == [("conv_3", 6)]
    moved, report = upsample.late_upsample(model, X, EVERY)
    assert report.error_after < report.error_before
    unfit = upsample._rewrite(model, sites)  # the coarse Conv still holds the fine kernel's weights
    assert modelstats.conv_macs(moved) < modelstats.conv_macs(model)
    expected = outputs(model, X)
    err = [np.abs(np.concatenate(outputs(m, X)) - np.concatenate(expected)).mean() for m in (unfit, moved)]
    assert err[1] < 0.7 * err[0]


def test_a_site_below_the_bar_is_left_alone() -> None:
    model = residual_concat_model()
    saved = upsample.find_sites(model, 0, 2.0)[0].saved_macs
    assert upsample.find_sites(model, saved + 1, 2.0) == []
    same, report = upsample.late_upsample(model, X, upsample.LateUpsampleConfig(min_macs=saved + 1, max_widening=2.0))
    assert report.sites == () and same.SerializeToString() == model.SerializeToString()


def test_u2netp_through_the_pipeline(u2netp_path: Path, tmp_path: Path) -> None:
    def job(late: upsample.LateUpsampleConfig | None, name: str) -> PruneJob:
        return PruneJob(model=str(u2netp_path), prune=PruneConfig(0.3), calib_dir=CALIBRATION, verify_count=2,
                        out=tmp_path / name, late_upsample=late)

    plain = run(job(None, "plain.onnx"))
    result = run(job(upsample.LateUpsampleConfig(min_macs=100_000_000), "late.onnx"))
    late = result.late_upsample
    assert plain.late_upsample is None and late is not None
    # u2netp's decoder sites that save 100 M MACs or more unpruned and do not widen (its 16 -> 64 Convs stay);
    # pruning may drop one under the bar
    assert "Conv_810" in late.sites and set(late.sites) <= {"Conv_575", "Conv_680", "Conv_810"}
    assert plain.pruned.macs - result.pruned.macs == late.saved_macs >= 100_000_000 * len(late.sites)
    assert plain.pruned.params == result.pruned.params  # the coarse kernels are as big as the fine ones were
    names = {n.name for n in onnx.load(tmp_path / "late.onnx").graph.node}
    assert {f"{s}.coarse" for s in late.sites} <= names and {f"{s}.add" for s in late.sites} <= names
    assert late.error_after < late.error_before
    step = next(s for s in json.loads((tmp_path / "late.json").read_text())["steps"] if s["step"] == "late_upsample")
    assert step["enabled"] and step["saved_macs"] == late.saved_macs and step["min_macs"] == 100_000_000
    assert result.fidelity.ssim_mean > 0.8


def test_a_site_without_a_bias_gets_one() -> None:
    # the 3x1 half of a factored Conv has no bias; the fit still moves the mean, through a new one on the skip Conv
    model = residual_concat_model()
    conv = next(n for n in model.graph.node if n.name == "conv_3")
    del conv.input[2]
    moved, report = upsample.late_upsample(model, X, EVERY)
    skip = next(n for n in moved.graph.node if n.name == "conv_3")
    assert skip.input[2] == "conv_3.fine.bias" and report.error_after < report.error_before
