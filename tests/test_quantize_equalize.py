"""Range equalization on a tiny RSU-shaped model that carries one planted outlier channel."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from cutq.prune.depgraph import trace
from cutq.quantize.equalize import EqualizeConfig, channel_ranges, equalize

from .tiny import int8_error, outputs, residual_concat_model, two_conv_model

INPUTS = [np.random.default_rng(i).standard_normal((1, 3, 16, 16)).astype(np.float32) for i in range(6)]
OUTLIER = 3  # conv_1's output channel 3 (read by conv_2 and, through the concat, by conv_3)
FACTOR = 40.0


def _scaled(changes: list[tuple[str, tuple, float]]) -> onnx.ModelProto:
    """`residual_concat_model` with some initializer slices multiplied by factors."""
    model = residual_concat_model()
    inits = {t.name: t for t in model.graph.initializer}
    for name, index, factor in changes:
        value = numpy_helper.to_array(inits[name]).copy()
        value[index] *= factor
        inits[name].CopyFrom(numpy_helper.from_array(value, name))
    return model


def _with_outlier() -> onnx.ModelProto:
    """The same function as `residual_concat_model`, but conv_1's channel 3 is 40x larger and its readers
    compensate: what batch-norm folding leaves behind in U²-Net."""
    return _scaled([("w1", (OUTLIER,), FACTOR), ("b1", (OUTLIER,), FACTOR),
                    ("w2", (slice(None), OUTLIER), 1 / FACTOR),
                    ("w3", (slice(None), 6 + OUTLIER), 1 / FACTOR)])  # b sits after c's 6 channels in the concat


LOUD = slice(0, 2)  # conv_2's channels 0-1: a third of conv_2's group, a sixth of the concat conv_3 reads


def _with_loud_branch() -> onnx.ModelProto:
    """conv_2's channels 0-1 are 12x larger, conv_3 compensates: within conv_2's own channels they are
    typical, but they set the step of the concat, as the upsampled branch does in u2netp's last decoder."""
    return _scaled([("w2", (LOUD,), 12.0), ("b2", (LOUD,), 12.0), ("w3", (slice(None), LOUD), 1 / 12.0)])


def _group_of_conv_1(model: onnx.ModelProto) -> int:
    return trace(model).output_group["conv_1"]


def test_equalize_keeps_the_function_and_shrinks_the_outlier() -> None:
    model = _with_outlier()
    equalized, report = equalize(model, INPUTS)
    for before, after in zip(outputs(model, INPUTS), outputs(equalized, INPUTS), strict=True):
        np.testing.assert_allclose(after, before, atol=1e-5)
    assert report.max_output_change < 1e-4
    assert [(c.producers, c.channel) for c in report.channels if c.channel == OUTLIER] == [(("conv_1",), OUTLIER)]
    group = _group_of_conv_1(model)
    before = channel_ranges(model, trace(model), INPUTS).groups[group]
    after = channel_ranges(equalized, trace(equalized), INPUTS).groups[group]
    assert after[OUTLIER] < before[OUTLIER] / 4
    others = np.arange(len(before)) != OUTLIER
    np.testing.assert_allclose(after[others], before[others], rtol=1e-5)


def test_equalize_brings_int8_closer_to_float() -> None:
    model = _with_outlier()
    equalized, _ = equalize(model, INPUTS)
    reference = outputs(model, INPUTS)
    errors = [int8_error(candidate, INPUTS, reference) for candidate in (model, equalized)]
    assert errors[1] < errors[0] / 2, errors


def test_equalize_quiets_a_loud_concat_branch() -> None:
    """Typical within their own group, the loud channels are outliers in the concat's shared range."""
    model = _with_loud_branch()
    equalized, report = equalize(model, INPUTS)
    for before, after in zip(outputs(model, INPUTS), outputs(equalized, INPUTS), strict=True):
        np.testing.assert_allclose(after, before, atol=1e-5)
    moved = {c.channel: c.scale for c in report.channels if c.producers == ("conv_2",)}
    assert sorted(moved) == [0, 1] and min(moved.values()) > 3, moved
    reference = outputs(model, INPUTS)
    errors = [int8_error(candidate, INPUTS, reference) for candidate in (model, equalized)]
    assert errors[1] < errors[0] * 0.8, errors


def test_equalize_disabled_or_without_outliers_changes_nothing() -> None:
    model = _with_outlier()
    same, report = equalize(model, INPUTS, EqualizeConfig(enabled=False))
    assert same is model and report.channels == ()
    uncapped = EqualizeConfig(max_scale=100.0)
    once, _ = equalize(model, INPUTS, uncapped)
    _, report = equalize(once, INPUTS, uncapped)
    assert not [c for c in report.channels if c.scale > 1.01]  # nothing is left to move


def test_equalize_judges_a_signed_channel_by_its_magnitude() -> None:
    """A Conv read directly by the next Conv, with no Relu between them (the 3x1 half of a separably
    factored Conv), has signed outputs: a channel that sits near -30 is an outlier though its maximum is
    below zero."""
    model = two_conv_model()
    del model.graph.node[1]  # the Relu: conv_b reads conv_a's output itself
    model.graph.node[1].input[0] = "a"
    inits = {t.name: t for t in model.graph.initializer}
    bias = numpy_helper.to_array(inits["ba"]).copy()
    bias[2] = -30.0
    inits["ba"].CopyFrom(numpy_helper.from_array(bias, "ba"))
    inputs = [x * 0.1 for x in INPUTS]
    group = trace(model).output_group["conv_a"]
    ranges = channel_ranges(model, trace(model), inputs).groups[group]
    assert ranges[2] > 25 and np.median(ranges) < 5, ranges
    equalized, report = equalize(model, inputs)
    assert 2 in {c.channel for c in report.channels if c.producers == ("conv_a",)}
    for before, after in zip(outputs(model, inputs), outputs(equalized, inputs), strict=True):
        np.testing.assert_allclose(after, before, atol=1e-5)
