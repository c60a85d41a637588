"""Pipeline step: static QDQ quantization from precomputed ranges.

Per-channel signed weights and unsigned 8-bit activations. The weights use 7 bits by default: every
integer weight lies in [-64, 64], so no pair of u8 x s8 products can overflow 16 bits (255 x 64 x 2 =
32640). Without VNNI (AVX2, AVX-512 without VNNI, SSE), ONNX Runtime's x86 integer kernels multiply with
VPMADDUBSW, which adds each pair of u8 x s8 products into a saturating signed 16-bit value; with the full
8-bit range (255 x 127 x 2) they clip and the masks are wrong. The full range (`weight_range="8bit"`) is an
opt-in for VNNI or ARM hosts only, and the manifest says so.

Calling ONNX Runtime's `quantize_static` with a calibration cache keeps us on its public API while reusing
one calibration for many attempts.

The bilinear Resizes stay between a Dequantize and a Quantize, run in float: feeding them the 8-bit tensors,
switching them to nearest mode, or giving every Concat's inputs one scale were each measured and made the
file no faster.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

from cutq_runtime.errors import CutqError

from .mixed import output_head

TYPES = {"s8": QuantType.QInt8, "u8": QuantType.QUInt8}
WEIGHT_RANGES = ("7bit", "8bit")  # ONNX Runtime's reduced INT8 range is [-64, 64]


@dataclass(frozen=True)
class QuantConfig:
    """How weights and activations are quantized."""

    per_channel: bool = True
    weight_type: str = "s8"
    activation_type: str = "u8"
    # "7bit": weights in [-64, 64], exact on every CPU; "8bit": [-127, 127], exact only with VNNI or on ARM.
    weight_range: str = "7bit"
    # The output head (side-output convs, their upsampling, the fusion conv, the sigmoids) stays float:
    # its logits set the mask's precision directly, and it costs well under 1% of U²-Net's MACs.
    float_head: bool = True

    def __post_init__(self) -> None:
        for label, value in (("weight type", self.weight_type), ("activation type", self.activation_type)):
            if value not in TYPES:
                raise CutqError(f"{label} '{value}' is not one of {', '.join(TYPES)}")
        if self.weight_range not in WEIGHT_RANGES:
            raise CutqError(f"weight range '{self.weight_range}' is not one of {', '.join(WEIGHT_RANGES)}")


def quantize_qdq(model: onnx.ModelProto, ranges: TensorsData, config: QuantConfig | None = None) -> onnx.ModelProto:
    """A QDQ model: every supported op gets Q/DQ pairs on its inputs and outputs; the head computes in float."""
    config = config or QuantConfig()
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_static warns about pre-processing we already did
    try:
        quantized = _quantize(model, ranges, config)
    finally:
        root.setLevel(level)
    # The head's nodes are excluded from the quantizer: their weights and arithmetic stay float. Their
    # inputs keep the Q/DQ pair the quantizer puts on every feature map, so the residual Add in front of a
    # side-output Conv runs as one INT8 op in ONNX Runtime's NHWC layout, instead of in float between two
    # dequantized full-resolution maps, which cost several times as much. The features are 8-bit everywhere
    # else in the network too, and the masks did not change measurably.
    return quantized


def _quantize(model: onnx.ModelProto, ranges: TensorsData, config: QuantConfig) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory(prefix="cutq-qdq-") as tmp:
        src, out, cache = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx", Path(tmp) / "ranges.json"
        onnx.save(model, src)
        save_tensors_data(ranges, cache)
        quantize_static(
            src,
            out,
            calibration_data_reader=None,
            quant_format=QuantFormat.QDQ,
            per_channel=config.per_channel,
            reduce_range=config.weight_range == "7bit",
            activation_type=TYPES[config.activation_type],
            weight_type=TYPES[config.weight_type],
            calibrate_method=ranges.calibration_method,
            calibration_cache_path=cache,
            nodes_to_exclude=output_head(model) if config.float_head else [],
            # Relu is folded into the Conv output's quantization (its u8 range starts at 0), so each
            # Conv+Relu is one QLinearConv with one rounding; kept explicit, ONNX Runtime would run it as
            # QLinearConv + dequantize + requantize, rounding twice.
        )
        return onnx.load(out)
