"""Pipeline step: raise the model's ONNX opset.

The released U²-Net files are opset 11, and per-channel QDQ needs DequantizeLinear with an `axis`,
which exists from opset 13. The converter rewrites ops whose signature changed (Resize, Split, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import version_converter

from cutq_runtime.errors import ModelError


@dataclass(frozen=True)
class OpsetConfig:
    """Target opset; 13 is the lowest with per-channel Q/DQ."""

    target: int = 13


@dataclass(frozen=True)
class OpsetReport:
    """What the step did, for the variant's manifest."""

    from_version: int
    to_version: int

    @property
    def changed(self) -> bool:
        return self.from_version != self.to_version


def default_opset(model: onnx.ModelProto) -> int:
    """The version of the default ("" / ai.onnx) domain."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    raise ModelError("model imports no default-domain opset")


def upgrade_opset(model: onnx.ModelProto, config: OpsetConfig | None = None) -> tuple[onnx.ModelProto, OpsetReport]:
    """Return the model at `config.target` (unchanged when it is already there or newer)."""
    config = config or OpsetConfig()
    current = default_opset(model)
    if current >= config.target:
        return model, OpsetReport(current, current)
    try:
        upgraded = version_converter.convert_version(model, config.target)
        onnx.checker.check_model(upgraded)
    except Exception as exc:
        raise ModelError(f"cannot convert opset {current} to {config.target}: {exc}") from exc
    return upgraded, OpsetReport(current, config.target)
