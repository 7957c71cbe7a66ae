"""``dp-fedavg``: one global adapter, every community trains with DP-SGD (record-level DP)."""

from __future__ import annotations

from strategies.base import FedcascadeStrategy


class DPFedAvg(FedcascadeStrategy):
    """FedAvg over DP-SGD updates.

    Each community runs Opacus DP-SGD with Poisson sampling; its noise multiplier is calibrated
    once for the whole run's planned steps so its (epsilon, delta) holds at the end. Averaging
    DP-protected updates is post-processing and costs no privacy.
    """

    name = "dp-fedavg"
    label = "DP-FedAvg (one global model)"
