"""Config section ``[metrics]``: the knobs of the disparity report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fedcascade.configtools import check, join_key, param

__all__ = ["MetricsConfig"]


@dataclass(frozen=True)
class MetricsConfig:
    """Settings of :func:`fedcascade.metrics.group_report` and the cascade table (``[metrics]``)."""

    ece_bins: int = param(
        15, ge=1, doc="equal-width confidence bins of the expected calibration error"
    )
    confident_threshold: float = param(
        0.9,
        gt=0.0,
        le=1.0,
        doc="confidence at or above which a wrong prediction is a confident error",
    )
    id_estimator: Literal["mle", "twonn"] = param(
        "mle", doc="intrinsic-dimension estimator: Levina-Bickel MLE or TwoNN"
    )
    id_neighbors: int = param(10, ge=3, doc="neighbours k of the Levina-Bickel MLE")
    representation_sample: int | None = param(
        None,
        ge=10,
        doc="subsample each group to at most this many records for representation metrics "
        "(equal sizes make effective ranks comparable); omit to use every record",
    )
    noise_scales: tuple[float, ...] = param(
        (0.1, 0.25, 0.5, 1.0),
        ge=0.0,
        doc="standard deviations of input Gaussian noise (input units)",
    )
    adversarial_eps: float = param(
        0.1, ge=0.0, doc="L-infinity radius of the FGSM/PGD attack (input units)"
    )
    adversarial_steps: int = param(1, ge=1, doc="1 = FGSM; more = PGD steps")
    batch_size: int = param(1024, ge=1, doc="records per forward pass in the robustness metrics")
    bootstrap: int = param(2000, ge=100, doc="bootstrap resamples of the cascade correlations")
    confidence: float = param(
        0.95, gt=0.0, lt=1.0, doc="level of the bootstrap confidence intervals"
    )
    representation: Literal[
        "flattening", "flattening_linear", "effective_rank", "participation_ratio", "intrinsic_dim"
    ] = param("flattening", doc="representation score on the x axis of the cascade")
    within_run: bool = param(
        True, doc="centre scores within each run before correlating (disparity, not run level)"
    )
    seed: int = param(0, ge=0, doc="seed of subsampling, input noise and bootstrap")

    def validate(self, key: str) -> None:
        """Cross-field checks (called by :func:`fedcascade.configtools.build`)."""
        check(
            len(set(self.noise_scales)) == len(self.noise_scales),
            join_key(key, "noise_scales"),
            list(self.noise_scales),
            "distinct noise standard deviations",
            "each scale names a column acc_noise_<scale>",
        )
        if self.representation_sample is not None:
            check(
                self.representation_sample > self.id_neighbors,
                join_key(key, "representation_sample"),
                self.representation_sample,
                f"more records than id_neighbors ({self.id_neighbors})",
                "the MLE needs k + 1 distinct points per group",
            )
