"""Separable factorisation of 3x3 Convs: the algebra on a tiny model, the share search, and u2netp end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from cutq import modelstats
from cutq.prune import lowrank, separable
from cutq.prune.pipeline import PruneJob, run
from cutq.prune.pruner import PruneConfig
from cutq_runtime.errors import CutqError

from .conftest import CALIBRATION
from .tiny import outputs, residual_concat_model

X = [np.random.default_rng(i).standard_normal((1, 3, 16, 16)).astype(np.float32) for i in range(3)]


def test_full_rank_is_exact_and_a_lower_rank_is_not() -> None:
    model = residual_concat_model()
    found = separable.candidates(model, 0)
    assert set(found) == {"conv_in", "conv_1", "conv_2", "conv_3", "conv_side"}
    assert set(separable.candidates(model, 0, min_outputs=8)) == {"conv_in", "conv_3"}  # 8 outputs; the others 6 or 1
    full = separable.factor(model, found, {"conv_3": 24, "conv_in": 9})  # min(3 inputs, 3 outputs) x 3 taps
    assert [n.name for n in full.graph.node].count("conv_3.vertical") == 1
    for a, b in zip(outputs(model, X), outputs(full, X), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)  # the borders too: the 3x1 Conv has no bias
    low = separable.factor(model, found, {"conv_3": 4})
    assert not np.allclose(outputs(model, X)[0], outputs(low, X)[0], atol=1e-3)


def test_the_share_is_the_largest_that_removes_enough() -> None:
    found = separable.candidates(residual_concat_model(), 0)
    weights = {name: 9 * c.inputs * c.outputs for name, c in found.items()}
    share, ranks = separable.ranks_for(found, 100, multiple=1)
    saved = sum(weights[n] - 3 * r * (found[n].inputs + found[n].outputs) for n, r in ranks.items())
    assert saved >= 100 and 0 < share < 1
    more = {n: c.rank(share + 0.01, 1) for n, c in found.items()}
    assert sum(weights[n] - 3 * r * (found[n].inputs + found[n].outputs)
               for n, r in more.items() if found[n].saves(r)) < 100
    with pytest.raises(CutqError, match="more parameters removed than separable factoring can give"):
        separable.ranks_for(found, sum(weights.values()), multiple=1)


def test_u2netp_factored_separably_through_the_pipeline(u2netp_path: Path, tmp_path: Path) -> None:
    # u2netp has no Conv of 500,000 weights; lowering the bar makes it a model `cutq prune` factors. Its Convs have
    # 16 or 64 outputs: only the 64s are factored.
    config = lowrank.LowRankConfig(min_weights=30_000, min_macs=50_000_000, min_outputs=64)
    job = PruneJob(model=str(u2netp_path), prune=PruneConfig(0.3), calib_dir=CALIBRATION, verify_count=2,
                   cache_dir=tmp_path, lowrank=config, variant="fast")
    result = run(job)
    out = tmp_path / "u2netp-p30-fast.onnx"  # a recipe's own cache name, beside (not over) the default's u2netp-p30
    assert result.export.onnx_path == out and not (tmp_path / "u2netp-p30.onnx").exists()
    assert 0.6 * result.source.params < result.pruned.params <= 0.7 * result.source.params  # ranks move in steps of 16
    assert result.pruned.macs < result.source.macs
    assert result.channels_after == result.channels_before and result.ranks
    assert result.reconstruction is not None and result.reconstruction.convs >= len(result.ranks)  # the 1x3 Convs
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["name"] == "u2netp-p30-fast"
    step = next(s for s in manifest["steps"] if s["step"] == "lowrank")
    assert step["method"] == "separable" and step["ranks"] == result.ranks and 0 < step["share"] < 1
    assert all(r % 16 == 0 for r in result.ranks.values())
    every = separable.candidates(onnx.load(u2netp_path), config.min_macs)  # before the outputs bar
    assert {every[name].outputs for name in result.ranks} == {64}
    assert any(c.outputs == 16 for c in every.values())  # there were narrower Convs to leave whole
    model = onnx.load(out)
    assert {f"{name}.vertical" for name in result.ranks} <= {n.name for n in model.graph.node}
    assert modelstats.parameter_count(model) == result.pruned.params
    assert result.fidelity.ssim_mean > 0.8
