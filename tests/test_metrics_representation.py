"""Effective rank, participation ratio, intrinsic dimension and flattening on known geometry."""

import numpy as np
import pytest

from fedcascade.metrics import (
    effective_rank,
    flattening_score,
    intrinsic_dimension,
    mle_intrinsic_dimension,
    participation_ratio,
    twonn_intrinsic_dimension,
)


def _with_spectrum(s, n=200, dim=50, seed=0):
    """An (n, dim) matrix whose singular values are exactly ``s``."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.normal(size=(n, len(s))))
    v, _ = np.linalg.qr(rng.normal(size=(dim, len(s))))
    return u @ np.diag(s) @ v.T


def _embed(points, dim, seed=0):
    """Rotate ``points`` (n, d) into a random d-dimensional subspace of R^dim."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, points.shape[1])))
    return points @ q.T


def test_effective_rank_of_a_known_spectrum():
    s = np.array([5.0, 3.0, 1.0, 1.0, 0.5])
    p = s / s.sum()
    expected = np.exp(-np.sum(p * np.log(p)))
    assert effective_rank(_with_spectrum(s), center=False) == pytest.approx(expected, rel=1e-6)
    assert effective_rank(_with_spectrum(np.ones(7)), center=False) == pytest.approx(7.0, rel=1e-6)


def test_participation_ratio_of_a_known_spectrum():
    s = np.array([4.0, 2.0, 1.0])
    lam = s**2
    expected = lam.sum() ** 2 / np.sum(lam**2)
    assert participation_ratio(_with_spectrum(s), center=False) == pytest.approx(expected, rel=1e-6)
    assert participation_ratio(_with_spectrum(np.ones(4)), center=False) == pytest.approx(
        4.0, rel=1e-6
    )


def test_linear_scores_ignore_scale_and_centre_offset():
    x = np.random.default_rng(1).normal(size=(300, 6)) @ np.diag([3, 2, 1, 1, 0.5, 0.1])
    assert effective_rank(x + 100.0) == pytest.approx(effective_rank(10 * x), rel=1e-9)
    assert participation_ratio(x + 100.0) == pytest.approx(participation_ratio(10 * x), rel=1e-9)


@pytest.mark.parametrize("d", [2, 5])
def test_intrinsic_dimension_of_a_gaussian_in_a_linear_subspace(d):
    rng = np.random.default_rng(d)
    x = _embed(rng.normal(size=(1000, d)), dim=40, seed=d)
    assert mle_intrinsic_dimension(x) == pytest.approx(d, rel=0.15)
    assert twonn_intrinsic_dimension(x) == pytest.approx(d, rel=0.15)


@pytest.mark.parametrize("d", [2, 4])
def test_intrinsic_dimension_of_a_curved_manifold_sphere(d):
    # The unit d-sphere in R^(d+1), rotated into R^30: linear scores see d+1 dimensions, the
    # manifold estimators the true d.
    rng = np.random.default_rng(10 + d)
    z = rng.normal(size=(1200, d + 1))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    x = _embed(z, dim=30, seed=d)
    assert mle_intrinsic_dimension(x) == pytest.approx(d, rel=0.15)
    assert twonn_intrinsic_dimension(x) == pytest.approx(d, rel=0.15)
    assert effective_rank(x) == pytest.approx(d + 1, rel=0.1)


def test_swiss_roll_is_two_dimensional():
    rng = np.random.default_rng(3)
    t = 1.5 * np.pi * (1 + 2 * rng.random(1500))
    x = np.c_[t * np.cos(t), 21 * rng.random(1500), t * np.sin(t)]
    assert intrinsic_dimension(x, "mle") == pytest.approx(2.0, rel=0.15)
    assert intrinsic_dimension(x, "twonn") == pytest.approx(2.0, rel=0.15)


def test_flattening_is_the_fraction_of_dimensions_lost():
    rng = np.random.default_rng(4)
    z = rng.normal(size=(800, 8))
    inputs = _embed(z, dim=30)
    keep_all = _embed(z, dim=16, seed=1)  # another isometric embedding: nothing lost
    keep_two = _embed(z[:, :2], dim=16, seed=2)  # 2 of the 8 directions survive
    assert abs(flattening_score(inputs, keep_all)) < 0.05
    assert flattening_score(inputs, keep_two) == pytest.approx(1 - 2 / 8, abs=0.08)
    assert flattening_score(inputs, keep_two, estimator="effective_rank") > 0.5


def test_too_few_or_duplicate_points_give_nan_not_an_error():
    assert np.isnan(mle_intrinsic_dimension(np.ones((50, 3))))  # one distinct point
    assert np.isnan(twonn_intrinsic_dimension(np.zeros((2, 3))))
    assert np.isnan(effective_rank(np.ones((5, 3))))  # no spread after centring
    x = np.random.default_rng(0).normal(size=(200, 3))
    # Duplicated records must not put log(0) into the estimate.
    assert mle_intrinsic_dimension(np.vstack([x, x])) == pytest.approx(mle_intrinsic_dimension(x))
