"""Low-rank factorisation of wide Convs: the algebra on a tiny model, the rank allocation, and u2netp end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from cutq import modelstats
from cutq.prune import lowrank
from cutq.prune.activations import capture
from cutq.prune.depgraph import conv_weights
from cutq.prune.pipeline import PruneJob, run
from cutq.prune.pruner import PruneConfig
from cutq_runtime.errors import CutqError

from .conftest import CALIBRATION
from .tiny import outputs, residual_concat_model

X = [np.random.default_rng(i).standard_normal((1, 3, 16, 16)).astype(np.float32) for i in range(4)]


def test_factored_conv_computes_the_projection_of_its_output_on_the_top_axes() -> None:
    model = residual_concat_model()
    found = lowrank.spectra(model, {"conv_3": None}, X)
    factored = lowrank.factor(model, found, {"conv_3": 3})
    assert [n.name for n in factored.graph.node if n.op_type == "Conv"].count("conv_3.expand") == 1
    spectrum = found["conv_3"]
    axes = spectrum.axes[:, :3]
    for before, after in zip(capture(model, ["c_3"], X[:2]), capture(factored, ["c_3"], X[:2]), strict=True):
        y = before["c_3"][0].reshape(8, -1).astype(np.float64)
        projected = spectrum.mean[:, None] + axes @ (axes.T @ (y - spectrum.mean[:, None]))
        np.testing.assert_allclose(after["c_3"][0].reshape(8, -1), projected, atol=1e-4)
    assert not np.allclose(projected, y, atol=1e-2)  # rank 3 of 8 does change the output


def test_full_rank_changes_nothing_and_a_rank_deficient_conv_factors_exactly() -> None:
    model = residual_concat_model()
    found = lowrank.spectra(model, {"conv_3": None, "conv_1": None}, X)
    full = lowrank.factor(model, found, {"conv_3": 8, "conv_1": 6})
    for a, b in zip(outputs(model, X), outputs(full, X), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # conv_3 made to write only 2 independent combinations of its 8 channels (plus a bias): rank 2 loses nothing.
    weight, _ = conv_weights(model)["conv_3"]
    mixed = np.random.default_rng(1).standard_normal((8, 2)) @ weight[:2].reshape(2, -1)
    init = next(i for i in model.graph.initializer if i.name == "w3")
    init.raw_data = mixed.astype(np.float32).reshape(weight.shape).tobytes()
    found = lowrank.spectra(model, {"conv_3": None}, X)
    assert found["conv_3"].lost(2) < 1e-9 < found["conv_3"].lost(1)
    for a, b in zip(outputs(model, X), outputs(lowrank.factor(model, found, {"conv_3": 2}), X), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def _spectrum(variance: list[float]) -> lowrank.Spectrum:
    n = len(variance)
    return lowrank.Spectrum(np.zeros(n), np.asarray(variance, np.float64), np.eye(n))


def test_allocation_lowers_first_the_rank_that_loses_least_per_parameter() -> None:
    shapes = {"flat": (64, 64, 3, 3), "steep": (64, 64, 3, 3)}
    found = {"flat": _spectrum([1.0] * 64), "steep": _spectrum([0.5**i for i in range(64)])}
    full = sum(int(np.prod(s)) + s[0] for s in shapes.values())
    ranks = lowrank.allocate(shapes, found, full // 4, multiple=16)
    assert ranks == {"steep": 16}  # the steep spectrum goes first, and far; the flat one is left whole
    cost = 16 * (64 * 9 + 64) + 16 + 64
    assert full - (int(np.prod(shapes["flat"])) + 64 + cost) >= full // 4
    with pytest.raises(CutqError, match="more parameters removed than factoring"):
        lowrank.allocate(shapes, found, full, multiple=16)


def test_u2netp_factored_through_the_pipeline(u2netp_path: Path, tmp_path: Path) -> None:
    # u2netp has no Conv of 500,000 weights; lowering the bar factors its 64-channel Convs. The bundled photos
    # split by scene leave 2 for calibration (and so for the statistics) and 2 to verify on.
    config = lowrank.LowRankConfig(narrow_fraction=0.0, min_weights=30_000, images=4, method="output")
    job = PruneJob(model=str(u2netp_path), prune=PruneConfig(0.3, narrow_below=64), calib_dir=CALIBRATION,
                   verify_count=2, out=tmp_path / "u2netp-f30.onnx", lowrank=config)
    result = run(job)
    assert result.pruned.params <= 0.7 * result.source.params
    assert result.channels_after == result.channels_before and result.ranks  # no channel removed, Convs factored
    manifest = json.loads(job.out.with_suffix(".json").read_text())
    step = next(s for s in manifest["steps"] if s["step"] == "lowrank")
    assert step["enabled"] and step["ranks"] == result.ranks and all(r % 16 == 0 for r in result.ranks.values())
    # the statistics' photos are listed with the refit's (here the same 2) in the one calibration object
    assert "photos" not in step and len(manifest["calibration"]["images"]) == 2
    assert set(manifest["calibration"]["images"]).isdisjoint(manifest["verification"]["images"])
    assert modelstats.parameter_count(onnx.load(job.out)) == result.pruned.params
    assert result.fidelity.ssim_mean > 0.8


@pytest.mark.parametrize(("ratio", "narrow_fraction", "method", "message"), [
    (0.01, 0.5, "output", "less than `narrow_fraction` 0.5 removes alone"),  # the narrow groups alone remove more
    (0.01, 0.5, "separable", "less than `narrow_fraction` 0.5 removes alone"),
    (0.9, 0.0, "output", "more parameters removed than factoring"),  # every factored Conv at rank 16 is not enough
])
def test_a_ratio_factoring_cannot_meet_fails_before_the_statistics(u2netp_path: Path, tmp_path: Path, ratio: float,
                                                                   narrow_fraction: float, method: str,
                                                                   message: str) -> None:
    # u2netp's groups are 16 and 64 channels wide; with the bar at 65 its 64-channel groups count as narrow.
    config = lowrank.LowRankConfig(narrow_fraction=narrow_fraction, min_weights=30_000, images=4, method=method)
    job = PruneJob(model=str(u2netp_path), prune=PruneConfig(ratio, narrow_below=65 if narrow_fraction else 64),
                   calib_dir=CALIBRATION, verify_count=2, out=tmp_path / "u2netp-f.onnx", lowrank=config)
    steps: list[str] = []
    with pytest.raises(CutqError, match=message):
        run(job, progress=steps.append)
    assert "loading photos for the low-rank statistics" not in steps
    assert list(tmp_path.iterdir()) == []
