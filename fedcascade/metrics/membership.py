"""Membership-inference attacks per group: does the model reveal who was in its training set?

Two attacks score each record; a higher score means "more likely a member".

* Loss threshold (Yeom et al. 2018): ``score = -loss``. Members were fitted, so their loss is
  lower. Needs nothing but the target model's per-record loss.
* Calibrated (per-example): the loss is compared with what the record's loss would be had the
  model not trained on it, which removes the record's intrinsic difficulty.
  - one reference model (difficulty calibration, Watson et al. 2022):
    ``score = loss_ref - loss``;
  - several reference / shadow models that did not see the record (offline likelihood-ratio
    style, Carlini et al. 2022): ``score = (mean(loss_ref) - loss) / std(loss_ref)``.

Each attack is summarised by the ROC AUC (probability that a random member outscores a random
non-member, ties counting 1/2) and the membership advantage ``max_t TPR(t) - FPR(t)``
(Yeom et al. 2018), both computed on a community's (or group's) training records against its
held-out records.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import rankdata

from fedcascade.errors import DataError
from fedcascade.metrics._groups import as_1d, group_index, group_key, same_length

__all__ = [
    "roc_auc",
    "max_advantage",
    "loss_threshold_scores",
    "calibrated_scores",
    "attack_summary",
    "membership_by_group",
]


def roc_auc(member_scores: Any, nonmember_scores: Any) -> float:
    """ROC AUC of scores separating members from non-members (Mann-Whitney U / (n_m n_n)).

    Parameters
    ----------
    member_scores, nonmember_scores : array-like of shape (n_m,), (n_n,)
        Attack scores; higher means "member".

    Returns
    -------
    float
        0.5 for a useless attack, 1 for a perfect one; NaN when either side is empty.
    """
    pos = as_1d(member_scores, "member_scores", dtype=float)
    neg = as_1d(nonmember_scores, "nonmember_scores", dtype=float)
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    ranks = rankdata(np.concatenate([pos, neg]))  # average ranks: ties count 1/2
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def max_advantage(member_scores: Any, nonmember_scores: Any) -> float:
    """Membership advantage ``max_t [P(score_m >= t) - P(score_n >= t)]`` over all thresholds.

    The threshold is chosen on the same records it is scored on, so on small groups this is an
    optimistic (upper) estimate: with 20 + 20 records a random attack already scores about 0.3.

    Returns
    -------
    float
        In ``[0, 1]`` (the threshold above every score gives 0); NaN when either side is empty.
    """
    pos = np.sort(as_1d(member_scores, "member_scores", dtype=float))
    neg = np.sort(as_1d(nonmember_scores, "nonmember_scores", dtype=float))
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    thresholds = np.concatenate([pos, neg])
    tpr = 1.0 - np.searchsorted(pos, thresholds, side="left") / pos.size
    fpr = 1.0 - np.searchsorted(neg, thresholds, side="left") / neg.size
    return float(max(0.0, np.max(tpr - fpr)))


def loss_threshold_scores(losses: Any) -> np.ndarray:
    """Scores of the loss-threshold attack: ``-loss``."""
    return -as_1d(losses, "losses", dtype=float)


def calibrated_scores(losses: Any, reference_losses: Any, min_std: float = 1e-6) -> np.ndarray:
    """Per-example calibrated attack scores.

    Parameters
    ----------
    losses : array-like of shape (n,)
        The target model's loss on each record.
    reference_losses : array-like of shape (n,) or (n_ref, n)
        Loss of each record under one reference model, or under ``n_ref`` reference (shadow)
        models, none of which trained on the record.
    min_std : float
        Floor on the reference spread, so records every reference model fits equally do not
        divide by zero.

    Returns
    -------
    np.ndarray of shape (n,)
        ``ref - loss`` for one reference model; ``(mean(ref) - loss) / std(ref)`` for several.
    """
    loss = as_1d(losses, "losses", dtype=float)
    ref = np.asarray(reference_losses, dtype=float)
    if ref.ndim == 1 or (ref.ndim == 2 and ref.shape[0] == 1):
        ref = ref.reshape(-1)
        same_length({"losses": loss, "reference_losses": ref})
        return ref - loss
    if ref.ndim != 2 or ref.shape[1] != loss.size:
        raise DataError(
            "reference_losses",
            f"an array of shape {ref.shape}",
            f"shape ({loss.size},) or (n_ref, {loss.size})",
        )
    std = np.maximum(ref.std(axis=0, ddof=1), min_std)
    return (ref.mean(axis=0) - loss) / std


def attack_summary(member_scores: Any, nonmember_scores: Any) -> dict[str, float]:
    """``{"auc": ..., "advantage": ...}`` of one attack's scores."""
    return {
        "auc": roc_auc(member_scores, nonmember_scores),
        "advantage": max_advantage(member_scores, nonmember_scores),
    }


