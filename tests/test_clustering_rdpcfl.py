"""R-DPCFL's clustering round: embedding, spherical GMM, overlap, switch round, sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedcascade.clustering import (
    adjusted_rand,
    choose_k,
    fit_spherical_gmm,
    gmm_overlap,
    pairwise_overlaps,
    rdpcfl_cluster,
    rdpcfl_embed,
    rdpcfl_selection_rounds,
    rdpcfl_switch_round,
    sample_from_posteriors,
    simulate_updates,
)
from fedcascade.clustering.gmm import GMMFit


def _fit(means, radii) -> GMMFit:
    means = np.asarray(means, float)
    k = len(means)
    return GMMFit(
        means, np.asarray(radii, float) ** 2, np.full(k, 1 / k), np.eye(k), np.arange(k), 0.0, True
    )


def test_overlap_matches_hand_computation() -> None:
    # |mu0 - mu1| = 5, radii 1 and 2 -> s = 5 / (2 * 2) = 1.25 -> overlap = 1 - erf(1.25 / sqrt 2)
    fit = _fit([[0.0, 0.0], [3.0, 4.0]], [1.0, 2.0])
    assert gmm_overlap(fit) == pytest.approx(1 - math.erf(1.25 / math.sqrt(2)))
    assert gmm_overlap(fit) == pytest.approx(0.21129955, abs=1e-7)
    # three components: the closest pair decides; identical means overlap fully
    fit3 = _fit([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]], [1.0, 2.0, 1.0])
    assert gmm_overlap(fit3) == pytest.approx(1.0)
    M = pairwise_overlaps(fit3.means, fit3.radii)
    assert M.shape == (3, 3) and np.allclose(np.diag(M), 0.0) and np.allclose(M, M.T)
    # far apart: no overlap; a single component has none by definition
    assert gmm_overlap(_fit([[0.0], [100.0]], [1.0, 1.0])) == pytest.approx(0.0, abs=1e-12)
    assert gmm_overlap(_fit([[0.0]], [1.0])) == 0.0


def test_switch_round_formula() -> None:
    # E_c = int((1 - overlap) * E / 2)
    assert rdpcfl_switch_round(0.0, 200) == 100
    assert rdpcfl_switch_round(0.21129955, 200) == 78  # int(78.87)
    assert rdpcfl_switch_round(1.0, 200) == 0
    assert rdpcfl_switch_round(0.5, 51) == 12  # int(12.75)
    with pytest.raises(ValueError, match="max_overlap"):
        rdpcfl_switch_round(1.5, 10)


def test_selection_rounds_are_the_rounds_the_reference_runs() -> None:
    # reference: t in arange(E_c, E_c + int(0.1 E) + 1) -> L + 1 rounds
    assert rdpcfl_selection_rounds(78, 200) == list(range(78, 99))
    assert rdpcfl_selection_rounds(0, 20) == [2]  # cluster models exist from round 2
    assert rdpcfl_selection_rounds(95, 100) == list(range(95, 101))


def test_sample_from_posteriors_frequencies() -> None:
    P = np.array([[0.2, 0.5, 0.3], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    rng = np.random.default_rng(0)
    draws = np.stack([sample_from_posteriors(P, rng) for _ in range(20000)])
    freq = np.bincount(draws[:, 0], minlength=3) / len(draws)
    np.testing.assert_allclose(freq, P[0], atol=0.015)
    assert (draws[:, 1] == 0).all() and (draws[:, 2] == 2).all()
    with pytest.raises(ValueError, match="summing to 1"):
        sample_from_posteriors(np.array([[0.5, 0.2]]), rng)


def test_embed_is_minmax_scaled_and_reference_projection_differs_only_with_unequal_scales() -> None:
    (U,), _ = simulate_updates((3, 4), 200, 0.05, seed=1)
    Z = rdpcfl_embed(U)
    assert Z.shape == (7, 2)
    np.testing.assert_allclose(Z.min(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(Z.max(axis=0), 1.0, atol=1e-12)
    # With every coordinate on a similar scale, projecting the raw or the standardised matrix
    # gives the same clustering geometry.
    fit_raw = fit_spherical_gmm(Z, 2, 0)
    fit_std = fit_spherical_gmm(rdpcfl_embed(U, project_raw=False), 2, 0)
    assert adjusted_rand(fit_raw.labels, fit_std.labels) == 1.0


def test_gmm_posteriors_use_uniform_weights_and_bic_prefers_true_k() -> None:
    rng = np.random.default_rng(0)
    Z = np.vstack([rng.normal(0, 0.05, (3, 2)), rng.normal(1, 0.05, (12, 2))])
    fit = fit_spherical_gmm(Z, 2, 0)
    np.testing.assert_allclose(fit.weights, [0.5, 0.5])
    np.testing.assert_allclose(fit.posteriors.sum(axis=1), 1.0)
    assert adjusted_rand([0] * 3 + [1] * 12, fit.labels) == 1.0
    # BIC needs a variance floor at the noise level (0.05^2), or components collapse on a few
    # points and it over-splits small clusters.
    k, _, scores = choose_k(Z, 5, 0, "bic", reg_covar=0.05**2)
    assert k == 2 and set(scores) == {1, 2, 3, 4, 5}
    k_sep, _, _ = choose_k(Z, 5, 0, "separation")
    assert k_sep == 2
    with pytest.raises(ValueError, match="k"):
        fit_spherical_gmm(Z, 16, 0)


def test_rdpcfl_recovers_clusters_in_its_own_setting() -> None:
    # Equal community sizes, first-round full-batch noise at epsilon 3 (sigma 3.74, N = 600).
    U, y = simulate_updates((3, 6, 6, 6), 5000, 3.74 / 600, seed=3)
    res = rdpcfl_cluster(U[0], 4, seed=3, total_rounds=50)
    assert adjusted_rand(y, res.labels) == 1.0
    assert res.posteriors.shape == (21, 4)
    assert 0.0 <= res.max_overlap < 0.5
    assert res.switch_round == rdpcfl_switch_round(res.max_overlap, 50)


def test_single_component_fit_matches_scikit_learn_and_accepts_one_point() -> None:
    from sklearn.mixture import GaussianMixture

    Z = np.random.default_rng(0).standard_normal((30, 3))
    fit = fit_spherical_gmm(Z, 1, 0)
    gm = GaussianMixture(1, covariance_type="spherical").fit(Z)
    assert fit.bic == pytest.approx(gm.bic(Z), rel=1e-9)
    np.testing.assert_allclose(fit.variances, gm.covariances_, rtol=1e-6)
    one = fit_spherical_gmm(Z[:1], 1, 0)
    assert one.labels.tolist() == [0] and one.posteriors.shape == (1, 1)
