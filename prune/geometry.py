"""A 2-D Conv's kernel geometry, and the two things computed from it: im2col patches and padding coverage.

Both the reconstruction (which needs the patches a Conv multiplies) and the bias compensation (which needs
to know how often each kernel tap reads real pixels rather than zero padding) depend on the same attributes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from cutq_runtime.errors import ModelError


@dataclass(frozen=True)
class Geometry:
    kernel: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, left, bottom, right
    strides: tuple[int, int]
    dilations: tuple[int, int]

    @classmethod
    def of(cls, node: onnx.NodeProto, weight: np.ndarray) -> Geometry:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or weight.ndim != 4:
            raise ModelError(f"Conv '{node.name}': only 2-D convolutions with explicit pads are supported")
        return cls(tuple(weight.shape[2:]), tuple(attrs.get("pads", (0, 0, 0, 0))), tuple(attrs.get("strides", (1, 1))),
                   tuple(attrs.get("dilations", (1, 1))))

    def output_size(self, size: tuple[int, ...]) -> tuple[int, int]:
        """(height, width) of the Conv's output for an input of spatial `size`."""
        return tuple((size[a] + self.pads[a] + self.pads[a + 2] - self.dilations[a] * (self.kernel[a] - 1) - 1)
                     // self.strides[a] + 1 for a in (0, 1))

    def coverage(self, size: tuple[int, int]) -> np.ndarray:
        """[kh, kw]: the fraction of output positions at which each kernel tap reads the input, not padding.

        A dilated 3x3 Conv (dilation 8) on U²-Net's 10x10 bottom reads padding with most of its outer taps,
        so a constant input contributes far less than the kernel sum times the constant.
        """
        axes = []
        for axis, outputs in enumerate(self.output_size(size)):
            starts = np.arange(outputs) * self.strides[axis] - self.pads[axis]
            taps = starts[None, :] + np.arange(self.kernel[axis])[:, None] * self.dilations[axis]
            axes.append(((taps >= 0) & (taps < size[axis])).mean(axis=1))
        return np.outer(*axes)


def im2col(x: np.ndarray, geometry: Geometry, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Patches of `x` [C, H, W] under the output positions (ys, xs), flattened like a [O, C, kh, kw] weight."""
    top, left, bottom, right = geometry.pads
    padded = np.pad(x, ((0, 0), (top, bottom), (left, right)))
    rows = ys[:, None] * geometry.strides[0] + np.arange(geometry.kernel[0]) * geometry.dilations[0]
    cols = xs[:, None] * geometry.strides[1] + np.arange(geometry.kernel[1]) * geometry.dilations[1]
    patches = padded[:, rows[:, :, None], cols[:, None, :]]  # [C, n, kh, kw]
    return patches.transpose(1, 0, 2, 3).reshape(len(ys), -1)
