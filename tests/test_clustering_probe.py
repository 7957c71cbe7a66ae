"""The DP clustering probe: exact gradient, sensitivity 1, calibrated noise, and it separates."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedcascade.clustering.noise_plan import gdp_mu
from fedcascade.clustering.probe import (
    probe_dimension,
    probe_features,
    probe_noise_multiplier,
    probe_noise_std,
    probe_norm_bound,
    release_probe,
)
from fedcascade.privacy import DPPlan, analytic_gaussian_epsilon, compute_epsilon

K = 10
SHAPE = (1, 8, 8)
D = 64


def _images(rng, n, scale=1.0):
    return rng.normal(0.0, scale, size=(n, *SHAPE)) + rng.normal(0.0, scale, size=(n, 1, 1, 1))


# --------------------------------------------------------------------------- (1) the feature


def _autograd_feature(x_record, label, n_classes):
    """Gradient of CE(W z, y) w.r.t. a zero W, with z the record standardised on its own."""
    z = torch.as_tensor(x_record, dtype=torch.float64).reshape(-1)
    z = z - z.mean()
    z = z / z.norm()
    w = torch.zeros(n_classes, z.numel(), dtype=torch.float64, requires_grad=True)
    logits = (w @ z)[None]
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([int(label)]))
    loss.backward()
    return w.grad.numpy().reshape(-1)


def test_feature_is_the_gradient_of_a_zero_initialised_linear_softmax_probe():
    rng = np.random.default_rng(0)
    n = 12
    x = _images(rng, n, scale=3.0)
    y = rng.integers(0, K, size=n)
    f = probe_features(x, y, K)
    assert f.shape == (n, probe_dimension(D, K)) == (n, K * D)
    expected = np.stack([_autograd_feature(x[i], y[i], K) for i in range(n)])
    np.testing.assert_allclose(f, expected, rtol=1e-12, atol=1e-14)
    # every record has the same norm: sqrt(1 - 1/K) |z| with |z| = 1
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), math.sqrt(1 - 1 / K), rtol=1e-12)


def test_feature_of_a_constant_record_is_zero():
    x = np.full((3, *SHAPE), 7.5)
    x[1] = _images(np.random.default_rng(1), 1)[0]
    f = probe_features(x, np.array([0, 4, 9]), K)
    assert np.all(f[0] == 0) and np.all(f[2] == 0)
    assert np.linalg.norm(f[1]) == pytest.approx(math.sqrt(1 - 1 / K), rel=1e-12)


def test_feature_ignores_the_record_offset_and_scale():
    # standardisation uses the record alone: a brighter or higher-contrast copy has the same feature
    rng = np.random.default_rng(2)
    x = _images(rng, 5)
    y = rng.integers(0, K, size=5)
    a = probe_features(x, y, K)
    b = probe_features(4.0 * x - 11.0, y, K)
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)


# --------------------------------------------------------------------------- (2) sensitivity


def test_one_record_moves_the_sum_of_features_by_at_most_one():
    rng = np.random.default_rng(3)
    n = 2000
    for scale in [1e-6, 1.0, 1e3, 1e8, 1e100]:
        x = _images(rng, n, scale=scale)
        # adversarial records: one huge pixel, a spike on a constant, alternating extremes
        x[0] = 0.0
        x[0, 0, 0, 0] = 1e6 * scale
        x[1] = scale
        x[1, 0, 3, 5] = -scale
        x[2] = np.where(np.indices(SHAPE).sum(0) % 2 == 0, 1e3, -1e3) * scale
        y = rng.integers(0, K, size=n)
        norms = np.linalg.norm(probe_features(x, y, K), axis=1)
        assert norms.max() <= 1.0
        # |f| = sqrt(1 - 1/K) for every non-constant record: the bound is nearly tight
        np.testing.assert_allclose(norms, math.sqrt(1 - 1 / K), rtol=1e-9)
    # add/remove: the released sum of neighbouring datasets differs by exactly one feature
    x = _images(rng, 50)
    y = rng.integers(0, K, size=50)
    with_all = 50 * release_probe(x, y, K, 0.0, np.random.default_rng(0))
    without = 49 * release_probe(x[1:], y[1:], K, 0.0, np.random.default_rng(0))
    assert np.linalg.norm(with_all - without) <= 1.0


# --------------------------------------------------------------------------- (3) the release


def test_release_without_noise_is_the_exact_mean_of_the_features():
    rng = np.random.default_rng(4)
    x = _images(rng, 40)
    y = rng.integers(0, K, size=40)
    out = release_probe(x, y, K, 0.0, np.random.default_rng(0))
    assert out.dtype == np.float64 and out.shape == (K * D,)
    np.testing.assert_allclose(out, probe_features(x, y, K).mean(axis=0), rtol=1e-12, atol=1e-15)


def test_release_noise_has_the_documented_per_coordinate_std():
    rng = np.random.default_rng(5)
    n, sigma, draws = 20, 1.7, 1000
    x = _images(rng, n)
    y = rng.integers(0, K, size=n)
    exact = probe_features(x, y, K).mean(axis=0)
    gen = np.random.default_rng(6)
    resid = np.stack([release_probe(x, y, K, sigma, gen) - exact for _ in range(draws)])
    expected = probe_noise_std(sigma, n)
    assert expected == pytest.approx(sigma / n)
    # pooled over 640 coordinates x 1000 draws: standard error ~0.1%
    assert resid.std() == pytest.approx(expected, rel=0.01)
    assert abs(resid.mean()) < 0.01 * expected
    # every coordinate on its own (1000 draws, standard error ~2.2%)
    per_coord = resid.std(axis=0)
    assert np.all(np.abs(per_coord / expected - 1) < 0.12)


def test_release_is_reproducible_from_the_seed():
    rng = np.random.default_rng(7)
    x = _images(rng, 30)
    y = rng.integers(0, K, size=30)
    a = release_probe(x, y, K, 1.0, np.random.default_rng(42))
    b = release_probe(x, y, K, 1.0, np.random.default_rng(42))
    c = release_probe(x, y, K, 1.0, np.random.default_rng(43))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


# --------------------------------------------------------------------------- (4) privacy


def test_probe_sigma_spends_the_requested_share_of_the_gdp_budget():
    for eps, delta, share in [(3.0, 1e-4, 0.5), (1.0, 1e-5, 0.2), (8.0, 1e-6, 0.9)]:
        sigma = probe_noise_multiplier(eps, delta, share)
        # one Gaussian release of sensitivity 1 is (1/sigma)-GDP
        assert 1 / sigma == pytest.approx(math.sqrt(share) * gdp_mu(eps, delta), rel=1e-9)
    # documented example: eps 3, delta 1e-4, half the budget -> sigma ~= 1.73
    assert probe_noise_multiplier(3.0, 1e-4, 0.5) == pytest.approx(1.73, abs=0.005)


@pytest.mark.parametrize(("eps", "delta"), [(1.0, 1e-5), (3.0, 1e-5), (8.0, 1e-6)])
def test_probe_with_the_whole_budget_costs_the_target_epsilon(eps, delta):
    sigma = probe_noise_multiplier(eps, delta, 0.999999)
    exact = analytic_gaussian_epsilon(sigma, delta)
    assert exact == pytest.approx(eps, rel=1e-3)
    # the ledger records the release as one full-batch DP-SGD step at clipping norm 1
    block = DPPlan(1.0, 1, sigma, 1.0).block()
    assert block == (1.0, sigma, 1)
    rdp = compute_epsilon([block], delta, "rdp")
    prv = compute_epsilon([block], delta, "prv")
    assert exact <= rdp <= 1.15 * exact  # valid upper bound, looser
    assert exact - 1e-9 <= prv <= 1.02 * exact  # upper bound within its error margin


# --------------------------------------------------------------------------- (5) norm bound


def test_honest_probes_stay_below_the_norm_bound_and_a_scaled_one_does_not():
    rng = np.random.default_rng(8)
    n, sigma = 25, 2.0
    p = probe_dimension(D, K)
    # worst case for the signal: every record identical, so the mean feature has norm ~0.95
    x = np.repeat(_images(rng, 1), n, axis=0)
    y = np.full(n, 3)
    bound = probe_norm_bound(n, p, sigma)
    assert bound == pytest.approx((n + sigma * (math.sqrt(p) + 6)) / n)
    norms = np.array(
        [
            np.linalg.norm(release_probe(x, y, K, sigma, np.random.default_rng(s)))
            for s in range(500)
        ]
    )
    assert norms.max() <= bound
    # not vacuous: |signal| + |noise| vs the typical sqrt(|signal|^2 + |noise|^2), so honest
    # probes reach ~2/3 of it and even a release scaled by 2 is caught
    assert norms.min() > 0.55 * bound
    honest = release_probe(x, y, K, sigma, np.random.default_rng(0))
    assert np.linalg.norm(1e3 * honest) > bound
    assert np.linalg.norm(2.0 * honest) > bound
    # without noise the bound is the feature bound itself
    assert probe_norm_bound(n, p, 0.0) == 1.0
    assert np.linalg.norm(release_probe(x, y, K, 0.0, None)) <= 1.0


# --------------------------------------------------------------------------- (6) bad input


@pytest.mark.parametrize(
    ("x", "y", "sigma", "match"),
    [
        (np.zeros((4, *SHAPE)), np.array([0, 1, 2, K]), 1.0, "^y:"),
        (np.zeros((4, *SHAPE)), np.array([0, 1, 2, -1]), 1.0, "^y:"),
        (np.zeros((4, *SHAPE)), np.array([0, 1, 2]), 1.0, "^y:"),
        (np.zeros((4, *SHAPE)), np.array([0.0, 1.0, 2.0, 3.0]), 1.0, "^y:"),
        (np.zeros(64), np.array([0]), 1.0, "^x:"),
        (np.zeros((0, *SHAPE)), np.zeros(0, dtype=int), 1.0, "^x:"),
        (np.zeros((4, *SHAPE)), np.array([0, 1, 2, 3]), -0.5, "^noise_multiplier:"),
        (np.zeros((4, *SHAPE)), np.array([0, 1, 2, 3]), float("nan"), "^noise_multiplier:"),
        (np.zeros((4, *SHAPE)), np.array([0, 1, 2, 3]), float("inf"), "^noise_multiplier:"),
        (np.full((4, *SHAPE), np.nan), np.array([0, 1, 2, 3]), 1.0, "^x:"),
    ],
)
def test_bad_input_raises_a_value_error_naming_the_argument(x, y, sigma, match):
    with pytest.raises(ValueError, match=match):
        release_probe(x, y, K, sigma, np.random.default_rng(0))
    if not match.startswith("^noise"):
        with pytest.raises(ValueError, match=match):
            probe_features(x, y, K)


def test_bad_class_count_is_named():
    x, y = np.zeros((4, *SHAPE)), np.array([0, 1, 0, 1])
    for bad in (1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="^n_classes:"):
            probe_features(x, y, bad)


def test_extreme_magnitudes_keep_the_unit_norm():
    x = (
        np.random.default_rng(0).normal(size=(2, *SHAPE))
        * np.array([1e155, 1e-200])[:, None, None, None]
    )
    norms = np.linalg.norm(probe_features(x, np.array([3, 4]), K), axis=1)
    np.testing.assert_allclose(norms, np.sqrt(1 - 1 / K), rtol=1e-12)


# --------------------------------------------------------------------------- (7) separation


def _sub_distribution(seed, rotated, n=1000):
    """Balanced 10-class 8x8 images: class templates plus noise, optionally rotated 180 degrees.

    Classes 5-9 use the 180-degree rotations of the templates of classes 0-4, so the average
    template is 180-degree symmetric: the mean image cannot tell the two sub-distributions apart.
    """
    base = np.random.default_rng(0).normal(size=(5, 8, 8))
    templates = np.concatenate([base, np.rot90(base, 2, axes=(-2, -1))])
    rng = np.random.default_rng(seed)
    y = np.arange(n) % K
    x = (templates[y] + rng.normal(0.0, 1.0, size=(n, 8, 8)))[:, None]
    if rotated:
        x = np.rot90(x, 2, axes=(-2, -1))
    return x, y


def test_probe_separates_a_rotated_sub_distribution_the_mean_image_cannot():
    xa, ya = _sub_distribution(1, rotated=False)
    xa2, ya2 = _sub_distribution(2, rotated=False)
    xb, yb = _sub_distribution(3, rotated=True)
    pa, pa2, pb = (release_probe(x, y, K, 0.0, None) for x, y in [(xa, ya), (xa2, ya2), (xb, yb)])
    between, within = np.linalg.norm(pa - pb), np.linalg.norm(pa - pa2)
    assert between > 5 * within
    # the mean image: rotated vs not is no further apart than two samples of the same one
    ma, ma2, mb = xa.mean(axis=0), xa2.mean(axis=0), xb.mean(axis=0)
    assert np.linalg.norm(ma - mb) < 1.5 * np.linalg.norm(ma - ma2)
    # and the separation survives DP noise at a realistic sigma for 1000 records
    sigma = 2.0
    noisy = [
        release_probe(x, y, K, sigma, np.random.default_rng(10 + i))
        for i, (x, y) in enumerate([(xa, ya), (xa2, ya2), (xb, yb)])
    ]
    noise_gap = probe_noise_std(sigma, 1000) * math.sqrt(2 * K * D)  # |noise_a - noise_b|
    assert np.linalg.norm(noisy[0] - noisy[2]) > 2 * noise_gap
    assert np.linalg.norm(noisy[0] - noisy[1]) < 1.5 * noise_gap
