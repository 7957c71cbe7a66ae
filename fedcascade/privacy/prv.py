"""PRV accountant (Gopi, Lee & Wutschitz 2021) with discretisations reused across rounds.

Opacus' ``PRVAccountant`` rebuilds everything on every call: it sizes a grid for the exact
history, discretises each ``(q, sigma)`` privacy-loss random variable on it (a numerical
integral plus two CDF sweeps over ~10^5-10^6 points) and composes by FFT. A ledger asks after
every round, each time with a slightly longer history, so nothing is ever reused and accounting
can cost more than the round's training.

This module computes the same quantity from Opacus' own building blocks (the PRV of the
Poisson-subsampled Gaussian, its truncation, discretisation and the epsilon read-out) but:

* the grid is sized for the step count rounded UP to a power of two and a truncation bound
  rounded UP on a sqrt(2) ladder. A finer mesh and a wider interval than Gopi et al. require
  only make the result more accurate; in exchange the grid stays the same for many rounds.
  Given the run's planned step count (``horizon_steps``), it is sized for that from the first
  round, so the whole run shares one discretisation;
* the spectrum (FFT) of each discretised ``(q, sigma)`` is cached per grid, so a new round
  costs one element-wise power and one inverse FFT;
* heterogeneous blocks are composed in the Fourier domain too (product of spectra), like the
  homogeneous case in Opacus, instead of Opacus' extra linear convolutions.

The returned value is, like Opacus', the upper bound ``estimate + eps_error``.
``tests/test_privacy_accounting.py`` checks it against Opacus' PRV accountant and against
Google's ``dp_accounting`` PLD.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from functools import lru_cache

import numpy as np
from opacus.accountants.analysis.prv import (
    Domain,
    PoissonSubsampledGaussianPRV,
    TruncatedPrivacyRandomVariable,
    discretize,
)
from scipy.fft import irfft, next_fast_len, rfft

from fedcascade.privacy.rdp import rdp_epsilon

__all__ = ["prv_epsilon", "EPS_ERROR", "MAX_GRID"]

#: Absolute error budget of the epsilon estimate; the returned bound is estimate + this.
EPS_ERROR = 0.01
#: Larger grids (epsilon in the hundreds) are not attempted: the caller falls back to RDP.
MAX_GRID = 4_000_000

Block = tuple[float, float, int]


def _grid(
    blocks: tuple[Block, ...], delta: float, eps_error: float, horizon_steps: int = 0
) -> tuple[int, float]:
    """Half-width (in mesh units) and mesh of a grid valid for ``blocks``; reusable over rounds.

    With ``horizon_steps`` above the history's step count the grid is sized as if every block
    were scaled up to that many steps in total: a finer mesh and a wider truncation interval
    than ``blocks`` need (so still a valid upper bound, only more accurate), and the SAME grid
    for every prefix of a run that ends at the horizon.
    """
    total = sum(n for *_, n in blocks)
    if horizon_steps > total:
        # RDP epsilon only grows with the step counts, so this bound covers the real history
        blocks = tuple((q, s, math.ceil(n * horizon_steps / total)) for q, s, n in blocks)
    # with a horizon, the scaled history of a homogeneous run is the same every round: cached
    return _grid_for(blocks, delta, eps_error)


@lru_cache(maxsize=256)
def _grid_for(blocks: tuple[Block, ...], delta: float, eps_error: float) -> tuple[int, float]:
    delta_error = delta / 1000
    total = sum(n for *_, n in blocks)
    steps_up = 1 << max(0, math.ceil(math.log2(total)))
    # Truncation bound of Gopi et al. (remark 5.6) as Opacus computes it, from the integer RDP
    # orders (a valid, slightly larger bound) and the rounded-up step count.
    bound = rdp_epsilon(blocks, delta_error / 4, integer_orders=True)
    for q, sigma, _ in blocks:
        one = rdp_epsilon(((q, sigma, 1),), delta_error / (8 * steps_up), integer_orders=True)
        bound = max(bound, one)
    half_width = max(bound, eps_error) + 3
    half_width = 2.0 ** (math.ceil(2 * math.log2(half_width)) / 2)  # sqrt(2) ladder
    mesh = eps_error / math.sqrt(steps_up * math.log(12 / delta_error) / 2)
    n = math.ceil(half_width / mesh)
    # grid [-n mesh, (n + 1) mesh] of 2 n + 2 points, as Opacus' Domain.create_aligned builds
    # it, with n raised until the length is FFT-friendly (5-smooth)
    size = next_fast_len(2 * n + 2, real=True)
    while size % 2:
        size = next_fast_len(size + 1, real=True)
    return (size - 2) // 2, mesh


def _domain(n: int, mesh: float) -> Domain:
    return Domain(t_min=-n * mesh, t_max=(n + 1) * mesh, size=2 * n + 2)


#: Memory budget of the spectrum cache (entries are 16 bytes per grid point / 2).
CACHE_BYTES = 256 * 2**20
_SPECTRA: OrderedDict[tuple[float, float, int, float], tuple[np.ndarray, float]] = OrderedDict()


def _spectrum(q: float, sigma: float, n: int, mesh: float) -> tuple[np.ndarray, float]:
    """Cached :func:`_discretised_spectrum`, least recently used first out, within CACHE_BYTES."""
    key = (q, sigma, n, mesh)
    hit = _SPECTRA.get(key)
    if hit is not None:
        _SPECTRA.move_to_end(key)
        return hit
    hit = _discretised_spectrum(q, sigma, n, mesh)
    _SPECTRA[key] = hit
    while len(_SPECTRA) > 1 and sum(v[0].nbytes for v in _SPECTRA.values()) > CACHE_BYTES:
        _SPECTRA.popitem(last=False)
    return hit


#: Powers F^(2^j) of cached spectra, for the few most recent (q, sigma, grid).
_POWERS: OrderedDict[tuple[float, float, int, float], list[np.ndarray]] = OrderedDict()
_POWERS_KEYS = 4


def _power(log_spec: np.ndarray, key: tuple[float, float, int, float], steps: int) -> np.ndarray:
    """``exp(steps * log_spec)`` = F^steps by binary exponentiation over cached F^(2^j).

    A complex ``exp`` of the whole spectrum costs ~1.4 ms on a 40k-point grid; a round then only
    needs a few complex products of cached powers (~50 us each). The relative rounding error
    grows like log2(steps) * 1e-16, far below the accountant's error budget.
    """
    powers = _POWERS.get(key)
    if powers is None:
        powers = _POWERS[key] = [np.exp(log_spec)]
        while len(_POWERS) > _POWERS_KEYS:
            _POWERS.popitem(last=False)
    else:
        _POWERS.move_to_end(key)
    out = None
    j = 0
    while steps:
        if j == len(powers):
            powers.append(powers[-1] * powers[-1])
        if steps & 1:
            out = powers[j] if out is None else out * powers[j]
        steps >>= 1
        j += 1
    assert out is not None  # steps >= 1 for every canonical block
    return out


def _discretised_spectrum(q: float, sigma: float, n: int, mesh: float) -> tuple[np.ndarray, float]:
    """Log-FFT of one step's discretised PRV on the grid, and the grid shift that centres its mean."""
    domain = _domain(n, mesh)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        # q = 1 makes log(1 - q) = -inf inside the PRV density: harmless, masked by np.where
        warnings.simplefilter("ignore")
        tprv = TruncatedPrivacyRandomVariable(
            PoissonSubsampledGaussianPRV(q, sigma), domain.t_min, domain.t_max
        )
        d = discretize(tprv, domain)
    # Stored as a logarithm: composing blocks is then sum_k steps_k * log F_k and ONE complex
    # exp, instead of a complex power per block (numpy's pow is exp(n log z) anyway).
    with np.errstate(divide="ignore"):
        log_spec = np.log(rfft(d.pmf))
    log_spec.setflags(write=False)
    return log_spec, float(d.domain.shifts)


