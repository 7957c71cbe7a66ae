"""Aggregating LoRA adapters of different ranks (HetLoRA, FlexLoRA) as pure functions.

Arrays follow peft's naming: ``<layer>.lora_A.<adapter>.weight`` of shape ``(r, in, ...)`` and
``<layer>.lora_B.<adapter>.weight`` of shape ``(out, r, ...)``; every other array (e.g. the head)
has the same shape for every client and is averaged plainly. peft scales the product by
``lora_alpha / r``; pass ``lora_alpha`` so that padding and truncation keep each client's dense
update ``(alpha / r) B A`` unchanged (``None``: no rank-dependent scaling).

* HetLoRA (Cho et al., EMNLP 2024): zero-pad every client to ``r_max`` (exact: the padded
  product equals the original), average, and give each cluster the first ``r_k`` ranks back
  (:func:`truncate_lora`). Its "sparsity-weighted" variant weights clients by ``|B A|_F``; under
  DP the noise inflates that norm, so it rewards the noisiest clients - off by default here.
* FlexLoRA (Bai et al. 2024): average the dense products ``(alpha/r_i) B_i A_i`` and hand each
  target rank the best rank-``r`` factorisation of the average (truncated SVD), so no client's
  rank limits what the others learned.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np

from fedcascade.clustering._checks import fail
from fedcascade.clustering.updates import weighted_average

__all__ = [
    "lora_layers",
    "lora_rank",
    "pad_lora",
    "truncate_lora",
    "hetlora_aggregate",
    "flexlora_aggregate",
]

Arrays = dict[str, np.ndarray]
_A = re.compile(r"^(?P<layer>.*)\.lora_A\.(?P<adapter>[^.]+)\.weight$")


def lora_layers(arrays: Mapping[str, np.ndarray]) -> dict[str, tuple[str, str]]:
    """``{layer: (name of A, name of B)}`` for every LoRA pair in ``arrays``."""
    out: dict[str, tuple[str, str]] = {}
    for name in arrays:
        m = _A.match(name)
        if m:
            b_name = f"{m['layer']}.lora_B.{m['adapter']}.weight"
            if b_name not in arrays:
                fail(f"arrays['{name}']", "a LoRA A matrix without its B", f"'{b_name}' too")
            out[f"{m['layer']}.{m['adapter']}"] = (name, b_name)
    n_b = sum(".lora_B." in k for k in arrays)
    if n_b != len(out):
        fail(
            "arrays", f"{n_b} LoRA B matrices for {len(out)} A matrices", "paired A and B matrices"
        )
    return out


def lora_rank(arrays: Mapping[str, np.ndarray]) -> int:
    """The LoRA rank of ``arrays`` (0 if there is no LoRA pair); all layers must agree."""
    ranks = {int(np.shape(arrays[a])[0]) for a, _ in lora_layers(arrays).values()}
    if len(ranks) > 1:
        fail("arrays", f"LoRA ranks {sorted(ranks)}", "one rank for every layer")
    return ranks.pop() if ranks else 0


def _scaling(alpha: float | None, r: int) -> float:
    return 1.0 if alpha is None else float(alpha) / r


def _resize(
    arrays: Mapping[str, np.ndarray], r_to: int, lora_alpha: float | None, pad: bool
) -> Arrays:
    r_from = lora_rank(arrays)
    if int(r_to) != r_to or r_to < 1:
        fail("rank", r_to, "an integer >= 1")
    if pad and r_to < r_from:
        fail("rank", r_to, f"a rank >= the current rank {r_from} (use truncate_lora to shrink)")
    if not pad and r_to > r_from:
        fail("rank", r_to, f"a rank <= the current rank {r_from} (use pad_lora to grow)")
    out = {k: np.asarray(v).copy() for k, v in arrays.items()}
    if r_from == 0:
        return out
    # Keep (alpha / r) B A fixed: B absorbs the change of scaling.
    fix = _scaling(lora_alpha, r_from) / _scaling(lora_alpha, r_to)
    for a_name, b_name in lora_layers(arrays).values():
        a, b = np.asarray(arrays[a_name]), np.asarray(arrays[b_name])
        if pad:
            a_new = np.zeros((r_to,) + a.shape[1:], dtype=a.dtype)
            a_new[:r_from] = a
            b_new = np.zeros(b.shape[:1] + (r_to,) + b.shape[2:], dtype=b.dtype)
            b_new[:, :r_from] = b * fix
        else:
            a_new = a[:r_to].copy()
            b_new = (b[:, :r_to] * fix).astype(b.dtype)
        out[a_name], out[b_name] = a_new, b_new
    return out


def pad_lora(
    arrays: Mapping[str, np.ndarray], rank: int, lora_alpha: float | None = None
) -> Arrays:
    """Zero-pad every LoRA pair to ``rank``; the dense update ``(alpha/r) B A`` is unchanged."""
    return _resize(arrays, rank, lora_alpha, pad=True)


def truncate_lora(
    arrays: Mapping[str, np.ndarray], rank: int, lora_alpha: float | None = None
) -> Arrays:
    """Keep the first ``rank`` components of every LoRA pair (HetLoRA's hand-back), rescaling
    ``B`` for peft's ``alpha / r`` so the kept components contribute what they did before."""
    return _resize(arrays, rank, lora_alpha, pad=False)


def hetlora_aggregate(
    updates: Sequence[Mapping[str, np.ndarray]],
    weights: Sequence[float] | np.ndarray,
    r_max: int,
    lora_alpha: float | None = None,
    *,
    norm_weighting: bool = False,
) -> Arrays:
    """HetLoRA: zero-pad every client to ``r_max`` and average.

    Parameters
    ----------
    updates : sequence of dict
        Each client's adapter arrays, at any rank ``<= r_max``.
    weights : sequence of float
        Base weights (e.g. :func:`~fedcascade.clustering.noise_plan.aggregation_weights`).
    r_max : int
        Rank of the result.
    lora_alpha : float, optional
        peft's ``lora_alpha`` (scaling ``alpha / r``).
    norm_weighting : bool
        Multiply each client's weight, per layer, by ``|(alpha/r) B A|_F`` (HetLoRA's
        sparsity-weighted aggregation). Not advisable under DP (noise inflates the norm).

    Returns
    -------
    dict
        Arrays at rank ``r_max``; hand a cluster of rank ``r`` its part with :func:`truncate_lora`.
    """
    if len(updates) == 0:
        fail("updates", [], "at least one client's arrays")
    padded = [pad_lora(u, r_max, lora_alpha) for u in updates]
    w = np.asarray(weights, float)
    out = weighted_average(padded, w)
    if norm_weighting:
        for a_name, b_name in lora_layers(padded[0]).values():
            norms = []
            for u in padded:
                a, b = u[a_name], u[b_name]
                dense = b.reshape(b.shape[0], r_max) @ a.reshape(r_max, -1)
                norms.append(np.linalg.norm(dense) * _scaling(lora_alpha, r_max))
            wl = w * np.asarray(norms)
            if wl.sum() <= 0:
                wl = w
            sub = weighted_average([{a_name: u[a_name], b_name: u[b_name]} for u in padded], wl)
            out.update(sub)
    return out


def flexlora_aggregate(
    updates: Sequence[Mapping[str, np.ndarray]],
    weights: Sequence[float] | np.ndarray,
    ranks_out: Sequence[int],
    lora_alpha: float | None = None,
) -> dict[int, Arrays]:
    """FlexLoRA: average the dense updates, then factorise the average at each target rank.

    For every LoRA layer, ``W = sum_i w_i (alpha / r_i) B_i A_i`` (weights normalised); with the
    SVD ``W = U S V^T``, rank ``r`` gets ``B = U_r sqrt(S_r / s)``, ``A = sqrt(S_r / s) V_r^T``
    (``s = alpha / r``), the best rank-``r`` approximation of ``W`` (Eckart-Young) split evenly
    between the factors. Other arrays are plain weighted averages.

    Returns
    -------
    dict
        ``{rank: arrays}`` for every distinct rank in ``ranks_out``.
    """
    if len(updates) == 0:
        fail("updates", [], "at least one client's arrays")
    w = np.asarray(weights, float)
    if w.shape != (len(updates),) or (w < 0).any() or w.sum() <= 0:
        fail("weights", w.tolist(), f"{len(updates)} non-negative weights with a positive sum")
    w = w / w.sum()
    layers = lora_layers(updates[0])
    lora_names = {n for pair in layers.values() for n in pair}
    others = [{k: v for k, v in u.items() if k not in lora_names} for u in updates]
    for i, u in enumerate(updates):
        if lora_layers(u).keys() != layers.keys():
            fail(f"updates[{i}]", sorted(lora_layers(u)), f"the LoRA layers {sorted(layers)}")
    rest = weighted_average(others, w) if others[0] else {}
    targets = sorted({int(r) for r in ranks_out})
    if not targets or targets[0] < 1:
        fail("ranks_out", list(ranks_out), "ranks >= 1")
    result: dict[int, Arrays] = {r: dict(rest) for r in targets}
    for a_name, b_name in layers.values():
        a0, b0 = np.asarray(updates[0][a_name]), np.asarray(updates[0][b_name])
        out_dim, in_shape = b0.shape[0], a0.shape[1:]
        dense = np.zeros((out_dim, int(np.prod(in_shape))))
        for wi, u in zip(w, updates):
            a, b = np.asarray(u[a_name], float), np.asarray(u[b_name], float)
            r = a.shape[0]
            dense += wi * _scaling(lora_alpha, r) * (b.reshape(out_dim, r) @ a.reshape(r, -1))
        U, S, Vt = np.linalg.svd(dense, full_matrices=False)
        for r in targets:
            m = min(r, S.size)
            root = np.sqrt(S[:m] / _scaling(lora_alpha, r))
            a_new = np.zeros((r, dense.shape[1]))
            b_new = np.zeros((out_dim, r))
            a_new[:m] = root[:, None] * Vt[:m]
            b_new[:, :m] = U[:, :m] * root[None, :]
            result[r][a_name] = a_new.reshape((r,) + in_shape).astype(a0.dtype)
            result[r][b_name] = b_new.reshape((out_dim, r) + b0.shape[2:]).astype(b0.dtype)
    return result
