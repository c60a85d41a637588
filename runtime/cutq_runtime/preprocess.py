"""Image -> input tensor, bit-exact with rembg's U²-Net preprocessing.

rembg resizes to 320x320 with LANCZOS, divides by the image maximum and applies mean/std in float64.
Every output value is a function of (channel, uint8 value, image maximum) alone, so we compute that
function once per image as a 3x256 table in float64 with the same operations, and index it: the tensor
is identical to rembg's. The LANCZOS resize dominates this step; an RGB image is resized without the
full-size copy that `convert("RGB")` would make.

The quantization pipeline imports this module for calibration, so the tensors it calibrates on are the
tensors served here.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .registry import InputSpec

_VALUES = np.arange(256, dtype=np.uint8)


def resize_for_model(img: Image.Image, spec: InputSpec) -> np.ndarray:
    """The HxWx3 uint8 pixels the model sees (RGB, LANCZOS to the model's input size)."""
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    return np.asarray(rgb.resize(spec.size, Image.Resampling.LANCZOS))


def to_tensor(img: Image.Image, spec: InputSpec) -> np.ndarray:
    """A [1, 3, H, W] float32 tensor, equal to rembg's `BaseSession.normalize` output."""
    pixels = resize_for_model(img, spec)
    peak = max(np.max(pixels), 1e-6)
    table = np.empty((3, 256), dtype=np.float32)
    for channel in range(3):
        table[channel] = (_VALUES / peak - spec.mean[channel]) / spec.std[channel]
    tensor = np.empty((1, 3, *pixels.shape[:2]), dtype=np.float32)
    for channel in range(3):
        np.take(table[channel], pixels[:, :, channel], out=tensor[0, channel])
    return tensor
