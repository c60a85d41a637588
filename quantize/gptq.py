"""Error-compensating rounding of Conv weights to a 4-bit grid (GPTQ, Frantar et al. 2022), numpy only.

Rounding each weight to its nearest 4-bit step ignores that a Conv's inputs are correlated: the error of
one weight can be cancelled by nudging the weights that read correlated inputs. GPTQ rounds the columns of
the [O, C*kh*kw] weight matrix one at a time and spreads each column's rounding error over the columns not
yet rounded, weighted by the inverse Gram matrix of the Conv's im2col inputs on calibration photos; that
minimises the error of the Conv's *output* rather than of its weights. The grid (the per-output-channel
scale) is fixed beforehand, so the result is stored exactly like nearest rounding, and the masks come out
much closer to FP32's than with nearest rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from cutq.prune.activations import capture
from cutq.prune.geometry import Geometry, im2col


@dataclass(frozen=True)
class GptqConfig:
    """`damp` is added to the Gram's diagonal as a share of its mean (numerical safety for rarely-seen inputs);
    columns are processed in blocks of `block` (the result does not depend on it, only the speed does)."""

    damp: float = 0.01
    block: int = 128


def input_grams(model: onnx.ModelProto, convs: Sequence[onnx.NodeProto], weight_shapes: Sequence[tuple[int, ...]],
                tensors: Sequence[np.ndarray], progress: Callable[[int], None] = lambda done: None) -> list[np.ndarray]:
    """For each Conv, X^T X of its im2col inputs over every output position of every calibration tensor."""
    geometries = [Geometry.of(conv, np.empty(shape, np.float32)) for conv, shape in zip(convs, weight_shapes, strict=True)]
    grams = [np.zeros((int(np.prod(shape[1:])),) * 2) for shape in weight_shapes]
    for done, values in enumerate(capture(model, [c.input[0] for c in convs], tensors), start=1):
        for conv, geometry, gram in zip(convs, geometries, grams, strict=True):
            x = values[conv.input[0]][0]
            ys, xs = _positions(x.shape[1:], geometry)
            cols = im2col(x, geometry, ys, xs).astype(np.float32)
            gram += cols.T @ cols
        progress(done)
    return grams


def _positions(size: tuple[int, ...], geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Every output position of the Conv, row-major."""
    ys, xs = np.meshgrid(*(np.arange(n) for n in geometry.output_size(size)), indexing="ij")
    return ys.reshape(-1), xs.reshape(-1)


def round_to_grid(weights: np.ndarray, scale: np.ndarray, gram: np.ndarray, config: GptqConfig | None = None,
                  low: int = -8, high: int = 7) -> np.ndarray:
    """Integers in [low, high] for `weights` [O, D] on the grid `scale` [O], compensating errors through `gram`."""
    config = config or GptqConfig()
    w = weights.astype(np.float64).copy()
    h = gram.astype(np.float64).copy()
    dead = np.diag(h) == 0  # inputs that are always zero: their weights do not matter
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h[np.diag_indices_from(h)] += config.damp * np.mean(np.diag(h))
    inverse = np.linalg.cholesky(np.linalg.inv(h)).T  # upper Cholesky factor of H^-1
    step = scale.astype(np.float64)[:, None]
    q = np.zeros(w.shape, np.int8)
    for start in range(0, w.shape[1], config.block):
        stop = min(start + config.block, w.shape[1])
        block, errors, local = w[:, start:stop].copy(), np.zeros((w.shape[0], stop - start)), inverse[start:stop, start:stop]
        for i in range(stop - start):
            values = np.clip(np.round(block[:, i:i + 1] / step), low, high)
            q[:, start + i] = values[:, 0]
            error = (block[:, i:i + 1] - values * step) / local[i, i]
            block[:, i:] -= error * local[i, i:]
            errors[:, i:i + 1] = error
        w[:, stop:] -= errors @ inverse[start:stop, stop:]
    return q
