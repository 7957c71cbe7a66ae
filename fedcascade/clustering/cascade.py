"""Cascade clustering: DP-noise-aware clustering of client updates with automatic k.

See ``docs/method.md`` for the derivation. In short, with ``u_i`` the (warm-up averaged) update of
community ``i`` and ``v_i`` the known per-coordinate variance of its DP noise:

* ``E <u_i, u_j> = <g_i, g_j>`` for ``i != j`` but ``E |u_i|^2 = |g_i|^2 + p v_i``: the noise only
  biases the diagonal of the Gram matrix, so subtracting ``p v_i`` there gives an unbiased
  estimate of the signal Gram matrix (noise-aware distances, :func:`noise_corrected_gram`);
* whitened by the noise (row ``i`` divided by ``sqrt(v_i)``), the noise part of that matrix has
  its eigenvalues below ``~ 2 sqrt(n p)`` while clusters add eigenvalues above it; the diagonal
  is re-imputed from the low-rank part (HeteroPCA) so that non-DP variance cannot fake
  directions, and the top eigenvectors give a low-dimensional embedding in which each community
  carries noise ``v_i`` per axis instead of ``p v_i`` in total (:func:`spectral_embedding`);
* no eigenvalue above the edge means one cluster; otherwise spherical GMMs for
  ``k = 2 .. k_max`` in the embedding, ``k`` by silhouette, give labels, posteriors and an
  overlap (for R-DPCFL's soft phase) (:func:`cascade_cluster`);
* late communities are assigned from their own DP update (:func:`assign_by_update`).

Everything here is post-processing of DP-protected updates: it costs no privacy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy.sparse import linalg as sparse_linalg

from fedcascade.clustering._checks import as_matrix, fail
from fedcascade.clustering.gmm import GMMFit, choose_k, fit_spherical_gmm, gmm_overlap

__all__ = [
    "ClusterResult",
    "combine_rounds",
    "estimate_noise_variance",
    "noise_corrected_gram",
    "noise_edge",
    "spectral_embedding",
    "cascade_cluster",
    "assign_by_update",
]


@dataclass(frozen=True)
class ClusterResult:
    """Outcome of :func:`cascade_cluster`.

    Attributes
    ----------
    labels : ndarray, shape (n,)
        Hard cluster of every community (``0 .. k-1``).
    k : int
        Number of clusters found.
    posteriors : ndarray, shape (n, k)
        Soft memberships (GMM posteriors with uniform mixing weights).
    centroids : ndarray, shape (k, p)
        Mean combined update of each cluster, in update space (for :func:`assign_by_update`).
    centroid_noise_var : ndarray, shape (k,)
        Per-coordinate DP noise variance of each centroid.
    spread_var : ndarray, shape (k,)
        Per-coordinate variance of the members around their centroid beyond DP noise
        (heterogeneity), estimated from the data, >= 0.
    embedding : ndarray, shape (n, d)
        The denoised spectral embedding that was clustered.
    eigenvalues : ndarray
        Eigenvalues of the whitened, centred, noise-corrected Gram matrix (descending).
    edge : float
        Estimated upper edge of the noise eigenvalues.
    scores : dict
        ``{k: criterion value}`` for every ``k`` tried.
    max_overlap : float
        Largest pairwise overlap of the GMM components in the embedding (0 if ``k == 1``).
    noise_var : ndarray, shape (n,)
        Per-coordinate noise variance of each combined update (given or estimated).
    """

    labels: np.ndarray
    k: int
    posteriors: np.ndarray
    centroids: np.ndarray
    centroid_noise_var: np.ndarray
    spread_var: np.ndarray
    embedding: np.ndarray
    eigenvalues: np.ndarray
    edge: float
    scores: dict[int, float] = field(default_factory=dict)
    max_overlap: float = 0.0
    noise_var: np.ndarray | None = None

    @property
    def sizes(self) -> np.ndarray:
        """Communities per cluster."""
        return np.bincount(self.labels, minlength=self.k)


def _noise_var_matrix(
    noise_scales: np.ndarray | float | None, rounds: int, n: int
) -> np.ndarray | None:
    if noise_scales is None:
        return None
    s = np.asarray(noise_scales, dtype=np.float64)
    if s.ndim == 0:
        s = np.full((rounds, n), float(s))
    elif s.shape == (n,):
        s = np.broadcast_to(s, (rounds, n))
    elif s.shape != (rounds, n):
        fail(
            "noise_scales",
            s,
            f"a scalar, shape ({n},) or ({rounds}, {n}) (per-coordinate noise stds)",
        )
    if not np.isfinite(s).all() or (s < 0).any():
        fail("noise_scales", "negative or non-finite values", "finite stds >= 0")
    return s**2


def combine_rounds(
    update_history: Sequence[np.ndarray], noise_scales: np.ndarray | float | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Average each community's updates over warm-up rounds, weighting rounds by precision.

    Round ``t`` gets weight ``a_t`` proportional to ``1 / mean_i v_it`` (the same for every
    community, so that every combined update mixes the rounds' signals in the same proportions),
    and the combined noise variance is ``sum_t a_t^2 v_it``. With equal rounds this is the plain
    mean and the noise variance drops by the number of rounds.

    Parameters
    ----------
    update_history : sequence of arrays, each (n, p)
        Flattened updates of the same ``n`` communities in successive rounds.
    noise_scales : float, array (n,), array (rounds, n) or None
        Per-coordinate DP noise std of each update (``None``: unknown, plain mean).

    Returns
    -------
    U : ndarray, shape (n, p)
        Combined updates.
    v : ndarray, shape (n,) or None
        Per-coordinate noise variance of each combined update.
    """
    if isinstance(update_history, np.ndarray) and update_history.ndim == 2:
        update_history = [update_history]
    if len(update_history) == 0:
        fail("update_history", [], "at least one (n_clients, p) update matrix")
    mats = [as_matrix(m, f"update_history[{t}]", min_rows=1) for t, m in enumerate(update_history)]
    n, p = mats[0].shape
    for t, m in enumerate(mats):
        if m.shape != (n, p):
            fail(
                f"update_history[{t}]",
                m,
                f"shape ({n}, {p}) like update_history[0] (same clients, same order)",
            )
    V = _noise_var_matrix(noise_scales, len(mats), n)
    if V is None:
        a = np.full(len(mats), 1.0 / len(mats))
    else:
        mean_v = V.mean(axis=1)
        if (mean_v == 0).any():  # a noiseless round: use only the noiseless rounds
            a = (mean_v == 0).astype(float)
        else:
            a = 1.0 / mean_v
        a = a / a.sum()
    if len(mats) == 1:
        U = mats[0].copy()
    else:
        U = np.zeros((n, p))
        for at, m in zip(a, mats):
            if at:
                U += at * m
    v = None if V is None else (a[:, None] ** 2 * V).sum(axis=0)
    return U, v


