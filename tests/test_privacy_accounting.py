"""Accountant correctness: closed form, an independent accountant, calibration, caching."""

from __future__ import annotations

import math

import numpy as np
import pytest
from opacus.accountants.analysis import rdp as opacus_rdp

from fedcascade.errors import ConfigError
from fedcascade.privacy import (
    analytic_gaussian_epsilon,
    calibrate_noise_multiplier,
    canonical_blocks,
    compute_epsilon,
    default_delta,
    gaussian_delta,
)
from fedcascade.privacy.rdp import INTEGER_ORDERS, ORDERS, rdp_curve, rdp_curve_integer

# --------------------------------------------------------------------------- (a) closed form


def test_analytic_gaussian_matches_published_value():
    # sigma 10, T 100 full-batch steps == one Gaussian at sigma 1 (Balle & Wang 2018)
    assert analytic_gaussian_epsilon(10 / math.sqrt(100), 1e-5) == pytest.approx(4.3772, abs=1e-4)
    # and it is the exact inverse of the delta formula
    eps = analytic_gaussian_epsilon(0.7, 1e-6)
    assert gaussian_delta(eps, 0.7) == pytest.approx(1e-6, rel=1e-6)


@pytest.mark.parametrize(
    "sigma, steps, delta",
    [(10.0, 100, 1e-5), (2.0, 10, 1e-5), (5.0, 400, 1e-6), (1.0, 1, 1e-4)],
)
def test_full_batch_composition_equals_analytic_gaussian(sigma, steps, delta):
    exact = analytic_gaussian_epsilon(sigma / math.sqrt(steps), delta)
    prv = compute_epsilon([(1.0, sigma, steps)], delta, "prv")
    # PRV returns an upper bound: estimate + its error margin 0.01
    assert exact <= prv <= exact + 0.02
    rdp = compute_epsilon([(1.0, sigma, steps)], delta, "rdp")
    assert exact <= rdp <= 1.25 * exact  # RDP is valid but looser


# --------------------------------------------------------------------------- (b) independent accountant


def _pld_epsilon(blocks, delta):
    from dp_accounting.pld import privacy_loss_distribution as pld

    total = None
    for q, sigma, steps in blocks:
        one = pld.from_gaussian_mechanism(
            standard_deviation=sigma,
            sampling_prob=q,
            pessimistic_estimate=True,
            value_discretization_interval=1e-4,
        ).self_compose(steps)
        total = one if total is None else total.compose(one)
    return total.get_epsilon_for_delta(delta)


# Small grid (~10 s): typical DP-SGD regimes, one heterogeneous history (R-DPCFL's plan shape).
PLD_GRID = [
    ([(0.01, 0.8, 1000)], 1e-5),
    ([(0.01, 2.0, 1000)], 1e-5),
    ([(0.128, 2.0, 50)], 1e-5),
    ([(0.128, 2.0, 1000)], 1e-4),
    ([(0.05, 1.2, 300)], 1e-6),
    ([(1.0, 1.5, 1), (0.05, 1.5, 400)], 1e-4),
]


@pytest.mark.parametrize("blocks, delta", PLD_GRID)
def test_prv_agrees_with_google_pld(blocks, delta):
    pytest.importorskip("dp_accounting")
    pld = _pld_epsilon(blocks, delta)
    prv = compute_epsilon(blocks, delta, "prv")
    # Stated tolerance: PRV (upper bound = estimate + 0.01) lies in [PLD - 0.005, PLD + 0.02 + 0.2 %].
    assert pld - 0.005 <= prv <= pld + 0.02 + 0.002 * pld, (prv, pld)
    rdp = compute_epsilon(blocks, delta, "rdp")
    assert pld * 0.999 <= rdp <= 1.8 * pld


