"""The user's own table as a federation.

Columns: a label column (any values, mapped to ``0..C-1`` in sorted order), numeric feature
columns (standardized), categorical feature columns (one-hot), and optionally a community
column (each value is one community), group columns (sensitive attributes for per-group
metrics) and a sub-distribution column (ground truth for evaluation only). Without a
community column the partitioner splits the table into ``n_communities`` communities.
Rows with a missing value in a used column are dropped, with a warning.
"""

from __future__ import annotations

import difflib
import functools
import os
import warnings
from dataclasses import replace

import numpy as np
import torch

from fedcascade.data.assemble import Unit, communities_from_units, warn_small_test_groups
from fedcascade.data.config import CsvConfig, DataConfig
from fedcascade.data.synthetic import marginalized_flags
from fedcascade.data.tabular import majority_label, reserve_public, standardize
from fedcascade.data.types import Federation
from fedcascade.errors import DataError

__all__ = ["read_table", "build_csv", "csv_n_communities", "MIN_COMMUNITY_RECORDS"]

#: A community (from the community column) needs at least this many rows to be split.
MIN_COMMUNITY_RECORDS = 3
_STREAM_PUBLIC, _STREAM_SPLIT = 20, 21


def drop_missing(df, path: str):  # pandas.DataFrame -> pandas.DataFrame
    """``df`` without the rows that miss a value, warning (as from the data builder's caller)
    how many of the file's rows that dropped."""
    n_rows = len(df)
    df = df.dropna()
    if len(df) < n_rows:
        warnings.warn(
            f"{path}: dropped {n_rows - len(df)} of {n_rows} rows with a missing value in a "
            "used column",
            UserWarning,
            stacklevel=4,
        )
    return df


def read_table(path: str, usecols: list[str] | None = None):  # -> pandas.DataFrame
    """Read a CSV file, turning every failure into a :class:`DataError` naming the file.

    Parameters
    ----------
    path : str
        File path.
    usecols : list of str, optional
        Read only these columns (they must exist).

    Returns
    -------
    pandas.DataFrame
    """
    import pandas as pd

    if not os.path.exists(path):
        raise DataError("data.csv.path", path, "an existing CSV file (check the path)")
    if os.path.isdir(path):
        raise DataError("data.csv.path", path, "a CSV file, not a directory")
    try:
        header = pd.read_csv(path, nrows=0)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError, OSError) as e:
        raise DataError(
            "data.csv.path",
            path,
            f"a readable, comma-separated text file ({type(e).__name__}: {e})",
        ) from e
    with open(path, "rb") as fh:
        if b"\x00" in fh.read(8192):
            raise DataError("data.csv.path", path, "a text CSV file (it contains binary data)")
    if usecols is not None:
        _require_columns(list(header.columns), usecols)
    try:
        df = pd.read_csv(path, usecols=usecols, skipinitialspace=True)
    except (UnicodeDecodeError, pd.errors.ParserError, OSError, ValueError) as e:
        raise DataError(
            "data.csv.path",
            path,
            f"a readable, comma-separated text file ({type(e).__name__}: {e})",
        ) from e
    if len(df) == 0:
        raise DataError("data.csv.path", path, "a file with at least one data row")
    return df


def numeric_matrix(df, columns, where: str = "") -> np.ndarray:  # df: pandas.DataFrame
    """The ``columns`` of ``df`` as float64; a value that is not a number is a DataError naming
    the column (prefixed by ``where``, e.g. a node's file) and showing the first bad value."""
    import pandas as pd

    num = df[list(columns)].apply(pd.to_numeric, errors="coerce")
    for c in columns:
        bad = num[c].isna()
        if bad.any():
            raise DataError(
                f"{where}csv column '{c}' (listed in data.csv.numeric)",
                df.loc[bad, c].iloc[0],
                f"numbers in every row ({int(bad.sum())} rows are not); list it under "
                "data.csv.categorical if it is a category",
            )
    return num.to_numpy(dtype=np.float64)


