"""Ground-truth metrics used by `cutq bench`, checked against values worked out by hand on tiny masks."""

from __future__ import annotations

import numpy as np
import pytest

from cutq.metrics import iou, mae, max_fbeta, s_measure


def test_max_fbeta_picks_the_best_threshold():
    pred = np.array([[0.9, 0.8], [0.3, 0.1]])
    gt = np.array([[1, 0], [1, 0]])
    # thresholds keep {all}: F=0.565, {.9,.8,.3}: 0.722, {.9,.8}: 0.5, {.9}: P=1, R=.5 -> 1.3*.5/(.3+.5) = 0.8125
    assert max_fbeta(pred, gt) == pytest.approx(0.8125)
    assert max_fbeta(pred, gt, beta2=1.0) == pytest.approx(0.8)  # {.9,.8,.3}: 2*(2/3)*1/(2/3+1)


def test_max_fbeta_extremes():
    gt = np.array([[1, 1], [0, 0]])
    assert max_fbeta(gt.astype(float), gt) == pytest.approx(1.0)
    assert max_fbeta(1.0 - gt, gt) == pytest.approx(1.3 * 0.5 / 1.15)  # best is "everything": P=.5, R=1
    assert max_fbeta(np.zeros((2, 2)), np.zeros((2, 2))) == 0.0  # no foreground to find


def test_s_measure_by_hand():
    gt = np.zeros((4, 4))
    gt[:, :2] = 1
    pred = gt * 0.5
    # object: fg 2*.5/(.25+1) = .8, bg 1 -> .9; region: centroid (row 2, col 0) + 1 splits 3/1 rows, 1/3 cols;
    # the two quadrants holding both classes score 16/25 (weights 9/16 + 3/16), the others 1 -> .73; S = .815
    assert s_measure(pred, gt) == pytest.approx(0.815)


def test_s_measure_extremes():
    gt = np.zeros((4, 4))
    gt[1:3, 1:3] = 1
    assert s_measure(gt, gt) == pytest.approx(1.0)
    assert s_measure(np.full((4, 4), 0.25), np.zeros((4, 4))) == pytest.approx(0.75)  # empty truth: 1 - mean
    assert s_measure(np.full((4, 4), 0.25), np.ones((4, 4))) == pytest.approx(0.25)  # full truth: mean
    assert s_measure(1.0 - gt, gt) < 0.1


def test_pixel_metrics_on_the_same_arrays():
    pred = np.array([[0.9, 0.8], [0.3, 0.1]])
    gt = np.array([[1, 0], [1, 0]])
    assert mae(pred, gt) == pytest.approx((0.1 + 0.8 + 0.7 + 0.1) / 4)
    assert iou(pred, gt) == pytest.approx(1 / 3)  # {.9,.8} vs {.9,.3}: one shared pixel of three
