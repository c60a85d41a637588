"""Centering of near-constant channels on a tiny RSU-shaped model that carries one planted offset channel."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from cutq.quantize.center import CenterConfig, center

from .tiny import int8_error, outputs, residual_concat_model

INPUTS = [np.random.default_rng(i).standard_normal((1, 3, 16, 16)).astype(np.float32) for i in range(6)]
CONSTANT = 1  # conv_2's output channel 1: through relu, resize and the concat (offset 0) into conv_3
OFFSET = 60.0


def _with_offset_channel() -> onnx.ModelProto:
    """conv_2's channel 1 sits near 60 with a variation of about 0.1, read by conv_3 with large weights whose
    bias cancels the offset: what batch-norm folding leaves behind in u2netp's Conv_765 -> Conv_787."""
    model = residual_concat_model()
    inits = {t.name: t for t in model.graph.initializer}
    arrays = {name: numpy_helper.to_array(inits[name]).copy() for name in ("w2", "b2", "w3", "b3")}
    arrays["w2"][CONSTANT] *= 0.05
    arrays["b2"][CONSTANT] = OFFSET
    arrays["w3"][:, CONSTANT] *= 8
    arrays["b3"] -= arrays["w3"][:, CONSTANT].sum(axis=(1, 2)) * OFFSET
    for name, value in arrays.items():
        inits[name].CopyFrom(numpy_helper.from_array(value, name))
    return model


def test_center_moves_the_offset_and_keeps_the_function_inside_the_border() -> None:
    model = _with_offset_channel()
    centered, report = center(model, INPUTS)
    assert [(c.producer, c.channel) for c in report.channels] == [("conv_2", CONSTANT)]
    moved = report.channels[0]
    assert moved.low > 50 and 0.5 * moved.high < moved.shift < moved.low and moved.gain > 4
    # conv_3 and conv_side pad by one pixel each: only a two-pixel frame sees the shifted zero padding
    for before, after in zip(outputs(model, INPUTS), outputs(centered, INPUTS), strict=True):
        np.testing.assert_allclose(after[..., 2:-2, 2:-2], before[..., 2:-2, 2:-2], atol=1e-4)
    assert report.max_output_change > 1e-3  # the frame does differ, and the report says so


def test_center_brings_int8_closer_to_float() -> None:
    model = _with_offset_channel()
    centered, _ = center(model, INPUTS)
    reference = outputs(model, INPUTS)
    errors = [int8_error(candidate, INPUTS, reference, border=2) for candidate in (model, centered)]
    assert errors[1] < errors[0] / 2, errors


def test_center_leaves_ordinary_channels_alone() -> None:
    model = residual_concat_model()
    same, report = center(model, INPUTS)
    assert report.channels == () and same is model
    planted = _with_offset_channel()
    same, report = center(planted, INPUTS, CenterConfig(enabled=False))
    assert report.channels == () and same is planted
    # a channel the Relu clips on some input keeps its offset: a shift would change what the Relu passes
    clipped = _with_offset_channel()
    inits = {t.name: t for t in clipped.graph.initializer}
    w2 = numpy_helper.to_array(inits["w2"]).copy()
    w2[CONSTANT] *= 2000
    inits["w2"].CopyFrom(numpy_helper.from_array(w2, "w2"))
    _, report = center(clipped, INPUTS)
    assert not [c for c in report.channels if c.channel == CONSTANT]
