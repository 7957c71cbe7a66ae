"""Per-process caching of federations and the runner-facing lookup."""

from __future__ import annotations

import time

import pytest

from fedcascade.configtools import build
from fedcascade.data import DataConfig, build_federation, cache_info, clear_cache, load_community
from fedcascade.errors import DataError


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


def big_cfg(n: int = 200) -> DataConfig:
    raw = {
        "min_group_test": 0,
        "synthetic": {"records_per_community": 200, "sub_distributions": [{"n_communities": n}]},
    }
    return build(DataConfig, raw, "data")


def test_second_lookup_is_a_cache_hit_returning_the_same_objects():
    cfg = big_cfg()
    t0 = time.perf_counter()
    first = load_community(cfg, 0, 5)
    t_build = time.perf_counter() - t0
    assert cache_info() == {"hits": 0, "misses": 1, "size": 1}
    t0 = time.perf_counter()
    for pid in range(200):
        c = load_community(cfg, 0, pid)
        assert c.community_id == pid
    t_hits = (time.perf_counter() - t0) / 200
    assert cache_info()["hits"] == 200 and cache_info()["misses"] == 1
    assert load_community(cfg, 0, 5) is first
    assert t_hits < t_build / 20
    # An equal config built from the same TOML hits the same entry.
    assert load_community(big_cfg(), 0, 5) is first
    # Another seed is another federation.
    assert load_community(cfg, 1, 5) is not first
    assert cache_info()["misses"] == 2


def test_bad_partition_id_is_a_clear_error():
    cfg = build(DataConfig, {"min_group_test": 0}, "data")
    with pytest.raises(DataError, match=r"0 \.\. 5.*num-supernodes"):
        load_community(cfg, 0, 6)


def test_cache_is_bounded():
    cfg = build(DataConfig, {"min_group_test": 0}, "data")
    for seed in range(10):
        build_federation(cfg, seed)
    assert cache_info()["size"] <= 4
