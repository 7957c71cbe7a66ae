"""Cascade clustering of DP-noisy updates: recovery at epsilon 3, auto-k, robustness.

Noise levels are those of real DP-SGD plans, computed with ``fedcascade.privacy``'s
``calibrate_noise_multiplier`` (RDP accountant, delta 1e-5, 50 rounds, training rounds at sample
rate 0.1 for 10 steps):

* R-DPCFL: one full-batch round, then 49 training rounds -> sigma 9.908 / 3.740 / 1.719 at
  epsilon 1 / 3 / 8;
* cascade: three full-batch warm-up rounds, then 47 -> sigma 11.279 / 4.218 / 1.886.

A full-batch step's mean noisy gradient has per-coordinate noise ``sigma C / N`` (C = 1).
Sub-distribution means differ by |g_c - g_c'| = 0.3 C (signal_norm 0.3, half of it shared), over
p = 5000 adapter parameters; the 3 minority communities hold 150 records, the 18 others 600.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from fedcascade.clustering import (
    adjusted_rand,
    assign_by_update,
    cascade_cluster,
    cluster_recovery,
    combine_rounds,
    estimate_noise_variance,
    noise_corrected_gram,
    rdpcfl_cluster,
    simulate_updates,
)

SIZES = (3, 6, 6, 6)
RECORDS = np.array([150] * 3 + [600] * 18)
P = 5000
SIGMA_RDPCFL = {1.0: 9.908, 3.0: 3.740, 8.0: 1.719}
SIGMA_CASCADE = {1.0: 11.279, 3.0: 4.218, 8.0: 1.886}
WARMUP = 3


@pytest.fixture(autouse=True)
def _one_blas_thread() -> Iterator[None]:
    # Small matrices: multi-threaded BLAS only adds contention on a shared machine (8x slower).
    with threadpool_limits(1):
        yield


def _cascade_run(eps: float, seed: int, signal: float = 0.3) -> tuple[float, int, bool]:
    s = SIGMA_CASCADE[eps] / RECORDS
    U, y = simulate_updates(
        SIZES, P, np.broadcast_to(s, (WARMUP, len(s))), rounds=WARMUP, signal_norm=signal, seed=seed
    )
    res = cascade_cluster(U, s, k_max=8, seed=seed)
    rec = cluster_recovery(y, res.labels)
    return rec["ari"], res.k, rec["minority_recovered"]


def _rdpcfl_run(eps: float, seed: int, signal: float = 0.3) -> float:
    U, y = simulate_updates(SIZES, P, SIGMA_RDPCFL[eps] / RECORDS, signal_norm=signal, seed=seed)
    return adjusted_rand(y, rdpcfl_cluster(U[0], 4, seed, 50).labels)


def test_cascade_recovers_subdistributions_at_epsilon_3() -> None:
    runs = [_cascade_run(3.0, seed) for seed in range(5)]
    aris = [r[0] for r in runs]
    assert min(aris) >= 0.9, aris
    assert all(r[1] == 4 for r in runs)  # k found automatically
    assert all(r[2] for r in runs)  # the 3-community minority is its own cluster
    # the assertion can fail: random labels score near 0
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), SIZES)
    random_aris = [adjusted_rand(y, rng.integers(0, 4, len(y))) for _ in range(50)]
    assert np.mean(random_aris) < 0.05 and max(random_aris) < 0.5


def test_ari_across_noise_levels_cascade_vs_rdpcfl(capsys: pytest.CaptureFixture[str]) -> None:
    table = {}
    for eps in (1.0, 3.0, 8.0):
        c = np.mean([_cascade_run(eps, seed)[0] for seed in range(3)])
        r = np.mean([_rdpcfl_run(eps, seed) for seed in range(3)])
        table[eps] = (c, r)
    with capsys.disabled():
        print("\nARI by epsilon (minority 150 records, majority 600, p = 5000):")
        for eps, (c, r) in table.items():
            print(f"  eps {eps:>4}: cascade {c:.2f}   R-DPCFL {r:.2f}")
    assert table[3.0][0] >= 0.9 and table[8.0][0] >= 0.9
    # R-DPCFL's PCA is pulled towards the noisy small communities' own noise directions
    for eps in table:
        assert table[eps][0] >= table[eps][1] - 0.05
    assert table[3.0][0] > table[3.0][1] + 0.3


def test_no_structure_gives_one_cluster() -> None:
    for seed in range(3):
        U, _ = simulate_updates(SIZES, 2000, 0.02, rounds=2, signal_norm=0.0, seed=seed)
        res = cascade_cluster(U, 0.02, k_max=6, seed=seed)
        assert res.k == 1 and (res.labels == 0).all()
        assert res.eigenvalues[0] < res.edge


def test_robust_to_community_heterogeneity() -> None:
    # each community deviates from its sub-distribution by 60% of the signal norm
    for seed in range(3):
        U, y = simulate_updates(SIZES, 5000, 0.01, heterogeneity=0.6, seed=seed)
        res = cascade_cluster(U, 0.01, k_max=8, seed=seed)
        assert adjusted_rand(y, res.labels) >= 0.9
        assert res.spread_var.max() > 0  # heterogeneity shows up as spread beyond DP noise


def test_noise_corrected_distances_are_unbiased() -> None:
    rng = np.random.default_rng(0)
    n, p = 10, 4000
    v = rng.uniform(0.05, 0.2, n)
    g = rng.standard_normal((n, p)) * 0.1
    true_d2 = ((g[:, None] - g[None]) ** 2).sum(-1)
    est = np.zeros((n, n))
    reps = 40
    for _ in range(reps):
        U = g + rng.standard_normal((n, p)) * np.sqrt(v)[:, None]
        G = noise_corrected_gram(U, v)
        d = np.diag(G)
        est += (d[:, None] + d[None] - 2 * G) / reps
    off = ~np.eye(n, dtype=bool)
    # raw squared distances would be off by p (v_i + v_j) ~ 1000; the corrected ones are right
    # up to the sampling error of 40 repetitions (~ sqrt(2p) (v_i + v_j) / sqrt(40) ~ 4)
    np.testing.assert_allclose(est[off], true_d2[off], atol=15.0)
    assert abs(np.mean(est[off] - true_d2[off])) < 3.0


def test_unknown_noise_is_estimated() -> None:
    s = np.array([0.01] * 10 + [0.03] * 11)
    U, y = simulate_updates((10, 11), 5000, s, seed=0)
    v_hat = estimate_noise_variance(U[0], n_signal=1)
    # within ~25%: the top direction, estimated from noisy rows, carries some of their noise
    np.testing.assert_allclose(v_hat, s**2, rtol=0.3)
    assert v_hat[10:].min() > 4 * v_hat[:10].max()  # the noisy group is told apart
    res = cascade_cluster(U, None, k_max=5, seed=0)
    assert adjusted_rand(y, res.labels) == 1.0
    np.testing.assert_allclose(res.noise_var, s**2, rtol=0.3)


def test_combine_rounds_weights_rounds_by_precision() -> None:
    a = np.ones((2, 3))
    b = 3 * np.ones((2, 3))
    U, v = combine_rounds([a, b], np.array([[1.0, 1.0], [2.0, 2.0]]))
    # weights 1/1 and 1/4 -> 0.8, 0.2
    np.testing.assert_allclose(U, 0.8 * a + 0.2 * b)
    np.testing.assert_allclose(v, 0.8**2 * 1 + 0.2**2 * 4)
    U2, v2 = combine_rounds([a, b], None)
    np.testing.assert_allclose(U2, 2.0)
    assert v2 is None
    with pytest.raises(ValueError, match="same clients"):
        combine_rounds([a, np.ones((3, 3))], None)


def test_late_communities_are_assigned_for_free_by_their_update() -> None:
    s = SIGMA_CASCADE[3.0] / RECORDS
    U, y = simulate_updates(
        SIZES, P, np.broadcast_to(s, (2, len(s))), rounds=2, signal_norm=0.3, seed=7
    )
    # hold out one community of every sub-distribution as "late"
    late = np.array([0, 3, 9, 15])
    early = np.setdiff1d(np.arange(len(y)), late)
    res = cascade_cluster([u[early] for u in U], s[early], k_max=8, seed=7)
    assert res.k == 4
    labels, post = assign_by_update(U[0][late], s[late], res)
    np.testing.assert_allclose(post.sum(axis=1), 1.0)
    # each late community joins the cluster holding its sub-distribution
    for i, lab in zip(late, labels):
        same = early[y[early] == y[i]]
        assert (res.labels[np.searchsorted(early, same)] == lab).all()


def test_fixed_k_and_validation() -> None:
    U, y = simulate_updates((4, 4, 4), 1000, 0.005, seed=0)
    res = cascade_cluster(U, 0.005, k_max=6, seed=0, k=3)
    assert res.k == 3 and adjusted_rand(y, res.labels) == 1.0
    assert res.posteriors.shape == (12, 3) and res.centroids.shape == (3, 1000)
    assert list(res.sizes) == [4, 4, 4]
    with pytest.raises(ValueError, match="noise_scales"):
        cascade_cluster(U, np.ones(5), k_max=6, seed=0)
    with pytest.raises(ValueError, match="criterion"):
        cascade_cluster(U, 0.005, k_max=6, seed=0, criterion="aic")


def test_cluster_recovery_flags_the_minority() -> None:
    y = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    assert cluster_recovery(y, y)["minority_recovered"]
    merged = np.where(y == 0, 1, y)
    rec = cluster_recovery(y, merged)
    assert not rec["minority_recovered"] and rec["k_found"] == 2 and rec["ari"] < 1


def test_tiny_federations_get_one_cluster() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 2, 3):
        res = cascade_cluster(rng.standard_normal((n, 50)), 1.0, k_max=5, seed=0)
        assert res.k == 1 and res.labels.tolist() == [0] * n
