"""The clustering probe: a community's sub-distribution fingerprint, released with DP.

A frozen backbone pretrained on a public pool can make the adapter's gradient nearly blind to
a covariate shift: on the digits benchmark, images rotated by 90 and 270 degrees give mean
clipped adapter gradients only ~0.05-0.1 ``C`` apart, at the level of the DP noise of a
140-record community (docs/method.md, "Tuning on real runs"). The probe looks at the input
instead.

**What is released.** Each record's input is flattened and standardised *on its own* (centred
over its features, scaled to unit norm: ``z = (x - mean(x)) / |x - mean(x)|``, zero if
constant), and its feature is

    f(x, y) = (1/K - e_y) z^T         (K classes, e_y the one-hot label),

which is exactly the gradient of the cross-entropy of a *zero-initialised linear softmax probe*
``logits = W z`` with respect to ``W``. The community releases one full-batch DP-SGD step of that
probe: ``(sum_i f_i + N(0, sigma^2 I)) / N``. The feature holds the class-conditional means of
the standardised inputs, which differ between sub-distributions with a different covariate
shift (rotations) or concept shift (relabelling), whatever the backbone.

**Privacy.** ``|f| = sqrt(1 - 1/K) |z| <= 1``, so clipping at ``C = 1`` never binds and adding or
removing one record moves the sum by at most 1: the release is the Gaussian mechanism with noise
multiplier ``sigma``, identical to one DP-SGD step at sample rate 1 (``DPPlan(1.0, 1, sigma,
1.0)``), which is how the ledger composes it with the community's training. The per-record
standardisation uses that record alone, so it adds nothing to the sensitivity. Everything the
server does with the released vectors (clustering, assigning late communities) is
post-processing.

**Cost.** ``mu``-GDP with ``mu = 1 / sigma``; :func:`probe_noise_multiplier` spends a share
``phi`` of the budget's ``mu^2``. The per-coordinate noise of the released mean is
``sigma / N`` (:func:`probe_noise_std`).
"""

from __future__ import annotations

import math

import numpy as np

from fedcascade.clustering._checks import fail

__all__ = [
    "probe_features",
    "release_probe",
    "probe_noise_std",
    "probe_noise_multiplier",
    "probe_dimension",
    "probe_norm_bound",
]


def probe_dimension(input_size: int, n_classes: int) -> int:
    """Length of a released probe vector: ``n_classes * input_size``."""
    return int(n_classes) * int(input_size)


def probe_features(x: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-record probe features ``(1/K - e_y) z^T``, flattened, each of norm <= 1.

    Parameters
    ----------
    x : array (n, ...)
        Inputs; each record is flattened.
    y : array (n,)
        Integer labels in ``0 .. n_classes - 1``.
    n_classes : int
        ``K``.

    Returns
    -------
    ndarray, shape (n, n_classes * d)
    """
    x = np.asarray(x, np.float64)
    n = x.shape[0] if x.ndim else 0
    y = np.asarray(y)
    if x.ndim < 2 or n == 0:
        fail("x", x, "an array of shape (n, ...) with n >= 1 records")
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        fail("y", y, f"{n} integer labels")
    if not isinstance(n_classes, (int, np.integer)) or n_classes < 2:
        fail("n_classes", n_classes, "an integer >= 2")
    if y.min() < 0 or y.max() >= n_classes:
        fail("y", y, f"labels in 0 .. {n_classes - 1}")
    if not np.isfinite(x).all():
        fail("x", x, "finite values")
    z = x.reshape(n, -1)
    z = z - z.mean(axis=1, keepdims=True)
    # scale by the largest entry first so the norm neither overflows nor underflows
    peak = np.abs(z).max(axis=1, keepdims=True)
    z = np.divide(z, peak, out=np.zeros_like(z), where=peak > 0)
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    z = np.divide(z, norms, out=np.zeros_like(z), where=norms > 0)
    coef = np.full((n, n_classes), 1.0 / n_classes)
    coef[np.arange(n), y] -= 1.0
    return (coef[:, :, None] * z[:, None, :]).reshape(n, -1)


def release_probe(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    noise_multiplier: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """The community's DP probe: ``(sum_i f_i + N(0, sigma^2 I)) / n`` (float64).

    ``noise_multiplier = 0`` gives the exact mean (non-private runs). Features are clipped to
    norm 1 for safety, although by construction they never exceed it.
    """
    if not (noise_multiplier >= 0 and math.isfinite(noise_multiplier)):
        fail("noise_multiplier", noise_multiplier, "a finite number >= 0")
    f = probe_features(x, y, n_classes)
    norms = np.linalg.norm(f, axis=1, keepdims=True)
    f = f / np.maximum(1.0, norms)
    total = f.sum(axis=0)
    if noise_multiplier > 0:
        total = total + rng.normal(0.0, noise_multiplier, size=total.shape)
    return total / f.shape[0]


def probe_noise_std(noise_multiplier: float, n_records: int) -> float:
    """Per-coordinate DP noise std of a released probe: ``sigma / N``."""
    return float(noise_multiplier) / int(n_records)


def probe_noise_multiplier(epsilon: float, delta: float, share: float) -> float:
    """The ``sigma`` that spends ``share`` of an ``(epsilon, delta)`` budget's GDP ``mu^2``.

    One Gaussian release is ``(1 / sigma)``-GDP exactly, so ``sigma = 1 / (mu sqrt(share))``
    (:func:`~fedcascade.clustering.noise_plan.gdp_mu`). The accountant that composes it with
    training (PRV or RDP) is the authority on the final epsilon.
    """
    from fedcascade.clustering.warmup import warmup_noise_multiplier

    return warmup_noise_multiplier(epsilon, delta, share, steps=1)


def probe_norm_bound(n_records: int, dimension: int, noise_multiplier: float) -> float:
    """A norm no honest probe exceeds (up to probability ~1e-9): ``(n + sigma (sqrt(p) + 6)) / n``.

    The features have norm <= 1, so their mean has norm <= 1; the Gaussian noise's norm
    concentrates at ``sigma sqrt(p)`` with sub-Gaussian tails of scale ``sigma``.
    """
    return (n_records + noise_multiplier * (math.sqrt(dimension) + 6.0)) / n_records
