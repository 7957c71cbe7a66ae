"""Privacy accounting for DP-SGD: epsilon of a history of blocks, and noise calibration.

A *block* is ``(sample_rate, noise_multiplier, steps)``: ``steps`` Poisson-subsampled Gaussian
steps at one ``(q, sigma)``. Composition does not depend on order, so a history is reduced to a
canonical form (identical ``(q, sigma)`` merged, sorted) before anything is computed; that makes
the cache hit whenever the same privacy loss is asked twice (the ledger asks for the same
history in ``would_spend`` and ``record``, the server calibrates each community size once) and
guarantees that the ledger's epsilon for a completed plan equals the calibration's value exactly.

Accountants
-----------
``"prv"`` (default)
    Privacy-loss random variables (Gopi, Lee & Wutschitz 2021), returning the *upper* bound
    (estimate + ``PRV_EPS_ERROR``) like Opacus' ``PRVAccountant``, built from Opacus' PRV
    pieces but with discretisations reused across rounds (:mod:`fedcascade.privacy.prv`).
    Falls back to RDP (valid, looser) if the discretisation fails numerically or would need
    more than ``MAX_GRID`` points (epsilon in the hundreds).
``"rdp"``
    Renyi DP over Opacus' orders with the Balle et al. 2020 conversion. Looser by ~8-15 %.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from functools import lru_cache

from fedcascade.errors import ConfigError
from fedcascade.privacy.prv import EPS_ERROR as PRV_EPS_ERROR
from fedcascade.privacy.prv import prv_epsilon
from fedcascade.privacy.rdp import rdp_epsilon

__all__ = [
    "ACCOUNTANTS",
    "PRV_EPS_ERROR",
    "canonical_blocks",
    "compute_epsilon",
    "calibrate_noise_multiplier",
    "MAX_NOISE_MULTIPLIER",
]

ACCOUNTANTS = ("prv", "rdp")
#: Calibration gives up (target unreachable) above this noise multiplier.
MAX_NOISE_MULTIPLIER = 1e4

Block = tuple[float, float, int]


def canonical_blocks(blocks: Iterable[Sequence[float]]) -> tuple[Block, ...]:
    """Validate blocks and return their canonical form.

    Parameters
    ----------
    blocks : iterable of (sample_rate, noise_multiplier, steps)

    Returns
    -------
    tuple of (float, float, int)
        Blocks with equal ``(q, sigma)`` merged, zero-step blocks dropped, sorted.

    Raises
    ------
    ValueError
        If a sample rate is outside (0, 1], a noise multiplier negative or not finite, or a
        step count negative or not an integer.
    """
    merged: dict[tuple[float, float], int] = {}
    for k, block in enumerate(blocks):
        if len(block) != 3:
            raise ValueError(
                f"block {k}: expected (sample_rate, noise_multiplier, steps), got {block!r}"
            )
        q, sigma, steps = float(block[0]), float(block[1]), block[2]
        if not 0 < q <= 1:
            raise ValueError(f"block {k}: sample_rate must be in (0, 1], got {block[0]!r}")
        if not (sigma >= 0 and math.isfinite(sigma)):
            raise ValueError(
                f"block {k}: noise_multiplier must be finite and >= 0, got {block[1]!r}"
            )
        if isinstance(steps, bool) or int(steps) != steps or steps < 0:
            raise ValueError(f"block {k}: steps must be an integer >= 0, got {steps!r}")
        if int(steps) > 0:
            merged[(q, sigma)] = merged.get((q, sigma), 0) + int(steps)
    return tuple(sorted((q, s, n) for (q, s), n in merged.items()))


def _check_delta(delta: float) -> float:
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise ValueError(f"delta must be a number in (0, 1), got {delta!r}")
    return float(delta)


def _check_accountant(accountant: str) -> str:
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    return accountant


def compute_epsilon(
    blocks: Sequence[Sequence[float]],
    delta: float,
    accountant: str = "prv",
    *,
    horizon_steps: int = 0,
) -> float:
    """Epsilon spent by a history of DP-SGD blocks at ``delta``.

    Parameters
    ----------
    blocks : sequence of (sample_rate, noise_multiplier, steps)
        The history, in any order.
    delta : float
        In (0, 1).
    accountant : {"prv", "rdp"}
    horizon_steps : int, optional
        PRV only: the number of steps the run is planned to reach (e.g. rounds x steps per
        round). The PRV grid is then sized once for the horizon, so every round of a growing
        history reuses one discretisation instead of a new one each time the step count passes
        a power of two. The value stays an upper bound and only gets (slightly) more accurate;
        it is ignored once the history reaches the horizon.

    Returns
    -------
    float
        Epsilon (an upper bound); 0 for an empty history, ``inf`` if any block has noise 0.
        Cached on the canonical history (and horizon).
    """
    canon = canonical_blocks(blocks)
    accountant = _check_accountant(accountant)
    if isinstance(horizon_steps, bool) or not isinstance(horizon_steps, int) or horizon_steps < 0:
        raise ValueError(f"horizon_steps must be an integer >= 0, got {horizon_steps!r}")
    if accountant != "prv" or horizon_steps <= sum(n for *_, n in canon):
        horizon_steps = 0  # no effect: share the cache entry with the plain call
    return _epsilon(canon, _check_delta(delta), accountant, horizon_steps)


@lru_cache(maxsize=65536)
def _epsilon(
    blocks: tuple[Block, ...], delta: float, accountant: str, horizon_steps: int = 0
) -> float:
    if not blocks:
        return 0.0
    if any(sigma == 0 for _, sigma, _ in blocks):
        return math.inf
    if accountant == "rdp":
        return rdp_epsilon(blocks, delta)
    return _prv(blocks, delta, horizon_steps)


def _prv(blocks: tuple[Block, ...], delta: float, horizon_steps: int = 0) -> float:
    try:
        eps = prv_epsilon(blocks, delta, PRV_EPS_ERROR, horizon_steps)
    except (ValueError, RuntimeError) as err:  # numerical failure of the discretisation
        warnings.warn(
            f"PRV accountant failed ({err}); using the RDP bound, which is valid but looser",
            RuntimeWarning,
            stacklevel=4,
        )
        return rdp_epsilon(blocks, delta)
    # None: grid too large, which only happens for epsilon far beyond any budget
    return rdp_epsilon(blocks, delta) if eps is None else eps


def _schedule_key(schedule: Sequence[Sequence[float]]) -> tuple[tuple[float, int], ...]:
    blocks = canonical_blocks((s[0], 1.0, s[1]) if len(s) == 2 else s for s in schedule)
    return tuple((q, n) for q, _, n in blocks)


def calibrate_noise_multiplier(
    target_epsilon: float,
    delta: float,
    schedule: Sequence[tuple[float, int]],
    accountant: str = "prv",
    *,
    rtol: float = 1e-3,
    spent: Sequence[Sequence[float]] = (),
) -> float:
    """Smallest noise multiplier that keeps the whole planned schedule within ``target_epsilon``.

    One sigma is used for every block of the schedule (e.g. R-DPCFL's plan: one full-batch block
    then ``E - 1`` rounds at batch ``b``).

    Parameters
    ----------
    target_epsilon : float
        Budget for the DP-SGD part, ``> 0`` (subtract any pure-DP spending first).
    delta : float
        In (0, 1).
    schedule : sequence of (sample_rate, steps)
        Every DP-SGD block planned for the whole run.
    accountant : {"prv", "rdp"}
    rtol : float
        Relative tolerance on sigma: the result ``s`` satisfies ``epsilon(s) <= target`` and
        ``epsilon(s / (1 + rtol)) > target`` (or ``epsilon(s)`` is within ``rtol`` of target).
    spent : sequence of (sample_rate, noise_multiplier, steps), optional
        Blocks already run (e.g. from a ledger summary) when re-planning mid-run: the result is
        the sigma for the rest of the schedule such that spent + schedule stays within target.

    Returns
    -------
    float
        The noise multiplier. Cached on (target, delta, canonical schedule, accountant, rtol).

    Raises
    ------
    ConfigError
        If the target is not a positive finite number, or cannot be met with a noise
        multiplier up to :data:`MAX_NOISE_MULTIPLIER` (e.g. below the PRV error 0.01).
    ValueError
        If the schedule is empty or malformed.
    """
    if (
        isinstance(target_epsilon, bool)
        or not isinstance(target_epsilon, (int, float))
        or not (target_epsilon > 0 and math.isfinite(target_epsilon))
    ):
        raise ConfigError("privacy.target_epsilon", target_epsilon, "a finite number > 0")
    key = _schedule_key(schedule)
    if not key:
        raise ValueError(f"schedule has no steps to calibrate for: {list(schedule)!r}")
    return _calibrate(
        float(target_epsilon),
        _check_delta(delta),
        key,
        _check_accountant(accountant),
        float(rtol),
        canonical_blocks(spent),
    )


@lru_cache(maxsize=4096)
def _calibrate(
    target: float,
    delta: float,
    schedule: tuple[tuple[float, int], ...],
    accountant: str,
    rtol: float,
    spent: tuple[Block, ...] = (),
) -> float:
    def blocks(sigma: float) -> tuple[Block, ...]:
        return canonical_blocks([*spent, *((q, sigma, n) for q, n in schedule)])

    def eps(sigma: float) -> float:
        return _epsilon(blocks(sigma), delta, accountant)

    def eps_fast(sigma: float) -> float:  # cheap RDP bound, only to find a starting bracket
        return rdp_epsilon(blocks(sigma), delta, integer_orders=True)

    # 1. Cheap bisection (log scale) on the integer-order RDP bound.
    lo, hi = 1e-3, MAX_NOISE_MULTIPLIER
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        if eps_fast(mid) > target:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1.01:
            break
    # 2. Bracket the exact accountant around it: eps(hi) <= target < eps(lo).
    hi = min(hi, MAX_NOISE_MULTIPLIER)
    e_hi = eps(hi)
    while e_hi > target:
        if hi >= MAX_NOISE_MULTIPLIER:
            raise ConfigError(
                "privacy.target_epsilon",
                target,
                f"an epsilon reachable with noise multiplier <= {MAX_NOISE_MULTIPLIER:g}",
                f"the {accountant} accountant gives epsilon {e_hi:.4g} even there"
                + (" (with the blocks already spent)" if spent else "")
                + (f" (its error margin is {PRV_EPS_ERROR})" if accountant == "prv" else ""),
            )
        lo, hi = hi, min(hi * 1.25, MAX_NOISE_MULTIPLIER)
        e_hi = eps(hi)
    # epsilon falls at least like 1 / sigma, so hi * eps(hi) / target lies below the answer
    lo = min(lo, hi * e_hi / target * 0.995) if e_hi > 0 else min(lo, hi / 1.25)
    e_lo = eps(lo)
    while e_lo <= target:
        hi, e_hi = lo, e_lo
        lo = lo / 1.25
        e_lo = eps(lo)
    # 3. Illinois (regula falsi) on log(eps) vs log(sigma): few exact evaluations.
    x_lo, x_hi = math.log(lo), math.log(hi)
    h_lo = math.log(e_lo / target) if math.isfinite(e_lo) else 50.0
    h_hi = math.log(e_hi / target) if e_hi > 0 else -50.0
    side = 0
    # stop when the bracket is within rtol, or eps(hi) is within rtol of the target
    while x_hi - x_lo > math.log1p(rtol) and e_hi < target * (1 - rtol):
        x = x_hi - h_hi * (x_hi - x_lo) / (h_hi - h_lo)
        if not x_lo < x < x_hi:
            x = 0.5 * (x_lo + x_hi)
        e = eps(math.exp(x))
        h = math.log(e / target) if e > 0 else -50.0
        if h > 0:
            x_lo, h_lo = x, h
            if side == -1:
                h_hi /= 2  # Illinois: keep the stale endpoint from stalling convergence
            side = -1
        else:
            x_hi, h_hi, e_hi = x, h, e
            if side == 1:
                h_lo /= 2
            side = 1
    return math.exp(x_hi)
