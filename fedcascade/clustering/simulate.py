"""Simulated DP client updates with a known cluster structure (for tests and benchmarks).

A community ``i`` of sub-distribution ``c`` reports, in round ``t``,

    u_it = g_c + h_i + n_it,      n_it ~ N(0, s_it^2 I_p)

where ``g_c`` is the sub-distribution's mean (clipped) gradient direction, ``h_i`` a fixed
community-specific deviation (finite-sample heterogeneity, not DP noise) and ``n_it`` the DP-SGD
noise whose per-coordinate std ``s_it`` comes from
:func:`~fedcascade.clustering.updates.dp_update_noise_std` (with ``lr = 1/T`` it is the noise of
the round's mean noisy gradient: ``sigma C / (b sqrt T)``). The means share a common component
(every community learns the task) plus an orthogonal sub-distribution specific part.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedcascade.clustering._checks import fail, positive, rng_of

__all__ = ["simulate_updates"]


def simulate_updates(
    cluster_sizes: Sequence[int],
    p: int,
    noise_std: float | np.ndarray,
    *,
    rounds: int = 1,
    signal_norm: float = 0.5,
    common_fraction: float = 0.5,
    heterogeneity: float = 0.0,
    seed: int | np.random.Generator | None = 0,
    dtype: type = np.float64,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Draw ``rounds`` update matrices of communities from ``len(cluster_sizes)`` sub-distributions.

    Parameters
    ----------
    cluster_sizes : sequence of int
        Communities per sub-distribution, e.g. ``(3, 6, 6, 6)``.
    p : int
        Number of parameters per update.
    noise_std : float or array
        Per-coordinate DP noise std: a scalar, one value per community ``(n,)`` or one per round
        and community ``(rounds, n)``.
    rounds : int
        Number of rounds (warm-up updates) to draw.
    signal_norm : float
        Norm of each sub-distribution mean ``g_c`` (at most the clip norm in DP-SGD units).
    common_fraction : float
        Share of ``|g_c|^2`` in a direction common to all sub-distributions, in ``[0, 1)``.
    heterogeneity : float
        Norm of each community's fixed deviation ``h_i`` relative to ``signal_norm``.
    seed : int, Generator or None
    dtype : numpy dtype

    Returns
    -------
    updates : list of ndarray
        ``rounds`` matrices of shape ``(n, p)``.
    labels : ndarray
        True sub-distribution of each community, shape ``(n,)``.
    """
    sizes = [int(s) for s in cluster_sizes]
    if not sizes or min(sizes) < 1:
        fail("cluster_sizes", list(cluster_sizes), "a non-empty list of positive integers")
    if int(p) != p or p < len(sizes) + 1:
        fail("p", p, f"an integer > number of clusters ({len(sizes)})")
    if not 0.0 <= common_fraction < 1.0:
        fail("common_fraction", common_fraction, "a number in [0, 1)")
    positive(signal_norm, "signal_norm", allow_zero=True)
    positive(heterogeneity, "heterogeneity", allow_zero=True)
    rng = rng_of(seed)
    n, K = sum(sizes), len(sizes)
    labels = np.repeat(np.arange(K), sizes)
    # Orthonormal directions: one common, one per sub-distribution (random, so no coordinate is
    # special - as for real gradients after PCA-invariant processing).
    basis, _ = np.linalg.qr(rng.standard_normal((p, K + 1)))
    common = basis[:, 0] * np.sqrt(common_fraction) * signal_norm
    specific = basis[:, 1:].T * np.sqrt(1.0 - common_fraction) * signal_norm
    means = common[None, :] + specific  # (K, p)
    signal = means[labels]
    if heterogeneity > 0:
        h = rng.standard_normal((n, p))
        h *= heterogeneity * signal_norm / np.linalg.norm(h, axis=1, keepdims=True)
        signal = signal + h
    s = np.asarray(noise_std, dtype=float)
    if s.ndim == 0:
        s = np.full((rounds, n), float(s))
    elif s.shape == (n,):
        s = np.broadcast_to(s, (rounds, n))
    elif s.shape != (rounds, n):
        fail("noise_std", s, f"a scalar, shape ({n},) or ({rounds}, {n})")
    if (s < 0).any():
        fail("noise_std", s.min(), "non-negative values")
    out = []
    for t in range(int(rounds)):
        noise = rng.standard_normal((n, p)) * s[t][:, None]
        out.append((signal + noise).astype(dtype, copy=False))
    return out, labels
