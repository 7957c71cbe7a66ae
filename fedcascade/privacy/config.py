"""The ``[privacy]`` config section, the DP plan a server sends, and schedule helpers."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from fedcascade.configtools import check, param
from fedcascade.errors import MISSING, ConfigError

__all__ = [
    "PrivacyConfig",
    "DPPlan",
    "default_delta",
    "steps_per_epoch",
    "planned_schedule",
]


def default_delta(n_train: int) -> float:
    """Default delta for a community of ``n_train`` records: the largest power of ten <= 1/(10 n).

    A delta near ``1/n`` would allow leaking one whole record with non-negligible probability;
    one tenth of it, rounded down to a power of ten so results read cleanly, is the usual
    choice. Examples: 500 records -> 1e-4; 6,400 records -> 1e-5; 100,000 records -> 1e-6.

    Parameters
    ----------
    n_train : int
        Number of training records of the community (public), ``>= 1``.
    """
    if isinstance(n_train, bool) or not isinstance(n_train, int) or n_train < 1:
        raise ValueError(f"n_train must be an integer >= 1, got {n_train!r}")
    # 1e-12 guards exact powers of ten against log10 rounding (n = 1000 -> 1e-4, not 1e-5)
    return 10.0 ** (-math.ceil(math.log10(10 * n_train) - 1e-12))


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """DP-SGD steps of one local epoch: ``ceil(n / b)``, i.e. ``1 / q`` Poisson steps."""
    return max(1, math.ceil(n_train / max(1, batch_size)))


def planned_schedule(
    n_train: int,
    batch_size: int,
    rounds: int,
    local_epochs: int = 1,
    *,
    full_batch_first_round: bool = False,
) -> list[tuple[float, int]]:
    """Every DP-SGD block a community will run over the whole run, for noise calibration.

    Parameters
    ----------
    n_train : int
        Training records of the community.
    batch_size : int
        Expected Poisson batch size ``b`` (sample rate ``min(1, b / n)``).
    rounds : int
        Rounds the community trains in (an upper bound is safe: unused budget stays unused).
    local_epochs : int
        Local epochs per round.
    full_batch_first_round : bool
        R-DPCFL: round 1 runs ``local_epochs`` full-batch steps (sample rate 1) so the updates
        used for clustering are less noisy.

    Returns
    -------
    list of (sample_rate, steps)
    """
    q = min(1.0, batch_size / n_train)
    per_round = local_epochs * steps_per_epoch(n_train, batch_size)
    if full_batch_first_round and rounds >= 1:
        sched = [(1.0, local_epochs)]
        if rounds > 1:
            sched.append((q, per_round * (rounds - 1)))
        return sched
    return [(q, per_round * rounds)]


@dataclass(frozen=True)
class PrivacyConfig:
    """Record-level differential privacy of every community (the ``[privacy]`` TOML table)."""

    enabled: bool = param(True, doc="false -> non-private training; epsilon is reported as inf")
    target_epsilon: float = param(
        3.0, gt=0, doc="(epsilon, delta) budget of each community for the whole run"
    )
    delta: float | None = param(
        None,
        gt=0,
        lt=1,
        doc="omit for the per-community default: largest power of ten <= 1/(10 n_train)",
    )
    accountant: Literal["prv", "rdp"] = param(
        "prv", doc="privacy accountant: 'prv' (tight) or 'rdp'"
    )
    max_grad_norm: float = param(1.0, gt=0, doc="per-sample gradient clipping norm C")
    batch_size: int = param(
        32, ge=1, doc="expected Poisson batch size; sample rate = batch_size / n_train"
    )
    selection_epsilon_fraction: float = param(
        0.03,
        ge=0,
        lt=1,
        doc="share of target_epsilon reserved for noisy cluster selection (pure DP, R-DPCFL uses 3%)",
    )

    def delta_for(self, n_train: int) -> float:
        """Delta of a community with ``n_train`` records (the configured one, or the default).

        Raises
        ------
        ConfigError
            If a configured delta is not below ``1 / n_train``.
        """
        if self.delta is None:
            return default_delta(n_train)
        check(
            self.delta < 1.0 / n_train,
            "privacy.delta",
            self.delta,
            f"a value below 1/n_train = {1.0 / n_train:.3g}",
            f"a community has {n_train} training records; omit delta to use {default_delta(n_train):g}",
        )
        return self.delta

    def sample_rate_for(self, n_train: int) -> float:
        """Poisson sample rate of a community: ``min(1, batch_size / n_train)``."""
        return min(1.0, self.batch_size / n_train)

    @property
    def selection_epsilon(self) -> float:
        """Pure-DP epsilon reserved for noisy cluster selection."""
        return self.target_epsilon * self.selection_epsilon_fraction

    @property
    def training_epsilon(self) -> float:
        """Epsilon left for DP-SGD (calibrate the noise against this)."""
        return self.target_epsilon - self.selection_epsilon


_PLAN_KEYS = {
    "sample_rate": "dp_sample_rate",
    "steps": "dp_steps",
    "noise_multiplier": "dp_noise_multiplier",
    "max_grad_norm": "dp_max_grad_norm",
}


@dataclass(frozen=True)
class DPPlan:
    """One block of DP-SGD steps a server asks a community to run.

    Parameters
    ----------
    sample_rate : float
        Poisson sampling rate ``q`` in (0, 1].
    steps : int
        Number of DP-SGD steps, ``>= 0``.
    noise_multiplier : float
        ``sigma >= 0`` (0 only when privacy is disabled; a ledger refuses it).
    max_grad_norm : float or None
        Clipping norm ``C > 0``; ``None`` means no clipping, allowed only with ``sigma = 0``.
    """

    sample_rate: float
    steps: int
    noise_multiplier: float
    max_grad_norm: float | None

    def __post_init__(self) -> None:
        q, n, s, c = self.sample_rate, self.steps, self.noise_multiplier, self.max_grad_norm
        _num(q, "plan.sample_rate")
        check(0 < q <= 1, "plan.sample_rate", q, "a number in (0, 1]")
        check(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0,
            "plan.steps",
            n,
            "an integer >= 0",
        )
        _num(s, "plan.noise_multiplier")
        check(s >= 0 and math.isfinite(s), "plan.noise_multiplier", s, "a finite number >= 0")
        if c is not None:
            _num(c, "plan.max_grad_norm")
            check(
                c > 0 and math.isfinite(c), "plan.max_grad_norm", c, "a finite number > 0, or None"
            )
        check(
            c is not None or s == 0,
            "plan.max_grad_norm",
            c,
            "a clipping norm > 0 when noise_multiplier > 0",
            "noise is scaled to the clipping norm; without clipping there is no sensitivity bound",
        )

    @property
    def private(self) -> bool:
        """True if the block gives a finite-epsilon guarantee (clipped and noised)."""
        return self.noise_multiplier > 0 and self.max_grad_norm is not None

    def block(self) -> tuple[float, float, int]:
        """``(sample_rate, noise_multiplier, steps)`` for the accountant."""
        return (self.sample_rate, self.noise_multiplier, self.steps)

    def to_config(self) -> dict[str, float | int]:
        """Flat dict for a Flower ``ConfigRecord``; ``dp_max_grad_norm = 0.0`` means no clipping."""
        return {
            "dp_sample_rate": float(self.sample_rate),
            "dp_steps": int(self.steps),
            "dp_noise_multiplier": float(self.noise_multiplier),
            "dp_max_grad_norm": float(self.max_grad_norm)
            if self.max_grad_norm is not None
            else 0.0,
        }

    @classmethod
    def from_config(cls, d: Mapping[str, Any]) -> DPPlan:
        """Inverse of :meth:`to_config`; other keys of ``d`` are ignored.

        Raises
        ------
        ConfigError
            If a ``dp_*`` key is missing or has a bad value.
        """
        vals = {}
        for name, k in _PLAN_KEYS.items():
            if k not in d:
                raise ConfigError(
                    k, MISSING, "a number", "the server's train message lacks the DP plan"
                )
            vals[name] = d[k]
        steps = vals["steps"]
        if isinstance(steps, float) and steps.is_integer():
            steps = int(steps)
        clip = vals["max_grad_norm"]
        return cls(
            sample_rate=_as_float(vals["sample_rate"], "dp_sample_rate"),
            steps=steps,
            noise_multiplier=_as_float(vals["noise_multiplier"], "dp_noise_multiplier"),
            max_grad_norm=None if clip == 0 else _as_float(clip, "dp_max_grad_norm"),
        )


def _num(v: Any, key: str) -> None:
    check(isinstance(v, (int, float)) and not isinstance(v, bool), key, v, "a number")


def _as_float(v: Any, key: str) -> float:
    _num(v, key)
    return float(v)
