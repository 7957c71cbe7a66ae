"""R-DPCFL's clustering stage (Malekmohammadi, Taik & Farnadi, TMLR 2025), as plain functions.

The reference implementation (Saber-mm/DPCFL, ``main/DPCFL.py``) does, after one round of
full-batch DP-SGD:

1. stack the clients' model updates into a matrix, standardise every coordinate, fit PCA and keep
   the first 2 components, MinMax-scale them (:func:`rdpcfl_embed`);
2. fit a spherical GMM with k-means++ initialisation (:func:`~fedcascade.clustering.gmm.fit_spherical_gmm`)
   whose posteriors are the clients' soft cluster memberships;
3. measure the largest pairwise overlap of the components and run the soft phase (each round a
   client samples its cluster from its posteriors, :func:`sample_from_posteriors`) until round
   ``E_c = int((1 - overlap) * E / 2)`` (:func:`rdpcfl_switch_round`);
4. then let clients pick the cluster model with the best accuracy on their own data by
   report-noisy-max (:mod:`fedcascade.clustering.selection`) for ``int(0.1 * E)`` rounds, after
   which assignments freeze.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from sklearn.decomposition import PCA
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from fedcascade.clustering._checks import as_matrix, fail, rng_of
from fedcascade.clustering.gmm import GMMFit, choose_k, fit_spherical_gmm, gmm_overlap

__all__ = [
    "rdpcfl_embed",
    "rdpcfl_switch_round",
    "rdpcfl_selection_rounds",
    "sample_from_posteriors",
    "RDPCFLClustering",
    "rdpcfl_cluster",
]


def rdpcfl_embed(
    X: np.ndarray,
    n_components: int = 2,
    scaler: Literal["minmax", "standard"] = "minmax",
    *,
    project_raw: bool = True,
    seed: int = 0,
) -> np.ndarray:
    """Standardise, project on the top principal components, then rescale, as the reference.

    Parameters
    ----------
    X : array, shape (n_clients, p)
        Flattened client updates (:func:`~fedcascade.clustering.updates.flatten_updates`).
    n_components : int
        Principal components kept (reference: 2).
    scaler : {"minmax", "standard"}
        Scaling of the projected points (reference default: ``minmax``).
    project_raw : bool
        The reference's ``PCA_proj`` fits PCA on the standardised matrix but then projects the
        *raw* matrix on those components; ``True`` reproduces that, ``False`` projects the
        standardised matrix (textbook PCA). The two differ only when coordinates have very
        different spreads, which DP noise (equal in every coordinate) mostly hides.
    seed : int
        Random state of the (randomised, for big matrices) SVD.

    Returns
    -------
    numpy.ndarray
        Shape ``(n_clients, n_components)``.
    """
    X = as_matrix(X, "X", min_rows=2)
    n, p = X.shape
    if int(n_components) != n_components or not 1 <= n_components <= min(n, p):
        fail(
            "n_components",
            n_components,
            f"an integer between 1 and min(n_clients, p) = {min(n, p)}",
        )
    if scaler not in ("minmax", "standard"):
        fail("scaler", scaler, "'minmax' or 'standard'")
    std = StandardScaler().fit(X)
    Xs = std.transform(X)
    pca = PCA(n_components=int(n_components), random_state=seed).fit(Xs)
    proj = pca.transform(X if project_raw else Xs)
    post = MinMaxScaler() if scaler == "minmax" else StandardScaler()
    return post.fit_transform(proj)


def rdpcfl_switch_round(max_overlap: float, total_rounds: int) -> int:
    """Last round of the soft (posterior-sampling) phase: ``E_c = int((1 - overlap) * E / 2)``.

    Well separated clusters (overlap near 0) keep soft assignments for half the run; fully
    overlapping ones (overlap 1) switch to accuracy-based selection at once.
    """
    if not 0.0 <= float(max_overlap) <= 1.0:
        fail("max_overlap", max_overlap, "a number in [0, 1]")
    if int(total_rounds) != total_rounds or total_rounds < 0:
        fail("total_rounds", total_rounds, "an integer >= 0")
    return int((1.0 - float(max_overlap)) * int(total_rounds) / 2)


def rdpcfl_selection_rounds(switch_round: int, total_rounds: int, ratio: float = 0.1) -> list[int]:
    """Rounds in which clients re-pick their cluster by report-noisy-max.

    The reference runs selection in every round ``t`` with ``E_c <= t <= E_c + int(ratio * E)``
    (``np.arange(E_c, E_c + L + 1)``, i.e. ``L + 1`` rounds) but accounts for only
    ``L = int(ratio * E)`` selections. We return the rounds actually run, clipped to
    ``2 .. total_rounds`` (round 1 is the clustering round, cluster models exist from round 2),
    so that accounting over ``len(...)`` is exact.
    """
    if not 0.0 <= float(ratio) <= 1.0:
        fail("ratio", ratio, "a number in [0, 1]")
    n_sel = int(float(ratio) * int(total_rounds))
    first = max(int(switch_round), 2)
    return [t for t in range(first, int(switch_round) + n_sel + 1) if t <= total_rounds]


def sample_from_posteriors(
    posteriors: np.ndarray, rng: np.random.Generator | int | None
) -> np.ndarray:
    """Draw one cluster per client from its row of posterior probabilities.

    Parameters
    ----------
    posteriors : array, shape (n, k)
        Non-negative rows summing to one (small rounding errors are renormalised).
    rng : numpy Generator, int or None

    Returns
    -------
    numpy.ndarray
        Shape ``(n,)`` of integer cluster indices.
    """
    P = as_matrix(posteriors, "posteriors")
    if (P < 0).any():
        fail("posteriors", "negative probabilities", "non-negative rows")
    sums = P.sum(axis=1)
    if (np.abs(sums - 1.0) > 1e-6).any():
        fail(
            "posteriors",
            f"row sums {sums[np.abs(sums - 1) > 1e-6][:3].tolist()}",
            "rows summing to 1",
        )
    cdf = np.cumsum(P / sums[:, None], axis=1)
    u = rng_of(rng).random(P.shape[0])
    # first index whose cumulative probability exceeds u; clip guards rounding at the top end
    return np.minimum((cdf <= u[:, None]).sum(axis=1), P.shape[1] - 1).astype(int)


@dataclass(frozen=True)
class RDPCFLClustering:
    """Outcome of R-DPCFL's clustering round.

    Attributes
    ----------
    embedding : ndarray, shape (n, 2)
        The scaled PCA projection that was clustered.
    fit : GMMFit
        The spherical GMM (posteriors = soft memberships).
    max_overlap : float
        Largest pairwise overlap of the components.
    switch_round : int
        ``E_c``: last round of the soft phase.
    """

    embedding: np.ndarray
    fit: GMMFit
    max_overlap: float
    switch_round: int

    @property
    def labels(self) -> np.ndarray:
        """Hard labels (posterior argmax), e.g. for the ARI."""
        return self.fit.labels

    @property
    def posteriors(self) -> np.ndarray:
        """Soft memberships ``(n, k)``."""
        return self.fit.posteriors


def rdpcfl_cluster(
    X: np.ndarray,
    k: int | None,
    seed: int,
    total_rounds: int,
    *,
    k_max: int = 10,
    scaler: Literal["minmax", "standard"] = "minmax",
    project_raw: bool = True,
) -> RDPCFLClustering:
    """R-DPCFL's whole clustering round on a flattened update matrix.

    Parameters
    ----------
    X : array, shape (n_clients, p)
        Updates of the (full-batch DP-SGD) first round.
    k : int or None
        Number of clusters; the reference passes the true number. ``None`` picks it with the
        reference's commented-out rule (largest minimum separation over ``2 .. k_max``).
    seed : int
        Random state of PCA and the GMM.
    total_rounds : int
        ``E``, to compute the switch round.
    """
    Z = rdpcfl_embed(X, 2, scaler, project_raw=project_raw, seed=seed)
    if k is None:
        _, fit, _ = choose_k(Z, k_max, seed, "separation", n_init=1)
    else:
        fit = fit_spherical_gmm(Z, k, seed)
    overlap = gmm_overlap(fit)
    return RDPCFLClustering(Z, fit, overlap, rdpcfl_switch_round(overlap, total_rounds))
