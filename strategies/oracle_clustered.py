"""``oracle-clustered``: one adapter per TRUE sub-distribution — an evaluation ceiling only."""

from __future__ import annotations

from fedcascade.errors import ConfigError
from strategies.base import Cluster, FedcascadeStrategy


class OracleClustered(FedcascadeStrategy):
    """Clusters are the hidden sub-distributions, known in advance.

    No real strategy can know them; this one exists to show how far clustering could go. It is
    the only strategy that is handed the ground truth, and every output labels it as a ceiling.
    Training is DP-SGD exactly as in ``dp-fedavg``.
    """

    name = "oracle-clustered"
    label = "Oracle clustering (evaluation ceiling: uses the hidden sub-distributions)"
    uses_ground_truth = True

    def setup(self) -> None:
        truth = self.ctx.truth_for_evaluation
        if not truth:
            raise ConfigError(
                "strategy.name",
                self.name,
                "a strategy that does not need ground truth",
                "the server cannot build this data set, so the true sub-distributions are unknown",
            )
        order = sorted(set(truth.values()))
        rank = self.cfg.model.lora_rank
        init = self.ctx.initial_arrays(rank, self.cfg.seed)
        self.clusters = {
            k: Cluster({n: a.copy() for n, a in init.items()}, rank) for k in range(len(order))
        }
        self.assignment = {cid: order.index(truth[cid]) for cid in self.communities}
