"""A node's own data file (node config ``data-path``), encoded like the public reference file."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from fedcascade.community_runtime import community_data, served_communities
from fedcascade.config import config_from_dict
from fedcascade.configtools import build
from fedcascade.data import DataConfig, build_federation, clear_cache
from fedcascade.data.local import clear_local_cache, load_local_community, reference_schema
from fedcascade.data.partition import largest_remainder
from fedcascade.errors import ConfigError, DataError


@pytest.fixture(autouse=True)
def _fresh_caches():
    clear_cache()
    clear_local_cache()


def make_table(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "age": rng.integers(18, 90, size=n),
            "income": rng.normal(50, 10, size=n).round(2),
            "job": rng.choice(["a", "b", "c"], size=n),
            "sex": rng.choice(["F", "M"], size=n),
            "label": rng.choice(["no", "yes"], size=n),
        }
    )


def data_cfg(reference, groups=("sex",), **extra) -> DataConfig:
    raw = {
        "source": "csv",
        "min_group_test": 0,
        "csv": {
            "path": str(reference),
            "label": "label",
            "numeric": ["age", "income"],
            "categorical": ["job"],
            "groups": list(groups),
            "n_communities": 3,
        },
        "partition": {"method": "size_skew"},
        **extra,
    }
    return build(DataConfig, raw, "data")


@pytest.fixture
def reference(tmp_path):
    path = tmp_path / "reference.csv"
    make_table(300, 0).to_csv(path, index=False)
    return path


def write(tmp_path, name: str, df: pd.DataFrame):
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("groups", [("sex",), ("sex", "job")])
def test_node_records_encode_exactly_like_the_reference(tmp_path, reference, groups):
    """The same record gives the same input vector, label and group on a node as in the
    reference federation, whatever the node file's column order, extra columns or category
    subset."""
    cfg = data_cfg(reference, groups)
    fed = build_federation(cfg, 0)
    ref_rows = {}
    for c in fed.communities:
        for ids, x, y, g in (
            (c.ids_train, c.x_train, c.y_train, c.groups_train),
            (c.ids_val, c.x_val, c.y_val, c.groups_val),
            (c.ids_test, c.x_test, c.y_test, c.groups_test),
        ):
            for i, xi, yi, gi in zip(ids.tolist(), x.numpy(), y.numpy(), g, strict=True):
                ref_rows[i] = (xi, int(yi), str(gi))
    assert len(ref_rows) == 300  # no public pool: every reference row is in some community

    # A node file holding some of the same records: shuffled, without category "c", with an
    # id column the schema ignores and the columns in another order.
    ref = pd.read_csv(reference)
    node = ref[ref["job"] != "c"].sample(frac=0.8, random_state=1)
    node = node.assign(reference_row=node.index, patient="p")[
        ["patient", "label", "job", "sex", "income", "age", "reference_row"]
    ]
    path = write(tmp_path, "node.csv", node)
    com = load_local_community(cfg, 0, 2, str(path))

    assert com.community_id == 2 and com.x_train.shape[1] == fed.input_shape[0]
    schema = reference_schema(cfg.csv)
    assert schema.features == fed.info["features"]
    assert list(schema.classes) == fed.info["classes"]
    for ids, x, y, g in (
        (com.ids_train, com.x_train, com.y_train, com.groups_train),
        (com.ids_val, com.x_val, com.y_val, com.groups_val),
        (com.ids_test, com.x_test, com.y_test, com.groups_test),
    ):
        for i, xi, yi, gi in zip(ids.tolist(), x.numpy(), y.numpy(), g, strict=True):
            ref_x, ref_y, ref_g = ref_rows[int(node["reference_row"].iloc[i])]
            np.testing.assert_array_equal(xi, ref_x)  # bit for bit: reference means/stds
            assert (yi, gi) == (ref_y, ref_g)
    job_c = fed.info["features"].index("job=c")
    assert float(com.x_train[:, job_c].abs().sum()) == 0.0
    assert len(set(com.groups_train.tolist())) == (2 if groups == ("sex",) else 4)  # no job=c


def test_the_whole_file_is_one_community_split_like_the_data_layer(tmp_path, reference):
    cfg = data_cfg(reference, test_fraction=0.25, val_fraction=0.15)
    path = write(tmp_path, "node.csv", make_table(123, 7))
    com = load_local_community(cfg, 5, 0, str(path))
    assert [com.n_train, com.n_val, com.n_test] == largest_remainder(
        123, np.array([0.6, 0.15, 0.25])
    ).tolist()
    all_ids = np.concatenate([com.ids_train, com.ids_val, com.ids_test])
    assert sorted(all_ids.tolist()) == list(range(123))  # every row once, ids = file rows
    # Seeded: the same split again, another for another seed (data.seed fixes it).
    clear_local_cache()
    again = load_local_community(cfg, 5, 0, str(path))
    np.testing.assert_array_equal(again.ids_test, com.ids_test)
    other = load_local_community(cfg, 6, 0, str(path))
    assert not np.array_equal(other.ids_test, com.ids_test)
    fixed = data_cfg(reference, seed=11)
    assert np.array_equal(
        load_local_community(fixed, 5, 0, str(path)).ids_test,
        load_local_community(fixed, 6, 0, str(path)).ids_test,
    )


@pytest.mark.parametrize("float_side", ["node", "reference"])
def test_integer_codes_match_even_when_a_missing_value_makes_them_floats(tmp_path, float_side):
    codes = {"a": 1, "b": 2, "c": 3}
    ref = make_table(200, 0).assign(job=lambda d: d["job"].map(codes))
    node = make_table(50, 3).assign(job=lambda d: d["job"].map(codes))
    floats = node if float_side == "node" else ref
    floats["job"] = floats["job"].astype(float)
    floats.loc[0, "job"] = np.nan  # pandas now reads the column as 1.0, 2.0, ...
    reference = write(tmp_path, "reference.csv", ref)
    path = write(tmp_path, "node.csv", node)
    cfg = data_cfg(reference)
    expected = ["job=1.0", "job=2.0", "job=3.0"] if float_side == "reference" else ["job=1"]
    assert set(expected) <= set(reference_schema(cfg.csv).features)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the dropped row
        com = load_local_community(cfg, 0, 0, str(path))
    kept = 49 if float_side == "node" else 50
    assert com.n_train + com.n_val + com.n_test == kept
    x = np.concatenate([com.x_train.numpy(), com.x_val.numpy(), com.x_test.numpy()])
    ids = np.concatenate([com.ids_train, com.ids_val, com.ids_test])
    onehot = x[:, 2:5]
    np.testing.assert_array_equal(onehot.argmax(1) + 1, node["job"].to_numpy()[ids])
    assert (onehot.sum(1) == 1).all()


def test_rows_with_missing_values_are_dropped_with_a_warning(tmp_path, reference):
    node = make_table(30, 3)
    node.loc[[0, 5], "income"] = np.nan
    path = write(tmp_path, "node.csv", node)
    with pytest.warns(UserWarning, match="node.csv: dropped 2 of 30 rows"):
        com = load_local_community(data_cfg(reference), 0, 0, str(path))
    ids = np.concatenate([com.ids_train, com.ids_val, com.ids_test])
    assert sorted(ids.tolist()) == [i for i in range(30) if i not in (0, 5)]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            lambda d: d.assign(job=["z"] + d["job"].tolist()[1:]),
            r"node\.csv: csv column 'job'.*'z'",
        ),
        (
            lambda d: d.assign(label=["maybe"] + d["label"].tolist()[1:]),
            r"node\.csv: csv label column 'label'.*'maybe'.*\['no', 'yes'\]",
        ),
        (lambda d: d.drop(columns=["income"]), r"node\.csv: csv column 'income': got 'missing'"),
        (
            lambda d: d.rename(columns={"sex": "Sex"}),
            r"node\.csv: csv column 'sex'.*did you mean 'Sex'",
        ),
        (
            lambda d: d.assign(age=["old"] + d["age"].tolist()[1:]),
            r"node\.csv: csv column 'age' \(listed in data.csv.numeric\): got 'old'",
        ),
        (lambda d: d.head(2), r"data-path \(node config\) .*node\.csv: got '2 usable rows'"),
    ],
    ids=["category", "label", "missing-column", "renamed-column", "non-numeric", "too-few-rows"],
)
def test_a_node_file_that_does_not_fit_the_reference_names_file_and_column(
    tmp_path, reference, change, match
):
    path = write(tmp_path, "node.csv", change(make_table(40, 2)))
    with pytest.raises(DataError, match=match):
        load_local_community(data_cfg(reference), 0, 0, str(path))


def test_unusable_paths_and_experiments_are_refused_clearly(tmp_path, reference):
    cfg = data_cfg(reference)
    with pytest.raises(DataError, match=r"data-path \(node config\): got '.*nowhere\.csv'"):
        load_local_community(cfg, 0, 0, str(tmp_path / "nowhere.csv"))
    with pytest.raises(DataError, match="a CSV file, not a directory"):
        load_local_community(cfg, 0, 0, str(tmp_path))
    node = write(tmp_path, "node.csv", make_table(40, 2))
    synthetic = build(DataConfig, {"source": "synthetic"}, "data")
    with pytest.raises(DataError, match="source = 'csv'.*this one has source = 'synthetic'"):
        load_local_community(synthetic, 0, 0, str(node))
    # A node file holds one community, so a simulated node serving several cannot use one.
    with pytest.raises(ConfigError, match="community-id .*next to data-path"):
        served_communities({"partition-id": 0, "num-partitions": 2, "data-path": str(node)}, 4)
    assert served_communities({"community-id": 3, "data-path": str(node)}, 4) == [3]


def test_runtime_serves_the_node_file_only_when_data_path_is_set(tmp_path, reference):
    exp = config_from_dict(
        {"data": data_cfg_raw(reference), "strategy": {"name": "dp-fedavg"}},
        resolve_strategy=False,
    )
    node = write(tmp_path, "node.csv", make_table(80, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing about dropped rows or small groups here
        local = community_data(exp, 1, str(node))
    simulated = community_data(exp, 1, None)
    assert local.n_train + local.n_val + local.n_test == 80
    assert simulated.name != local.name and local.name == "community-1"


def data_cfg_raw(reference) -> dict:
    return {
        "source": "csv",
        "min_group_test": 0,
        "csv": {
            "path": str(reference),
            "label": "label",
            "numeric": ["age", "income"],
            "categorical": ["job"],
            "groups": ["sex"],
            "n_communities": 3,
        },
        "partition": {"method": "size_skew"},
    }