def estimate_noise_variance(U: np.ndarray, n_signal: int) -> np.ndarray:
    """Estimate each row's per-coordinate noise variance from what the top components miss.

    The cluster signal lives in a subspace of dimension ``<= n_signal`` while isotropic noise
    spreads evenly over all ``p`` coordinates; the residual of row ``i`` after projecting out the
    top ``n_signal`` right singular vectors of the centred matrix therefore has squared norm
    ``~ (p - n_signal) v_i``. Used when the DP noise is not known in closed form (momentum, Adam).
    """
    U = as_matrix(U, "U", min_rows=2)
    n, p = U.shape
    r = int(min(max(n_signal, 0), n - 1, p - 1))
    Uc = U - U.mean(axis=0)
    if r > 0:
        _, _, vt = np.linalg.svd(Uc, full_matrices=False)
        resid = Uc - (Uc @ vt[:r].T) @ vt[:r]
    else:
        resid = Uc
    r_i = (resid**2).sum(axis=1) / (p - r)
    if n < 3:
        return r_i / (1.0 - 1.0 / n)
    # Centring mixes the rows' noise: E r_i = v_i (1 - 2/n) + sum(v) / n^2. Invert that.
    total = r_i.sum() / (1.0 - 1.0 / n)
    return np.maximum((r_i - total / n**2) / (1.0 - 2.0 / n), 0.0)


