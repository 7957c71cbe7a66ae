"""The clustering warm-up: its budget share is exact, and clustering keeps the blocks with signal."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedcascade.clustering import adjusted_rand, cascade_cluster, gdp_mu
from fedcascade.clustering.warmup import (
    block_signal,
    block_slices,
    select_signal_blocks,
    warmup_noise_multiplier,
)
from fedcascade.privacy import analytic_gaussian_epsilon, compute_epsilon


def test_warmup_sigma_spends_the_requested_share_of_the_gdp_budget():
    eps, delta = 3.0, 1e-4
    mu = gdp_mu(eps, delta)
    for share, steps in [(0.5, 1), (0.25, 3), (0.9, 2)]:
        sigma = warmup_noise_multiplier(eps, delta, share, steps)
        # full-batch steps compose to one Gaussian with sigma / sqrt(steps): mu_w = sqrt(steps)/sigma
        assert math.sqrt(steps) / sigma == pytest.approx(math.sqrt(share) * mu, rel=1e-9)
    # the whole budget in one full-batch step would be exactly the (eps, delta) of the target
    sigma_all = math.sqrt(1 / 0.999999) / mu
    assert analytic_gaussian_epsilon(sigma_all, delta) == pytest.approx(eps, rel=1e-3)
    # and half of it leaves room: the accountant agrees the warm-up alone stays well below eps
    half = compute_epsilon([(1.0, warmup_noise_multiplier(eps, delta, 0.5, 1), 1)], delta, "prv")
    assert 1.0 < half < 0.75 * eps


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"share": 1.0}, "share"),
        ({"share": 0.0}, "share"),
        ({"share": 0.5, "steps": 0}, "steps"),
    ],
)
def test_warmup_sigma_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        warmup_noise_multiplier(3.0, 1e-4, **kwargs)


def _blocky_updates(rng, noise=1.0):
    """21 communities in {6, 6, 6, 3}: signal in a small strong block and a large weak one."""
    labels = np.repeat([0, 1, 2, 3], [6, 6, 6, 3])
    names = {"lora_A": 800, "bias": 3, "lora_B": 200}
    template = {k: np.zeros(p) for k, p in names.items()}
    slices = block_slices(template)
    U = rng.normal(0.0, noise, size=(21, sum(names.values())))
    # pure noise in lora_A; the minority shows up in the 3-wide bias only, the other three
    # clusters differ weakly across the 200 coordinates of lora_B
    U[:, slices["bias"]] += np.where(labels[:, None] == 3, 6.0, 0.0)
    means = rng.normal(0.0, 0.45, size=(3, 200))
    U[labels < 3, slices["lora_B"]] += means[labels[labels < 3]]
    return U, labels, slices


def test_block_selection_drops_pure_noise_and_keeps_every_signal_block():
    rng = np.random.default_rng(0)
    U, labels, slices = _blocky_updates(rng)
    v = np.ones(len(U))
    sig = block_signal(U, v, slices)
    assert abs(sig["lora_A"].z) < 3 < min(sig["bias"].z, sig["lora_B"].z)
    chosen = select_signal_blocks(U, v, slices)
    # the strong but one-directional bias block must not crowd out the weak, wide one
    assert chosen == ["bias", "lora_B"]
    cols = np.r_[slices["bias"], slices["lora_B"]]
    on_signal = cascade_cluster([U[:, cols]], 1.0, 8, 0)
    on_all = cascade_cluster([U], 1.0, 8, 0)
    assert adjusted_rand(labels, on_signal.labels) == 1.0
    # the 800 noise coordinates raise the noise edge enough to lose clusters
    assert adjusted_rand(labels, on_all.labels) < 0.9


def test_block_selection_without_any_signal_keeps_everything():
    rng = np.random.default_rng(1)
    slices = block_slices({"a": np.zeros(50), "b": np.zeros(70)})
    U = rng.normal(size=(12, 120))
    assert select_signal_blocks(U, np.ones(12), slices) == ["a", "b"]


def test_block_signal_is_unbiased_under_pure_noise_with_unequal_variances():
    rng = np.random.default_rng(2)
    v = np.linspace(0.5, 2.0, 15)
    slices = {"x": slice(0, 400)}
    z = [
        block_signal(rng.normal(size=(15, 400)) * np.sqrt(v)[:, None], v, slices)["x"].z
        for _ in range(200)
    ]
    assert abs(np.mean(z)) < 0.25 and 0.7 < np.std(z) < 1.3


def test_block_signal_rejects_mismatched_variances():
    with pytest.raises(ValueError, match="noise variances"):
        block_signal(np.zeros((4, 6)), np.ones(3), {"x": slice(0, 6)})
