"""``ifca``: Iterative Federated Clustering (Ghosh, Chung, Yin, Ramchandran, NeurIPS 2020)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from flwr.serverapp import Grid

from fedcascade.configtools import param
from strategies.base import Cluster, FedcascadeStrategy


@dataclass(frozen=True)
class IFCAOptions:
    """``[strategy.options]`` of ``ifca``."""

    k: int = param(4, ge=1, le=1000, doc="number of cluster models")
    metric: Literal["loss", "accuracy"] = param(
        "loss", doc="what a community minimises/maximises to pick a model"
    )


class IFCA(FedcascadeStrategy):
    """k cluster models; every round each community picks one on its own data, then trains it.

    The pick touches private data, so it is privatized: report-noisy-min over clipped mean
    losses (the exponential mechanism), charged to the community's ledger. The selection share
    of the budget (``privacy.selection_epsilon_fraction``) is split evenly over the rounds, and
    DP-SGD is calibrated to the rest. Cluster models start from different random LoRA
    initialisations (IFCA's random init) and are averaged record-weighted over their members.
    """

    name = "ifca"
    label = "IFCA (private loss-based cluster choice)"
    uses_selection = True
    Options = IFCAOptions

    def setup(self) -> None:
        rank = self.cfg.model.lora_rank
        self.clusters = {
            k: Cluster(self.ctx.initial_arrays(rank, self.cfg.seed * 1000 + k), rank)
            for k in range(self.options.k)
        }
        self.assignment = {cid: int(self.rng.integers(self.options.k)) for cid in self.communities}

    def before_round(self, grid: Grid, server_round: int) -> None:
        participants = self.participants(server_round)
        eps = self.selection_epsilon / self.cfg.train.rounds if self.is_private else 0.0
        if not self.is_private:
            eps = float("inf")
        chosen = self.select_clusters(
            grid, server_round, participants, list(self.clusters), self.options.metric, eps
        )
        self.assignment.update(chosen)
