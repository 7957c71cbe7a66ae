"""One run's disparity report: every metric, per group and per sub-distribution.

Fill a :class:`RunArrays` from a finished run (one row per test record) and call
:func:`group_report`; :func:`report_rows` flattens reports of several runs into the rows that
:func:`fedcascade.metrics.cascade_table` and :func:`fedcascade.metrics.plot_cascade` take.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedcascade.errors import DataError
from fedcascade.metrics._groups import (
    as_1d,
    as_2d,
    group_index,
    group_key,
    group_mean,
    same_length,
    spread,
)
from fedcascade.metrics.calibration import calibration_by_group
from fedcascade.metrics.config import MetricsConfig
from fedcascade.metrics.directions import NOT_METRICS, direction
from fedcascade.metrics.membership import membership_by_group
from fedcascade.metrics.multiplicity import multiplicity_by_group
from fedcascade.metrics.performance import cross_entropy
from fedcascade.metrics.representation import (
    effective_rank,
    intrinsic_dimension,
    participation_ratio,
)

__all__ = ["MembershipArrays", "RunArrays", "group_report", "report_rows", "noise_key"]


@dataclass
class MembershipArrays:
    """Per-record losses for the membership-inference attacks of one run.

    Attributes
    ----------
    member_losses : np.ndarray of shape (n_m,)
        The final model's loss on records it trained on (a sample of each community's
        training set is enough).
    member_groups : np.ndarray of shape (n_m,)
        Group label of each member record (same labels as ``RunArrays.groups``).
    nonmember_losses : np.ndarray of shape (n_n,)
        The final model's loss on held-out records of the same communities, never trained on.
    nonmember_groups : np.ndarray of shape (n_n,)
        Group label of each held-out record.
    member_reference_losses, nonmember_reference_losses : np.ndarray, optional
        Loss of the same records under one reference model (shape (n_m,), (n_n,)) or several
        (shape (n_ref, n_m), (n_ref, n_n)) that trained on neither set, e.g. the pretrained
        backbone or models of other seeds trained without these communities. Enables the
        calibrated attack; give both or neither.
    member_subdistributions, nonmember_subdistributions : np.ndarray, optional
        Sub-distribution id of each record, for the per-sub-distribution view.
    """

    member_losses: Any
    member_groups: Any
    nonmember_losses: Any
    nonmember_groups: Any
    member_reference_losses: Any = None
    nonmember_reference_losses: Any = None
    member_subdistributions: Any = None
    nonmember_subdistributions: Any = None


@dataclass
class RunArrays:
    """Everything :func:`group_report` needs from one finished run, one row per test record.

    Attributes
    ----------
    groups : np.ndarray of str, shape (n,)
        Group label of each test record (a sensitive attribute value, or the community).
    labels : np.ndarray of int, shape (n,)
        True class.
    probs : np.ndarray of shape (n, n_classes)
        Predicted probabilities (rows sum to 1). With 2 classes, class 1 is "positive" and the
        demographic-parity / equalized-odds differences are reported.
    subdistributions : np.ndarray of int, shape (n,), optional
        Ground-truth sub-distribution id of each record; adds a per-sub-distribution view.
    losses : np.ndarray of shape (n,), optional
        Per-record loss; default: cross-entropy computed from ``probs``.
    embeddings : np.ndarray of shape (n, d_emb), optional
        The model's representation of each record (``fedcascade.models.evaluation.embed``).
    inputs : np.ndarray of shape (n, ...), optional
        Raw (standardised) inputs; flattened to (n, d_in) for the input-space dimension that
        the flattening score compares against, and used by the robustness metrics when
        ``model_inputs`` is not given.
    membership : MembershipArrays, optional
        Losses of training versus held-out records for the membership-inference attacks.
    epsilon : Mapping[group, float], optional
        Each group's privacy budget spent, reported as is.
    model : torch.nn.Module, optional
        The final model (``forward(x)`` gives logits) for the robustness metrics.
    model_inputs : array-like or torch.Tensor of shape (n, ...), optional
        What ``model`` takes, aligned with the records; default ``inputs``.
    seed_predictions : np.ndarray of shape (n_seeds, n), optional
        Predicted classes of the same config trained with different seeds, on the same
        records in the same order, for the multiplicity metrics.
    """

    groups: Any
    labels: Any
    probs: Any
    subdistributions: Any = None
    losses: Any = None
    embeddings: Any = None
    inputs: Any = None
    membership: MembershipArrays | None = None
    epsilon: Mapping[Any, float] | None = None
    model: Any = None
    model_inputs: Any = None
    seed_predictions: Any = None

    def __post_init__(self) -> None:
        self.groups = as_1d(self.groups, "RunArrays.groups")
        self.labels = as_1d(self.labels, "RunArrays.labels")
        self.probs = as_2d(self.probs, "RunArrays.probs")
        if self.probs.shape[1] < 2:
            raise DataError(
                "RunArrays.probs", f"{self.probs.shape[1]} column(s)", "one column per class (>= 2)"
            )
        if len(self.probs) and not np.allclose(self.probs.sum(axis=1), 1.0, atol=1e-3):
            raise DataError(
                "RunArrays.probs",
                "rows that do not sum to 1",
                "probabilities (apply softmax to logits)",
            )
        if not np.issubdtype(self.labels.dtype, np.integer):
            if not np.all(np.equal(np.mod(self.labels, 1), 0)):
                raise DataError(
                    "RunArrays.labels", f"dtype {self.labels.dtype}", "integer class ids"
                )
            self.labels = self.labels.astype(np.int64)
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= self.probs.shape[1]):
            raise DataError(
                "RunArrays.labels",
                f"values in [{self.labels.min()}, {self.labels.max()}]",
                f"class ids in [0, {self.probs.shape[1] - 1}] (one per probs column)",
            )
        if self.subdistributions is not None:
            self.subdistributions = as_1d(self.subdistributions, "RunArrays.subdistributions")
        if self.losses is None:
            self.losses = cross_entropy(self.probs, self.labels)
        self.losses = as_1d(self.losses, "RunArrays.losses", dtype=float)
        if self.embeddings is not None:
            self.embeddings = as_2d(self.embeddings, "RunArrays.embeddings")
        if self.inputs is not None:
            # Kept in its own shape (e.g. (n, C, H, W) images) for the model; the representation
            # metrics flatten it to vectors.
            self.inputs = np.asarray(self.inputs)
            if self.inputs.ndim < 2:
                raise DataError(
                    "RunArrays.inputs",
                    f"an array of shape {self.inputs.shape}",
                    "one row per record",
                )
        if self.seed_predictions is not None:
            self.seed_predictions = np.asarray(self.seed_predictions)
        same_length(
            {
                "RunArrays.groups": self.groups,
                "RunArrays.labels": self.labels,
                "RunArrays.probs": self.probs,
                "RunArrays.subdistributions": self.subdistributions,
                "RunArrays.losses": self.losses,
                "RunArrays.embeddings": self.embeddings,
                "RunArrays.inputs": self.inputs,
                "RunArrays.model_inputs": None
                if self.model_inputs is None
                else np.empty(len(self.model_inputs)),
                "RunArrays.seed_predictions[0]": None
                if self.seed_predictions is None
                else self.seed_predictions.T,
            }
        )
        if self.model is not None and self.model_inputs is None and self.inputs is None:
            raise DataError(
                "RunArrays.model_inputs",
                None,
                "the model's inputs (or RunArrays.inputs) when a model is given",
            )


def noise_key(scale: float) -> str:
    """Column name of the accuracy under input noise of standard deviation ``scale``."""
    return f"acc_noise_{float(scale):g}"


def _by_key(
    keys: np.ndarray,
    arrays: RunArrays,
    cfg: MetricsConfig,
    extra: dict[str, np.ndarray],
    mia_keys: tuple[np.ndarray, np.ndarray] | None,
    epsilon: Mapping[Any, float] | None,
) -> dict[Any, dict[str, float]]:
    """Every metric for each distinct value of ``keys`` (groups or sub-distributions)."""
    names, inv = group_index(keys)
    g = len(names)
    table: dict[str, np.ndarray] = {"n": np.bincount(inv, minlength=g).astype(float)}
    pred = arrays.probs.argmax(axis=1)
    table["accuracy"] = group_mean(pred == arrays.labels, inv, g)
    table["loss"] = group_mean(arrays.losses, inv, g)
    if arrays.probs.shape[1] == 2:
        pos = arrays.labels == 1
        table["selection_rate"] = group_mean(pred == 1, inv, g)
        table["tpr"] = group_mean(pred[pos] == 1, inv[pos], g)
        table["fpr"] = group_mean(pred[~pos] == 1, inv[~pos], g)
    for name, correct in extra.items():
        table[name] = group_mean(correct, inv, g)
    rows = {group_key(n): {k: float(v[i]) for k, v in table.items()} for i, n in enumerate(names)}
    cal = calibration_by_group(
        arrays.probs, arrays.labels, keys, cfg.ece_bins, cfg.confident_threshold
    )
    for k, row in rows.items():
        row.update(cal[k])
    if arrays.embeddings is not None:
        rng = np.random.default_rng(cfg.seed)
        for i, n in enumerate(names):
            rows[group_key(n)].update(_representation(np.flatnonzero(inv == i), arrays, cfg, rng))
    if mia_keys is not None and arrays.membership is not None:
        mem = arrays.membership
        mia = membership_by_group(
            mem.member_losses,
            mia_keys[0],
            mem.nonmember_losses,
            mia_keys[1],
            mem.member_reference_losses,
            mem.nonmember_reference_losses,
        )
        for k, row in rows.items():
            if k in mia:
                row.update(mia[k])
    if epsilon is not None:
        for k, row in rows.items():
            row["epsilon"] = float(epsilon.get(k, epsilon.get(str(k), float("nan"))))
    if arrays.seed_predictions is not None:
        mult = multiplicity_by_group(arrays.seed_predictions, keys)
        for k, row in rows.items():
            row.update(mult[k])
    return rows


def _representation(
    idx: np.ndarray, arrays: RunArrays, cfg: MetricsConfig, rng: np.random.Generator
) -> dict[str, float]:
    if cfg.representation_sample is not None and idx.size > cfg.representation_sample:
        idx = np.sort(rng.choice(idx, cfg.representation_sample, replace=False))
    emb = arrays.embeddings[idx]
    out = {
        "effective_rank": effective_rank(emb),
        "participation_ratio": participation_ratio(emb),
        "intrinsic_dim": intrinsic_dimension(emb, cfg.id_estimator, cfg.id_neighbors),
    }
    if arrays.inputs is not None:
        x = arrays.inputs[idx].reshape(idx.size, -1).astype(float)
        out["intrinsic_dim_input"] = intrinsic_dimension(x, cfg.id_estimator, cfg.id_neighbors)
        out["effective_rank_input"] = effective_rank(x)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["flattening"] = float(1.0 - out["intrinsic_dim"] / out["intrinsic_dim_input"])
            out["flattening_linear"] = float(
                1.0 - out["effective_rank"] / out["effective_rank_input"]
            )
    return out


def _summary(rows: Mapping[Any, Mapping[str, float]], binary: bool) -> dict[str, Any]:
    """Worst group, its value and the gap of every metric that has a direction."""
    out: dict[str, Any] = {}
    metrics = dict.fromkeys(k for row in rows.values() for k in row)
    for m in metrics:
        d = direction(m)
        if m in NOT_METRICS or d == 0:
            continue
        vals = {g: row.get(m, float("nan")) for g, row in rows.items()}
        finite = {g: v for g, v in vals.items() if np.isfinite(v)}
        if not finite:
            continue
        worst = (max if d > 0 else min)(finite, key=finite.__getitem__)
        out[f"{m}_worst_group"] = worst
        out[f"{m}_worst"] = finite[worst]
        out[f"{m}_gap"] = spread(list(finite.values()))
    if "accuracy_worst_group" in out:
        out["worst_group"] = out["accuracy_worst_group"]
    if binary:
        # fairlearn's between-group differences, from the per-group rates already computed.
        out["dp_difference"] = spread([r["selection_rate"] for r in rows.values()])
        tpr = spread([r["tpr"] for r in rows.values()])
        fpr = spread([r["fpr"] for r in rows.values()])
        out["eo_difference"] = (
            float(np.nanmax([tpr, fpr])) if np.isfinite([tpr, fpr]).any() else float("nan")
        )
    return out


def group_report(arrays: RunArrays, config: MetricsConfig | None = None) -> dict[str, Any]:
    """Every disparity metric of one run, per group and per sub-distribution.

    Parameters
    ----------
    arrays : RunArrays
        The run's per-record arrays; optional parts (embeddings, inputs, membership, epsilon,
        model, seed predictions) switch their metrics on.
    config : MetricsConfig, optional
        Bins, thresholds, estimators, noise scales, attack radius, seed.

    Returns
    -------
    dict
        ``{"groups": {group: {metric: value}},
        "summary": {"worst_group", "<metric>_worst_group", "<metric>_worst", "<metric>_gap",
        "dp_difference", "eo_difference" (binary tasks)},
        "overall": {metric: value} (all records as one group),
        "subdistributions": {id: {metric: value}} and "summary_subdistributions" (when
        sub-distribution ids are given),
        "settings": {noise scales, attack radius and steps, ...}}``.
        Metric names are listed in ``docs/metrics.md``; a metric that cannot be computed for a
        group (too few records, no positives) is NaN.
    """
    cfg = config if config is not None else MetricsConfig()
    extra: dict[str, np.ndarray] = {}
    if arrays.model is not None:
        from fedcascade.metrics.robustness import adversarial_predictions, noisy_predictions

        x = arrays.model_inputs if arrays.model_inputs is not None else arrays.inputs
        noisy = noisy_predictions(arrays.model, x, cfg.noise_scales, cfg.seed, cfg.batch_size)
        for scale, p in zip(cfg.noise_scales, noisy, strict=True):
            extra[noise_key(scale)] = p == arrays.labels
        adv = adversarial_predictions(
            arrays.model,
            x,
            arrays.labels,
            cfg.adversarial_eps,
            cfg.adversarial_steps,
            batch_size=cfg.batch_size,
        )
        extra["acc_adversarial"] = adv == arrays.labels
    mem = arrays.membership
    group_mia = (mem.member_groups, mem.nonmember_groups) if mem is not None else None
    groups = _by_key(arrays.groups, arrays, cfg, extra, group_mia, arrays.epsilon)
    binary = arrays.probs.shape[1] == 2
    n = len(arrays.labels)
    all_mia = (
        (
            np.zeros(len(as_1d(mem.member_losses, "member_losses")), int),
            np.zeros(len(as_1d(mem.nonmember_losses, "nonmember_losses")), int),
        )
        if mem is not None
        else None
    )
    overall = _by_key(np.zeros(n, dtype=int), arrays, cfg, extra, all_mia, None)
    report: dict[str, Any] = {
        "groups": groups,
        "summary": _summary(groups, binary),
        "overall": overall.get(0, {}),
    }
    if arrays.subdistributions is not None:
        sub_mia = None
        if (
            mem is not None
            and mem.member_subdistributions is not None
            and mem.nonmember_subdistributions is not None
        ):
            sub_mia = (mem.member_subdistributions, mem.nonmember_subdistributions)
        subs = _by_key(arrays.subdistributions, arrays, cfg, extra, sub_mia, None)
        report["subdistributions"] = subs
        report["summary_subdistributions"] = _summary(subs, binary)
    report["settings"] = {
        "ece_bins": cfg.ece_bins,
        "confident_threshold": cfg.confident_threshold,
        "id_estimator": cfg.id_estimator,
        "id_neighbors": cfg.id_neighbors,
        "representation_sample": cfg.representation_sample,
        "noise_scales": list(cfg.noise_scales) if arrays.model is not None else [],
        "adversarial_eps": cfg.adversarial_eps if arrays.model is not None else None,
        "adversarial_steps": cfg.adversarial_steps if arrays.model is not None else None,
        "seed": cfg.seed,
    }
    return report


def report_rows(report: Mapping[str, Any], run: str, level: str = "groups") -> list[dict]:
    """Flatten one report into cascade rows: ``[{"run": run, "group": g, **metrics}, ...]``.

    Parameters
    ----------
    report : dict
        A :func:`group_report` result.
    run : str
        Name of the run (e.g. its directory name); rows of one run are centred together.
    level : {"groups", "subdistributions"}
        Which view to flatten.
    """
    if level not in ("groups", "subdistributions"):
        raise DataError("level", level, "'groups' or 'subdistributions'")
    if level not in report:
        raise DataError(f"report['{level}']", "absent", f"a report with a '{level}' view")
    return [{"run": str(run), "group": str(g), **m} for g, m in report[level].items()]
