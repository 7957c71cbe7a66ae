"""Private cluster selection: report-noisy-max / -min, sensitivities and accounting."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedcascade.clustering import (
    accuracy_sensitivity,
    exponential_mechanism_probs,
    loss_sensitivity,
    rdp_to_epsilon,
    report_noisy_max,
    report_noisy_min,
    selection_epsilon,
    selection_rdp,
)
from fedcascade.clustering.selection import ORDERS


def test_noisy_max_frequencies_match_the_exponential_mechanism() -> None:
    # Gumbel(0, 2*Delta/eps) noise + argmax selects j with prob exp(eps s_j / (2 Delta)) / Z.
    scores = np.array([0.70, 0.72, 0.60, 0.71])
    eps, sens = 1.0, 1.0 / 50  # accuracies on 50 records
    probs = exponential_mechanism_probs(scores, eps, sens)
    by_hand = np.exp(eps * scores / (2 * sens))
    np.testing.assert_allclose(probs, by_hand / by_hand.sum())
    rng = np.random.default_rng(0)
    n = 40000
    batch = np.tile(scores, (n, 1))
    picks = report_noisy_max(batch, eps, sens, rng)
    freq = np.bincount(picks, minlength=4) / n
    # binomial std <= 0.0025 per entry; 4 sigma
    np.testing.assert_allclose(freq, probs, atol=0.01)
    # scalar interface gives the same distribution
    single = [report_noisy_max(scores, eps, sens, rng) for _ in range(4000)]
    assert isinstance(single[0], int)
    np.testing.assert_allclose(np.bincount(single, minlength=4) / 4000, probs, atol=0.03)


def test_noisy_min_prefers_low_losses_and_infinite_epsilon_is_exact() -> None:
    losses = np.array([2.0, 0.5, 1.0])
    rng = np.random.default_rng(1)
    picks = report_noisy_min(np.tile(losses, (5000, 1)), 2.0, 0.1, rng)
    probs = exponential_mechanism_probs(-losses, 2.0, 0.1)
    np.testing.assert_allclose(np.bincount(picks, minlength=3) / 5000, probs, atol=0.02)
    assert report_noisy_max([0.1, 0.9, 0.3], math.inf, 0.01, rng) == 1
    assert report_noisy_min(losses, math.inf, 0.01, rng) == 1


def test_small_budget_makes_selection_nearly_uniform_and_large_budget_nearly_exact() -> None:
    scores = np.array([0.5, 0.9])
    lo = exponential_mechanism_probs(scores, 0.01, 1 / 100)
    hi = exponential_mechanism_probs(scores, 10.0, 1 / 100)
    assert abs(lo[1] - 0.5) < 0.06
    assert hi[1] > 0.999


def test_per_row_sensitivity() -> None:
    # rows with different record counts: the small community's choice is noisier
    scores = np.array([[0.5, 0.6], [0.5, 0.6]])
    sens = np.array([accuracy_sensitivity(10), accuracy_sensitivity(1000)])
    p = exponential_mechanism_probs(scores, 1.0, sens)
    assert p[0, 1] < p[1, 1]
    assert report_noisy_max(scores, 1.0, sens, 0).shape == (2,)
    with pytest.raises(ValueError, match="sensitivity"):
        report_noisy_max(scores, 1.0, np.array([0.1, 0.1, 0.1]), 0)
    with pytest.raises(ValueError, match="epsilon"):
        report_noisy_max(scores[0], -1.0, 0.1, 0)


def test_sensitivities() -> None:
    assert accuracy_sensitivity(200) == pytest.approx(1 / 200)
    # R-DPCFL's conservative 100 / (N - 1) in percent
    assert accuracy_sensitivity(200, conservative=True) * 100 == pytest.approx(100 / 199)
    # exhaustive check of the add/remove bound on a small data set: |c/n - c'/(n-1)| <= 1/n
    n = 7
    worst = max(
        abs(c / n - c2 / (n - 1)) for c in range(n + 1) for c2 in (c, c - 1) if 0 <= c2 <= n - 1
    )
    assert worst == pytest.approx(accuracy_sensitivity(n))
    assert loss_sensitivity(50, 4.0) == pytest.approx(0.08)
    with pytest.raises(ValueError, match="n_records"):
        accuracy_sensitivity(0)


def test_selection_accounting() -> None:
    # the reference's RDP of L selections at eps_select each: L * alpha * eps^2 / 8
    eps_sel, count = 0.09, 20  # 3% of epsilon 3, 20 selection rounds
    rdp = selection_rdp(eps_sel, count)
    np.testing.assert_allclose(rdp, count * np.minimum(eps_sel, ORDERS * eps_sel**2 / 8))
    total = selection_epsilon(eps_sel, count, 1e-5)
    assert 0 < total < count * eps_sel  # RDP composition beats adding the epsilons
    # conversion agrees with Opacus' implementation
    from opacus.accountants.analysis.rdp import get_privacy_spent

    expected, _ = get_privacy_spent(orders=ORDERS, rdp=rdp, delta=1e-5)
    assert rdp_to_epsilon(rdp, 1e-5) == pytest.approx(expected, rel=1e-9)
    # one selection costs at most its epsilon
    assert selection_epsilon(0.5, 1, 1e-5) <= 0.5
    assert selection_epsilon(0.5, 0, 1e-5) == 0.0