def noise_corrected_gram(U: np.ndarray, v: np.ndarray | None) -> np.ndarray:
    """Centred Gram matrix of the rows of ``U`` with the DP noise bias removed from its diagonal.

    ``G = Uc Uc^T - diag(p v (1 - 2/n) + p mean(v)/n)`` where ``Uc`` is ``U`` with the mean row
    subtracted. Its expectation is the centred Gram matrix of the noiseless signal, so the
    squared distance ``G_ii + G_jj - 2 G_ij = |u_i - u_j|^2 - p (v_i + v_j)`` is an unbiased
    estimate of the squared distance between the communities' true mean updates.
    """
    U = as_matrix(U, "U", min_rows=1)
    n, p = U.shape
    Uc = U - U.mean(axis=0)
    G = Uc @ Uc.T
    if v is not None:
        v = np.asarray(v, float)
        if v.shape != (n,):
            fail("v", v, f"shape ({n},): one noise variance per row")
        # E[(n_i - nbar)(n_i - nbar)] = v_i (1 - 2/n) + mean(v)/n per coordinate
        G[np.diag_indices(n)] -= p * (v * (1.0 - 2.0 / n) + v.mean() / n)
        # Off-diagonal: E[(n_i - nbar)(n_j - nbar)] = -(v_i + v_j)/n + mean(v)/n per coordinate
        corr = p * (-(v[:, None] + v[None, :]) / n + v.mean() / n)
        np.fill_diagonal(corr, 0.0)
        G -= corr
    return G


def noise_edge(n: int, p: int, margin: float = 0.25) -> float:
    """Upper edge of the eigenvalues DP noise alone puts in the *whitened* corrected Gram matrix.

    After dividing row ``i`` by its noise std ``sqrt(v_i)``, the corrected Gram matrix of pure
    noise has zero-mean entries of variance ``p`` off the diagonal (``2p`` on it); by the
    semicircle law its largest eigenvalue is about ``2 sqrt(n p)``. ``margin`` widens the edge
    for finite-``n`` fluctuations and small unmodelled variance.
    """
    return float((1.0 + margin) * 2.0 * math.sqrt(n * p))


#: Below this many communities (or when most eigenpairs are needed) a dense ``eigh`` is used.
DENSE_EIGH_MAX_N = 300


