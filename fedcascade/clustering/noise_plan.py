"""Noise scaling by cluster size: how much DP noise each cluster's aggregate carries, and the
plan (aggregation weights, rounds, batch sizes, warm-up) that keeps small clusters above it.

Model (derivation in ``docs/method.md``). Community ``i`` has ``N_i`` records and a fixed
``(epsilon_i, delta)``; write its budget as ``mu_i``-GDP (:func:`gdp_mu`). In the regime where
DP-SGD is efficient (noise multiplier ``sigma >~ 2``), ``S`` steps at sample rate ``q`` with noise
``sigma`` cost ``mu^2 ~= q^2 S / sigma^2`` (the CLT of Bu et al. 2020; Sander et al. 2023's "total
amount of noise"), and the round's mean noisy gradient carries per-coordinate noise variance
``sigma^2 C^2 / (b^2 T)`` with ``b = q N``, ``T`` steps. Eliminating ``sigma``:

    precision of a round  =  1 / noise variance  =  N_i^2 mu_i^2 phi_it / C^2,

where ``phi_it`` is the share of the community's budget ``mu_i^2`` spent in that round. Batch
size and local steps drop out: they only decide whether the efficient regime holds
(:func:`min_sample_rate`). A cluster ``k`` averaging its members with inverse-variance weights
(:func:`aggregation_weights`) has precision ``Pi_k phi`` with ``Pi_k = sum_i N_i^2 mu_i^2``
(:func:`cluster_precision`), and the noise-to-signal ratio of its aggregate over ``p_k`` trainable
parameters with mean clipped gradient norm ``G`` is

    NSR_k = C sqrt(p_k R_k / Pi_k) / G      (budget spread evenly over R_k rounds).

The levers that equalise ``NSR_k`` across clusters are therefore the capacity ``p_k`` (LoRA rank,
:mod:`fedcascade.clustering.ranks`) and the number of rounds ``R_k`` over which a cluster spends
its budget (:func:`cluster_rounds`); the warm-up share decides the noise of the clustering
itself (:func:`warmup_share`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import optimize, special

from fedcascade.clustering._checks import fail, labels_array, positive

__all__ = [
    "gdp_mu",
    "min_sample_rate",
    "warmup_share",
    "cluster_precision",
    "aggregation_weights",
    "cluster_rounds",
    "aggregate_noise_ratio",
    "participation_rounds",
    "NoisePlan",
    "cluster_noise_plan",
]


def _norm_cdf(x: float) -> float:
    return 0.5 * special.erfc(-x / math.sqrt(2.0))


def gdp_mu(epsilon: float, delta: float) -> float:
    """The ``mu`` of the Gaussian-DP guarantee that matches ``(epsilon, delta)``.

    Solves ``delta = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)`` (Dong, Roth & Su 2019)
    for ``mu``. Example: ``epsilon = 3, delta = 1e-5`` gives ``mu ~= 0.719``.
    """
    eps = positive(epsilon, "epsilon")
    if not 0.0 < float(delta) < 1.0:
        fail("delta", delta, "a number in (0, 1)")

    def gap(mu: float) -> float:
        return _norm_cdf(-eps / mu + mu / 2) - math.exp(eps) * _norm_cdf(-eps / mu - mu / 2) - delta

    hi = 1.0
    while gap(hi) < 0:
        hi *= 2.0
        if hi > 1e6:  # pragma: no cover - only for absurd inputs
            fail("epsilon", epsilon, "a finite budget")
    return float(optimize.brentq(gap, 1e-9, hi, xtol=1e-12))


def min_sample_rate(
    epsilon: float,
    delta: float,
    rounds: int,
    local_epochs: float = 1.0,
    sigma_target: float = 3.0,
) -> float:
    """Smallest Poisson sample rate that keeps the noise multiplier at ``sigma_target`` or above.

    With ``R`` rounds of ``E`` local epochs (``S = R E / q`` steps), the GDP approximation gives
    ``sigma ~= sqrt(q R E) / mu``; DP-SGD loses efficiency when ``sigma`` is small (the privacy
    amplification of subsampling weakens: measured with our RDP accountant at epsilon 3, a round's
    precision is 43% of the full-batch value at sigma 0.95 but 78-81% at sigma 3-4). Hence
    ``q >= sigma_target^2 mu^2 / (R E)``, capped at 1. Note that it does not depend on the
    community's size: small communities simply get small batches ``b = q N``.
    """
    mu = gdp_mu(epsilon, delta)
    r = positive(rounds, "rounds")
    e = positive(local_epochs, "local_epochs")
    st = positive(sigma_target, "sigma_target")
    return float(min(1.0, st * st * mu * mu / (r * e)))


def warmup_share(
    warmup_rounds: int,
    rounds: int,
    sample_rate: float,
    local_epochs: float = 1.0,
    warmup_sample_rate: float = 1.0,
    warmup_steps: int = 1,
) -> float:
    """Share of a community's budget spent in the warm-up rounds under one noise multiplier.

    With a single ``sigma`` for the whole run (how ``calibrate_noise_multiplier`` plans), a step
    at sample rate ``q`` costs about ``q^2 / sigma^2`` of ``mu^2``: a warm-up round of ``T_w``
    steps at rate ``q_w`` costs ``q_w^2 T_w``, a training round of ``E`` epochs ``q E``. So

        phi_w = W q_w^2 T_w / (W q_w^2 T_w + (R - W) q E).

    R-DPCFL's single full-batch first round (``W = 1``, ``q_w = 1``) with ``R = 200``, ``q = 0.004``
    spends ``1 / (1 + 199 * 0.004) = 56%`` of the budget on the clustering round.
    """
    W, R = int(warmup_rounds), int(rounds)
    if W < 0 or R < W:
        fail("warmup_rounds", warmup_rounds, f"an integer in [0, rounds = {rounds}]")
    q = positive(sample_rate, "sample_rate")
    if q > 1:
        fail("sample_rate", sample_rate, "a number in (0, 1]")
    qw = positive(warmup_sample_rate, "warmup_sample_rate")
    warm = W * qw * qw * int(warmup_steps)
    rest = (R - W) * q * positive(local_epochs, "local_epochs")
    return float(warm / (warm + rest)) if warm + rest > 0 else 0.0


def _eps_array(epsilon: float | Sequence[float], n: int) -> np.ndarray:
    e = np.asarray(epsilon, float)
    if e.ndim == 0:
        e = np.full(n, float(e))
    if e.shape != (n,) or not np.isfinite(e).all() or (e <= 0).any():
        fail("epsilon", epsilon, f"a positive number or {n} positive numbers (one per community)")
    return e


def _records(records: Sequence[int] | np.ndarray) -> np.ndarray:
    r = np.asarray(records, float)
    if r.ndim != 1 or r.size == 0 or not np.isfinite(r).all() or (r <= 0).any():
        fail(
            "records", records, "a non-empty 1-D list of positive record counts, one per community"
        )
    return r


def cluster_precision(
    records: Sequence[int] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    mu: float | Sequence[float] = 1.0,
) -> np.ndarray:
    """``Pi_k = sum_{i in k} N_i^2 mu_i^2``: the DP precision a cluster can reach per unit budget.

    Its inverse is the per-coordinate noise variance (in units of ``C^2``) of the cluster's
    inverse-variance weighted aggregate when every member spends its whole budget on it.
    Pass ``mu`` per community when budgets differ (:func:`gdp_mu`); 1 gives ``sum N_i^2``.
    """
    r = _records(records)
    lab = labels_array(labels, "labels", len(r))
    m = np.broadcast_to(np.asarray(mu, float), r.shape)
    return np.bincount(lab, weights=r * r * m * m)


def aggregation_weights(
    records: Sequence[int] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    scheme: Literal["precision", "records", "uniform"] = "precision",
    mu: float | Sequence[float] = 1.0,
) -> np.ndarray:
    """Weights of each community inside its cluster's average (they sum to one per cluster).

    ``"precision"``: ``w_i ~ N_i^2 mu_i^2``, the inverse of its DP noise variance - the
    minimum-variance unbiased combination when members share a mean; ``"records"``: FedAvg's
    ``w_i ~ N_i``; ``"uniform"``: R-DPCFL's plain average.
    """
    r = _records(records)
    lab = labels_array(labels, "labels", len(r))
    m = np.broadcast_to(np.asarray(mu, float), r.shape)
    if scheme == "precision":
        raw = r * r * m * m
    elif scheme == "records":
        raw = r.copy()
    elif scheme == "uniform":
        raw = np.ones_like(r)
    else:
        fail("scheme", scheme, "'precision', 'records' or 'uniform'")
    totals = np.bincount(lab, weights=raw)
    return raw / totals[lab]


def aggregate_noise_ratio(
    records: Sequence[int] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    weights: np.ndarray,
    param_counts: Sequence[float] | np.ndarray | float = 1.0,
    cluster_rounds_: Sequence[float] | np.ndarray | float = 1.0,
    mu: float | Sequence[float] = 1.0,
) -> np.ndarray:
    """Norm of the DP noise in each cluster's round aggregate, in units of the clip norm ``C``.

    ``NSR_k = sqrt(p_k R_k sum_{i in k} w_i^2 / (N_i^2 mu_i^2))`` for weights ``w`` summing to one
    per cluster and each member's budget ``mu_i`` (its training share) spread over ``R_k``
    rounds. Compare with the norm ``G <= C`` of the cluster's mean clipped gradient: above 1 the
    round update is mostly noise.
    """
    r = _records(records)
    lab = labels_array(labels, "labels", len(r))
    m = np.broadcast_to(np.asarray(mu, float), r.shape)
    w = np.asarray(weights, float)
    if w.shape != r.shape:
        fail("weights", w, f"{len(r)} weights, one per community")
    var = np.bincount(lab, weights=w * w / (r * r * m * m))
    k = len(var)
    p = np.broadcast_to(np.asarray(param_counts, float), (k,))
    rk = np.broadcast_to(np.asarray(cluster_rounds_, float), (k,))
    return np.sqrt(p * rk * var)


def cluster_rounds(
    precision: Sequence[float] | np.ndarray,
    rounds: int,
    param_counts: Sequence[float] | np.ndarray | float = 1.0,
    min_fraction: float = 0.5,
) -> np.ndarray:
    """Rounds over which each cluster spends its training budget, to equalise the round NSR.

    A cluster that spends its budget over ``R_k`` rounds has round noise variance
    ``~ R_k / Pi_k`` per coordinate, so ``NSR_k^2 ~ p_k R_k / Pi_k``. Giving the cluster with the
    most precision per parameter all ``R`` rounds and the others

        R_k = max(ceil(f R), round(R (Pi_k / p_k) / max_j (Pi_j / p_j)))

    equalises the NSR down to the floor ``f R`` (``min_fraction``), which keeps small clusters
    training often enough to converge. The total noise in a cluster's final model does not depend
    on ``R_k`` (fewer, cleaner steps); what changes is that no round of a small cluster is drowned
    in noise, so one learning rate suits every cluster.
    """
    pi = np.asarray(precision, float)
    if pi.ndim != 1 or pi.size == 0 or (pi <= 0).any() or not np.isfinite(pi).all():
        fail("precision", precision, "positive numbers, one per cluster")
    R = int(rounds)
    if R < 1 or R != rounds:
        fail("rounds", rounds, "an integer >= 1")
    if not 0.0 < float(min_fraction) <= 1.0:
        fail("min_fraction", min_fraction, "a number in (0, 1]")
    p = np.broadcast_to(np.asarray(param_counts, float), pi.shape)
    if (p <= 0).any():
        fail("param_counts", param_counts, "positive numbers")
    ratio = (pi / p) / (pi / p).max()
    floor = math.ceil(float(min_fraction) * R)
    return np.clip(np.round(R * ratio), floor, R).astype(int)


def participation_rounds(cluster_rounds_: int, rounds: int, start: int = 1) -> list[int]:
    """``R_k`` rounds spread evenly over ``start .. start + rounds - 1`` (always the last one)."""
    rk, R = int(cluster_rounds_), int(rounds)
    if not 0 <= rk <= R:
        fail("cluster_rounds_", cluster_rounds_, f"an integer in [0, rounds = {rounds}]")
    if rk == 0:
        return []
    # Count back from the end so the cluster's final model gets the last round's update.
    return sorted({start + R - 1 - (j * R) // rk for j in range(rk)})


@dataclass(frozen=True)
class NoisePlan:
    """Per-community DP plan after clustering (arrays are indexed by community).

    Attributes
    ----------
    weights : ndarray (n,)
        Aggregation weight inside its cluster (sum to one per cluster).
    sample_rate : ndarray (n,)
        Poisson sample rate of its training rounds (>= :func:`min_sample_rate`).
    steps_per_round : ndarray (n,)
        Local DP-SGD steps per training round (``ceil(local_epochs / q)``).
    cluster_rounds : ndarray (k,)
        Training rounds of each cluster (``R_k``).
    rounds_of : list of list of int
        For each cluster, the training rounds it takes part in (1-based, after warm-up).
    schedule : list of list of (float, int)
        For each community, the whole run's ``(sample_rate, steps)`` blocks including warm-up,
        to calibrate its noise multiplier.
    precision : ndarray (k,)
        ``Pi_k`` of every cluster.
    warmup_share : ndarray (n,)
        Share of each community's budget spent in the warm-up rounds (:func:`warmup_share`).
    nsr_before, nsr_after : ndarray (k,)
        :func:`aggregate_noise_ratio` of each cluster's round aggregate with FedAvg weights and
        every cluster in every training round, and with this plan (same ``p_k`` in both).
    """

    weights: np.ndarray
    sample_rate: np.ndarray
    steps_per_round: np.ndarray
    cluster_rounds: np.ndarray
    rounds_of: list[list[int]]
    schedule: list[list[tuple[float, int]]]
    precision: np.ndarray
    warmup_share: np.ndarray
    nsr_before: np.ndarray
    nsr_after: np.ndarray


def cluster_noise_plan(
    records: Sequence[int] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    *,
    epsilon: float | Sequence[float],
    delta: float,
    rounds: int,
    warmup_rounds: int = 0,
    local_epochs: float = 1.0,
    sample_rate: float | None = None,
    param_counts: Sequence[float] | np.ndarray | float = 1.0,
    weighting: Literal["precision", "records", "uniform"] = "precision",
    min_round_fraction: float = 0.5,
    sigma_target: float = 3.0,
) -> NoisePlan:
    """The DP plan that keeps small clusters from being drowned by noise.

    Parameters
    ----------
    records : sequence of int
        Training records ``N_i`` of every community (public counts).
    labels : sequence of int
        Cluster of every community (``0 .. k-1``).
    epsilon : float or sequence
        Each community's total budget (same ``delta`` for all).
    delta : float
    rounds : int
        Total rounds ``R`` of the run, including ``warmup_rounds``.
    warmup_rounds : int
        Full-batch warm-up rounds (one step each) before clustering; they appear first in every
        community's schedule.
    local_epochs : float
        Local epochs per training round.
    sample_rate : float, optional
        Requested sample rate; raised to :func:`min_sample_rate` for each community's number of
        training rounds. Default: the minimum.
    param_counts : float or sequence
        Trainable parameters ``p_k`` of each cluster (from its LoRA rank).
    weighting : {"precision", "records", "uniform"}
        Aggregation weights inside a cluster (:func:`aggregation_weights`).
    min_round_fraction : float
        Floor ``f`` of :func:`cluster_rounds`; 1 disables the rounds lever (every cluster trains
        every round, as needed when the noise cannot be recalibrated after warm-up).
    sigma_target : float
        Noise multiplier below which DP-SGD is considered inefficient (:func:`min_sample_rate`).

    Returns
    -------
    NoisePlan
    """
    r = _records(records)
    n = len(r)
    lab = labels_array(labels, "labels", n)
    eps = _eps_array(epsilon, n)
    mus = np.array([gdp_mu(e, delta) for e in eps])
    W, R = int(warmup_rounds), int(rounds)
    if W < 0 or W >= R:
        fail("warmup_rounds", warmup_rounds, f"an integer in [0, rounds - 1 = {R - 1}]")
    train_rounds = R - W
    pi = cluster_precision(r, lab, mus)
    k = len(pi)
    if (pi <= 0).any():
        fail("labels", lab.tolist(), f"every cluster 0 .. {k - 1} to have at least one community")
    p = np.broadcast_to(np.asarray(param_counts, float), (k,)).copy()
    rk = cluster_rounds(pi, train_rounds, p, min_round_fraction)
    weights = aggregation_weights(r, lab, weighting, mus)
    q = np.empty(n)
    for i in range(n):
        q_min = min_sample_rate(eps[i], delta, int(rk[lab[i]]), local_epochs, sigma_target)
        q[i] = min(1.0, max(q_min, float(sample_rate) if sample_rate is not None else 0.0))
    steps = np.ceil(positive(local_epochs, "local_epochs") / q).astype(int)
    schedule = []
    for i in range(n):
        blocks: list[tuple[float, int]] = []
        if W:
            blocks.append((1.0, W))
        blocks.append((float(q[i]), int(steps[i] * rk[lab[i]])))
        schedule.append(blocks)
    fedavg_w = aggregation_weights(r, lab, "records", mus)
    phi = np.array([warmup_share(W, W + int(rk[lab[i]]), q[i], local_epochs) for i in range(n)])
    phi_all = np.array([warmup_share(W, R, q[i], local_epochs) for i in range(n)])
    return NoisePlan(
        weights=weights,
        sample_rate=q,
        steps_per_round=steps,
        cluster_rounds=rk,
        rounds_of=[participation_rounds(int(x), train_rounds, start=W + 1) for x in rk],
        schedule=schedule,
        precision=pi,
        warmup_share=phi,
        nsr_before=aggregate_noise_ratio(
            r, lab, fedavg_w, p, train_rounds, mus * np.sqrt(1 - phi_all)
        ),
        nsr_after=aggregate_noise_ratio(r, lab, weights, p, rk, mus * np.sqrt(1 - phi)),
    )
