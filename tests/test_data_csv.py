"""The user's CSV source: happy path, invariants and every documented error."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from fedcascade.configtools import build
from fedcascade.data import DataConfig, build_federation, clear_cache, load_community
from fedcascade.errors import ConfigError, DataError


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()


def make_table(n: int = 600, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    town = rng.choice(["north", "south", "east", "west"], size=n, p=[0.4, 0.3, 0.2, 0.1])
    return pd.DataFrame(
        {
            "age": rng.integers(18, 90, size=n),
            "income": rng.normal(50, 10, size=n).round(2),
            "job": rng.choice(["a", "b", "c"], size=n),
            "sex": rng.choice(["F", "M"], size=n),
            "town": town,
            "region": np.where(np.isin(town, ["north", "south"]), "main", "rural"),
            "label": rng.choice(["yes", "no"], size=n),
        }
    )


def cfg_for(path, **csv) -> DataConfig:
    base = {
        "path": str(path),
        "label": "label",
        "numeric": ["age", "income"],
        "categorical": ["job"],
    }
    base.update(csv)
    raw = {"source": "csv", "min_group_test": 0, "csv": base}
    if "community" not in csv:
        raw["partition"] = {"method": "dirichlet", "alpha": 5.0}
    return build(DataConfig, raw, "data")


def test_community_column_groups_and_encoding(tmp_path):
    p = tmp_path / "t.csv"
    df = make_table()
    df.to_csv(p, index=False)
    cfg = cfg_for(p, community="town", groups=["sex"], sub_distribution="region")
    assert cfg.n_communities == 4
    fed = build_federation(cfg, 0)
    assert [c.name for c in fed.communities] == ["east", "north", "south", "west"]
    assert fed.input_shape == (2 + 3,) and fed.n_classes == 2
    assert fed.info["classes"] == ["no", "yes"]
    assert fed.sub_distribution_names == ["main", "rural"]
    assert [c.sub_distribution for c in fed.communities] == [1, 0, 0, 1]
    c = fed.communities[1]
    assert c.x_train.dtype == torch.float32 and c.y_train.dtype == torch.int64
    assert set(c.groups_test.tolist()) <= {"F", "M"}
    # Every row of a community comes from that town, and rows map back to the file.
    rows = df.iloc[c.ids_train]
    assert set(rows["town"]) == {"north"}
    np.testing.assert_array_equal(
        c.y_train.numpy(), (rows["label"] == "yes").astype(int).to_numpy()
    )
    # Numeric columns standardized over the file, one-hot for the categories.
    allx = torch.cat(
        [k.x_train for k in fed.communities]
        + [k.x_test for k in fed.communities]
        + [k.x_val for k in fed.communities]
    )
    assert abs(float(allx[:, 0].mean())) < 1e-4 and abs(float(allx[:, 0].std()) - 1) < 0.01
    assert set(torch.unique(allx[:, 2:]).tolist()) == {0.0, 1.0}
    assert load_community(cfg, 0, 3).name == "west"


def test_every_row_in_exactly_one_split_including_public(tmp_path):
    p = tmp_path / "t.csv"
    make_table(500).to_csv(p, index=False)
    raw = {
        "source": "csv",
        "min_group_test": 0,
        "public_pool": {"records": 50},
        "csv": {
            "path": str(p),
            "label": "label",
            "numeric": ["age"],
            "categorical": ["job", "sex"],
            "n_communities": 5,
        },
        "partition": {"method": "size_skew", "power": 1.0},
    }
    fed = build_federation(build(DataConfig, raw, "data"), 0)
    ids = np.concatenate(
        [np.concatenate([c.ids_train, c.ids_val, c.ids_test]) for c in fed.communities]
    )
    assert len(ids) == len(np.unique(ids)) == 450
    assert fed.public_x.shape == (50, 1 + 3 + 2)
    assert fed.communities[0].n_train > fed.communities[4].n_train


def test_missing_values_are_dropped_with_a_warning(tmp_path):
    p = tmp_path / "t.csv"
    df = make_table(300)
    df.loc[[3, 7], "age"] = np.nan
    df.to_csv(p, index=False)
    with pytest.warns(UserWarning, match="dropped 2 of 300 rows"):
        fed = build_federation(cfg_for(p), 0)
    ids = np.concatenate(
        [np.concatenate([c.ids_train, c.ids_val, c.ids_test]) for c in fed.communities]
    )
    assert len(ids) == 298 and 3 not in ids


def test_missing_column_names_it_and_suggests(tmp_path):
    p = tmp_path / "t.csv"
    make_table().to_csv(p, index=False)
    with pytest.raises(DataError, match=r"csv column 'incme'.*did you mean 'income'"):
        build_federation(cfg_for(p, numeric=["age", "incme"]), 0)
    with pytest.raises(DataError, match="csv column 'city'"):
        _ = cfg_for(p, community="city").n_communities


def test_non_numeric_value_in_numeric_column(tmp_path):
    p = tmp_path / "t.csv"
    df = make_table()
    df["age"] = df["age"].astype(str)
    df.loc[5, "age"] = "forty"
    df.to_csv(p, index=False)
    with pytest.raises(DataError, match=r"csv column 'age'.*'forty'.*categorical"):
        build_federation(cfg_for(p), 0)


def test_empty_or_tiny_community(tmp_path):
    p = tmp_path / "t.csv"
    df = make_table()
    df.loc[df.index[:2], "town"] = "tiny"
    df.loc[df.index[:2], "age"] = np.nan  # its only rows are unusable
    df.loc[df.index[2:4], "town"] = "small"
    df.to_csv(p, index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match=r"communities.*'tiny'"):
            build_federation(cfg_for(p, community="town"), 0)
        df.loc[df.index[:2], "age"] = 30
        df.to_csv(p, index=False)
        with pytest.raises(DataError, match=r"community 'small'.*at least 3 rows"):
            build_federation(cfg_for(p, community="town"), 0)


def test_single_class_label(tmp_path):
    p = tmp_path / "t.csv"
    df = make_table()
    df["label"] = "yes"
    df.to_csv(p, index=False)
    with pytest.raises(
        DataError, match=r"label column 'label'.*single class.*two different labels"
    ):
        build_federation(cfg_for(p), 0)


def test_unreadable_files(tmp_path):
    with pytest.raises(DataError, match="existing CSV file"):
        build_federation(cfg_for(tmp_path / "nope.csv"), 0)
    with pytest.raises(DataError, match="not a directory"):
        build_federation(cfg_for(tmp_path), 0)
    binary = tmp_path / "b.csv"
    binary.write_bytes(bytes(range(256)) * 20)
    with pytest.raises(DataError, match="readable"):
        build_federation(cfg_for(binary), 0)
    empty = tmp_path / "e.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="readable"):
        build_federation(cfg_for(empty), 0)
    header_only = tmp_path / "h.csv"
    header_only.write_text("age,income,job,label\n")
    with pytest.raises(DataError, match="at least one data row"):
        build_federation(cfg_for(header_only), 0)


def test_config_errors_for_csv():
    with pytest.raises(ConfigError, match=r"data\.csv.*\[data\.csv\]"):
        build(DataConfig, {"source": "csv"}, "data")
    with pytest.raises(ConfigError, match="partition.method"):
        build(
            DataConfig,
            {"source": "csv", "csv": {"path": "x", "label": "y", "numeric": ["a"]}},
            "data",
        )
    with pytest.raises(ConfigError, match="'natural' when data.csv.community is set"):
        build(
            DataConfig,
            {
                "source": "csv",
                "csv": {"path": "x", "label": "y", "numeric": ["a"], "community": "c"},
                "partition": {"method": "dirichlet"},
            },
            "data",
        )
    with pytest.raises(ConfigError, match="at least one feature"):
        build(DataConfig, {"source": "csv", "csv": {"path": "x", "label": "y"}}, "data")
    with pytest.raises(ConfigError, match="not also a feature"):
        build(
            DataConfig,
            {"source": "csv", "csv": {"path": "x", "label": "a", "numeric": ["a"]}},
            "data",
        )


def test_edited_file_is_reread(tmp_path):
    p = tmp_path / "t.csv"
    make_table(300, seed=0).to_csv(p, index=False)
    cfg = cfg_for(p, community="town")
    a = build_federation(cfg, 0)
    assert build_federation(cfg, 0) is a
    make_table(400, seed=1).to_csv(p, index=False)
    b = build_federation(cfg, 0)
    assert b is not a and sum(c.n_train + c.n_val + c.n_test for c in b.communities) == 400