def _top_eigh(
    M: np.ndarray, m: int, start: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Largest ``m`` eigenpairs of the symmetric ``M`` (descending) and a block to warm-start from.

    A full ``eigh`` costs ~1-2 s at n = 1000 while the embedding needs only a handful of top
    pairs: big matrices use Lanczos (ARPACK) once, then - while HeteroPCA changes only the
    diagonal - a few steps of block subspace iteration from the previous eigenvectors with
    Rayleigh-Ritz extraction (oversampled by 8 vectors), which converges in 4 products.
    """
    n = M.shape[0]
    m = int(min(max(m, 1), n))
    if n <= DENSE_EIGH_MAX_N or m >= n // 4:
        vals, vecs = np.linalg.eigh(M)
        return vals[::-1][:m], vecs[:, ::-1][:, :m], None
    if start is None:
        v0 = np.ones(n) / math.sqrt(n)  # deterministic start vector: reproducible results
        k = min(m + 8, n - 1)
        vals, vecs = sparse_linalg.eigsh(M, k=k, which="LA", v0=v0, tol=1e-10)
        order = np.argsort(vals)[::-1]
        return vals[order][:m], vecs[:, order][:, :m], vecs[:, order]
    Q = start
    for _ in range(4):
        Q, _ = np.linalg.qr(M @ Q)
    T = Q.T @ M @ Q
    vals, small = np.linalg.eigh((T + T.T) / 2.0)
    vecs = Q @ small[:, ::-1]
    return vals[::-1][:m], vecs[:, :m], vecs


def spectral_embedding(
    U: np.ndarray,
    v: np.ndarray,
    d_max: int,
    *,
    margin: float = 0.25,
    d_min: int = 1,
    n_iter: int = 10,
    noise_known: bool = True,
) -> tuple[np.ndarray, np.ndarray, float, int]:
    """Embed communities in the signal subspace of the whitened, noise-corrected Gram matrix.

    1. ``G = noise_corrected_gram(U, v)``: an unbiased estimate of the centred signal Gram
       matrix;
    2. whiten: ``G_w = D^-1/2 G D^-1/2`` with ``D = diag(v)``, so every row's noise has unit
       variance and a noisy community cannot pull the principal directions towards its own
       noise (as it does in plain PCA, which R-DPCFL uses);
    3. re-estimate the diagonal of ``G_w`` from its rank-``d`` part a few times (HeteroPCA,
       Zhang, Cai & Wu 2022), where ``d`` is the number of eigenvalues above the noise edge
       :func:`noise_edge`. The diagonal is the only place where variance that is not DP noise
       (a community's own finite-sample deviation) or a misjudged noise level shows up, and it
       would otherwise lift the whole noise bulk over the edge;
    4. embed: ``E = D^1/2 L_d Lambda_d^1/2`` (``L_d``, ``Lambda_d``: top eigenpairs of the
       imputed ``G_w``), so ``E E^T`` approximates the signal Gram matrix and distances between
       rows of ``E`` the distances between the communities' true mean updates. No row's own
       noise enters its embedding through the diagonal.

    ``noise_known=False`` (``v`` was estimated) re-counts the rank at every imputation step
    instead of trusting the corrected diagonal's count.

    Returns
    -------
    E : ndarray, shape (n, d)
    eigenvalues : ndarray
        The ``d_max + 1`` largest eigenvalues of the final imputed ``G_w``, descending.
    edge : float
        The noise edge used.
    d : int
        Embedding dimension, ``d_min <= d <= d_max``.
    """
    U = as_matrix(U, "U", min_rows=1)
    n, p = U.shape
    v = np.asarray(v, float)
    G = noise_corrected_gram(U, v)
    # Whitening needs v > 0; a noiseless (non-DP) client gets the smallest positive variance
    # (when nobody has noise this is plain PCA of the Gram matrix).
    pos = v[v > 0]
    vw = np.maximum(v, pos.min()) if pos.size else np.ones(n)
    w = 1.0 / np.sqrt(vw)
    Gw = G * w[:, None] * w[None, :]
    Gw = (Gw + Gw.T) / 2.0
    diag = np.diag_indices(n)
    edge = noise_edge(n, p, margin) if pos.size else 0.0
    d_hi = max(d_min, min(int(d_max), n - 1 if n > 1 else 1))
    m = d_hi + 1  # one more than can be used, to see where the spectrum falls below the edge
    # With a known noise level the corrected diagonal is unbiased, and the number of
    # eigenvalues above the edge it gives is the rank to impute with (it keeps weak clusters
    # near the edge). With an estimated noise level a row whose noise was under-estimated has
    # too large a diagonal entry, which a rank-d fit would keep as a spurious direction of its
    # own: then the rank is re-counted at every step of the imputation.
    vals, vecs, block = _top_eigh(Gw, m)
    rank = int(np.clip(np.sum(vals > edge), d_min, d_hi)) if noise_known else d_hi
    # Impute from a deleted diagonal (HeteroPCA's initialisation): a diagonal entry inflated by
    # a community's own deviation from its cluster is not carried into the fit.
    Gw[diag] = 0.0
    for _ in range(max(int(n_iter), 1)):
        vals, vecs, block = _top_eigh(Gw, m, block)
        if not noise_known:
            rank = int(np.clip(np.sum(vals > edge), d_min, d_hi))
        low = (vecs[:, :rank] * np.clip(vals[:rank], 0.0, None)) @ vecs[:, :rank].T
        new_diag = np.diag(low)
        if np.allclose(new_diag, Gw[diag], rtol=1e-6, atol=1e-9 * max(abs(vals[0]), 1e-300)):
            break
        Gw[diag] = new_diag
    vals, vecs, _ = _top_eigh(Gw, m, block)
    d = int(np.clip(np.sum(vals > edge), d_min, rank))
    E = np.sqrt(vw)[:, None] * vecs[:, :d] * np.sqrt(np.clip(vals[:d], 0.0, None))[None, :]
    return E, vals, edge, d


def _relabel_by_size(labels: np.ndarray, k: int) -> np.ndarray:
    """Order clusters by decreasing size (then by first member) so labels are reproducible."""
    sizes = np.bincount(labels, minlength=k)
    first = np.array(
        [np.flatnonzero(labels == c)[0] if sizes[c] else len(labels) for c in range(k)]
    )
    order = sorted(range(k), key=lambda c: (-sizes[c], first[c]))
    remap = np.empty(k, int)
    remap[order] = np.arange(k)
    return remap


def cascade_cluster(
    update_history: Sequence[np.ndarray] | np.ndarray,
    noise_scales: np.ndarray | float | None,
    k_max: int,
    seed: int,
    *,
    k: int | None = None,
    criterion: Literal["bic", "silhouette", "edge"] = "silhouette",
    margin: float = 0.25,
    n_init: int = 3,
) -> ClusterResult:
    """Cluster communities from their DP-noisy updates, choosing the number of clusters.

    Parameters
    ----------
    update_history : sequence of arrays (n, p), or one array (n, p)
        Flattened updates of the same communities over one or more warm-up rounds
        (:func:`~fedcascade.clustering.updates.flatten_updates`). All communities should have
        trained from the same model in a round, with the same LoRA rank.
    noise_scales : float, array (n,), array (rounds, n) or None
        Per-coordinate std of the DP noise in each update
        (:func:`~fedcascade.clustering.updates.dp_update_noise_std`). ``None`` estimates it with
        :func:`estimate_noise_variance` (within ~25%; prefer the known value).
    k_max : int
        Largest number of clusters considered.
    seed : int
        Random state of the GMM fits.
    k : int, optional
        Fix the number of clusters instead of choosing it.
    criterion : {"bic", "silhouette", "edge"}
        How ``k`` is chosen when it is not fixed. In every case ``k = 1`` when no eigenvalue
        clears the noise edge (no detectable structure: one cluster rather than invented ones).
        Otherwise: ``"silhouette"`` (default) the largest mean silhouette of spherical-GMM
        labels over ``k = 2 .. k_max`` in the embedding; ``"bic"`` the smallest BIC over
        ``k = 1 .. k_max`` (over-splits when clusters are few communities each);
        ``"edge"`` ``1 +`` the number of eigenvalues above the edge.
    margin : float
        Relative widening of the noise edge (see :func:`noise_edge`).
    n_init : int
        EM restarts per ``k``.

    Returns
    -------
    ClusterResult
    """
    U, v = combine_rounds(update_history, noise_scales)
    noise_known = v is not None
    n, p = U.shape
    if int(k_max) != k_max or k_max < 1:
        fail("k_max", k_max, "an integer >= 1")
    k_max = int(min(k_max, n))
    if k is not None and (int(k) != k or not 1 <= k <= n):
        fail("k", k, f"an integer between 1 and the number of communities ({n})")
    if criterion not in ("bic", "silhouette", "edge"):
        fail("criterion", criterion, "'bic', 'silhouette' or 'edge'")
    if not float(margin) >= 0.0:
        fail("margin", margin, "a number >= 0")
    if v is None:
        # One direction only: projecting out more lets noisy rows lose their own noise along
        # directions fitted to them (under-estimates, then spurious clusters); leaving weak signal
        # in the residual over-estimates slightly, which errs towards fewer clusters.
        v = estimate_noise_variance(U, 1)
    d_cap = max((k if k is not None else k_max) - 1, 1)
    E, eigvals, edge, d = spectral_embedding(U, v, d_cap, margin=margin, noise_known=noise_known)
    n_above = int(np.sum(eigvals > edge))
    scores: dict[int, float] = {}
    # Every point of the embedding carries at least the smallest client's noise variance per
    # axis, so no true cluster is tighter: floor the GMM variances there.
    floor = float(np.min(v)) if np.min(v) > 0 else 1e-6 * max(float(np.var(E)), 1e-300)
    if n == 1:
        fit = fit_spherical_gmm(E, 1, seed, reg_covar=floor)
    elif k is not None:
        fit = fit_spherical_gmm(E, int(k), seed, n_init=n_init, reg_covar=floor)
    elif criterion == "edge" or n_above == 0:
        kk = min(n_above + 1, k_max)
        fit = fit_spherical_gmm(E, kk, seed, n_init=n_init, reg_covar=floor)
        scores = {kk: float(n_above)}
    else:
        _, fit, scores = choose_k(E, k_max, seed, criterion, n_init=n_init, reg_covar=floor)
    labels = fit.labels
    kk = fit.k
    # Drop empty components (possible with soft EM) and order clusters by size.
    used = np.unique(labels)
    post = fit.posteriors[:, used]
    post = post / post.sum(axis=1, keepdims=True)
    labels = np.searchsorted(used, labels)
    kk = len(used)
    remap = _relabel_by_size(labels, kk)
    labels = remap[labels]
    post_sorted = np.empty_like(post)
    post_sorted[:, remap] = post
    overlap = gmm_overlap(
        GMMFit(
            fit.means[used],
            fit.variances[used],
            fit.weights[used],
            post,
            labels,
            fit.bic,
            fit.converged,
        )
    )
    centroids = np.zeros((kk, p))
    cvar = np.zeros(kk)
    spread = np.zeros(kk)
    for c in range(kk):
        members = labels == c
        m = int(members.sum())
        centroids[c] = U[members].mean(axis=0)
        cvar[c] = v[members].sum() / m**2
        if m > 1:
            # E|u_i - c|^2 = p v_i (1 - 2/m) + p cvar + p tau^2 (1 - 1/m)
            resid = ((U[members] - centroids[c]) ** 2).sum(axis=1)
            expected_noise = p * (v[members] * (1 - 2.0 / m) + cvar[c])
            spread[c] = max(float((resid - expected_noise).mean()) / (p * (1 - 1.0 / m)), 0.0)
    return ClusterResult(
        labels=labels,
        k=kk,
        posteriors=post_sorted,
        centroids=centroids,
        centroid_noise_var=cvar,
        spread_var=spread,
        embedding=E,
        eigenvalues=eigvals,
        edge=edge,
        scores=scores,
        max_overlap=overlap,
        noise_var=v,
    )


def assign_by_update(
    updates: np.ndarray, noise_scales: np.ndarray | float, result: ClusterResult
) -> tuple[np.ndarray, np.ndarray]:
    """Assign new or late communities to existing clusters from their DP-protected updates.

    For an update ``u`` with noise variance ``v`` per coordinate and cluster ``c`` (centroid noise
    ``cvar_c``, heterogeneity ``spread_c``), the noise-corrected squared distance

        D_c = |u - centroid_c|^2 - p (v + cvar_c + spread_c)

    estimates how far the community's true mean update is from the cluster's beyond what a
    member would be (0 for a member on average). The community joins ``argmin D_c``; the
    posterior ``softmax(-D_c / (2 (v + cvar_c + spread_c)))`` is its Gaussian likelihood without
    the log-determinant, which in ``p`` dimensions would otherwise swamp the comparison. Only the
    community's DP update is used (trained from the same model as the warm-up updates), so this is
    post-processing and costs no privacy - unlike an accuracy-based choice, which must go through
    report-noisy-max.

    Parameters
    ----------
    updates : array (m, p) or (p,)
        Flattened updates of the new communities.
    noise_scales : float or array (m,)
        Their per-coordinate DP noise stds.
    result : ClusterResult

    Returns
    -------
    labels : ndarray, shape (m,)
    posteriors : ndarray, shape (m, k)
    """
    X = np.atleast_2d(np.asarray(updates, np.float64))
    m, p = X.shape
    if p != result.centroids.shape[1]:
        fail("updates", X, f"{result.centroids.shape[1]} columns like the clustered updates")
    s = np.broadcast_to(np.asarray(noise_scales, float), (m,))
    var = s[:, None] ** 2 + result.centroid_noise_var[None, :] + result.spread_var[None, :]
    d2 = (
        (X**2).sum(axis=1)[:, None]
        - 2.0 * X @ result.centroids.T
        + (result.centroids**2).sum(axis=1)[None, :]
    )
    D = d2 - p * var
    logit = -D / (2.0 * np.maximum(var, 1e-300))
    logit -= logit.max(axis=1, keepdims=True)
    post = np.exp(logit)
    post /= post.sum(axis=1, keepdims=True)
    return D.argmin(axis=1), post
