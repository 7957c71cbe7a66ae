"""Adapter capacity (LoRA rank) scaled by cluster size.

The DP noise added to a cluster's aggregate has norm ``~ C sqrt(p_k / Pi_k)`` per unit budget
(:mod:`fedcascade.clustering.noise_plan`) while the clipped signal is at most ``C``: every
trainable parameter costs noise, so a cluster with little data should train fewer. With a LoRA
rank ``r`` the trainable count is ``p(r) = r sum_l (d_in_l + d_out_l) + p_head``.

Rule (derivation in ``docs/method.md``): the error of a rank-``r`` adapter is approximately
``A r^-a`` (bias: what rank ``r`` cannot represent) plus ``B r / Pi_k`` (variance: DP noise over
``~ r`` parameters per layer), minimised at ``r* ~ Pi_k^(1 / (1 + a))``. Hence

    r_k = clip(round(r_max (s_k / s_max)^gamma), r_min, r_max),   gamma = 1 / (1 + a),

with ``s_k`` the cluster's precision ``Pi_k = sum N_i^2 mu_i^2`` (or its record count) and
``gamma = 1/2`` (``a = 1``: the tail energy of the ideal update beyond rank ``r`` falls like
``1/r``) by default; ``gamma = 1`` equalises the noise per parameter exactly, ``gamma = 0``
gives every cluster ``r_max``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedcascade.clustering._checks import fail

__all__ = ["cluster_ranks", "lora_param_count"]


def cluster_ranks(
    sizes: Sequence[float] | np.ndarray,
    r_min: int,
    r_max: int,
    gamma: float = 0.5,
) -> np.ndarray:
    """LoRA rank of every cluster: ``clip(round(r_max (s_k / max s)^gamma), r_min, r_max)``.

    Parameters
    ----------
    sizes : sequence of float
        Size measure of every cluster, > 0: its precision
        (:func:`~fedcascade.clustering.noise_plan.cluster_precision`, recommended) or records.
    r_min, r_max : int
        Smallest and largest rank, ``1 <= r_min <= r_max``.
    gamma : float
        Exponent in ``[0, 1]`` (see the module docstring).

    Returns
    -------
    numpy.ndarray
        Integer ranks, one per cluster; the largest cluster gets ``r_max`` and ranks never
        decrease with size.
    """
    s = np.asarray(sizes, float)
    if s.ndim != 1 or s.size == 0 or not np.isfinite(s).all() or (s <= 0).any():
        fail("sizes", sizes, "positive numbers, one per cluster")
    if int(r_min) != r_min or int(r_max) != r_max or not 1 <= r_min <= r_max:
        fail("r_min, r_max", (r_min, r_max), "integers with 1 <= r_min <= r_max")
    if not 0.0 <= float(gamma) <= 1.0:
        fail("gamma", gamma, "a number in [0, 1]")
    ratio = s / s.max()
    return np.clip(np.round(r_max * ratio ** float(gamma)), r_min, r_max).astype(int)


def lora_param_count(layer_shapes: Sequence[tuple[int, int]], rank: int, extra: int = 0) -> int:
    """Trainable parameters of LoRA adapters at ``rank``: ``rank * sum(d_in + d_out) + extra``.

    ``layer_shapes`` lists ``(d_out, d_in)`` of every adapted layer (for Conv2d, ``d_in`` is
    ``in_channels * kh * kw``); ``extra`` counts fully trained tensors such as the head.
    """
    if int(rank) != rank or rank < 0:
        fail("rank", rank, "an integer >= 0")
    total = 0
    for i, shape in enumerate(layer_shapes):
        if len(shape) != 2 or min(shape) < 1:
            fail(f"layer_shapes[{i}]", shape, "(d_out, d_in) with positive sizes")
        total += int(shape[0]) + int(shape[1])
    return int(rank) * total + int(extra)