def membership_by_group(
    member_losses: Any,
    member_groups: Any,
    nonmember_losses: Any,
    nonmember_groups: Any,
    member_reference_losses: Any | None = None,
    nonmember_reference_losses: Any | None = None,
) -> dict[Any, dict[str, float]]:
    """Both attacks, per group, on training (member) versus held-out (non-member) records.

    Parameters
    ----------
    member_losses, member_groups : array-like of shape (n_m,)
        The target model's loss on each training record, and the record's group.
    nonmember_losses, nonmember_groups : array-like of shape (n_n,)
        The same for held-out records the model never trained on.
    member_reference_losses, nonmember_reference_losses : array-like, optional
        Reference losses of shape (n_m,) / (n_n,) or (n_ref, n_m) / (n_ref, n_n) for the
        calibrated attack (see :func:`calibrated_scores`); omit both to skip it.

    Returns
    -------
    dict
        ``{group: {"mia_auc", "mia_advantage", "mia_n_members", "mia_n_nonmembers"}}``, plus
        ``"mia_auc_calibrated"`` and ``"mia_advantage_calibrated"`` when references are given.
        A group present on one side only gets NaN scores.
    """
    m_loss = as_1d(member_losses, "member_losses", dtype=float)
    n_loss = as_1d(nonmember_losses, "nonmember_losses", dtype=float)
    m_grp = as_1d(member_groups, "member_groups")
    n_grp = as_1d(nonmember_groups, "nonmember_groups")
    same_length({"member_losses": m_loss, "member_groups": m_grp})
    same_length({"nonmember_losses": n_loss, "nonmember_groups": n_grp})
    if (member_reference_losses is None) != (nonmember_reference_losses is None):
        raise DataError(
            "member_reference_losses / nonmember_reference_losses",
            "only one of them",
            "both (calibrated attack) or neither",
        )
    scores = {"": (loss_threshold_scores(m_loss), loss_threshold_scores(n_loss))}
    if member_reference_losses is not None:
        scores["_calibrated"] = (
            calibrated_scores(m_loss, member_reference_losses),
            calibrated_scores(n_loss, nonmember_reference_losses),
        )
    try:
        names, _ = group_index(np.concatenate([m_grp, n_grp]))
    except (TypeError, ValueError) as err:  # e.g. str labels on one side, ints on the other
        raise DataError(
            "member_groups / nonmember_groups",
            f"labels of types {m_grp.dtype} and {n_grp.dtype}",
            "group labels of one kind on both sides",
        ) from err
    out: dict[Any, dict[str, float]] = {}
    for name in names:
        in_m, in_n = m_grp == name, n_grp == name
        row = {"mia_n_members": float(in_m.sum()), "mia_n_nonmembers": float(in_n.sum())}
        for suffix, (sm, sn) in scores.items():
            row[f"mia_auc{suffix}"] = roc_auc(sm[in_m], sn[in_n])
            row[f"mia_advantage{suffix}"] = max_advantage(sm[in_m], sn[in_n])
        out[group_key(name)] = row
    return out