@pytest.mark.parametrize(
    "blocks, delta",
    [
        ([(0.128, 1.0, 20)], 1e-5),
        ([(0.004, 0.8, 4000), (1.0, 0.8, 1)], 1e-4),
        ([(0.01, 0.8, 300), (0.02, 1.5, 200), (1.0, 3.0, 2)], 1e-5),
    ],
)
def test_prv_matches_opacus_prv_accountant(blocks, delta):
    # Same quantity as Opacus' PRVAccountant (reused, finer grids and Fourier-domain composition
    # must not change the answer beyond discretisation noise).
    import warnings

    from opacus.accountants import PRVAccountant

    acc = PRVAccountant()
    acc.history = [(sigma, q, n) for q, sigma, n in blocks]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = acc.get_epsilon(delta)
    assert compute_epsilon(blocks, delta, "prv") == pytest.approx(ref, abs=1e-4)


# --------------------------------------------------------------------------- building blocks


@pytest.mark.parametrize("q, sigma", [(0.004, 0.8), (0.128, 1.0), (0.5, 5.0), (1e-4, 20.0)])
def test_cached_rdp_curves_match_opacus(q, sigma):
    ref = np.asarray(
        opacus_rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=list(ORDERS))
    )
    np.testing.assert_allclose(rdp_curve(q, sigma), ref, rtol=1e-12)
    ints = np.asarray(
        opacus_rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=list(INTEGER_ORDERS))
    )
    np.testing.assert_allclose(rdp_curve_integer(q, sigma), ints, rtol=1e-9, atol=1e-12)


def test_history_order_and_splitting_do_not_change_epsilon():
    a = compute_epsilon([(0.1, 1.0, 30), (1.0, 1.0, 1), (0.1, 1.0, 70)], 1e-5)
    b = compute_epsilon([(1.0, 1.0, 1), (0.1, 1.0, 100)], 1e-5)
    assert a == b
    assert canonical_blocks([(0.1, 1.0, 30), (0.1, 1.0, 0), (0.1, 1.0, 70)]) == ((0.1, 1.0, 100),)


def test_epsilon_edge_cases_and_monotonicity():
    assert compute_epsilon([], 1e-5) == 0.0
    assert compute_epsilon([(0.1, 0.0, 5)], 1e-5) == math.inf
    e = [compute_epsilon([(0.05, 1.0, n)], 1e-5) for n in (10, 100, 1000)]
    assert e[0] < e[1] < e[2]


@pytest.mark.parametrize(
    "blocks, match",
    [
        ([(0.0, 1.0, 5)], "sample_rate"),
        ([(1.5, 1.0, 5)], "sample_rate"),
        ([(0.1, -1.0, 5)], "noise_multiplier"),
        ([(0.1, 1.0, 2.5)], "steps"),
        ([(0.1, 1.0)], "expected"),
    ],
)
def test_bad_blocks_are_named(blocks, match):
    with pytest.raises(ValueError, match=match):
        compute_epsilon(blocks, 1e-5)


def test_bad_delta_and_accountant():
    with pytest.raises(ValueError, match="delta"):
        compute_epsilon([(0.1, 1.0, 5)], 0.0)
    with pytest.raises(ValueError, match="accountant"):
        compute_epsilon([(0.1, 1.0, 5)], 1e-5, "gdp")


# --------------------------------------------------------------------------- calibration


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_calibration_is_the_smallest_sufficient_noise(accountant):
    schedule = [(1.0, 1), (32 / 640, 20 * 30)]  # R-DPCFL: full-batch round, then batch 32
    sigma = calibrate_noise_multiplier(3.0, 1e-4, schedule, accountant)
    blocks = [(q, sigma, n) for q, n in schedule]
    assert compute_epsilon(blocks, 1e-4, accountant) <= 3.0
    smaller = [(q, sigma / 1.003, n) for q, n in schedule]
    assert compute_epsilon(smaller, 1e-4, accountant) > 3.0


def test_calibration_more_steps_or_smaller_budget_needs_more_noise():
    base = calibrate_noise_multiplier(3.0, 1e-5, [(0.1, 100)])
    assert calibrate_noise_multiplier(3.0, 1e-5, [(0.1, 400)]) > base
    assert calibrate_noise_multiplier(1.0, 1e-5, [(0.1, 100)]) > base
    # the schedule is canonicalised: split blocks are the same plan (and the same cache entry)
    assert calibrate_noise_multiplier(3.0, 1e-5, [(0.1, 40), (0.1, 60)]) == base


