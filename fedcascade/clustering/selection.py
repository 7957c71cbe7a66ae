"""Private cluster selection from a community's own data: report-noisy-max and its accounting.

A community that picks a cluster model by the accuracy (or loss) of every model on its *own*
records touches raw private data, so the choice must be privatised and accounted
(design.md, "Privacy semantics"). Report-noisy-max with Gumbel noise of scale ``2 Delta / eps``
returns index ``j`` with probability exactly

    P(j) = exp(eps s_j / (2 Delta)) / sum_l exp(eps s_l / (2 Delta)),

the exponential mechanism, which is ``eps``-DP for scores of sensitivity ``Delta``. It is
moreover ``eps``-bounded-range, hence ``(alpha, alpha eps^2 / 8)``-RDP at every order
(Cesar & Rogers 2021) - the bound R-DPCFL's reference composes (``alpha * eps_select**2 / 8``).
"""

from __future__ import annotations

import math

import numpy as np

from fedcascade.clustering._checks import fail, positive, rng_of

__all__ = [
    "ORDERS",
    "exponential_mechanism_probs",
    "report_noisy_max",
    "report_noisy_min",
    "accuracy_sensitivity",
    "loss_sensitivity",
    "selection_rdp",
    "rdp_to_epsilon",
    "selection_epsilon",
]

#: RDP orders (the same grid as Opacus and ``fedcascade.privacy.rdp.ORDERS``).
ORDERS: np.ndarray = np.array([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)), float)


def _scores(scores: np.ndarray, name: str) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim not in (1, 2) or s.shape[-1] < 1:
        fail(name, s, "a 1-D array (one score per cluster) or 2-D (one row per community)")
    if not np.isfinite(s).all():
        fail(name, "non-finite values", "finite scores")
    return s


def _scale(epsilon: float, sensitivity: np.ndarray | float, rows: int | None) -> np.ndarray | float:
    eps = positive(epsilon, "epsilon", allow_inf=True)
    sens = np.asarray(sensitivity, dtype=np.float64)
    if sens.ndim > 1 or (sens.ndim == 1 and (rows is None or sens.shape[0] != rows)):
        fail("sensitivity", sens, "a number, or one number per row of scores")
    if not np.isfinite(sens).all() or (sens <= 0).any():
        fail("sensitivity", sens.tolist(), "finite numbers > 0")
    if math.isinf(eps):
        return 0.0 * sens
    return 2.0 * sens / eps


def exponential_mechanism_probs(
    scores: np.ndarray, epsilon: float, sensitivity: float | np.ndarray
) -> np.ndarray:
    """Selection probabilities of :func:`report_noisy_max`: ``softmax(eps * s / (2 Delta))``.

    Works on one score vector ``(k,)`` or a batch ``(n, k)`` (``sensitivity`` a number or ``(n,)``).
    """
    s = _scores(scores, "scores")
    scale = _scale(epsilon, sensitivity, s.shape[0] if s.ndim == 2 else None)
    scale = np.asarray(scale)
    if s.ndim == 2:
        scale = scale.reshape(-1, 1) if scale.ndim else scale
    if np.all(scale == 0):
        best = s == s.max(axis=-1, keepdims=True)
        return best / best.sum(axis=-1, keepdims=True)
    z = s / scale
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def report_noisy_max(
    scores: np.ndarray,
    epsilon: float,
    sensitivity: float | np.ndarray,
    rng: np.random.Generator | int | None,
) -> int | np.ndarray:
    """Index of the largest score after adding Gumbel noise of scale ``2 * sensitivity / epsilon``.

    Parameters
    ----------
    scores : array (k,) or (n, k)
        Scores of the ``k`` candidates (e.g. accuracy in [0, 1] of each cluster model on the
        community's own training records); a 2-D array selects once per row.
    epsilon : float
        Privacy cost of this selection (pure DP). ``inf`` returns the exact argmax
        (non-private; only for baselines that are reported as not private).
    sensitivity : float or array (n,)
        Largest change of any score when one record is added or removed
        (:func:`accuracy_sensitivity`, :func:`loss_sensitivity`).
    rng : numpy Generator, int or None

    Returns
    -------
    int or ndarray
        The chosen index (an ``int`` for 1-D scores, an ``(n,)`` array for 2-D).
    """
    s = _scores(scores, "scores")
    scale = np.asarray(_scale(epsilon, sensitivity, s.shape[0] if s.ndim == 2 else None))
    if s.ndim == 2 and scale.ndim:
        scale = scale.reshape(-1, 1)
    noisy = s + rng_of(rng).gumbel(0.0, 1.0, size=s.shape) * scale
    pick = noisy.argmax(axis=-1)
    return int(pick) if s.ndim == 1 else pick.astype(int)


