"""Renyi-DP curves of the Poisson-subsampled Gaussian mechanism, cached per (q, sigma).

The RDP of one step depends only on ``(sample_rate, noise_multiplier)``; ``T`` steps cost ``T``
times as much. Opacus recomputes the curve for every accountant call (0.1-0.5 s, a Python loop
per fractional order); here it is memoised, so per-round accounting of a growing history costs
almost nothing once the noise level is known.

Two curves are offered:

* :func:`rdp_curve` - all of Opacus' orders (1.1 .. 10.9 step 0.1, then 12 .. 63), computed by
  Opacus itself; used by the RDP accountant.
* :func:`rdp_curve_integer` - only the integer orders, a closed-form binomial sum (vectorised,
  ~1 ms). Dropping orders can only make the epsilon bound larger, so it is a valid (slightly
  looser) bound; it is used where an upper bound is all that is needed: sizing the PRV
  discretisation domain and bracketing the noise calibration.
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache

import numpy as np
from opacus.accountants.analysis import rdp as opacus_rdp
from scipy import special

__all__ = ["ORDERS", "INTEGER_ORDERS", "rdp_curve", "rdp_curve_integer", "rdp_epsilon"]

#: RDP orders, the same as Opacus' ``RDPAccountant.DEFAULT_ALPHAS``.
ORDERS: np.ndarray = np.array([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)), float)
#: The integer orders among :data:`ORDERS` (2 .. 10, 12 .. 63).
INTEGER_ORDERS: np.ndarray = ORDERS[[float(a).is_integer() for a in ORDERS]]


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)  # cached arrays are shared: make accidental mutation loud
    return a


def _trivial_curve(q: float, sigma: float, orders: np.ndarray) -> np.ndarray | None:
    if q == 0:
        return np.zeros(len(orders))
    if sigma == 0:
        return np.full(len(orders), np.inf)
    if q == 1.0:
        return orders / (2 * sigma**2)
    return None


@lru_cache(maxsize=4096)
def rdp_curve(sample_rate: float, noise_multiplier: float) -> np.ndarray:
    """RDP of ONE step of the sampled Gaussian mechanism at every order of :data:`ORDERS`.

    Parameters
    ----------
    sample_rate : float
        Poisson sampling rate ``q`` in ``[0, 1]``.
    noise_multiplier : float
        ``sigma >= 0`` (0 means no privacy: infinite RDP).

    Returns
    -------
    numpy.ndarray
        Read-only array aligned with :data:`ORDERS`.
    """
    q, sigma = float(sample_rate), float(noise_multiplier)
    out = _trivial_curve(q, sigma, ORDERS)
    if out is None:
        out = np.asarray(
            opacus_rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=list(ORDERS)),
            float,
        )
    return _frozen(out)


@lru_cache(maxsize=4096)
def rdp_curve_integer(sample_rate: float, noise_multiplier: float) -> np.ndarray:
    """RDP of one step at the integer orders :data:`INTEGER_ORDERS` (fast closed form).

    For integer ``alpha``, ``A_alpha = sum_i C(alpha, i) q^i (1-q)^(alpha-i) exp((i^2 - i) /
    (2 sigma^2))`` (Mironov, Talwar & Zhang 2019, section 3.3); summed in log space.
    """
    q, sigma = float(sample_rate), float(noise_multiplier)
    out = _trivial_curve(q, sigma, INTEGER_ORDERS)
    if out is None:
        out = np.empty(len(INTEGER_ORDERS))
        lq, l1q = math.log(q), math.log1p(-q)
        for k, alpha in enumerate(INTEGER_ORDERS.astype(int)):
            i = np.arange(alpha + 1, dtype=float)
            terms = np.log(special.binom(alpha, i)) + i * lq + (alpha - i) * l1q
            terms += (i * i - i) / (2 * sigma**2)
            out[k] = special.logsumexp(terms) / (alpha - 1)
    return _frozen(out)


def rdp_epsilon(
    blocks: tuple[tuple[float, float, int], ...], delta: float, *, integer_orders: bool = False
) -> float:
    """Epsilon from RDP composition of ``blocks`` = ``((q, sigma, steps), ...)`` at ``delta``.

    Uses the RDP-to-(epsilon, delta) conversion of Balle et al. 2020, as Opacus does.

    Parameters
    ----------
    blocks : tuple of (float, float, int)
        ``(sample_rate, noise_multiplier, steps)`` per block.
    delta : float
        Target delta in (0, 1).
    integer_orders : bool
        Use only the integer orders (faster, slightly larger but still valid bound).
    """
    if not blocks:
        return 0.0
    curve, orders = (rdp_curve_integer, INTEGER_ORDERS) if integer_orders else (rdp_curve, ORDERS)
    total = sum(steps * curve(q, sigma) for q, sigma, steps in blocks)
    if np.isinf(total).all():
        return math.inf
    with warnings.catch_warnings():
        # "optimal order is the largest alpha": harmless, the bound is still valid
        warnings.simplefilter("ignore")
        eps, _ = opacus_rdp.get_privacy_spent(orders=orders, rdp=total, delta=delta)
    return float(eps)
