"""Partitioners and splits: invariants every source relies on."""

from __future__ import annotations

import numpy as np
import pytest

from fedcascade.configtools import build
from fedcascade.data import DataConfig, build_federation, clear_cache
from fedcascade.data.partition import (
    assign_records,
    largest_remainder,
    partition_weights,
    stratified_split,
)
from fedcascade.errors import ConfigError, DataError


def test_largest_remainder_is_exact_and_proportional():
    counts = largest_remainder(10, np.array([1.0, 1.0, 1.0]))
    assert counts.sum() == 10 and sorted(counts.tolist()) == [3, 3, 4]
    assert largest_remainder(7, np.zeros(3)).tolist() == [0, 0, 0]


@pytest.mark.parametrize("method", ["natural", "size_skew", "dirichlet"])
def test_every_record_goes_to_exactly_one_community(method):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=1003)
    w = partition_weights(method, 7, 5, rng, power=1.5, alpha=0.3)
    np.testing.assert_allclose(w.sum(axis=0), 1.0)
    parts = assign_records(labels, w, rng)
    allidx = np.concatenate(parts)
    assert len(allidx) == 1003 and len(np.unique(allidx)) == 1003


def test_natural_gives_equal_sizes_and_the_same_label_mix():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, size=900)
    parts = assign_records(labels, partition_weights("natural", 3, 3, rng), rng)
    assert [len(p) for p in parts] == [300, 300, 300]
    mixes = np.stack([np.bincount(labels[p], minlength=3) for p in parts])
    assert np.ptp(mixes, axis=0).max() <= 1


def test_size_skew_follows_power_law_and_given_sizes():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, size=6000)
    parts = assign_records(labels, partition_weights("size_skew", 3, 2, rng, power=1.0), rng)
    sizes = np.array([len(p) for p in parts])
    np.testing.assert_allclose(sizes / sizes[0], [1, 1 / 2, 1 / 3], atol=0.01)
    parts = assign_records(labels, partition_weights("size_skew", 2, 2, rng, sizes=[3, 1]), rng)
    assert [len(p) for p in parts] == [4500, 1500]


def test_dirichlet_small_alpha_skews_labels_more():
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(10), 500)

    def mean_dominant_share(alpha):
        shares = []
        for _ in range(5):
            parts = assign_records(
                labels, partition_weights("dirichlet", 10, 10, rng, alpha=alpha), rng
            )
            shares += [np.bincount(labels[p], minlength=10).max() / max(len(p), 1) for p in parts]
        return np.mean(shares)

    assert mean_dominant_share(0.1) > 0.5 > mean_dominant_share(100.0)
    assert mean_dominant_share(100.0) < 0.2


def test_stratified_split_hits_the_fractions_and_keeps_label_mix():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 4, size=1001)
    split = stratified_split(labels, (0.7, 0.1, 0.2), rng)
    assert (
        np.bincount(split, minlength=3).tolist()
        == largest_remainder(1001, np.array([0.7, 0.1, 0.2])).tolist()
    )
    for s in range(3):
        mix = np.bincount(labels[split == s], minlength=4) / (split == s).sum()
        np.testing.assert_allclose(mix, np.bincount(labels) / 1001, atol=0.03)
    tiny = stratified_split(np.array([0, 1, 2, 3, 4]), (0.6, 0.2, 0.2), rng)
    assert np.bincount(tiny, minlength=3).tolist() == [3, 1, 1]


@pytest.mark.parametrize("source", ["synthetic", "digits"])
@pytest.mark.parametrize("method", ["size_skew", "dirichlet"])
def test_partitioners_work_for_every_source_and_keep_test_mix_like_train(source, method):
    clear_cache()
    raw = {"source": source, "min_group_test": 0, "partition": {"method": method, "alpha": 1.0}}
    fed = build_federation(build(DataConfig, raw, "data"), 0)
    ids = [np.concatenate([c.ids_train, c.ids_val, c.ids_test]) for c in fed.communities]
    for k in range(len(fed.sub_distribution_names)):
        sub_ids = np.concatenate(
            [i for i, c in zip(ids, fed.communities, strict=True) if c.sub_distribution == k]
        )
        assert len(sub_ids) == len(np.unique(sub_ids))
    if method == "size_skew":
        first = [c for c in fed.communities if c.sub_distribution == 1]
        assert first[0].n_train > first[1].n_train
    if method == "dirichlet" and source == "digits":
        # A community's test labels follow its own (skewed) training label mix.
        c = max(fed.communities, key=lambda c: c.n_test)
        tr = np.bincount(c.y_train.numpy(), minlength=10) / c.n_train
        te = np.bincount(c.y_test.numpy(), minlength=10) / c.n_test
        assert np.abs(tr - te).sum() < 0.5


def test_partition_sizes_must_match_the_communities():
    with pytest.raises(ConfigError, match=r"partition\.sizes.*6 communities"):
        build(DataConfig, {"partition": {"method": "size_skew", "sizes": [1, 2]}}, "data")
    cfg = build(
        DataConfig,
        {"min_group_test": 0, "partition": {"method": "size_skew", "sizes": [4, 2, 1, 3, 1, 1]}},
        "data",
    )
    clear_cache()
    fed = build_federation(cfg, 0)
    a = [c.n_train + c.n_val + c.n_test for c in fed.communities[:3]]
    assert a == [1371, 686, 343]  # 2400 records in shares 4:2:1


def test_impossible_dirichlet_fails_with_advice():
    raw = {
        "min_group_test": 0,
        "synthetic": {"records_per_community": 20, "sub_distributions": [{"n_communities": 30}]},
        "partition": {"method": "dirichlet", "alpha": 0.01, "min_train_records": 5},
    }
    clear_cache()
    with pytest.raises(DataError, match="raise alpha"):
        build_federation(build(DataConfig, raw, "data"), 0)