def test_recalibration_after_spent_blocks_fills_the_rest_of_the_budget():
    spent = [(1.0, 2.0, 1), (0.05, 2.0, 100)]  # e.g. a warm-up, read from a ledger summary
    rest = [(0.1, 150)]
    sigma = calibrate_noise_multiplier(3.0, 1e-5, rest, spent=spent)
    assert compute_epsilon([*spent, (0.1, sigma, 150)], 1e-5) <= 3.0
    assert compute_epsilon([*spent, (0.1, sigma / 1.003, 150)], 1e-5) > 3.0
    assert sigma > calibrate_noise_multiplier(3.0, 1e-5, rest)  # less budget left, more noise
    with pytest.raises(ConfigError, match="already spent"):
        calibrate_noise_multiplier(3.0, 1e-5, rest, spent=[(1.0, 0.5, 10)])


def test_calibration_errors_are_clear():
    with pytest.raises(ConfigError, match="privacy.target_epsilon"):
        calibrate_noise_multiplier(0.0, 1e-5, [(0.1, 10)])
    with pytest.raises(ConfigError, match="reachable"):
        calibrate_noise_multiplier(0.005, 1e-5, [(1.0, 1)], "prv")  # below PRV's error margin
    with pytest.raises(ValueError, match="no steps"):
        calibrate_noise_multiplier(1.0, 1e-5, [(0.1, 0)])


def test_default_delta_is_below_one_over_n():
    assert default_delta(500) == pytest.approx(1e-4)
    assert default_delta(1000) == pytest.approx(1e-4)
    assert default_delta(6400) == pytest.approx(1e-5)
    for n in (1, 7, 99, 100, 101, 12345, 10**6):
        assert default_delta(n) <= 0.1 / n
    with pytest.raises(ValueError, match="n_train"):
        default_delta(0)


# --------------------------------------------------------------------------- planned horizon


def test_horizon_reuses_one_discretisation_and_keeps_the_value():
    # A run of 15 rounds x 8 steps: told the horizon, the accountant discretises once for the
    # whole run (not again each time the history passes a power of two), and every round's
    # epsilon stays the same upper bound within the PRV discretisation noise.
    from fedcascade.privacy import prv

    q, sigma, delta, per_round, rounds = 0.125, 1.95, 1e-4, 8, 15
    horizon = per_round * rounds
    compute_epsilon([(q, sigma, per_round)], delta, horizon_steps=horizon)
    grids = {prv._grid(((q, sigma, per_round * r),), delta, 0.01, horizon) for r in range(1, 16)}
    assert len(grids) == 1
    for r in (2, 5, 9, rounds):
        history = [(q, sigma, per_round)] * r
        with_horizon = compute_epsilon(history, delta, horizon_steps=horizon)
        assert with_horizon == pytest.approx(compute_epsilon(history, delta), abs=2e-4)
    # at (or past) the horizon the value is exactly the plain one: ledger == calibration
    full = [(q, sigma, horizon)]
    assert compute_epsilon(full, delta, horizon_steps=horizon) == compute_epsilon(full, delta)


def test_horizon_matches_opacus_and_bad_horizon_is_named():
    import warnings

    from opacus.accountants import PRVAccountant

    blocks = [(1.0, 3.0, 1), (0.05, 1.5, 60)]
    acc = PRVAccountant()
    acc.history = [(sigma, q, n) for q, sigma, n in blocks]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = acc.get_epsilon(1e-5)
    assert compute_epsilon(blocks, 1e-5, horizon_steps=500) == pytest.approx(ref, abs=1e-4)
    with pytest.raises(ValueError, match="horizon_steps"):
        compute_epsilon(blocks, 1e-5, horizon_steps=-1)
