"""Mask metrics shared by `cutq quantize` (verification) and `cutq bench` (fidelity and ground truth).

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


def max_fbeta(pred: np.ndarray, gt: np.ndarray, beta2: float = 0.3) -> float:
    """Best F-beta over the 256 thresholds of an 8-bit mask, against a binary ground truth (gt >= 0.5).

    beta² = 0.3 weighs precision above recall, the salient-object-detection convention (Achanta et al. 2009),
    so a mask that bleeds into the background costs more than one that misses a hair. Taking the best
    threshold measures how separable the mask is, independent of where a user would cut it.
    """
    levels = np.clip(np.rint(np.asarray(pred, np.float64) * 255), 0, 255).astype(np.int64).ravel()
    fg = (np.asarray(gt) >= 0.5).ravel()
    # predicted-foreground counts at threshold k (level >= k), for k = 0..255, by reversed cumulative histograms
    tp = np.cumsum(np.bincount(levels[fg], minlength=256)[::-1])[::-1].astype(np.float64)
    predicted = np.cumsum(np.bincount(levels, minlength=256)[::-1])[::-1].astype(np.float64)
    positives = float(fg.sum())
    precision = np.divide(tp, predicted, out=np.zeros(256), where=predicted > 0)
    recall = tp / positives if positives else np.zeros(256)
    denom = beta2 * precision + recall
    f = np.divide((1 + beta2) * precision * recall, denom, out=np.zeros(256), where=denom > 0)
    return float(f.max())


def s_measure(pred: np.ndarray, gt: np.ndarray, alpha: float = 0.5) -> float:
    """Structure measure (Fan et al., ICCV 2017): alpha * object-aware + (1 - alpha) * region-aware similarity.

    Pixel metrics (MAE, IoU) ignore shape; S-measure rewards a mask whose foreground is uniform and whose
    layout per quadrant matches the ground truth. Follows the reference implementation (and PySODMetrics).
    """
    pred = np.asarray(pred, np.float64)
    fg = np.asarray(gt) >= 0.5
    share = fg.mean()
    if share == 0:
        return float(1 - pred.mean())
    if share == 1:
        return float(pred.mean())
    score = alpha * _s_object(pred, fg) + (1 - alpha) * _s_region(pred, fg)
    return float(max(score, 0.0))


_EPS = np.finfo(np.float64).eps


def _object_score(values: np.ndarray) -> float:
    mean = values.mean()
    spread = values.std(ddof=1) if values.size > 1 else 0.0
    return float(2 * mean / (mean**2 + 1 + spread + _EPS))


def _s_object(pred: np.ndarray, fg: np.ndarray) -> float:
    share = fg.mean()
    return share * _object_score(pred[fg]) + (1 - share) * _object_score(1 - pred[~fg])


def _s_region(pred: np.ndarray, fg: np.ndarray) -> float:
    """Quadrants split at the ground truth's centroid, each scored by a global SSIM, weighted by area."""
    height, width = fg.shape
    cy, cx = np.argwhere(fg).mean(axis=0).round().astype(int) + 1
    total = height * width
    score = 0.0
    for rows in (slice(0, cy), slice(cy, height)):
        for cols in (slice(0, cx), slice(cx, width)):
            p, g = pred[rows, cols], fg[rows, cols].astype(np.float64)
            if p.size:
                score += p.size / total * _global_ssim(p, g)
    return score


def _global_ssim(p: np.ndarray, g: np.ndarray) -> float:
    n = p.size
    mp, mg = p.mean(), g.mean()
    if n > 1:
        vp, vg = ((p - mp) ** 2).sum() / (n - 1), ((g - mg) ** 2).sum() / (n - 1)
        cov = ((p - mp) * (g - mg)).sum() / (n - 1)
    else:
        vp = vg = cov = 0.0
    top = 4 * mp * mg * cov
    bottom = (mp**2 + mg**2) * (vp + vg)
    if top != 0:
        return float(top / (bottom + _EPS))
    return 1.0 if bottom == 0 else 0.0
