"""Spherical Gaussian mixtures over client embeddings: fit, overlap and number of clusters.

This follows R-DPCFL's reference (Saber-mm/DPCFL, ``utils/aggregate.py``): scikit-learn's
``GaussianMixture(covariance_type='spherical', init_params='k-means++', tol=1e-6)`` started from
uniform weights, whose posteriors are then computed with the weights reset to uniform (so a small
cluster is not penalised for being small), and the overlap ``1 - erf(s / sqrt 2)`` of two
components whose separation is ``s = |mu - mu'| / (2 max(radius, radius'))``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import special
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import silhouette_score
from sklearn.mixture import GaussianMixture

from fedcascade.clustering._checks import as_matrix, fail

__all__ = [
    "GMMFit",
    "fit_spherical_gmm",
    "pairwise_separation",
    "pairwise_overlaps",
    "gmm_overlap",
    "choose_k",
]


@dataclass(frozen=True)
class GMMFit:
    """A fitted spherical Gaussian mixture.

    Attributes
    ----------
    means : ndarray, shape (k, d)
        Component means.
    variances : ndarray, shape (k,)
        Per-dimension variance of each (spherical) component.
    weights : ndarray, shape (k,)
        Mixing weights used for the posteriors (uniform when fitted with ``uniform_weights``).
    posteriors : ndarray, shape (n, k)
        Soft assignment of every point (rows sum to one).
    labels : ndarray, shape (n,)
        ``argmax`` of the posteriors.
    bic : float
        Bayesian information criterion of the fitted model (lower is better).
    converged : bool
        Whether EM converged.
    """

    means: np.ndarray
    variances: np.ndarray
    weights: np.ndarray
    posteriors: np.ndarray
    labels: np.ndarray
    bic: float
    converged: bool

    @property
    def k(self) -> int:
        """Number of components."""
        return int(self.means.shape[0])

    @property
    def radii(self) -> np.ndarray:
        """Standard deviation of each component (the reference's "radius")."""
        return np.sqrt(self.variances)


def fit_spherical_gmm(
    Z: np.ndarray,
    k: int,
    seed: int,
    *,
    uniform_weights: bool = True,
    n_init: int = 1,
    tol: float = 1e-6,
    reg_covar: float = 1e-6,
) -> GMMFit:
    """Fit a spherical GMM with k-means++ initialisation, as R-DPCFL does.

    Parameters
    ----------
    Z : array, shape (n, d)
        Points (e.g. :func:`~fedcascade.clustering.rdpcfl.rdpcfl_embed` output).
    k : int
        Number of components, ``1 <= k <= n``.
    seed : int
        Random state of the initialisation.
    uniform_weights : bool
        Reset the mixing weights to ``1/k`` before computing posteriors (the reference does);
        the BIC uses the fitted weights either way.
    n_init : int
        EM restarts (the reference uses 1).
    tol, reg_covar : float
        EM tolerance (reference: 1e-6) and variance floor.

    Returns
    -------
    GMMFit
    """
    Z = as_matrix(Z, "Z")
    n = Z.shape[0]
    if int(k) != k or not 1 <= k <= n:
        fail("k", k, f"an integer between 1 and the number of points ({n})")
    k = int(k)
    if k == 1:
        return _one_component(Z, reg_covar)
    gm = GaussianMixture(
        n_components=k,
        covariance_type="spherical",
        init_params="k-means++",
        tol=tol,
        reg_covar=reg_covar,
        random_state=int(seed),
        n_init=int(n_init),
        weights_init=np.full(k, 1.0 / k),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm.fit(Z)
    bic = float(gm.bic(Z))
    if uniform_weights:
        gm.weights_ = np.full(k, 1.0 / k)
    post = gm.predict_proba(Z)
    return GMMFit(
        means=np.asarray(gm.means_, float),
        variances=np.asarray(gm.covariances_, float),
        weights=np.asarray(gm.weights_, float),
        posteriors=post,
        labels=post.argmax(axis=1),
        bic=bic,
        converged=bool(gm.converged_),
    )


def _one_component(Z: np.ndarray, reg_covar: float) -> GMMFit:
    """The k = 1 fit in closed form (scikit-learn refuses a single point)."""
    n, d = Z.shape
    mean = Z.mean(axis=0)
    var = float(((Z - mean) ** 2).sum() / (n * d)) + reg_covar
    loglik = -0.5 * n * d * (math.log(2 * math.pi * var) + 1.0)
    if var > reg_covar:  # the exact log-likelihood at the (floored) ML variance
        loglik = -0.5 * (((Z - mean) ** 2).sum() / var + n * d * math.log(2 * math.pi * var))
    bic = -2.0 * loglik + (d + 1) * math.log(n)
    return GMMFit(
        means=mean[None, :],
        variances=np.array([var]),
        weights=np.ones(1),
        posteriors=np.ones((n, 1)),
        labels=np.zeros(n, dtype=int),
        bic=float(bic),
        converged=True,
    )


def pairwise_separation(means: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Separation ``s_mm' = |mu_m - mu_m'| / (2 max(r_m, r_m'))`` of every pair (``inf`` on the diagonal)."""
    means = np.atleast_2d(np.asarray(means, float))
    radii = np.asarray(radii, float).ravel()
    if radii.shape[0] != means.shape[0]:
        fail("radii", radii, f"{means.shape[0]} radii, one per mean")
    dist = np.linalg.norm(means[:, None, :] - means[None, :, :], axis=-1)
    denom = 2.0 * np.maximum(radii[:, None], radii[None, :])
    with np.errstate(divide="ignore", invalid="ignore"):
        sep = np.where(denom > 0, dist / denom, np.inf)
    np.fill_diagonal(sep, np.inf)
    return sep


def pairwise_overlaps(means: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Overlap ``1 - erf(s / sqrt 2)`` of every pair of components (0 on the diagonal)."""
    sep = pairwise_separation(means, radii)
    return 1.0 - special.erf(sep / math.sqrt(2.0))


def gmm_overlap(fit: GMMFit) -> float:
    """Largest pairwise overlap of the fit's components (0 for a single component).

    With ``s`` the separation of the closest pair relative to twice the larger radius, the
    overlap is ``1 - erf(s / sqrt 2)``, i.e. the probability mass of a 1-D Gaussian farther than
    ``s`` standard deviations from its mean. Identical means give 1, far apart means give 0.
    """
    if fit.k < 2:
        return 0.0
    return float(pairwise_overlaps(fit.means, fit.radii).max())


Criterion = Literal["bic", "silhouette", "separation"]


def choose_k(
    Z: np.ndarray,
    k_max: int,
    seed: int,
    criterion: Criterion = "bic",
    *,
    k_min: int = 1,
    n_init: int = 3,
    reg_covar: float = 1e-6,
) -> tuple[int, GMMFit, dict[int, float]]:
    """Choose the number of clusters by fitting spherical GMMs for ``k = k_min .. k_max``.

    Parameters
    ----------
    Z : array, shape (n, d)
        Points to cluster.
    k_max : int
        Largest number of clusters tried (capped at ``n``).
    seed : int
        Random state of every fit.
    criterion : {"bic", "silhouette", "separation"}
        ``"bic"``: smallest BIC (can return 1). ``"silhouette"``: largest mean silhouette of the
        hard labels (``k >= 2``). ``"separation"``: largest minimum pairwise separation score, the
        rule left commented out in R-DPCFL's reference (``k >= 2``).
    k_min : int
        Smallest ``k`` tried (raised to 2 for silhouette and separation).
    n_init : int
        EM restarts per ``k``.
    reg_covar : float
        Floor added to every component variance. With a known noise level, pass the noise
        variance per axis: no true cluster is tighter than that, and the floor stops BIC from
        rewarding components that collapse onto one or two points.

    Returns
    -------
    k : int
        The chosen number of clusters.
    fit : GMMFit
        The fit at that ``k``.
    scores : dict
        ``{k: score}`` for every ``k`` tried (BIC: lower is better; the others: higher).
    """
    Z = as_matrix(Z, "Z")
    n = Z.shape[0]
    if criterion not in ("bic", "silhouette", "separation"):
        fail("criterion", criterion, "'bic', 'silhouette' or 'separation'")
    lo = max(int(k_min), 2 if criterion != "bic" else 1)
    hi = min(int(k_max), n if criterion == "bic" else n - 1)
    if hi < lo:
        if criterion != "bic" and n >= 1:
            fit = fit_spherical_gmm(Z, 1, seed, reg_covar=reg_covar)
            return 1, fit, {1: float("nan")}
        fail("k_max", k_max, f"an integer >= {lo} and a number of points > k_max (got {n} points)")
    fits: dict[int, GMMFit] = {}
    scores: dict[int, float] = {}
    for k in range(lo, hi + 1):
        fit = fit_spherical_gmm(Z, k, seed, n_init=n_init, reg_covar=reg_covar)
        fits[k] = fit
        if criterion == "bic":
            scores[k] = fit.bic
        elif criterion == "silhouette":
            labels = fit.labels
            ok = 2 <= len(np.unique(labels)) <= n - 1
            scores[k] = float(silhouette_score(Z, labels)) if ok else -1.0
        else:
            scores[k] = float(pairwise_separation(fit.means, fit.radii).min())
    pick = min if criterion == "bic" else max
    best = pick(
        scores, key=lambda kk: (scores[kk], kk) if criterion == "bic" else (scores[kk], -kk)
    )
    return best, fits[best], scores
