"""The clustering warm-up: how much budget it spends, and which coordinates carry its signal.

Two facts decide whether DP updates can be clustered (``docs/method.md``, "Tuning on real runs"):

* **Budget and batch.** A community's warm-up statistic is its noisy mean clipped gradient. With
  the whole community in every step (full batch, sample rate 1) ``T`` steps at noise multiplier
  ``sigma`` are exactly one Gaussian mechanism with ``sigma / sqrt(T)``, i.e. ``mu``-GDP with
  ``mu = sqrt(T) / sigma`` - no loss to the weak amplification of subsampling at small
  ``sigma``, which halves the precision of a mini-batch round at ``sigma ~ 1``. So the warm-up is
  planned as a *share* ``phi`` of the community's GDP budget ``mu^2``
  (:func:`warmup_noise_multiplier`); what it leaves is re-planned by the privacy accountant
  against the ledger's actual blocks, so the total stays exact.
* **Where the signal is.** At the start LoRA ``B = 0``, so the ``A`` matrices get no gradient at
  all: their update is pure DP noise. Noise has the same variance in every coordinate but the
  spectral detection threshold grows like ``sqrt(p)``; clustering on the blocks whose spread across
  communities exceeds the known noise (:func:`select_signal_blocks`) lowers the threshold without
  losing signal. This is post-processing of DP updates: it costs no privacy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedcascade.clustering._checks import as_matrix, fail, positive
from fedcascade.clustering.noise_plan import gdp_mu

__all__ = [
    "warmup_noise_multiplier",
    "block_slices",
    "BlockSignal",
    "block_signal",
    "select_signal_blocks",
]


def warmup_noise_multiplier(epsilon: float, delta: float, share: float, steps: int = 1) -> float:
    """Noise multiplier of ``steps`` full-batch DP-SGD steps that spend ``share`` of the budget.

    Full-batch steps compose exactly to ``mu_w = sqrt(steps) / sigma`` GDP; the warm-up gets
    ``mu_w^2 = share * mu^2`` with ``mu = gdp_mu(epsilon, delta)``, so

        sigma = sqrt(steps / share) / mu.

    Example: ``epsilon = 3, delta = 1e-4`` (``mu ~= 0.818``) and ``share = 0.5`` give
    ``sigma ~= 1.73`` for one step. The rest of the run is calibrated afterwards against the
    blocks actually spent (``calibrate_noise_multiplier(..., spent=...)``), so ``share`` is a plan,
    not an accounting shortcut.
    """
    mu = gdp_mu(epsilon, delta)
    phi = positive(share, "share")
    if phi >= 1.0:
        fail("share", share, "a number in (0, 1): the training after the warm-up needs budget")
    if int(steps) != steps or steps < 1:
        fail("steps", steps, "an integer >= 1")
    return float(math.sqrt(int(steps) / phi) / mu)


def block_slices(template: Mapping[str, np.ndarray]) -> dict[str, slice]:
    """Column range of every named array in :func:`~fedcascade.clustering.flatten_updates` rows."""
    out: dict[str, slice] = {}
    pos = 0
    for name, arr in template.items():
        size = int(np.size(arr))
        out[name] = slice(pos, pos + size)
        pos += size
    return out


@dataclass(frozen=True)
class BlockSignal:
    """Spread of one block of coordinates across communities, beyond the DP noise.

    Attributes
    ----------
    size : int
        Coordinates in the block (``p_b``).
    excess : float
        ``S_b = sum_i |u_ib - mean_b|^2 - p_b (1 - 1/n) sum_i v_i``: an unbiased estimate of the
        communities' signal spread in the block (cluster differences plus their own
        finite-sample heterogeneity).
    z : float
        ``S_b`` over its standard deviation under pure noise, ``sqrt(2 p_b sum_i v_i^2)``.
    """

    size: int
    excess: float
    z: float


def block_signal(
    U: np.ndarray, v: Sequence[float] | np.ndarray, blocks: Mapping[str, slice]
) -> dict[str, BlockSignal]:
    """:class:`BlockSignal` of every block of the columns of ``U``.

    Parameters
    ----------
    U : array (n, p)
        One (warm-up averaged) update per community.
    v : array (n,)
        Per-coordinate DP noise variance of every row.
    blocks : mapping name -> slice
        Column ranges (:func:`block_slices`).
    """
    U = as_matrix(U, "U", min_rows=2)
    n, p = U.shape
    var = np.asarray(v, float)
    if var.shape != (n,) or (var < 0).any() or not np.isfinite(var).all():
        fail("v", v, f"{n} finite noise variances >= 0, one per row of U")
    Uc = U - U.mean(axis=0)
    out: dict[str, BlockSignal] = {}
    for name, sl in blocks.items():
        cols = Uc[:, sl]
        size = cols.shape[1]
        if size == 0 or sl.stop > p:
            fail(f"blocks['{name}']", sl, f"a non-empty column range inside 0 .. {p}")
        # E sum_i |n_i - nbar|^2 = p_b (1 - 1/n) sum_i v_i per block for independent noise
        excess = float((cols**2).sum() - size * (1.0 - 1.0 / n) * var.sum())
        sd = math.sqrt(2.0 * size * float((var**2).sum()))
        out[name] = BlockSignal(size, excess, excess / sd if sd > 0 else math.inf)
    return out


def select_signal_blocks(
    U: np.ndarray,
    v: Sequence[float] | np.ndarray,
    blocks: Mapping[str, slice],
    min_z: float = 3.0,
) -> list[str]:
    """The blocks to cluster on: those whose spread across communities clearly beats the noise.

    A block whose excess spread ``S_b`` (:func:`block_signal`) is within ``min_z`` standard
    deviations of what pure DP noise gives adds ``p_b`` coordinates of noise - and ``sqrt(p_b)``
    to the spectral noise edge - for no detectable signal; it is dropped (e.g. LoRA ``A`` while
    ``B = 0``). Every block with detectable spread is kept, whatever its share of the energy: a
    strong block often carries only one direction (say, the minority's label shift in the head
    bias) while the other clusters differ elsewhere, so ranking blocks by signal per coordinate
    and keeping the best few loses clusters. If no block qualifies, all are returned (no
    structure is detectable and clustering finds one cluster).

    Returns
    -------
    list of str
        Chosen block names, in the order of ``blocks``.
    """
    z = positive(min_z, "min_z", allow_zero=True)
    sig = block_signal(U, v, blocks)
    chosen = [name for name, s in sig.items() if s.z >= z]
    return chosen if chosen else list(blocks)
