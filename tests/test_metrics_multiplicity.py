"""Ambiguity and discrepancy across seeds, per group."""

import numpy as np
import pytest

from fedcascade.errors import DataError
from fedcascade.metrics import ambiguity, discrepancy, multiplicity_by_group


def test_known_ambiguity_and_discrepancy():
    preds = np.array(
        [
            [0, 1, 1, 0, 2, 2],
            [0, 1, 0, 0, 2, 1],
            [0, 1, 1, 1, 2, 2],
        ]
    )
    # Records 2, 3, 5 have some disagreement.
    assert ambiguity(preds) == pytest.approx(3 / 6)
    # Pairs: (0,1) differ on 2 and 5 -> 2/6; (0,2) on 3 -> 1/6; (1,2) on 2, 3, 5 -> 3/6.
    assert discrepancy(preds) == pytest.approx(3 / 6)
    res = multiplicity_by_group(preds, ["a", "a", "a", "b", "b", "b"])
    assert res["a"] == pytest.approx({"ambiguity": 1 / 3, "discrepancy": 1 / 3})
    assert res["b"] == pytest.approx({"ambiguity": 2 / 3, "discrepancy": 2 / 3})


def test_identical_seeds_have_no_multiplicity():
    preds = np.tile(np.arange(10) % 3, (4, 1))
    assert ambiguity(preds) == 0.0 and discrepancy(preds) == 0.0


def test_per_group_values_equal_each_group_alone():
    rng = np.random.default_rng(0)
    preds = rng.integers(0, 2, size=(5, 300))
    groups = rng.choice(np.array(["p", "q"]), 300)
    res = multiplicity_by_group(preds, groups)
    for g in "pq":
        assert res[g]["ambiguity"] == pytest.approx(ambiguity(preds[:, groups == g]))
        assert res[g]["discrepancy"] == pytest.approx(discrepancy(preds[:, groups == g]))


def test_one_seed_is_rejected_clearly():
    with pytest.raises(DataError, match="n_seeds >= 2"):
        ambiguity(np.zeros((1, 5)))
    with pytest.raises(DataError, match="groups"):
        multiplicity_by_group(np.zeros((2, 5)), ["a"] * 4)