def _require_columns(available: list[str], wanted: list[str]) -> None:
    for c in wanted:
        if c not in available:
            close = difflib.get_close_matches(c, [str(a) for a in available], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise DataError(
                f"csv column '{c}'",
                "missing",
                f"one of the file's columns {available}{hint}",
            )


@functools.lru_cache(maxsize=16)
def _n_unique(path: str, column: str, stamp: tuple) -> int:
    df = read_table(path, usecols=[column])
    return int(df[column].dropna().nunique())


def csv_n_communities(cc: CsvConfig) -> int:
    """Number of communities, reading at most the community column.

    Rows later dropped for missing values elsewhere can make a community vanish; the build
    then reports the mismatch as a DataError instead of silently renumbering.
    """
    if cc.community is None:
        return cc.n_communities
    try:
        st = os.stat(cc.path)
        stamp: tuple = (st.st_size, st.st_mtime_ns)
    except OSError:
        stamp = ()
    return _n_unique(cc.path, cc.community, stamp)


def _used_columns(cc: CsvConfig) -> list[str]:
    cols = [cc.label, *cc.numeric, *cc.categorical, *cc.groups]
    for c in (cc.community, cc.sub_distribution):
        if c is not None:
            cols.append(c)
    return list(dict.fromkeys(cols))


def build_csv(cfg: DataConfig, seed: int) -> Federation:
    """Build a federation from the user's CSV file (uncached; see ``build_federation``).

    Raises
    ------
    DataError
        Unreadable file, missing column, non-numeric value in a numeric column, a label with a
        single class, a community with too few rows, or a partition that leaves a community
        without training records.
    """

    cc = cfg.csv
    assert cc is not None  # DataConfig.validate guarantees it
    expected_k = csv_n_communities(cc)
    df = read_table(cc.path, usecols=_used_columns(cc))
    n_rows = len(df)
    all_communities = (
        set(df[cc.community].dropna().astype(str)) if cc.community is not None else set()
    )
    df = drop_missing(df, cc.path)
    if len(df) == 0:
        raise DataError("data.csv.path", cc.path, "rows without missing values in the used columns")
    row_ids = df.index.to_numpy(dtype=np.int64)  # row number in the file (0 = first data row)

    # Features: numeric standardized, categorical one-hot (categories in sorted order).
    blocks = []
    if cc.numeric:
        blocks.append(standardize(numeric_matrix(df, cc.numeric))[0])
    feature_names = list(cc.numeric)
    for c in cc.categorical:
        values = df[c].astype(str).to_numpy()
        cats = np.unique(values)
        blocks.append((values[:, None] == cats[None, :]).astype(np.float32))
        feature_names += [f"{c}={v}" for v in cats]
    x = np.concatenate(blocks, axis=1).astype(np.float32)

    label_values = df[cc.label].astype(str).to_numpy()
    classes, y = np.unique(label_values, return_inverse=True)
    if len(classes) < 2:
        raise DataError(
            f"csv label column '{cc.label}'",
            f"a single class {classes.tolist()}",
            "at least two different labels",
        )
    y = y.astype(np.int64)

    if cc.sub_distribution is not None:
        sub_names, record_sub = np.unique(df[cc.sub_distribution].astype(str), return_inverse=True)
        sub_names = [str(s) for s in sub_names]
    else:
        sub_names, record_sub = ["all"], np.zeros(len(df), dtype=np.int64)
    record_sub = record_sub.astype(np.int64)
    if cc.groups:
        groups = df[list(cc.groups)].astype(str).agg("_".join, axis=1).to_numpy().astype(str)
    else:
        groups = np.asarray(sub_names, dtype=str)[record_sub]

    totals = np.bincount(record_sub, minlength=len(sub_names)).tolist()
    if cc.minority:
        unknown = [m for m in cc.minority if m not in sub_names]
        if unknown:
            raise DataError(
                "data.csv.minority", unknown, f"values of the sub-distribution column {sub_names}"
            )
        minority = [sub_names.index(m) for m in cc.minority]
    elif len(sub_names) > 1:
        minority = marginalized_flags(totals, [None] * len(sub_names))
    else:
        minority = []

    public, keep = reserve_public(
        cfg.public_records,
        record_sub,
        minority,
        cfg.public_pool.minority_weight,
        np.random.default_rng([seed, _STREAM_PUBLIC]),
    )

    units: list[Unit] = []
    if cc.community is not None:
        comm_values = df[cc.community].astype(str).to_numpy()
        names = np.unique(comm_values)
        kept_names = np.unique(comm_values[keep])
        if len(kept_names) != len(all_communities) or len(all_communities) != expected_k:
            lost = sorted(all_communities - set(kept_names.tolist()))
            raise DataError(
                f"csv column '{cc.community}'",
                f"{len(kept_names)} communities with usable rows (empty after dropping rows with "
                f"missing values or public records: {lost})",
                f"{expected_k} non-empty communities; fill in the missing values, drop those "
                "communities from the file, or shrink data.public_pool.records",
            )
        for name in names:
            rows = np.flatnonzero((comm_values == name) & keep)
            if len(rows) < MIN_COMMUNITY_RECORDS:
                raise DataError(
                    f"community '{name}' (csv column '{cc.community}')",
                    f"{len(rows)} usable rows",
                    f"at least {MIN_COMMUNITY_RECORDS} rows so it can be split into train/val/test",
                )
            units.append(_unit(str(name), 1, rows, x, y, groups, row_ids, record_sub, "{unit}"))
    else:
        rows = np.flatnonzero(keep)
        units.append(_unit("csv", cc.n_communities, rows, x, y, groups, row_ids, record_sub))
    communities = communities_from_units(
        units, cfg, len(classes), np.random.default_rng([seed, _STREAM_SPLIT])
    )
    # A community's hidden sub-distribution: the most common one among its records.
    sub_of_row = dict(zip(row_ids.tolist(), record_sub.tolist(), strict=True))
    communities = [
        replace(
            c,
            sub_distribution=majority_label(
                [sub_of_row[int(i)] for i in np.concatenate([c.ids_train, c.ids_val, c.ids_test])]
            ),
        )
        for c in communities
    ]
    warn_small_test_groups(communities, cfg.min_group_test)
    return Federation(
        communities=communities,
        n_classes=len(classes),
        input_shape=(x.shape[1],),
        sub_distribution_names=sub_names,
        minority_sub_distributions=minority,
        public_x=torch.from_numpy(np.ascontiguousarray(x[public])),
        public_y=torch.from_numpy(np.ascontiguousarray(y[public])),
        public_sub_distribution=record_sub[public],
        source="csv",
        info={
            "path": os.path.abspath(cc.path),
            "rows_used": int(len(df)),
            "rows_dropped_missing": int(n_rows - len(df)),
            "classes": [str(c) for c in classes],
            "features": feature_names,
            "scaling": "numeric columns standardized with whole-file mean/std (public metadata)",
        },
    )


def _unit(
    name: str,
    k: int,
    rows: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    row_ids: np.ndarray,
    record_sub: np.ndarray,
    name_format: str = "{unit}-c{j}",
) -> Unit:
    return Unit(
        name=name,
        sub_distribution=majority_label(record_sub[rows]),
        n_communities=k,
        x=x[rows],
        y=y[rows],
        groups=groups[rows],
        ids=row_ids[rows],
        name_format=name_format,
    )
