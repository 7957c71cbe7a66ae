"""Noise scaling by cluster size: GDP budget, sample rates, weights, rounds and the full plan."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedcascade.clustering import (
    aggregate_noise_ratio,
    aggregation_weights,
    cluster_noise_plan,
    cluster_precision,
    cluster_rounds,
    gdp_mu,
    min_sample_rate,
    participation_rounds,
    warmup_share,
)


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def test_gdp_mu_inverts_the_gdp_tradeoff() -> None:
    # mu = 1, eps = 1: delta = Phi(-0.5) - e Phi(-1.5) = 0.12693...
    delta = _phi(-0.5) - math.e * _phi(-1.5)
    assert gdp_mu(1.0, delta) == pytest.approx(1.0, rel=1e-9)
    mu = gdp_mu(3.0, 1e-5)
    assert mu == pytest.approx(0.7191, abs=1e-3)
    assert _phi(-3 / mu + mu / 2) - math.exp(3) * _phi(-3 / mu - mu / 2) == pytest.approx(1e-5)
    assert gdp_mu(8.0, 1e-5) > mu > gdp_mu(1.0, 1e-5)
    with pytest.raises(ValueError, match="delta"):
        gdp_mu(3.0, 1.5)


def test_round_precision_depends_on_records_and_rounds_not_on_batch_size() -> None:
    # The noise plan's premise, checked against Opacus' RDP accountant: a community of N records
    # spending its budget evenly over R rounds gets a round precision b^2 T / sigma^2 close to
    # N^2 mu^2 / R whatever its batch size, once q >= min_sample_rate.
    from opacus.accountants.utils import get_noise_multiplier

    eps, delta, R, N = 3.0, 1e-5, 50, 600
    q_min = min_sample_rate(eps, delta, R)
    assert q_min == pytest.approx(9 * gdp_mu(eps, delta) ** 2 / R)
    ratios = []
    for q in (q_min, 2 * q_min, 4 * q_min):
        T = round(1 / q)  # one local epoch per round
        sigma = get_noise_multiplier(
            target_epsilon=eps,
            target_delta=delta,
            sample_rate=q,
            steps=T * R,
            accountant="rdp",
            epsilon_tolerance=0.005,
        )
        assert sigma >= 3.0 * 0.95  # the efficient regime min_sample_rate aims for
        precision = (q * N) ** 2 * T / sigma**2
        ratios.append(precision / (N**2 * gdp_mu(eps, delta) ** 2 / R))
    assert all(0.7 < r <= 1.0 for r in ratios), ratios  # RDP is ~15% looser than GDP
    assert max(ratios) / min(ratios) < 1.12  # batch size hardly matters


def test_warmup_share_matches_the_reference_example() -> None:
    # R-DPCFL: one full-batch round then 199 rounds at q = 0.004 (b = 32 of 8000), 1 epoch each
    assert warmup_share(1, 200, 0.004) == pytest.approx(1 / (1 + 199 * 0.004))
    assert warmup_share(1, 200, 0.004) == pytest.approx(0.5568, abs=1e-4)
    assert warmup_share(0, 50, 0.1) == 0.0
    assert warmup_share(3, 50, 0.1) > warmup_share(1, 50, 0.1)
    with pytest.raises(ValueError, match="warmup_rounds"):
        warmup_share(60, 50, 0.1)


def test_precision_weights_minimise_the_aggregate_noise() -> None:
    records = np.array([100, 400, 400, 50, 200])
    labels = np.array([0, 0, 0, 1, 1])
    assert cluster_precision(records, labels).tolist() == [100**2 + 2 * 400**2, 50**2 + 200**2]
    w_prec = aggregation_weights(records, labels, "precision")
    w_rec = aggregation_weights(records, labels, "records")
    w_uni = aggregation_weights(records, labels, "uniform")
    for w in (w_prec, w_rec, w_uni):
        np.testing.assert_allclose(np.bincount(labels, weights=w), [1.0, 1.0])
    np.testing.assert_allclose(w_prec[:3], np.array([1, 16, 16]) / 33)
    # Monte Carlo: community i's round noise has variance 1 / N_i^2 (mu = 1, R = 1, p = 1)
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((200000, 5)) / records
    for w in (w_prec, w_rec, w_uni):
        agg = np.stack([noise[:, labels == c] @ w[labels == c] for c in (0, 1)], axis=1)
        np.testing.assert_allclose(
            agg.std(axis=0), aggregate_noise_ratio(records, labels, w), rtol=0.01
        )
    nsr = {
        name: aggregate_noise_ratio(records, labels, w)
        for name, w in [("p", w_prec), ("r", w_rec), ("u", w_uni)]
    }
    assert (nsr["p"] <= nsr["r"] + 1e-12).all() and (nsr["p"] <= nsr["u"] + 1e-12).all()
    # with inverse-variance weights the aggregate precision is exactly the cluster's precision
    np.testing.assert_allclose(nsr["p"], 1 / np.sqrt(cluster_precision(records, labels)))


def test_cluster_rounds_equalise_the_round_noise() -> None:
    pi = np.array([1.0, 4.0, 16.0])
    assert cluster_rounds(pi, 48, min_fraction=0.05).tolist() == [3, 12, 48]  # R * pi / max
    assert cluster_rounds(pi, 48, min_fraction=0.2).tolist() == [10, 12, 48]  # floor ceil(9.6)
    # more parameters need more precision per round: p = [1, 1, 4] -> pi / p = [1, 4, 4]
    assert cluster_rounds(pi, 48, [1, 1, 4], min_fraction=0.05).tolist() == [12, 48, 48]
    assert cluster_rounds(pi, 48, min_fraction=1.0).tolist() == [48, 48, 48]
    # NSR^2 ~ p R_k / Pi_k is then the same for every unfloored cluster
    rk = cluster_rounds(pi, 48, min_fraction=0.05)
    nsr = np.sqrt(rk / pi)
    np.testing.assert_allclose(nsr, nsr[0])
    with pytest.raises(ValueError, match="precision"):
        cluster_rounds(np.array([1.0, 0.0]), 10)


def test_participation_rounds_are_spread_and_end_with_the_last_round() -> None:
    r = participation_rounds(4, 10, start=3)
    assert len(r) == 4 and r[-1] == 12 and r[0] >= 3
    assert np.diff(r).min() >= 2
    assert participation_rounds(10, 10, start=1) == list(range(1, 11))
    assert participation_rounds(0, 10) == []


def test_cluster_noise_plan_protects_the_small_cluster() -> None:
    # 3 small communities (150 records) vs 18 of 600, epsilon 3, 50 rounds with 3 warm-up
    records = np.array([150] * 3 + [600] * 18)
    labels = np.repeat([0, 1, 2, 3], [3, 6, 6, 6])
    plan = cluster_noise_plan(
        records,
        labels,
        epsilon=3.0,
        delta=1e-5,
        rounds=50,
        warmup_rounds=3,
        param_counts=[2000, 5000, 5000, 5000],
    )
    assert plan.cluster_rounds.tolist()[1:] == [47, 47, 47]
    assert 24 <= plan.cluster_rounds[0] < 47  # floored at half the training rounds
    assert plan.rounds_of[1] == list(range(4, 51))
    assert len(plan.rounds_of[0]) == plan.cluster_rounds[0] and plan.rounds_of[0][-1] == 50
    np.testing.assert_allclose(np.bincount(labels, weights=plan.weights), 1.0)
    for i in range(len(records)):
        blocks = plan.schedule[i]
        assert blocks[0] == (1.0, 3)  # full-batch warm-up first
        q, steps = blocks[1]
        assert q >= min_sample_rate(3.0, 1e-5, int(plan.cluster_rounds[labels[i]])) - 1e-12
        assert steps == plan.steps_per_round[i] * plan.cluster_rounds[labels[i]]
        assert plan.steps_per_round[i] == math.ceil(1 / q)
    # the small cluster's round aggregate is much less drowned than under FedAvg-style planning
    assert plan.nsr_after[0] < 0.8 * plan.nsr_before[0]
    spread_before = plan.nsr_before.max() / plan.nsr_before.min()
    spread_after = plan.nsr_after.max() / plan.nsr_after.min()
    assert spread_after < spread_before
    assert 0 < plan.warmup_share.min() and plan.warmup_share.max() < 0.5
    with pytest.raises(ValueError, match="labels"):
        cluster_noise_plan(
            records, np.where(labels == 1, 2, labels), epsilon=3.0, delta=1e-5, rounds=50
        )
