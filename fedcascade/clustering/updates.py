"""Client updates as matrices: flatten named arrays, average them, and the DP noise they carry."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from fedcascade.clustering._checks import fail, positive

__all__ = ["flatten_updates", "unflatten", "weighted_average", "dp_update_noise_std"]

Arrays = dict[str, np.ndarray]


def _check_same_layout(updates: Sequence[Mapping[str, np.ndarray]], keys: Sequence[str]) -> None:
    ref = updates[0]
    for i, upd in enumerate(updates):
        missing = [k for k in keys if k not in upd]
        extra = [k for k in upd if k not in ref]
        if missing or extra:
            fail(
                f"updates[{i}]",
                f"keys missing {missing[:3]}, unexpected {extra[:3]}",
                f"the same {len(keys)} array names as updates[0] (e.g. {list(keys)[:3]})",
            )
        for k in keys:
            if np.shape(upd[k]) != np.shape(ref[k]):
                fail(
                    f"updates[{i}]['{k}']",
                    f"shape {np.shape(upd[k])}",
                    f"shape {np.shape(ref[k])} as in updates[0] (all clients must use the same "
                    "LoRA rank; pad or truncate with fedcascade.clustering.lora_aggregate first)",
                )


def flatten_updates(
    updates: Sequence[Mapping[str, np.ndarray]],
    keys: Sequence[str] | None = None,
    dtype: type = np.float64,
) -> np.ndarray:
    """Stack each client's named arrays into one row: a ``(n_clients, p)`` matrix.

    Parameters
    ----------
    updates : sequence of dict
        One ``{name: array}`` per client (e.g. adapter deltas). All must have the same names and
        shapes.
    keys : sequence of str, optional
        Order (and subset) of the names to use; default: the order of ``updates[0]``.
    dtype : numpy dtype
        Output dtype (float64 by default, so Gram matrices over thousands of coordinates stay
        accurate).

    Returns
    -------
    numpy.ndarray
        Shape ``(len(updates), p)`` with ``p`` the total number of scalars.

    Raises
    ------
    ValueError
        If ``updates`` is empty or the clients' arrays differ in names or shapes.
    """
    if len(updates) == 0:
        fail("updates", [], "at least one client's arrays")
    keys = list(updates[0].keys()) if keys is None else list(keys)
    if not keys:
        fail("updates[0]", {}, "at least one named array")
    _check_same_layout(updates, keys)
    sizes = [int(np.size(updates[0][k])) for k in keys]
    out = np.empty((len(updates), sum(sizes)), dtype=dtype)
    for i, upd in enumerate(updates):
        pos = 0
        for k, s in zip(keys, sizes):
            out[i, pos : pos + s] = np.asarray(upd[k]).ravel()
            pos += s
    return out


def unflatten(vector: np.ndarray, template: Mapping[str, np.ndarray]) -> Arrays:
    """Inverse of :func:`flatten_updates` for one row: named arrays shaped like ``template``."""
    vector = np.asarray(vector).ravel()
    total = sum(int(np.size(v)) for v in template.values())
    if vector.size != total:
        fail("vector", f"{vector.size} values", f"{total} values (the size of the template)")
    out: Arrays = {}
    pos = 0
    for k, v in template.items():
        s = int(np.size(v))
        out[k] = vector[pos : pos + s].reshape(np.shape(v)).astype(np.asarray(v).dtype, copy=False)
        pos += s
    return out


def weighted_average(
    arrays_list: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float] | np.ndarray
) -> Arrays:
    """Weighted average of named arrays; weights are normalised to sum to one.

    Parameters
    ----------
    arrays_list : sequence of dict
        One ``{name: array}`` per client, all with the same names and shapes.
    weights : sequence of float
        Non-negative, not all zero (e.g. records, or inverse noise variances from
        :func:`fedcascade.clustering.noise_plan.aggregation_weights`).

    Returns
    -------
    dict
        ``{name: average}`` in the dtype of the inputs (accumulated in float64).
    """
    if len(arrays_list) == 0:
        fail("arrays_list", [], "at least one client's arrays")
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (len(arrays_list),):
        fail("weights", w, f"{len(arrays_list)} weights, one per client")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        fail("weights", w.tolist(), "finite, non-negative weights with a positive sum")
    w = w / w.sum()
    keys = list(arrays_list[0].keys())
    _check_same_layout(arrays_list, keys)
    out: Arrays = {}
    for k in keys:
        acc = np.zeros(np.shape(arrays_list[0][k]), dtype=np.float64)
        for wi, arrays in zip(w, arrays_list):
            if wi:
                acc += wi * np.asarray(arrays[k], dtype=np.float64)
        dtype = np.result_type(*[np.asarray(a[k]).dtype for a in arrays_list])
        out[k] = acc.astype(dtype if np.issubdtype(dtype, np.floating) else np.float64)
    return out


def dp_update_noise_std(
    noise_multiplier: float,
    clip_norm: float,
    batch_size: float,
    steps: int,
    lr: float = 1.0,
) -> float:
    """Per-coordinate std of the DP-SGD noise inside one client's round update.

    Each DP-SGD step adds ``N(0, sigma^2 C^2 I)`` to the sum of clipped per-record gradients and
    divides by the (expected) batch size ``b`` (Opacus with Poisson sampling); plain SGD then moves
    by ``-lr`` times that. After ``T`` steps the update's noise is ``N(0, lr^2 sigma^2 C^2 T / b^2 I)``
    whatever the gradients were, so its std per coordinate is ``lr * sigma * C * sqrt(T) / b``.
    (With momentum or Adam the noise is transformed and this formula does not hold; pass
    ``noise_scales=None`` to :func:`~fedcascade.clustering.cascade.cascade_cluster` to estimate it.)

    Parameters
    ----------
    noise_multiplier : float
        ``sigma`` (0 for no DP).
    clip_norm : float
        Per-record clipping norm ``C``.
    batch_size : float
        Expected batch size ``b = q * n_records``.
    steps : int
        Local steps ``T`` in the round.
    lr : float
        Local learning rate (1.0 gives the noise of the sum of the averaged noisy gradients).

    Returns
    -------
    float
        ``lr * sigma * C * sqrt(T) / b``.
    """
    sigma = positive(noise_multiplier, "noise_multiplier", allow_zero=True)
    c = positive(clip_norm, "clip_norm")
    b = positive(batch_size, "batch_size")
    if int(steps) != steps or steps < 1:
        fail("steps", steps, "an integer >= 1")
    return float(positive(lr, "lr") * sigma * c * math.sqrt(int(steps)) / b)
