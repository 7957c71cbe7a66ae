"""The synthetic mixture-of-manifolds source."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
import torch

from fedcascade.configtools import build
from fedcascade.data import DataConfig, SmallTestSetWarning, build_federation, clear_cache
from fedcascade.data.synthetic import make_world
from fedcascade.errors import ConfigError


def cfg_of(raw: dict | None = None) -> DataConfig:
    return build(DataConfig, raw or {}, "data")


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


def test_default_is_the_small_quickstart_world_and_builds_fast():
    cfg = cfg_of()
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallTestSetWarning)
        fed = build_federation(cfg, 0)
    elapsed = time.perf_counter() - t
    assert elapsed < 1.0
    assert cfg.n_communities == fed.n_communities == 6
    assert fed.input_shape == (24,)
    assert len(fed.sub_distribution_names) == 3
    assert fed.minority_sub_distributions == [2]
    # The minority also has fewer communities.
    per_sub = np.bincount(fed.sub_distribution_of())
    assert per_sub[2] < per_sub[0]
    for c in fed.communities:
        for x, y, g in [
            (c.x_train, c.y_train, c.groups_train),
            (c.x_val, c.y_val, c.groups_val),
            (c.x_test, c.y_test, c.groups_test),
        ]:
            assert x.dtype == torch.float32 and y.dtype == torch.int64
            assert x.shape == (len(y), 24) and len(g) == len(y)
            assert set(g.tolist()) <= {fed.sub_distribution_names[c.sub_distribution]}
        assert c.n_train >= 50
        assert c.y_train.min() >= 0 and c.y_train.max() < fed.n_classes


def test_same_seed_same_data_other_seed_other_data_and_data_seed_pins_it():
    a = build_federation(cfg_of(), 1)
    clear_cache()
    b = build_federation(cfg_of(), 1)
    assert a is not b
    for ca, cb in zip(a.communities, b.communities, strict=True):
        assert torch.equal(ca.x_train, cb.x_train) and torch.equal(ca.y_test, cb.y_test)
    assert torch.equal(a.public_x, b.public_x)
    c = build_federation(cfg_of(), 2)
    assert not torch.equal(a.communities[0].x_train, c.communities[0].x_train)
    pinned = cfg_of({"seed": 7})
    assert torch.equal(
        build_federation(pinned, 1).communities[0].x_train,
        build_federation(pinned, 2).communities[0].x_train,
    )


def test_sizes_and_community_counts_follow_the_config():
    raw = {
        "min_group_test": 0,
        "synthetic": {
            "records_per_community": 1000,
            "sub_distributions": [
                {"n_communities": 4, "size": 1.0},
                {"n_communities": 2, "size": 0.5},
                {"n_communities": 1, "size": 0.1},
            ],
        },
    }
    fed = build_federation(cfg_of(raw), 0)
    sizes = np.array([c.n_train + c.n_val + c.n_test for c in fed.communities])
    subs = fed.sub_distribution_of()
    assert np.bincount(subs).tolist() == [4, 2, 1]
    assert np.all(sizes[subs == 0] == 1000)
    assert np.all(sizes[subs == 1] == 500)
    assert np.all(sizes[subs == 2] == 100)
    # Split fractions: 70 / 10 / 20 per community.
    c = fed.communities[0]
    assert (c.n_train, c.n_val, c.n_test) == (700, 100, 200)
    # Marginalized by default: at most half the records of the largest sub-distribution.
    assert fed.minority_sub_distributions == [1, 2]


def test_every_record_in_exactly_one_split_of_one_community():
    fed = build_federation(cfg_of({"min_group_test": 0}), 3)
    ids = np.concatenate(
        [np.concatenate([c.ids_train, c.ids_val, c.ids_test]) for c in fed.communities]
    )
    assert len(ids) == len(np.unique(ids)) == sum(fed.info["records_per_sub_distribution"].values())


def test_public_pool_under_represents_the_minority():
    cfg = cfg_of({"min_group_test": 0, "public_pool": {"records": 3000, "minority_weight": 0.1}})
    fed = build_federation(cfg, 0)
    assert fed.public_x.shape == (3000, 24) and fed.public_y.shape == (3000,)
    share_public = np.mean(fed.public_sub_distribution == 2)
    totals = np.array(list(fed.info["records_per_sub_distribution"].values()))
    share_data = totals[2] / totals.sum()
    assert share_public < 0.3 * share_data
    none = build_federation(cfg_of({"min_group_test": 0, "public_pool": {"records": 0}}), 0)
    assert none.public_x.shape == (0, 24)


def test_geometry_unique_directions_are_orthogonal_and_manifold_is_low_dimensional():
    cfg = cfg_of().synthetic
    world = make_world(cfg, 0)
    bases = [s.basis for s in world.subs]
    # The last column of every basis is the sub-distribution's unique direction.
    uniques = np.stack([b[:, -1] for b in bases], axis=1)
    gram = uniques.T @ uniques
    np.testing.assert_allclose(gram, np.eye(len(bases)), atol=1e-10)
    for b in bases:
        for other in bases:
            if other is not b:
                assert abs(b[:, -1] @ other[:, 0]) < 1e-10
    # Noise-free records of one sub-distribution span only its few input directions.
    s = world.subs[0]
    z = s.latent(500, np.random.default_rng(0))
    centred = s.embed(z) - s.centre
    sv = np.linalg.svd(centred, compute_uv=False)
    assert sv[s.basis.shape[1]] < 1e-8 * sv[0]


def test_each_sub_distribution_has_its_own_labelling_function():
    world = make_world(cfg_of().synthetic, 0)
    z = world.subs[0].latent(4000, np.random.default_rng(1))
    labels = [np.searchsorted(s.thresholds, s.score(z)) for s in world.subs]
    # On the same manifold coordinates, the labelling functions disagree a lot (not 0 or 1).
    disagree = np.mean(labels[0] != labels[2])
    assert 0.2 < disagree < 0.8
    assert abs(np.mean(labels[0]) - 0.5) < 0.05  # balanced classes


def _fit(x: torch.Tensor, y: torch.Tensor, steps: int = 250) -> torch.nn.Module:
    torch.manual_seed(0)
    m = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 2),
    )
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    return m


def test_a_model_fit_to_the_aggregate_is_worse_for_the_marginalized_sub_distribution():
    torch.set_num_threads(1)
    gaps = []
    for seed in range(3):
        cfg = cfg_of({"min_group_test": 0})
        fed = build_federation(cfg, seed)
        x = torch.cat([c.x_train for c in fed.communities])
        y = torch.cat([c.y_train for c in fed.communities])
        model = _fit(x, y)
        world = make_world(cfg.synthetic, seed)
        acc = []
        for k in range(3):
            xt, yt, _ = world.sample(k, 2000, np.random.default_rng(99))
            with torch.no_grad():
                acc.append((model(torch.from_numpy(xt)).argmax(1).numpy() == yt).mean())
        gaps.append(min(acc[0], acc[1]) - acc[2])
    assert np.mean(gaps) > 0.05, gaps


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="intrinsic_dim"):
        cfg_of(
            {
                "synthetic": {
                    "sub_distributions": [{"intrinsic_dim": 5, "shared_dims": 1, "unique_dims": 1}]
                }
            }
        )
    with pytest.raises(ConfigError, match=r"data\.synthetic\.dim"):
        cfg_of({"synthetic": {"dim": 5}})
    with pytest.raises(ConfigError, match="shared_dims"):
        cfg_of({"synthetic": {"shared_axes": 1}})
    with pytest.raises(ConfigError, match="size"):
        cfg_of({"synthetic": {"records_per_community": 10, "sub_distributions": [{"size": 0.1}]}})
    with pytest.raises(ConfigError, match="did you mean 'n_communities'"):
        cfg_of({"synthetic": {"sub_distributions": [{"n_community": 2}]}})
    with pytest.raises(ConfigError, match="val_fraction"):
        cfg_of({"test_fraction": 0.5, "val_fraction": 0.4})


def test_small_test_groups_warn_with_the_threshold():
    # The default marginalized community has 24 test records: fine at 20, too few at 30.
    with warnings.catch_warnings():
        warnings.simplefilter("error", SmallTestSetWarning)
        build_federation(cfg_of(), 0)
    with pytest.warns(
        SmallTestSetWarning, match=r"min_group_test = 30.*marginalized-c0/marginalized: 24"
    ):
        build_federation(cfg_of({"min_group_test": 30}), 0)
