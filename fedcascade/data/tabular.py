"""Helpers shared by the table sources (adult, csv): feature encoding and the public pool."""

from __future__ import annotations

import numpy as np

__all__ = ["standardize", "reserve_public", "majority_label"]


def standardize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre and scale columns to unit variance (constant columns are only centred).

    The statistics come from the whole table. fedcascade treats feature scaling as public
    metadata (like the schema); docs/data.md states this assumption.

    Returns
    -------
    tuple
        Scaled float32 values, the means and the scales used.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return v.astype(np.float32), np.zeros(v.shape[1:]), np.ones(v.shape[1:])
    mean = v.mean(axis=0)
    std = v.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return ((v - mean) / std).astype(np.float32), mean, std


def reserve_public(
    n_public: int,
    record_sub: np.ndarray,
    minority: list[int],
    minority_weight: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Pick the rows of a table that form the public pool.

    Each row is drawn (without replacement) with weight ``minority_weight`` if its
    sub-distribution is marginalized and 1 otherwise, so the pool under-represents the
    marginalized sub-distributions by that factor.

    Parameters
    ----------
    n_public : int
        Rows to reserve (capped at the rows with positive weight).
    record_sub : numpy.ndarray
        Sub-distribution id of every row.
    minority : list of int
        Marginalized sub-distribution ids.
    minority_weight : float
        Relative weight of their rows.
    rng : numpy.random.Generator

    Returns
    -------
    public : numpy.ndarray
        Sorted int64 row positions of the public pool.
    keep : numpy.ndarray
        Boolean mask of the rows left for the communities (every row not in ``public``).
    """
    n = len(record_sub)
    keep = np.ones(n, dtype=bool)
    if n_public <= 0 or n == 0:
        return np.zeros(0, dtype=np.int64), keep
    w = np.ones(n)
    w[np.isin(record_sub, minority)] = minority_weight
    n_public = min(n_public, int((w > 0).sum()))
    # Efraimidis-Spirakis: the n largest of u^(1/w) are a weighted sample without replacement.
    with np.errstate(divide="ignore"):
        keys = np.where(w > 0, np.log(rng.random(n)) / np.where(w > 0, w, 1.0), -np.inf)
    public = np.sort(np.argsort(-keys, kind="stable")[:n_public]).astype(np.int64)
    keep[public] = False
    return public, keep


def majority_label(values: np.ndarray) -> int:
    """Most common int value (smallest on ties)."""
    return int(np.bincount(np.asarray(values, dtype=np.int64)).argmax())
