"""Differential privacy for fedcascade: accounting, noise calibration, ledger, DP-SGD trainer.

See ``docs/privacy.md`` for the semantics (unit of privacy, composition, defaults).
"""

from fedcascade.privacy.accounting import (
    ACCOUNTANTS,
    PRV_EPS_ERROR,
    calibrate_noise_multiplier,
    canonical_blocks,
    compute_epsilon,
)
from fedcascade.privacy.analytic_gaussian import analytic_gaussian_epsilon, gaussian_delta
from fedcascade.privacy.config import (
    DPPlan,
    PrivacyConfig,
    default_delta,
    planned_schedule,
    steps_per_epoch,
)
from fedcascade.privacy.ledger import PrivacyLedger
from fedcascade.privacy.trainer import TrainResult, poisson_batches, train_dp

__all__ = [
    "ACCOUNTANTS",
    "PRV_EPS_ERROR",
    "DPPlan",
    "PrivacyConfig",
    "PrivacyLedger",
    "TrainResult",
    "analytic_gaussian_epsilon",
    "calibrate_noise_multiplier",
    "canonical_blocks",
    "compute_epsilon",
    "default_delta",
    "gaussian_delta",
    "planned_schedule",
    "poisson_batches",
    "steps_per_epoch",
    "train_dp",
]
