"""``fedavg``: non-private FedAvg (McMahan et al. 2017) on one global adapter — the ceiling."""

from __future__ import annotations

from strategies.base import FedcascadeStrategy


class FedAvg(FedcascadeStrategy):
    """One global adapter; record-weighted averaging; no DP whatever ``[privacy]`` says.

    It is the non-private reference every disparity is measured against, so it ignores the
    privacy section and reports epsilon = inf.
    """

    name = "fedavg"
    label = "FedAvg (non-private reference)"
    private = False
