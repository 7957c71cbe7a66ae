"""Expected calibration error and confident errors, overall and per group."""

import numpy as np
import pytest

from fedcascade.errors import DataError
from fedcascade.metrics import (
    calibration_by_group,
    confident_error_rate,
    expected_calibration_error,
)


def _random_probs(rng, n, k, sharpness=1.0):
    logits = rng.normal(size=(n, k)) * 2.0 * sharpness
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def _sample_labels(rng, probs):
    cum = probs.cumsum(axis=1)
    return (rng.random((len(probs), 1)) > cum).sum(axis=1)


def test_ece_near_zero_when_labels_are_drawn_from_the_predictions():
    rng = np.random.default_rng(0)
    probs = _random_probs(rng, 20000, 5)
    labels = _sample_labels(rng, probs)
    assert expected_calibration_error(probs, labels) < 0.02


def test_ece_large_for_an_overconfident_predictor():
    rng = np.random.default_rng(1)
    true_probs = _random_probs(rng, 20000, 5)
    labels = _sample_labels(rng, true_probs)
    sharp = true_probs**4
    sharp /= sharp.sum(axis=1, keepdims=True)  # same ranking, much more confident
    assert expected_calibration_error(sharp, labels) > 0.1
    assert confident_error_rate(sharp, labels) > confident_error_rate(true_probs, labels) + 0.05


def test_ece_by_hand():
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 0, 0])
    # Bins (15): 0.95 -> bin 14 with acc 1/2, conf 0.95; 0.6 -> bin 8 acc 1, conf 0.6;
    # 0.7 -> bin 10, acc 0, conf 0.7.
    expected = (2 * abs(0.5 - 0.95) + abs(1 - 0.6) + abs(0 - 0.7)) / 4
    assert expected_calibration_error(probs, labels) == pytest.approx(expected)
    assert confident_error_rate(probs, labels) == 0.25  # one wrong prediction at 0.95


def test_per_group_values_equal_the_metric_on_each_group_alone():
    rng = np.random.default_rng(2)
    probs = _random_probs(rng, 900, 3, sharpness=2.0)
    labels = rng.integers(0, 3, 900)
    groups = rng.choice(np.array(["x", "y", "z"]), 900)
    res = calibration_by_group(probs, labels, groups, n_bins=10, threshold=0.8)
    for g in "xyz":
        m = groups == g
        assert res[g]["ece"] == pytest.approx(expected_calibration_error(probs[m], labels[m], 10))
        assert res[g]["confident_error_rate"] == pytest.approx(
            confident_error_rate(probs[m], labels[m], 0.8)
        )


def test_bad_bins_are_rejected_clearly():
    with pytest.raises(DataError, match="n_bins"):
        expected_calibration_error(np.eye(2), [0, 1], n_bins=0)
