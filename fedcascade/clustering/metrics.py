"""How well a clustering recovers the hidden sub-distributions (for logging, never for training)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import adjusted_rand_score

from fedcascade.clustering._checks import fail

__all__ = ["adjusted_rand", "cluster_recovery"]


def adjusted_rand(true: Sequence[int] | np.ndarray, pred: Sequence[int] | np.ndarray) -> float:
    """Adjusted Rand index of ``pred`` against ``true`` (scikit-learn's): 1 perfect, ~0 random."""
    t, p = np.asarray(true).ravel(), np.asarray(pred).ravel()
    if t.shape != p.shape or t.size == 0:
        fail("pred", p, f"{t.size} labels, like true")
    return float(adjusted_rand_score(t, p))


def cluster_recovery(true: Sequence[int] | np.ndarray, pred: Sequence[int] | np.ndarray) -> dict:
    """ARI plus what a per-round log needs: cluster counts and whether the smallest true
    sub-distribution (the marginalized one) is recovered exactly as one predicted cluster."""
    t, p = np.asarray(true).ravel(), np.asarray(pred).ravel()
    ari = adjusted_rand(t, p)
    values, counts = np.unique(t, return_counts=True)
    minority = values[np.argmin(counts)]
    members = t == minority
    found = np.unique(p[members])
    exact = len(found) == 1 and bool(np.all((p == found[0]) == members))
    return {
        "ari": ari,
        "k_true": int(len(values)),
        "k_found": int(len(np.unique(p))),
        "minority_recovered": exact,
    }
