"""Pipeline step: calibration, i.e. the value range of every activation over the calibration images.

One calibrator per method (ONNX Runtime's MinMax, Entropy and Percentile) behind a typed config. The
ranges are computed once and reused by every quantization attempt of the accuracy-aware search.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod
from onnxruntime.quantization.calibrate import TensorsData, create_calibrator

from cutq_runtime.errors import CutqError

METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}


@dataclass(frozen=True)
class CalibrationConfig:
    """Method and its settings. `percentile` and `num_bins` apply to the histogram methods only."""

    method: str = "minmax"
    percentile: float = 99.999
    num_bins: int | None = None
    moving_average: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise CutqError(f"calibration method '{self.method}' is not one of {', '.join(METHODS)}")
        if not 0 < self.percentile <= 100:
            raise CutqError(f"percentile must be in (0, 100], not {self.percentile}")

    def extra_options(self) -> dict[str, object]:
        options: dict[str, object] = {}
        if self.method == "percentile":
            options["percentile"] = self.percentile
        if self.method == "entropy":
            # ONNX Runtime's default histogram has as many bins as the quantized grid (128), which leaves the
            # KL search nothing to clip: it returns the min-max range. A finer histogram makes it meaningful.
            options["num_bins"] = self.num_bins or 2048
        elif self.num_bins and self.method == "percentile":
            options["num_bins"] = self.num_bins
        if self.moving_average and self.method == "minmax":
            options["moving_average"] = True
        return options


class TensorReader(CalibrationDataReader):
    """Feeds preprocessed tensors to ONNX Runtime's calibrators, one image at a time."""

    def __init__(self, input_name: str, tensors: Sequence[np.ndarray]) -> None:
        self.input_name = input_name
        self.tensors = list(tensors)
        self.index = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= len(self.tensors):
            return None
        self.index += 1
        return {self.input_name: self.tensors[self.index - 1]}

    def __len__(self) -> int:
        return len(self.tensors)


def compute_ranges(model: onnx.ModelProto, tensors: Sequence[np.ndarray],
                   config: CalibrationConfig | None = None) -> TensorsData:
    """Activation ranges of `model` over `tensors`."""
    config = config or CalibrationConfig()
    if not tensors:
        raise CutqError("calibration needs at least one image")
    with tempfile.TemporaryDirectory(prefix="cutq-calib-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(model, path)
        calibrator = create_calibrator(
            path,
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=METHODS[config.method],
            extra_options=config.extra_options(),
        )
        with contextlib.redirect_stdout(sys.stderr):  # the histogram calibrators print progress to stdout
            calibrator.collect_data(TensorReader(model.graph.input[0].name, tensors))
            ranges = calibrator.compute_data()
        del calibrator
    return ranges
