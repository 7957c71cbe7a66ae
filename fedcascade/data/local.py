"""A deployed community's own records: the node's ``data-path`` file, encoded like the reference.

In a deployment with real data, each SuperNode holds one community's private records in a CSV
file (node config ``data-path``). The experiment's ``[data.csv]`` section names the schema and a
*public* reference file with that schema (``[data.csv] path``): the server and every node build
the shared backbone and the initial adapters from it, so the node's records must be encoded
exactly like the reference file's:

- numeric columns are standardized with the reference file's means and standard deviations
  (public metadata, like the schema; the node's own statistics would make its features
  incomparable with the backbone's and the other communities');
- categorical columns are one-hot encoded over the reference file's categories, in the same
  order; a category the reference lacks is an error (it has no input unit in the model);
- labels map to the reference file's classes; an unknown label is an error;
- group columns (per-group metrics) are read as they are: a group the reference lacks is fine.

The whole file is one community, split into train/val/test with the data layer's stratified
split (``data.test_fraction`` / ``data.val_fraction``), seeded by the data seed and the
community id. Rows with a missing value in a used column are dropped with a warning, as for the
reference. Columns the schema does not use (an id column, say) are ignored, and the community
and sub-distribution columns are optional in a node file.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, replace

import numpy as np

from fedcascade.data.assemble import Unit, communities_from_units, warn_small_test_groups
from fedcascade.data.build import data_seed
from fedcascade.data.config import CsvConfig, DataConfig, PartitionConfig
from fedcascade.data.csvfile import (
    MIN_COMMUNITY_RECORDS,
    _used_columns,
    drop_missing,
    numeric_matrix,
    read_table,
)
from fedcascade.data.tabular import standardize
from fedcascade.data.types import Community
from fedcascade.errors import DataError

__all__ = [
    "CsvSchema",
    "reference_schema",
    "encode_rows",
    "load_local_community",
    "clear_local_cache",
]

#: rng stream of the node's split (the data layer uses 20 and 21 for pool and split)
_STREAM_LOCAL_SPLIT = 22
#: local communities kept per process (a node serves one; tests build a few)
CACHE_SIZE = 8


@dataclass(frozen=True)
class CsvSchema:
    """How the reference file encodes a record (all public: derived from the public file).

    Attributes
    ----------
    numeric : tuple of str
        Numeric columns, in feature order.
    means, scales : numpy.ndarray
        The reference file's per-column mean and scale (std; 1 for a constant column).
    categorical : tuple of str
        Categorical columns, one-hot encoded after the numeric ones, in this order.
    categories : tuple of tuple of str
        Each categorical column's categories (sorted, as in the reference encoding).
    label : str
        Label column.
    classes : tuple of str
        Label values; class ``i`` is ``classes[i]``.
    groups : tuple of str
        Sensitive-attribute columns (joined with ``_`` into a group label).
    """

    numeric: tuple[str, ...]
    means: np.ndarray
    scales: np.ndarray
    categorical: tuple[str, ...]
    categories: tuple[tuple[str, ...], ...]
    label: str
    classes: tuple[str, ...]
    groups: tuple[str, ...]

    @property
    def features(self) -> list[str]:
        """Feature names in input order (as in ``Federation.info["features"]``)."""
        names = list(self.numeric)
        for c, cats in zip(self.categorical, self.categories, strict=True):
            names += [f"{c}={v}" for v in cats]
        return names


def _stamp(path: str) -> tuple:
    try:
        st = os.stat(path)
    except OSError:
        return (path, None)
    return (os.path.abspath(path), st.st_size, st.st_mtime_ns)


def reference_schema(cc: CsvConfig) -> CsvSchema:
    """The encoding of the reference file ``cc.path`` (cached by the file's size and mtime).

    Computed from the same rows ``build_csv`` encodes (rows with a missing value in a used
    column are dropped first), so a record encodes to the same vector either way.

    Raises
    ------
    DataError
        If the reference file cannot be read or lacks a configured column.
    """
    return _reference_schema(cc, _stamp(cc.path))


_schema_cache: dict[Hashable, CsvSchema] = {}


def _reference_schema(cc: CsvConfig, stamp: tuple) -> CsvSchema:
    key = (cc, stamp)
    hit = _schema_cache.get(key)
    if hit is not None:
        return hit

    # _used_columns is the reference build's own list, so both drop exactly the same rows.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the reference build already warns about dropped rows
        df = read_table(cc.path, usecols=_used_columns(cc)).dropna()
    if len(df) == 0:
        raise DataError("data.csv.path", cc.path, "rows without missing values in the used columns")
    if cc.numeric:
        _, means, scales = standardize(numeric_matrix(df, cc.numeric, f"{cc.path}: "))
    else:
        means, scales = np.zeros(0), np.ones(0)
    schema = CsvSchema(
        numeric=tuple(cc.numeric),
        means=means,
        scales=scales,
        categorical=tuple(cc.categorical),
        categories=tuple(
            tuple(str(v) for v in np.unique(df[c].astype(str).to_numpy())) for c in cc.categorical
        ),
        label=cc.label,
        classes=tuple(str(v) for v in np.unique(df[cc.label].astype(str).to_numpy())),
        groups=tuple(cc.groups),
    )
    if len(_schema_cache) > 16:
        _schema_cache.clear()
    _schema_cache[key] = schema
    return schema


def _canonical(value: str) -> str:
    """``"1.0"`` and ``"1"`` name the same category (pandas reads an int column holding a
    missing value as floats), so compare numbers by value."""
    try:
        f = float(value)
    except ValueError:
        return value
    return repr(int(f)) if f.is_integer() else repr(f)


def _index_of(
    values: np.ndarray, known: tuple[str, ...], where: str, allowed_what: str
) -> np.ndarray:
    """Position of every value in ``known`` (exact string, else equal as a number)."""
    exact = {v: i for i, v in enumerate(known)}
    loose = {_canonical(v): i for i, v in enumerate(known)}
    uniq, inverse = np.unique(values.astype(str), return_inverse=True)
    pos = [exact.get(v, loose.get(_canonical(v))) for v in uniq.tolist()]
    unknown = [v for v, i in zip(uniq.tolist(), pos, strict=True) if i is None]
    if unknown:
        raise DataError(
            where,
            unknown[:10],
            f"{allowed_what} {list(known)[:20]}: the model only knows the reference file's "
            "values (add them to the reference file, or map or drop these rows)",
        )
    return np.asarray(pos, dtype=np.int64)[inverse.reshape(-1)]


def _as_text(column) -> np.ndarray:  # column: pandas.Series
    """String values of a column; integral floats written without ``.0``."""
    if column.dtype.kind == "f" and bool(np.all(np.mod(column.to_numpy(), 1) == 0)):
        column = column.astype(np.int64)
    return column.astype(str).to_numpy()


def encode_rows(df, schema: CsvSchema, path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Encode a node's table (no missing values) with the reference schema.

    Parameters
    ----------
    df : pandas.DataFrame
        The node's rows, with every column the schema uses.
    schema : CsvSchema
        The reference file's encoding.
    path : str
        The node file, named in errors.

    Returns
    -------
    tuple of numpy.ndarray
        float32 features ``(n, len(schema.features))``, int64 labels, str group labels.

    Raises
    ------
    DataError
        A non-numeric value in a numeric column, or a category or label value the reference
        file does not have; the message names the file and the column.
    """

    blocks = []
    if schema.numeric:
        v = numeric_matrix(df, schema.numeric, f"{path}: ")
        blocks.append(((v - schema.means) / schema.scales).astype(np.float32))
    for c, cats in zip(schema.categorical, schema.categories, strict=True):
        idx = _index_of(
            _as_text(df[c]), cats, f"{path}: csv column '{c}' (data.csv.categorical)", "categories"
        )
        blocks.append(np.eye(len(cats), dtype=np.float32)[idx])
    x = np.concatenate(blocks, axis=1).astype(np.float32)
    y = _index_of(
        _as_text(df[schema.label]),
        schema.classes,
        f"{path}: csv label column '{schema.label}'",
        "labels",
    )
    if schema.groups:
        # the reference's "_".join of the group values, without pandas' per-row apply (which
        # takes seconds on a 100k-row file)
        cols = [_as_text(df[g]).tolist() for g in schema.groups]
        groups = np.array(["_".join(t) for t in zip(*cols, strict=True)], dtype=str)
    else:
        groups = np.full(len(df), "all", dtype=object).astype(str)
    return x, y, groups


def _read_node_table(path: str, columns: list[str]):  # -> pandas.DataFrame
    """``read_table`` with errors that name the node's file rather than ``data.csv.path``."""
    try:
        return read_table(path, usecols=columns)
    except DataError as e:
        if e.field == "data.csv.path":
            raise DataError("data-path (node config)", path, e.allowed) from None
        raise DataError(f"{path}: {e.field}", e.given, e.allowed) from None


_cache: OrderedDict[Hashable, Community] = OrderedDict()
_lock = threading.Lock()


def load_local_community(cfg: DataConfig, seed: int, community_id: int, path: str) -> Community:
    """The community ``community_id`` from the node's own file ``path`` (cached per process).

    Parameters
    ----------
    cfg : DataConfig
        The experiment's ``[data]`` section; must be ``source = "csv"``. Its ``csv.path`` is the
        public reference file that fixes the encoding (it must be readable here too: the node
        builds the same backbone from it).
    seed : int
        The run seed (``data.seed`` overrides it, as for every source).
    community_id : int
        The node's ``community-id``.
    path : str
        The node's ``data-path``.

    Returns
    -------
    Community
        Named ``community-<id>``; ``sub_distribution`` 0 (unknown on a node); record ids are
        row numbers in the node's file (0 = first data row).

    Raises
    ------
    DataError
        Not a csv experiment, the file is unreadable or lacks a column, a value does not fit
        the reference encoding, or too few rows to split.
    """
    if cfg.source != "csv" or cfg.csv is None:
        raise DataError(
            "data-path (node config)",
            path,
            f"an experiment with [data] source = 'csv' whose [data.csv] names the columns "
            f"(this one has source = '{cfg.source}', which does not read node files)",
        )
    s = data_seed(cfg, seed)
    key = (cfg, s, community_id, _stamp(path), _stamp(cfg.csv.path))
    with _lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    community = _build_local(cfg, s, community_id, path)
    with _lock:
        _cache[key] = community
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return community


def _build_local(cfg: DataConfig, s: int, community_id: int, path: str) -> Community:
    cc = cfg.csv
    assert cc is not None
    schema = reference_schema(cc)
    columns = list(dict.fromkeys([cc.label, *cc.numeric, *cc.categorical, *cc.groups]))
    df = _read_node_table(path, columns)
    df = drop_missing(df, path)
    if len(df) < MIN_COMMUNITY_RECORDS:
        raise DataError(
            f"data-path (node config) {path}",
            f"{len(df)} usable rows",
            f"at least {MIN_COMMUNITY_RECORDS} rows so it can be split into train/val/test",
        )
    x, y, groups = encode_rows(df, schema, path)
    unit = Unit(
        name=f"community-{community_id}",
        sub_distribution=0,
        n_communities=1,
        x=x,
        y=y,
        groups=groups,
        ids=df.index.to_numpy(dtype=np.int64),
        name_format="{unit}",
    )
    # The whole file is one community: the experiment's partitioner (which shares the
    # reference file among communities) does not apply.
    one = replace(cfg, partition=PartitionConfig())
    rng = np.random.default_rng([s, _STREAM_LOCAL_SPLIT, community_id])
    (community,) = communities_from_units([unit], one, len(schema.classes), rng)
    community = replace(community, community_id=community_id)
    warn_small_test_groups([community], cfg.min_group_test)
    return community


def clear_local_cache() -> None:
    """Forget cached node communities and reference schemas (tests, or to free memory)."""
    with _lock:
        _cache.clear()
        _schema_cache.clear()
