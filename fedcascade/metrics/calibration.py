"""Calibration per group: expected calibration error and confident errors.

Confidence is the top predicted probability; a record is correct when the top class is its
label. ECE (Naeini et al. 2015; Guo et al. 2017) with ``B`` equal-width bins
``(0, 1/B], (1/B, 2/B], ..., ((B-1)/B, 1]``::

    ECE = sum_b (n_b / n) |acc_b - conf_b| = (1/n) sum_b |sum_{i in b} (correct_i - conf_i)|

The confident-error rate is the fraction of a group's records predicted with confidence
``>= threshold`` (0.9 by default) and wrong: the errors a user is least likely to question.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedcascade.errors import DataError
from fedcascade.metrics._groups import as_1d, as_2d, group_index, group_key, same_length

__all__ = [
    "confidence_and_correct",
    "expected_calibration_error",
    "confident_error_rate",
    "calibration_by_group",
]


def confidence_and_correct(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Top-class probability and whether the top class is the label, per record."""
    p = as_2d(probs, "probs")
    y = as_1d(labels, "labels")
    same_length({"probs": p, "labels": y})
    return p.max(axis=1), p.argmax(axis=1) == y


def _bin_of(conf: np.ndarray, n_bins: int) -> np.ndarray:
    # Right-closed bins: conf in ((b)/B, (b+1)/B] goes to b; conf == 0 goes to bin 0.
    return np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)


def _check_bins(n_bins: int) -> None:
    if not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise DataError("n_bins", n_bins, "a positive integer number of bins (15 is usual)")


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """ECE with ``n_bins`` equal-width confidence bins (see the module docstring).

    Parameters
    ----------
    probs : array-like of shape (n, n_classes)
        Predicted probabilities.
    labels : array-like of shape (n,)
        True classes.
    n_bins : int
        Number of equal-width bins on [0, 1].

    Returns
    -------
    float
        In [0, 1]; NaN for no records.
    """
    _check_bins(n_bins)
    conf, correct = confidence_and_correct(probs, labels)
    if conf.size == 0:
        return float("nan")
    b = _bin_of(conf, n_bins)
    gap = np.bincount(b, weights=correct - conf, minlength=n_bins)
    return float(np.abs(gap).sum() / conf.size)


def confident_error_rate(probs: Any, labels: Any, threshold: float = 0.9) -> float:
    """Fraction of records with confidence ``>= threshold`` whose prediction is wrong."""
    conf, correct = confidence_and_correct(probs, labels)
    if conf.size == 0:
        return float("nan")
    return float(np.mean((conf >= threshold) & ~correct))


def calibration_by_group(
    probs: Any, labels: Any, groups: Any, n_bins: int = 15, threshold: float = 0.9
) -> dict[Any, dict[str, float]]:
    """ECE and confident-error rate of each group, in one pass of bincounts.

    Returns
    -------
    dict
        ``{group: {"ece": ..., "confident_error_rate": ...}}``.
    """
    _check_bins(n_bins)
    conf, correct = confidence_and_correct(probs, labels)
    names, inv = group_index(groups)
    same_length({"probs": conf, "groups": inv})
    g = len(names)
    # One bincount over the combined (group, bin) key gives every group's per-bin gap at once.
    key = inv * n_bins + _bin_of(conf, n_bins)
    gap = np.bincount(key, weights=correct - conf, minlength=g * n_bins).reshape(g, n_bins)
    counts = np.bincount(inv, minlength=g).astype(float)
    wrong_conf = np.bincount(inv, weights=(conf >= threshold) & ~correct, minlength=g)
    with np.errstate(invalid="ignore", divide="ignore"):
        ece = np.abs(gap).sum(axis=1) / counts
        cer = wrong_conf / counts
    return {
        group_key(n): {"ece": float(e), "confident_error_rate": float(c)}
        for n, e, c in zip(names, ece, cer, strict=True)
    }
