"""The digits source: R-DPCFL protocol, rotations, label permutations, base-image sharing."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from fedcascade.configtools import build
from fedcascade.data import DataConfig, SmallTestSetWarning, build_federation, clear_cache
from fedcascade.data.digits import N_BASE, load_base_digits
from fedcascade.errors import ConfigError


def cfg_of(raw: dict | None = None) -> DataConfig:
    return build(DataConfig, {"source": "digits", **(raw or {})}, "data")


@pytest.fixture(scope="module")
def rdpcfl():
    clear_cache()
    return build_federation(cfg_of(), 0)


def test_default_is_the_rdpcfl_protocol(rdpcfl):
    fed = rdpcfl
    assert cfg_of().n_communities == fed.n_communities == 21
    assert np.bincount(fed.sub_distribution_of()).tolist() == [3, 6, 6, 6]
    assert fed.minority_sub_distributions == [0]
    assert fed.input_shape == (1, 8, 8) and fed.n_classes == 10
    c = fed.communities[0]
    assert c.x_train.shape == (c.n_train, 1, 8, 8) and c.x_train.dtype == torch.float32
    assert c.y_train.dtype == torch.int64
    assert {(c.n_train, c.n_val, c.n_test) for c in fed.communities} == {(140, 20, 40)}
    assert 0.0 <= float(c.x_train.min()) and float(c.x_train.max()) <= 1.0
    assert fed.public_x.shape == (300, 1, 8, 8)


def test_rotation_and_label_permutation_are_applied_to_the_right_base_image():
    raw = {
        "min_group_test": 0,
        "digits": {
            "records_per_community": 60,
            "sub_distributions": [
                {"rotation": 0, "label_shift": 0},
                {"rotation": 90, "label_shift": 0},
                {"rotation": 180, "label_shift": 3},
                {"rotation": 270, "label_shift": 9},
            ],
        },
    }
    fed = build_federation(cfg_of(raw), 0)
    bx, by = load_base_digits()
    for c in fed.communities:
        sub = fed.sub_distribution_names[c.sub_distribution]
        rot = int(sub.split("-")[0][3:])
        shift = int(sub.split("shift")[1])
        for x, y, ids in [(c.x_train, c.y_train, c.ids_train), (c.x_test, c.y_test, c.ids_test)]:
            expect = np.rot90(bx[ids], k=rot // 90, axes=(-2, -1))
            np.testing.assert_array_equal(x.numpy(), expect)
            np.testing.assert_array_equal(y.numpy(), (by[ids] + shift) % 10)
    # 90 degrees counter-clockwise: the top row becomes the left column, read bottom-up.
    img = bx[fed.communities[1].ids_train[0], 0]
    np.testing.assert_array_equal(fed.communities[1].x_train[0, 0].numpy()[:, 0], img[0, ::-1])


def test_base_images_never_cross_train_and_test_and_are_disjoint_within_a_sub_distribution(rdpcfl):
    fed = rdpcfl
    train = np.concatenate([c.ids_train for c in fed.communities])
    test = np.concatenate([c.ids_test for c in fed.communities])
    val = np.concatenate([c.ids_val for c in fed.communities])
    assert not set(train) & set(test) and not set(train) & set(val) and not set(val) & set(test)
    for k in range(4):
        ids = np.concatenate(
            [
                np.concatenate([c.ids_train, c.ids_val, c.ids_test])
                for c in fed.communities
                if c.sub_distribution == k
            ]
        )
        assert len(ids) == len(np.unique(ids))
    assert fed.info["max_communities_per_base_image"] <= 4
    # The 300 public images are never a community's.
    assert fed.info["base_images_used"] <= N_BASE - 300


def test_reuse_none_gives_every_base_image_to_at_most_one_community():
    raw = {"min_group_test": 0, "digits": {"reuse": "none", "records_per_community": 60}}
    fed = build_federation(cfg_of(raw), 0)
    ids = np.concatenate(
        [np.concatenate([c.ids_train, c.ids_val, c.ids_test]) for c in fed.communities]
    )
    assert len(ids) == len(np.unique(ids))
    assert fed.info["max_communities_per_base_image"] == 1


def test_minority_with_fewer_records_variant():
    raw = {
        "min_group_test": 0,
        "digits": {
            "sub_distributions": [
                {"n_communities": 3, "rotation": 0, "size": 0.25},
                {"n_communities": 6, "rotation": 90},
                {"n_communities": 6, "rotation": 180},
                {"n_communities": 6, "rotation": 270},
            ]
        },
    }
    fed = build_federation(cfg_of(raw), 0)
    sizes = np.array([c.n_train + c.n_val + c.n_test for c in fed.communities])
    subs = fed.sub_distribution_of()
    assert set(sizes[subs == 0]) == {50} and set(sizes[subs != 0]) == {200}
    assert fed.minority_sub_distributions == [0]


def test_small_minority_test_sets_warn():
    raw = {
        "digits": {
            "sub_distributions": [
                {"n_communities": 2, "size": 0.25},
                {"n_communities": 4, "rotation": 90},
            ]
        }
    }
    with pytest.warns(SmallTestSetWarning, match="rot0-shift0-c0/rot0-shift0: 10"):
        build_federation(cfg_of(raw), 0)


def test_impossible_protocols_fail_at_config_time_with_the_fix():
    with pytest.raises(ConfigError, match=r"records_per_community.*train pool holds 1048"):
        cfg_of({"digits": {"records_per_community": 400}})
    with pytest.raises(ConfigError, match="reuse = 'across_sub_distributions'"):
        cfg_of({"digits": {"reuse": "none"}})
    with pytest.raises(ConfigError, match=r"rotation.*0, 90, 180, 270"):
        cfg_of({"digits": {"sub_distributions": [{"rotation": 45}]}})
    with pytest.raises(ConfigError, match="public_pool.records"):
        cfg_of({"public_pool": {"records": N_BASE}})
    with pytest.raises(ConfigError, match="distinct sub-distributions"):
        cfg_of({"digits": {"sub_distributions": [{"rotation": 90}, {"rotation": 90}]}})


def test_public_pool_is_disjoint_and_under_represents_the_minority(rdpcfl):
    fed = rdpcfl
    assert np.mean(fed.public_sub_distribution == 0) < 0.1  # data share of the minority: 600/4200
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        big = build_federation(cfg_of({"public_pool": {"records": 100}, "seed": 5}), 0)
    assert big.public_x.shape[0] == 100
