"""Mask fidelity metrics shared by `cutq quantize` (verification) and `cutq bench`.

Masks are float arrays in [0, 1]. SSIM follows Wang et al. (2004): an 11x11 Gaussian window with
sigma 1.5, K1 = 0.01, K2 = 0.03, data range 1, averaged over the valid (unpadded) area.
"""

from __future__ import annotations

import numpy as np

_C1 = 0.01**2
_C2 = 0.03**2


def _gaussian_kernel(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    kernel = np.exp(-(x**2) / (2 * sigma**2))
    return kernel / kernel.sum()


_KERNEL = _gaussian_kernel()


def _filter(image: np.ndarray) -> np.ndarray:
    """Separable 'valid' Gaussian filter."""
    rows = np.apply_along_axis(np.convolve, 1, image, _KERNEL, mode="valid")
    return np.apply_along_axis(np.convolve, 0, rows, _KERNEL, mode="valid")


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity of two masks of the same 2-D shape (1.0 means identical)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"ssim needs two 2-D arrays of one shape, got {a.shape} and {b.shape}")
    mu_a, mu_b = _filter(a), _filter(b)
    var_a = _filter(a * a) - mu_a**2
    var_b = _filter(b * b) - mu_b**2
    cov = _filter(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + _C1) * (2 * cov + _C2)
    den = (mu_a**2 + mu_b**2 + _C1) * (var_a + var_b + _C2)
    return float(np.mean(num / den))


def mae(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two masks in [0, 1]."""
    return float(np.mean(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def iou(a: np.ndarray, b: np.ndarray, threshold: float = 0.5) -> float:
    """Intersection over union after thresholding both masks; 1.0 when both are empty."""
    fa, fb = np.asarray(a) >= threshold, np.asarray(b) >= threshold
    union = np.logical_or(fa, fb).sum()
    return 1.0 if union == 0 else float(np.logical_and(fa, fb).sum() / union)
