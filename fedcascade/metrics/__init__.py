"""Cascading-disparity metrics: per-group performance, representation, privacy, robustness,
calibration and multiplicity, and the cascade that relates representation to the rest.

Typical use from the runner::

    from fedcascade.metrics import RunArrays, MembershipArrays, group_report, report_rows
    from fedcascade.metrics import cascade_table, plot_cascade

    rep = group_report(RunArrays(groups=g, labels=y, probs=p, embeddings=e, inputs=x, ...))
    rows = report_rows(rep, run="seed0-eps4") + ...      # several runs
    table = plot_cascade(rows, "report/cascade.png")     # also returns cascade_table(rows)

Every metric is defined, with its formula and reference, in ``docs/metrics.md``.
Robustness metrics import torch lazily (only when a model is given).
"""

from fedcascade.metrics.calibration import (
    calibration_by_group,
    confident_error_rate,
    expected_calibration_error,
)
from fedcascade.metrics.cascade import bootstrap_spearman, cascade_table, plot_cascade, spearman
from fedcascade.metrics.config import MetricsConfig
from fedcascade.metrics.directions import direction
from fedcascade.metrics.membership import (
    attack_summary,
    calibrated_scores,
    loss_threshold_scores,
    max_advantage,
    membership_by_group,
    roc_auc,
)
from fedcascade.metrics.multiplicity import ambiguity, discrepancy, multiplicity_by_group
from fedcascade.metrics.performance import (
    binary_group_rates,
    cross_entropy,
    demographic_parity_difference,
    equalized_odds_difference,
    group_accuracy,
    group_loss,
    worst_and_gap,
)
from fedcascade.metrics.report import (
    MembershipArrays,
    RunArrays,
    group_report,
    noise_key,
    report_rows,
)
from fedcascade.metrics.representation import (
    effective_rank,
    flattening_score,
    intrinsic_dimension,
    mle_intrinsic_dimension,
    participation_ratio,
    twonn_intrinsic_dimension,
)

__all__ = [
    "MembershipArrays",
    "MetricsConfig",
    "RunArrays",
    "ambiguity",
    "attack_summary",
    "binary_group_rates",
    "bootstrap_spearman",
    "calibrated_scores",
    "calibration_by_group",
    "cascade_table",
    "confident_error_rate",
    "cross_entropy",
    "demographic_parity_difference",
    "direction",
    "discrepancy",
    "effective_rank",
    "equalized_odds_difference",
    "expected_calibration_error",
    "flattening_score",
    "group_accuracy",
    "group_loss",
    "group_report",
    "intrinsic_dimension",
    "loss_threshold_scores",
    "max_advantage",
    "membership_by_group",
    "mle_intrinsic_dimension",
    "multiplicity_by_group",
    "noise_key",
    "participation_ratio",
    "plot_cascade",
    "report_rows",
    "roc_auc",
    "spearman",
    "twonn_intrinsic_dimension",
    "worst_and_gap",
]
