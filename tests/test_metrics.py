import numpy as np
import pytest

from screening_core import metrics


def test_threshold_selection_on_known_scores():
    labels = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    scores = np.array([.95, .9, .85, .8, .75, .7, .65, .6, .55, .3, .62, .5, .4, .2, .1])
    t = metrics.choose_threshold(labels, scores, 0.9)
    assert t == pytest.approx(0.55)  # 9 of 10 positives at >= 0.55
    r = metrics.rates(labels, scores, t)
    assert r["sensitivity"] == pytest.approx(0.9)
    assert r["specificity"] == pytest.approx(0.8)  # only 0.62 of the negatives is >= 0.55
    assert metrics.choose_threshold(labels, scores, 1.0) == pytest.approx(0.3)


def test_auc_matches_pairwise_definition():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.random(200) + 0.3 * labels, 2)  # rounded: ties included
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairwise = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    assert metrics.roc_auc(labels, scores) == pytest.approx(pairwise)


def test_calibration_error_of_perfectly_calibrated_bins():
    labels = np.array([0] * 9 + [1] + [1] * 9 + [0])
    scores = np.array([0.1] * 10 + [0.9] * 10)
    assert metrics.expected_calibration_error(labels, scores) == pytest.approx(0.0)


def test_evaluate_has_intervals():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 300)
    scores = np.clip(rng.normal(0.3 + 0.4 * labels, 0.15), 0, 1)
    m = metrics.evaluate(labels, scores, 0.95, bootstrap=200)
    lo, hi = m["ci95"]["auc"]
    assert lo <= m["roc_auc"] <= hi
    assert m["sensitivity"] >= 0.95