def report_noisy_min(
    losses: np.ndarray,
    epsilon: float,
    sensitivity: float | np.ndarray,
    rng: np.random.Generator | int | None,
) -> int | np.ndarray:
    """Index of the smallest loss, privatised as :func:`report_noisy_max` of the negated losses.

    IFCA's cluster choice: ``losses[j]`` is the mean loss of cluster model ``j`` on the
    community's own records, each record's loss clipped to ``[0, L]`` so that the sensitivity
    :func:`loss_sensitivity` is finite.
    """
    return report_noisy_max(-_scores(losses, "losses"), epsilon, sensitivity, rng)


def accuracy_sensitivity(n_records: int, *, conservative: bool = False) -> float:
    """Sensitivity of an accuracy in ``[0, 1]`` computed on ``n_records`` records.

    With the record count public (design.md: counts are public), neighbouring data sets differ
    in one record's content and the accuracy moves by at most ``1 / n``. Under add/remove
    adjacency the accuracy ``c / n`` of the larger set and ``c' / (n - 1)`` of the smaller differ
    by at most ``1 / n`` as well; ``conservative=True`` gives R-DPCFL's ``1 / (n - 1)``
    (its reference uses ``100 / (N - 1)`` for accuracies in percent).
    """
    if int(n_records) != n_records or n_records < (2 if conservative else 1):
        fail("n_records", n_records, f"an integer >= {2 if conservative else 1}")
    n = int(n_records)
    return 1.0 / (n - 1) if conservative else 1.0 / n


def loss_sensitivity(n_records: int, loss_bound: float) -> float:
    """Sensitivity ``L / n`` of a mean loss whose per-record values are clipped to ``[0, L]``."""
    if int(n_records) != n_records or n_records < 1:
        fail("n_records", n_records, "an integer >= 1")
    return positive(loss_bound, "loss_bound") / int(n_records)


def selection_rdp(epsilon: float, count: int, orders: np.ndarray | None = None) -> np.ndarray:
    """RDP curve of ``count`` report-noisy-max selections, each ``epsilon``-DP.

    Each selection is ``epsilon``-bounded-range, hence ``(alpha, alpha eps^2 / 8)``-RDP; as an
    ``eps``-DP mechanism it is also ``(alpha, eps)``-RDP. RDP adds over compositions, so the
    curve is ``count * min(eps, alpha eps^2 / 8)``. Add it to the DP-SGD RDP curve of the same
    community (same orders) before converting to ``(epsilon, delta)``.
    """
    eps = positive(epsilon, "epsilon", allow_zero=True)
    if int(count) != count or count < 0:
        fail("count", count, "an integer >= 0")
    a = ORDERS if orders is None else np.asarray(orders, float)
    return int(count) * np.minimum(eps, a * eps * eps / 8.0)


def rdp_to_epsilon(rdp: np.ndarray, delta: float, orders: np.ndarray | None = None) -> float:
    """Convert an RDP curve to ``epsilon`` at ``delta`` (Balle et al. 2020, as Opacus does)."""
    if not 0.0 < float(delta) < 1.0:
        fail("delta", delta, "a number in (0, 1)")
    a = ORDERS if orders is None else np.asarray(orders, float)
    r = np.asarray(rdp, float)
    if r.shape != a.shape:
        fail("rdp", r, f"{a.shape[0]} values, one per order")
    eps = r - (math.log(delta) + np.log(a)) / (a - 1) + np.log((a - 1) / a)
    eps = eps[np.isfinite(eps)]
    return float(max(eps.min(), 0.0)) if eps.size else math.inf


def selection_epsilon(epsilon: float, count: int, delta: float) -> float:
    """``epsilon`` at ``delta`` of ``count`` selections alone: the better of RDP and ``count * eps``."""
    pure = positive(epsilon, "epsilon", allow_zero=True) * int(count)
    if count == 0 or epsilon == 0:
        return 0.0
    return min(pure, rdp_to_epsilon(selection_rdp(epsilon, count), delta))