def prv_epsilon(
    blocks: tuple[Block, ...], delta: float, eps_error: float = EPS_ERROR, horizon_steps: int = 0
) -> float | None:
    """Upper bound on epsilon of the composition of ``blocks`` at ``delta``.

    Parameters
    ----------
    blocks : tuple of (sample_rate, noise_multiplier, steps)
        Canonical history (see :func:`fedcascade.privacy.accounting.canonical_blocks`); every
        noise multiplier > 0.
    delta : float
        In (0, 1).
    eps_error : float
        Error budget of the estimate.
    horizon_steps : int
        Size the grid for at least this many steps (e.g. the run's planned total), so that a
        growing history reuses one discretisation; 0 = size it for ``blocks`` only. Any value
        gives a valid upper bound; a larger one only a finer (more accurate, slower) grid.

    Returns
    -------
    float or None
        Epsilon, or ``None`` when the grid would exceed :data:`MAX_GRID` points.

    Raises
    ------
    ValueError, RuntimeError
        From Opacus' discretisation when it is numerically unreliable.
    """
    n, mesh = _grid(blocks, delta, eps_error, horizon_steps)
    if horizon_steps and 2 * n + 2 > MAX_GRID:  # the horizon asked too much: size for blocks
        n, mesh = _grid(blocks, delta, eps_error)
    size = 2 * n + 2
    if size > MAX_GRID:
        return None
    spec = None
    shift, count = 0.0, 0
    for q, sigma, steps in blocks:
        one, one_shift = _spectrum(q, sigma, n, mesh)
        with np.errstate(all="ignore"):
            power = _power(one, (q, sigma, n, mesh), steps)
        spec = power if spec is None else spec * power
        shift += steps * one_shift
        count += steps
    with np.errstate(all="ignore"):
        pmf = irfft(spec, n=size)
    # Circular convolution of `count` copies of arrays starting at t_min = -n mesh: index k holds
    # the sum at count * t_min + k mesh. Rotate so that index r again means t_min + r mesh.
    pmf = _Rolled(pmf, count - 1 + (size // 2 if count % 2 == 0 else 0))
    with np.errstate(all="ignore"):
        eps_upper = _epsilon_upper(pmf, n, mesh, shift, delta, delta / 1000, eps_error)
    return max(float(eps_upper), 0.0)


class _Rolled:
    """``np.roll(array, shift)`` that copies only the slice asked for (the read-out uses the
    upper half of the grid only)."""

    def __init__(self, array: np.ndarray, shift: int) -> None:
        self.array, self.shift = array, shift % len(array)

    def tail(self, start: int) -> np.ndarray:
        """``np.roll(array, shift)[start:]``."""
        a, size = self.array, len(self.array)
        begin = (start - self.shift) % size  # where element `start` of the rolled array is
        if begin + (size - start) <= size:
            return a[begin : begin + size - start]
        return np.concatenate((a[begin:], a[: (size - start) - (size - begin)]))


_EXP_GRIDS: OrderedDict[tuple[int, float], tuple[np.ndarray, np.ndarray]] = OrderedDict()


def _exp_grid(n: int, mesh: float) -> tuple[np.ndarray, np.ndarray]:
    """``exp(t)`` and ``exp(-t)`` over the unshifted grid points, cached per grid."""
    key = (n, mesh)
    hit = _EXP_GRIDS.get(key)
    if hit is None:
        ts = _domain(n, mesh).ts
        with np.errstate(over="ignore"):
            hit = (np.exp(ts), np.exp(-ts))
        _EXP_GRIDS[key] = hit
        while len(_EXP_GRIDS) > 4:
            _EXP_GRIDS.popitem(last=False)
    else:
        _EXP_GRIDS.move_to_end(key)
    return hit


def _epsilon_upper(
    pmf: _Rolled,
    n: int,
    mesh: float,
    shift: float,
    delta: float,
    delta_error: float,
    eps_error: float,
) -> float:
    """Opacus' ``DiscretePRV.compute_epsilon(...)[2]`` on the grid shifted right by ``shift``.

    Same formula (delta(eps) from the two tail sums of the PMF, Gopi et al. sec. 5), but only
    the upper bound, and ``exp(+-t)`` taken from a per-grid cache and scaled by ``exp(+-shift)``
    instead of rebuilding the grid and two exponentials of it on every call.
    """
    size = 2 * n + 2
    target = delta - delta_error
    if np.finfo(np.longdouble).eps * size > target:
        raise ValueError(
            "Floating point errors will dominate for such small values of delta. "
            "Increase delta or reduce domain size."
        )
    exp_t, exp_neg_t = _exp_grid(n, mesh)
    # Tail sums are accumulated from the top of the grid down, so those from grid point k0 up
    # are the same numbers whether or not the points below k0 are summed too. Start at t = 0
    # (an epsilon is >= 0): half the work. Only if the crossing lies at or below k0 (epsilon
    # <= 0 up to one mesh step) is the whole grid needed.
    k0 = min(max(0, math.floor((n * mesh - shift) / mesh)), size - 1)
    for start in (k0, 0) if k0 > 0 else (0,):
        p = pmf.tail(start)
        d1 = np.cumsum(p[::-1])[::-1]
        d2 = np.cumsum((p * exp_neg_t[start:])[::-1])[::-1] * math.exp(-shift)
        ndelta = exp_t[start:] * d2 * math.exp(shift) - d1
        i = int(np.searchsorted(ndelta, -target, side="left"))
        if i > 0:
            return float(np.log((d1[i] - target) / d2[i])) + eps_error
    raise RuntimeError("Cannot compute epsilon")
