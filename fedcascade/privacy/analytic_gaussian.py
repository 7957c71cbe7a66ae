"""Exact (epsilon, delta) of the Gaussian mechanism: the analytic Gaussian mechanism.

Balle & Wang (ICML 2018), Theorem 8: adding ``N(0, sigma^2)`` noise to a query of L2-sensitivity
1 is (epsilon, delta)-DP if and only if

    Phi(1 / (2 sigma) - epsilon sigma) - e^epsilon Phi(-1 / (2 sigma) - epsilon sigma) <= delta.

``T`` full-batch (sample rate 1) DP-SGD steps with noise multiplier ``sigma`` compose to a single
Gaussian mechanism with noise multiplier ``sigma / sqrt(T)``, so this closed form is the ground
truth the numerical accountants are tested against.
"""

from __future__ import annotations

import math

from scipy import optimize, special

__all__ = ["gaussian_delta", "analytic_gaussian_epsilon"]


def gaussian_delta(epsilon: float, sigma: float) -> float:
    """Smallest delta for which the Gaussian mechanism (sensitivity 1) is (epsilon, delta)-DP.

    Parameters
    ----------
    epsilon : float
        ``>= 0``.
    sigma : float
        Noise standard deviation divided by the sensitivity, ``> 0``.
    """
    a = 1.0 / (2.0 * sigma)
    b = epsilon * sigma
    # e^eps * Phi(-a - b) in log space: the product overflows for large epsilon
    return float(special.ndtr(a - b) - math.exp(epsilon + special.log_ndtr(-a - b)))


def analytic_gaussian_epsilon(sigma: float, delta: float) -> float:
    """Smallest epsilon for which the Gaussian mechanism (sensitivity 1) is (epsilon, delta)-DP.

    Parameters
    ----------
    sigma : float
        Noise standard deviation divided by the sensitivity, ``> 0``.
    delta : float
        In (0, 1).

    Returns
    -------
    float
        Epsilon, to about 1e-12.

    Examples
    --------
    100 full-batch steps at sigma 10 equal one Gaussian at sigma 1:

    >>> round(analytic_gaussian_epsilon(10 / 100**0.5, 1e-5), 4)
    4.3772
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    if gaussian_delta(0.0, sigma) <= delta:
        return 0.0
    hi = 1.0
    while gaussian_delta(hi, sigma) > delta:  # delta(eps) decreases in eps: bracket the root
        hi *= 2.0
    return float(optimize.brentq(lambda e: gaussian_delta(e, sigma) - delta, 0.0, hi, xtol=1e-13))
