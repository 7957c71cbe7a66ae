"""Predictive multiplicity per group across seeds of one configuration.

Given the predictions of S models that differ only in their random seed, on the same records
(Marx, Calmon & Ustun 2020, with seeds standing in for the set of near-optimal models):

* ambiguity: fraction of a group's records on which at least two models disagree;
* discrepancy: the largest, over pairs of models, fraction of a group's records on which the
  pair disagrees.

High values mean the group's predictions are arbitrary: they depend on the seed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedcascade.errors import DataError
from fedcascade.metrics._groups import as_1d, group_index, group_key, group_mean

__all__ = ["ambiguity", "discrepancy", "multiplicity_by_group"]


def _pred_matrix(predictions: Any) -> np.ndarray:
    p = np.asarray(predictions)
    if p.ndim != 2 or p.shape[0] < 2:
        raise DataError(
            "predictions",
            f"an array of shape {p.shape}",
            "shape (n_seeds, n_records) with n_seeds >= 2",
        )
    return p


def ambiguity(predictions: Any) -> float:
    """Fraction of records on which any two of the seeds' predictions differ."""
    p = _pred_matrix(predictions)
    return float(np.mean(np.any(p != p[:1], axis=0))) if p.shape[1] else float("nan")


def discrepancy(predictions: Any) -> float:
    """Largest pairwise disagreement rate between seeds."""
    p = _pred_matrix(predictions)
    if not p.shape[1]:
        return float("nan")
    i, j = np.triu_indices(p.shape[0], k=1)
    return float(np.max(np.mean(p[i] != p[j], axis=1)))


def multiplicity_by_group(predictions: Any, groups: Any) -> dict[Any, dict[str, float]]:
    """Ambiguity and discrepancy of each group.

    Parameters
    ----------
    predictions : array-like of shape (n_seeds, n_records)
        Predicted class of each record by each seed's model (records in the same order).
    groups : array-like of shape (n_records,)
        Group of each record.

    Returns
    -------
    dict
        ``{group: {"ambiguity": ..., "discrepancy": ...}}``.
    """
    p = _pred_matrix(predictions)
    grp = as_1d(groups, "groups")
    if grp.size != p.shape[1]:
        raise DataError(
            "groups", f"{grp.size} records", f"{p.shape[1]} records (predictions columns)"
        )
    names, inv = group_index(grp)
    g = len(names)
    amb = group_mean(np.any(p != p[:1], axis=0), inv, g)
    i, j = np.triu_indices(p.shape[0], k=1)
    # (n_pairs, n_records) disagreement -> per-group rate of every pair -> max over pairs.
    disagree = p[i] != p[j]
    counts = np.bincount(inv, minlength=g).astype(float)
    key = (np.arange(len(i))[:, None] * g + inv[None, :]).ravel()
    sums = np.bincount(key, weights=disagree.ravel(), minlength=len(i) * g).reshape(len(i), g)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_pair = sums / counts
    disc = per_pair.max(axis=0)
    return {
        group_key(n): {"ambiguity": float(a), "discrepancy": float(d)}
        for n, a, d in zip(names, amb, disc, strict=True)
    }
