"""Representation metrics: how many dimensions a group's records occupy, and how many survive.

* :func:`effective_rank` - exp of the entropy of the normalised singular values (Roy & Vetterli
  2007): a smooth count of the linear directions a point cloud spans.
* :func:`participation_ratio` - ``(sum lambda)^2 / sum lambda^2`` over covariance eigenvalues
  (Gao et al. 2017): the same idea, weighted towards the large directions.
* :func:`mle_intrinsic_dimension` - Levina & Bickel (NIPS 2004) maximum-likelihood estimate from the
  k nearest neighbours, averaged as MacKay & Ghahramani (2005) suggest (mean of inverses).
* :func:`twonn_intrinsic_dimension` - TwoNN (Facco et al. 2017): ratio of the two nearest
  neighbour distances, maximum-likelihood form.
* :func:`flattening_score` - ``1 - ID(embeddings) / ID(inputs)`` for one group: the fraction of
  the group's own data dimensions the model's representation no longer spans.

All functions take one group's points as an ``(n, dim)`` array and return a float; NaN when the
group has too few distinct points for the estimator (the report shows it rather than failing).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from sklearn.neighbors import NearestNeighbors

from fedcascade.errors import DataError
from fedcascade.metrics._groups import as_2d

__all__ = [
    "effective_rank",
    "participation_ratio",
    "mle_intrinsic_dimension",
    "twonn_intrinsic_dimension",
    "intrinsic_dimension",
    "flattening_score",
]

Estimator = Literal["mle", "twonn", "effective_rank", "participation_ratio"]


def _singular_values(x: Any, center: bool, field: str) -> np.ndarray:
    arr = as_2d(x, field)
    if center:
        arr = arr - arr.mean(axis=0, keepdims=True)
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        return np.zeros(0)
    # Eigenvalues of the smaller Gram matrix are the squared singular values; eigvalsh of a
    # (min(n, d))^2 matrix is two orders of magnitude faster than an SVD here, and the
    # precision it gives up (in values below sqrt(eps) of the largest) cannot move an entropy.
    gram = arr.T @ arr if arr.shape[0] >= arr.shape[1] else arr @ arr.T
    lam = np.linalg.eigvalsh(gram)
    # Eigenvalues at round-off level are not directions of the data; drop them so that a
    # rank-k matrix gets exactly the entropy of its k non-zero values.
    tol = lam.max(initial=0.0) * max(arr.shape) * np.finfo(float).eps * 10
    return np.sqrt(lam[lam > tol])


def effective_rank(x: Any, center: bool = True) -> float:
    """Effective rank of a point cloud (Roy & Vetterli 2007).

    ``p_i = s_i / sum_j s_j`` over the singular values ``s`` of ``x`` (column-centred when
    ``center``); ``erank = exp(-sum_i p_i log p_i)``. Equals k for k equal singular values.

    Parameters
    ----------
    x : array-like of shape (n, dim)
        One group's points (rows).
    center : bool
        Subtract the column means first, so the score describes the spread, not the offset.

    Returns
    -------
    float
        In ``[1, min(n, dim)]``; NaN when ``x`` has no non-zero singular value.
    """
    s = _singular_values(x, center, "x")
    if s.size == 0:
        return float("nan")
    p = s / s.sum()
    return float(np.exp(-np.sum(p * np.log(p))))


def participation_ratio(x: Any, center: bool = True) -> float:
    """Participation ratio ``(sum_i lambda_i)^2 / sum_i lambda_i^2`` of the covariance spectrum.

    ``lambda_i = s_i^2`` (up to a common factor that cancels) with ``s`` the singular values of
    the (column-centred) ``x``. Equals k for k equal eigenvalues.

    Parameters
    ----------
    x : array-like of shape (n, dim)
        One group's points.
    center : bool
        Subtract the column means first.

    Returns
    -------
    float
        In ``[1, min(n, dim)]``; NaN when ``x`` has no spread.
    """
    s = _singular_values(x, center, "x")
    if s.size == 0:
        return float("nan")
    lam = s**2
    return float(lam.sum() ** 2 / np.sum(lam**2))


def _distinct_points(x: Any, field: str) -> np.ndarray:
    arr = as_2d(x, field)
    if not np.all(np.isfinite(arr)):
        raise DataError(field, "non-finite values", "finite numbers")
    # Duplicate points have distance 0 and would put log(0) into the estimators.
    return np.unique(arr, axis=0)


def _neighbour_distances(x: np.ndarray, k: int) -> np.ndarray:
    # kneighbors() without a query leaves each point out of its own neighbour list.
    nn = NearestNeighbors(n_neighbors=k).fit(x)
    dist, _ = nn.kneighbors()
    return dist


def mle_intrinsic_dimension(x: Any, k: int = 10) -> float:
    """Levina-Bickel maximum-likelihood intrinsic dimension (MacKay-Ghahramani averaging).

    For each point with neighbour distances ``T_1 <= ... <= T_k``, the inverse local estimate
    is ``(1/(k-1)) sum_{j<k} log(T_k / T_j)``; the global estimate is the inverse of the mean of
    these (averaging inverses is unbiased under the local Poisson model).

    Parameters
    ----------
    x : array-like of shape (n, dim)
        One group's points; duplicates are dropped.
    k : int
        Number of neighbours (>= 3). Smaller k is more local and noisier.

    Returns
    -------
    float
        Estimated dimension; NaN with fewer than ``k + 1`` distinct points.
    """
    if k < 3:
        raise DataError("k", k, "an integer >= 3 neighbours")
    pts = _distinct_points(x, "x")
    if len(pts) < k + 1:
        return float("nan")
    dist = _neighbour_distances(pts, k)
    inv_local = np.log(dist[:, -1:] / dist[:, :-1]).mean(axis=1)
    mean_inv = inv_local.mean()
    return float(1.0 / mean_inv) if mean_inv > 0 else float("nan")


def twonn_intrinsic_dimension(x: Any) -> float:
    """TwoNN intrinsic dimension (Facco et al. 2017), maximum-likelihood form.

    ``mu_i = r_2(i) / r_1(i)`` follows a Pareto law with exponent d, so
    ``d = (N - 1) / sum_i log mu_i``.

    Parameters
    ----------
    x : array-like of shape (n, dim)
        One group's points; duplicates are dropped.

    Returns
    -------
    float
        Estimated dimension; NaN with fewer than 3 distinct points.
    """
    pts = _distinct_points(x, "x")
    if len(pts) < 3:
        return float("nan")
    dist = _neighbour_distances(pts, 2)
    total = np.log(dist[:, 1] / dist[:, 0]).sum()
    return float((len(pts) - 1) / total) if total > 0 else float("nan")


def intrinsic_dimension(x: Any, estimator: Estimator = "mle", k: int = 10) -> float:
    """Dimension of a point cloud by the named ``estimator`` (see the module docstring)."""
    if estimator == "mle":
        return mle_intrinsic_dimension(x, k=k)
    if estimator == "twonn":
        return twonn_intrinsic_dimension(x)
    if estimator == "effective_rank":
        return effective_rank(x)
    if estimator == "participation_ratio":
        return participation_ratio(x)
    raise DataError(
        "estimator", estimator, "'mle', 'twonn', 'effective_rank' or 'participation_ratio'"
    )


def flattening_score(
    inputs: Any, embeddings: Any, estimator: Estimator = "mle", k: int = 10
) -> float:
    """Fraction of a group's input-space dimensions that its embedding no longer spans.

    ``flattening = 1 - ID(embeddings) / ID(inputs)``, both estimated on the same records with
    the same estimator. 0: the representation keeps the group's dimensionality; 0.6: it keeps
    40 % of it; negative: the embedding adds dimensions (typically noise). Comparing the two
    estimates on the same records cancels much of the estimators' sample-size bias, which is
    what makes the score comparable across groups of different sizes.

    Parameters
    ----------
    inputs : array-like of shape (n, d_in)
        The group's raw (preferably standardised) inputs.
    embeddings : array-like of shape (n, d_emb)
        The model's representation of the same records, in the same order.
    estimator : {"mle", "twonn", "effective_rank", "participation_ratio"}
        Dimension estimator; the first two are non-linear (manifold) estimates.
    k : int
        Neighbours for ``"mle"``.

    Returns
    -------
    float
        NaN when either dimension cannot be estimated.
    """
    x_in = as_2d(inputs, "inputs")
    x_emb = as_2d(embeddings, "embeddings")
    if len(x_in) != len(x_emb):
        raise DataError("embeddings", f"{len(x_emb)} records", f"{len(x_in)} records, as in inputs")
    d_in = intrinsic_dimension(x_in, estimator, k)
    d_emb = intrinsic_dimension(x_emb, estimator, k)
    if not (np.isfinite(d_in) and np.isfinite(d_emb)) or d_in <= 0:
        return float("nan")
    return float(1.0 - d_emb / d_in)
