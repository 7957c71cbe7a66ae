"""Per-group accuracy, loss, worst group, gap, and fairlearn-compatible DP / EO differences."""

import numpy as np
import pytest
from fairlearn.metrics import demographic_parity_difference as fl_dp
from fairlearn.metrics import equalized_odds_difference as fl_eo

from fedcascade.errors import DataError
from fedcascade.metrics import (
    binary_group_rates,
    cross_entropy,
    demographic_parity_difference,
    equalized_odds_difference,
    group_accuracy,
    group_loss,
    worst_and_gap,
)


def test_group_accuracy_and_loss_known_values():
    y = np.array([0, 1, 1, 0, 1, 1])
    p = np.array([0, 1, 0, 0, 0, 0])
    g = np.array(["a", "a", "a", "b", "b", "b"])
    acc = group_accuracy(y, p, g)
    assert acc == pytest.approx({"a": 2 / 3, "b": 1 / 3})
    assert group_loss([1.0, 2.0, 3.0, 0.0, 0.0, 3.0], g) == pytest.approx({"a": 2.0, "b": 1.0})
    worst, value, gap = worst_and_gap(acc)
    assert worst == "b" and value == pytest.approx(1 / 3) and gap == pytest.approx(1 / 3)
    worst, value, _ = worst_and_gap({"a": 0.2, "b": 0.9, "c": float("nan")}, higher_is_better=False)
    assert (worst, value) == ("b", 0.9)


def test_cross_entropy_matches_definition_and_rejects_bad_labels():
    probs = np.array([[0.25, 0.75], [0.9, 0.1]])
    np.testing.assert_allclose(cross_entropy(probs, [1, 1]), [-np.log(0.75), -np.log(0.1)])
    with pytest.raises(DataError, match="labels"):
        cross_entropy(probs, [0, 2])


@pytest.mark.parametrize("seed", range(5))
def test_dp_and_eo_differences_equal_fairlearn_on_random_data(seed):
    rng = np.random.default_rng(seed)
    n = 400
    groups = rng.choice(np.array(["white-m", "white-f", "black-m", "black-f", "other"]), size=n)
    y_true = rng.integers(0, 2, n)
    # Group-dependent positive rates so the differences are not all near zero.
    bias = {"white-m": 0.7, "white-f": 0.5, "black-m": 0.35, "black-f": 0.2, "other": 0.5}
    y_pred = (rng.random(n) < np.vectorize(bias.get)(groups)).astype(int)
    assert demographic_parity_difference(y_true, y_pred, groups) == pytest.approx(
        fl_dp(y_true, y_pred, sensitive_features=groups), abs=1e-12
    )
    assert equalized_odds_difference(y_true, y_pred, groups) == pytest.approx(
        fl_eo(y_true, y_pred, sensitive_features=groups), abs=1e-12
    )


def test_rates_of_a_group_without_positives_are_nan_not_zero():
    rates = binary_group_rates([0, 0, 1, 0], [1, 0, 1, 0], ["a", "a", "b", "b"])
    assert np.isnan(rates["tpr"]["a"])
    assert rates["fpr"]["a"] == 0.5
    # EO ignores the undefined TPR instead of treating it as 0 (which would give 1.0).
    assert equalized_odds_difference([0, 0, 1, 0], [1, 0, 1, 0], ["a", "a", "b", "b"]) == 0.5


def test_non_binary_predictions_give_a_clear_error():
    with pytest.raises(DataError, match="y_pred.*binary"):
        demographic_parity_difference([0, 1], [0, 2], ["a", "b"])


def test_length_mismatch_names_the_field():
    with pytest.raises(DataError, match="y_pred"):
        group_accuracy([0, 1, 1], [0, 1], ["a", "a", "b"])
