"""Range equalization on a tiny RSU-shaped model that carries one planted outlier channel."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from cutq.prune.depgraph import trace
from cutq.quantize import verify
from cutq.quantize.calibrate import compute_ranges
from cutq.quantize.equalize import EqualizeConfig, channel_ranges, equalize
from cutq.quantize.qdq import QuantConfig, quantize_qdq

from .tiny import residual_concat_model

INPUTS = [np.random.default_rng(i).standard_normal((1, 3, 16, 16)).astype(np.float32) for i in range(6)]
OUTLIER = 3  # conv_1's output channel 3 (read by conv_2 and, through the concat, by conv_3)
FACTOR = 40.0


def _with_outlier() -> onnx.ModelProto:
    """The same function as `residual_concat_model`, but conv_1's channel 3 is 40x larger and its readers
    compensate: what batch-norm folding leaves behind in U²-Net."""
    model = residual_concat_model()
    inits = {t.name: t for t in model.graph.initializer}

    def scale(name: str, index: tuple, factor: float) -> None:
        value = numpy_helper.to_array(inits[name]).copy()
        value[index] *= factor
        inits[name].CopyFrom(numpy_helper.from_array(value, name))

    scale("w1", (OUTLIER,), FACTOR)
    scale("b1", (OUTLIER,), FACTOR)
    scale("w2", (slice(None), OUTLIER), 1 / FACTOR)
    scale("w3", (slice(None), 6 + OUTLIER), 1 / FACTOR)  # b sits after c's 6 channels in the concat
    return model


def _outputs(model: onnx.ModelProto) -> list[np.ndarray]:
    session = verify.session_for(model)
    return [session.run(None, {"x": x})[0] for x in INPUTS]


def _group_of_conv_1(model: onnx.ModelProto) -> int:
    return trace(model).output_group["conv_1"]


def test_equalize_keeps_the_function_and_shrinks_the_outlier() -> None:
    model = _with_outlier()
    equalized, report = equalize(model, INPUTS)
    for before, after in zip(_outputs(model), _outputs(equalized), strict=True):
        np.testing.assert_allclose(after, before, atol=1e-5)
    assert report.max_output_change < 1e-4
    assert [(c.producers, c.channel) for c in report.channels if c.channel == OUTLIER] == [(("conv_1",), OUTLIER)]
    group = _group_of_conv_1(model)
    before = channel_ranges(model, trace(model), INPUTS)[group]
    after = channel_ranges(equalized, trace(equalized), INPUTS)[group]
    assert after[OUTLIER] < before[OUTLIER] / 4
    others = np.arange(len(before)) != OUTLIER
    np.testing.assert_allclose(after[others], before[others], rtol=1e-5)


def test_equalize_brings_int8_closer_to_float() -> None:
    model = _with_outlier()
    equalized, _ = equalize(model, INPUTS)
    reference = _outputs(model)
    errors = []
    for candidate in (model, equalized):
        quantized = quantize_qdq(candidate, compute_ranges(candidate, INPUTS), QuantConfig(float_head=False))
        errors.append(np.mean([np.abs(q - r).mean() for q, r in zip(_outputs(quantized), reference, strict=True)]))
    assert errors[1] < errors[0] / 2, errors


def test_equalize_disabled_or_without_outliers_changes_nothing() -> None:
    model = _with_outlier()
    same, report = equalize(model, INPUTS, EqualizeConfig(enabled=False))
    assert same is model and report.channels == ()
    uncapped = EqualizeConfig(max_scale=100.0)
    once, _ = equalize(model, INPUTS, uncapped)
    _, report = equalize(once, INPUTS, uncapped)
    assert not [c for c in report.channels if c.scale > 1.01]  # nothing is left to move
