"""DP plans that change mid-run: calibrate the rest of a run after some blocks are spent.

A strategy that re-plans after a warm-up (new sample rates, a cluster training in fewer rounds)
must keep each community's total within its budget. The blocks already run are fixed; the noise
multiplier of the remaining schedule is the smallest one whose composition with them stays within
the target (same accountant and delta as the ledger, so the ledger never refuses a planned step).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from fedcascade.errors import ConfigError
from fedcascade.privacy import compute_epsilon

#: largest noise multiplier searched before the remaining budget is declared too small
MAX_SIGMA = 1e4


def calibrate_remaining(
    target_epsilon: float,
    delta: float,
    spent: Sequence[tuple[float, float, int]],
    remaining: Sequence[tuple[float, int]],
    accountant: str,
    rtol: float = 1e-3,
) -> float:
    """Smallest sigma for ``remaining`` blocks so that spent + remaining <= ``target_epsilon``.

    Parameters
    ----------
    target_epsilon : float
        The DP-SGD budget of the whole run.
    delta : float
    spent : sequence of (sample_rate, noise_multiplier, steps)
        Blocks already run (as the ledger recorded them).
    remaining : sequence of (sample_rate, steps)
        The planned rest of the run, all at the one sigma returned.
    accountant : {"prv", "rdp"}
    rtol : float
        Relative precision of the bisection on sigma.

    Raises
    ------
    ConfigError
        If the spent blocks leave no room (``privacy.target_epsilon`` too small for the plan).
    """
    return _calibrate(
        float(target_epsilon),
        float(delta),
        tuple(map(tuple, spent)),
        tuple(map(tuple, remaining)),
        accountant,
        rtol,
    )


@lru_cache(maxsize=4096)
def _calibrate(target, delta, spent, remaining, accountant, rtol) -> float:
    def eps(sigma: float) -> float:
        return compute_epsilon([*spent, *((q, sigma, s) for q, s in remaining)], delta, accountant)

    if not remaining:
        return 0.0
    if eps(MAX_SIGMA) > target:
        raise ConfigError(
            "privacy.target_epsilon",
            target,
            "a budget the warm-up has not already used up",
            f"after the spent blocks even noise multiplier {MAX_SIGMA:g} exceeds it; spend less on warm-up",
        )
    lo, hi = 0.05, 1.0
    while eps(hi) > target:
        lo, hi = hi, hi * 2
    while hi / lo > 1 + rtol:
        mid = (lo * hi) ** 0.5
        if eps(mid) > target:
            lo = mid
        else:
            hi = mid
    return hi
