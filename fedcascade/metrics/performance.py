"""Per-group performance: accuracy, loss, worst group, gap, and binary fairness differences.

The demographic-parity and equalized-odds differences follow fairlearn's definitions
(``method="between_groups"``, ``agg="worst_case"``) but are computed here with numpy only, so
fairlearn stays a test dependency.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedcascade.errors import DataError
from fedcascade.metrics._groups import (
    as_1d,
    as_2d,
    group_index,
    group_key,
    group_mean,
    same_length,
    spread,
)

__all__ = [
    "predictions",
    "cross_entropy",
    "group_accuracy",
    "group_loss",
    "worst_and_gap",
    "binary_group_rates",
    "demographic_parity_difference",
    "equalized_odds_difference",
]


def predictions(probs: Any) -> np.ndarray:
    """Predicted class (argmax over the last axis) of each record."""
    return as_2d(probs, "probs").argmax(axis=1)


def cross_entropy(probs: Any, labels: Any, eps: float = 1e-12) -> np.ndarray:
    """Per-record cross-entropy ``-log p[label]`` (probabilities clipped at ``eps`` to stay finite).

    Parameters
    ----------
    probs : array-like of shape (n, n_classes)
        Predicted class probabilities.
    labels : array-like of int, shape (n,)
        True class of each record.
    eps : float
        Floor on the probability of the true class.

    Returns
    -------
    np.ndarray of shape (n,)
    """
    p = as_2d(probs, "probs")
    y = as_1d(labels, "labels").astype(int)
    same_length({"probs": p, "labels": y})
    if y.size and (y.min() < 0 or y.max() >= p.shape[1]):
        raise DataError(
            "labels", f"values in [{y.min()}, {y.max()}]", f"integers in [0, {p.shape[1] - 1}]"
        )
    return -np.log(np.clip(p[np.arange(len(y)), y], eps, 1.0))


def group_accuracy(y_true: Any, y_pred: Any, groups: Any) -> dict[Any, float]:
    """Accuracy of each group.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n,)
        True and predicted labels.
    groups : array-like of shape (n,)
        Group label of each record.

    Returns
    -------
    dict
        ``{group: accuracy}`` for every group present.
    """
    y_true = as_1d(y_true, "y_true")
    y_pred = as_1d(y_pred, "y_pred")
    names, inv = group_index(groups)
    same_length({"y_true": y_true, "y_pred": y_pred, "groups": inv})
    acc = group_mean(y_true == y_pred, inv, len(names))
    return {group_key(n): float(a) for n, a in zip(names, acc, strict=True)}


def group_loss(losses: Any, groups: Any) -> dict[Any, float]:
    """Mean per-record loss of each group (``{group: mean loss}``)."""
    losses = as_1d(losses, "losses", dtype=float)
    names, inv = group_index(groups)
    same_length({"losses": losses, "groups": inv})
    mean = group_mean(losses, inv, len(names))
    return {group_key(n): float(m) for n, m in zip(names, mean, strict=True)}


def worst_and_gap(
    per_group: dict[Any, float], higher_is_better: bool = True
) -> tuple[Any, float, float]:
    """Worst group, its value and the gap (best minus worst, always >= 0) of a per-group metric.

    Groups whose value is NaN are ignored; with none left, returns ``(None, nan, nan)``.
    """
    finite = {g: v for g, v in per_group.items() if np.isfinite(v)}
    if not finite:
        return None, float("nan"), float("nan")
    pick = min if higher_is_better else max
    worst = pick(finite, key=finite.__getitem__)
    return worst, float(finite[worst]), spread(list(finite.values()))


def _binary(y: Any, field: str) -> np.ndarray:
    arr = as_1d(y, field)
    values = set(np.unique(arr).tolist())
    if not values <= {0, 1}:
        raise DataError(field, f"values {sorted(values)[:5]}", "binary labels 0/1 (1 = positive)")
    return arr.astype(int)


def binary_group_rates(y_true: Any, y_pred: Any, groups: Any) -> dict[str, dict[Any, float]]:
    """Selection rate, true-positive rate and false-positive rate of each group (binary task).

    A rate whose denominator is empty in a group (e.g. TPR of a group without positives) is NaN.

    Returns
    -------
    dict
        ``{"selection_rate": {g: r}, "tpr": {g: r}, "fpr": {g: r}}``.
    """
    yt = _binary(y_true, "y_true")
    yp = _binary(y_pred, "y_pred")
    names, inv = group_index(groups)
    same_length({"y_true": yt, "y_pred": yp, "groups": inv})
    g = len(names)
    sel = group_mean(yp, inv, g)
    # TPR = mean prediction over the positives of the group; FPR likewise over the negatives.
    pos = yt == 1
    tpr = group_mean(yp[pos], inv[pos], g)
    fpr = group_mean(yp[~pos], inv[~pos], g)
    keys = [group_key(n) for n in names]
    return {
        "selection_rate": dict(zip(keys, sel.tolist(), strict=True)),
        "tpr": dict(zip(keys, tpr.tolist(), strict=True)),
        "fpr": dict(zip(keys, fpr.tolist(), strict=True)),
    }


def demographic_parity_difference(y_true: Any, y_pred: Any, groups: Any) -> float:
    """Largest minus smallest group selection rate ``P(h(X)=1 | A=a)`` (fairlearn's definition).

    ``y_true`` is only checked for shape, as in fairlearn.
    """
    rates = binary_group_rates(y_true, y_pred, groups)
    return spread(list(rates["selection_rate"].values()))


def equalized_odds_difference(y_true: Any, y_pred: Any, groups: Any) -> float:
    """Larger of the between-group TPR difference and FPR difference (fairlearn, worst case).

    Groups with no positives (no negatives) are left out of the TPR (FPR) difference; fairlearn
    counts their rate as 0 instead, so the two agree whenever every group has both classes.
    """
    rates = binary_group_rates(y_true, y_pred, groups)
    diffs = [spread(list(rates["tpr"].values())), spread(list(rates["fpr"].values()))]
    finite = [d for d in diffs if np.isfinite(d)]
    return float(max(finite)) if finite else float("nan")
