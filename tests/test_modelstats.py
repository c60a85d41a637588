"""Parameter and MAC counts, checked by hand on a tiny model and against U²-Net's published figures."""

from __future__ import annotations

import numpy as np
import onnx

from cutq.modelstats import conv_macs, parameter_count
from cutq.quantize.calibrate import CalibrationConfig, compute_ranges
from cutq.quantize.pack import PackConfig, pack_int4
from cutq.quantize.qdq import QuantConfig, quantize_qdq

from .tiny import two_conv_model


def test_counts_of_the_tiny_model_by_hand():
    model = two_conv_model()
    assert parameter_count(model) == 8 * 3 * 9 + 8 + 1 * 8 * 9 + 1
    assert conv_macs(model, (1, 3, 16, 16)) == 16 * 16 * (8 * 27 + 1 * 72)


def test_int8_and_4_bit_variants_count_like_their_source():
    model = two_conv_model()
    images = [np.random.default_rng(i).random((1, 3, 16, 16), dtype=np.float32) for i in range(2)]
    quantized = quantize_qdq(model, compute_ranges(model, images, CalibrationConfig()), QuantConfig())
    packed, report = pack_int4(quantized, PackConfig(min_weights=1))
    assert report.convs
    for variant in (quantized, packed):
        assert parameter_count(variant) == parameter_count(model)
        assert conv_macs(variant, (1, 3, 16, 16)) == conv_macs(model, (1, 3, 16, 16))


def test_u2netp_figures(u2netp_path):
    model = onnx.load(u2netp_path)
    assert parameter_count(model) == 1_125_485  # U²-Net† is published as 1.13 M parameters
    assert conv_macs(model) > 1e9
