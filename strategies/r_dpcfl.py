"""``r-dpcfl``: Differentially Private Clustered FL (Malekmohammadi, Taik, Farnadi, TMLR 2025).

Faithful to the reference code (Saber-mm/DPCFL, ``main/DPCFL.py``):

1. round 1: every community runs *full-batch* DP-SGD (sample rate 1) from the global model, so
   the updates used for clustering carry little noise;
2. the updates are flattened, standardised, projected on 2 principal components, MinMax-scaled,
   and a spherical GMM with k-means++ initialisation is fitted (soft posteriors);
3. soft phase: until round ``E_c = int((1 - max overlap) * E / 2)`` each community samples its
   cluster from its posteriors every round; a cluster model is the plain average of its members;
4. selection: for ``int(0.1 E)`` rounds each community picks the cluster model with the highest
   accuracy on its own training data by report-noisy-max, whose epsilon share (3% of the total in
   the reference, ``privacy.selection_epsilon_fraction``) is charged to its ledger;
5. the assignments then freeze.

The noise multiplier is calibrated once for the two-stage plan (full-batch steps, then batches of
``privacy.batch_size``), as the reference's bisection over its two-stage accountant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.serverapp import Grid

from fedcascade.clustering import (
    flatten_updates,
    rdpcfl_cluster,
    rdpcfl_selection_rounds,
    sample_from_posteriors,
)
from fedcascade.configtools import param
from fedcascade.privacy import DPPlan
from strategies.base import Cluster, CommunityInfo, FedcascadeStrategy, Reply, average_arrays


@dataclass(frozen=True)
class RDPCFLOptions:
    """``[strategy.options]`` of ``r-dpcfl``."""

    k: int | None = param(
        None,
        ge=1,
        le=1000,
        doc="number of clusters; the reference passes the true number. None: chosen by separation",
    )
    k_max: int = param(10, ge=2, le=1000, doc="largest k tried when k is None")
    first_round_steps: int = param(1, ge=1, le=10_000, doc="full-batch DP-SGD steps of round 1")
    selection_ratio: float = param(0.1, ge=0, le=1, doc="fraction of the rounds spent on selection")


class RDPCFL(FedcascadeStrategy):
    """R-DPCFL: full-batch first round, PCA + spherical GMM, soft phase, noisy selection, freeze."""

    name = "r-dpcfl"
    label = "R-DPCFL (Malekmohammadi et al. 2025)"
    uses_selection = True
    Options = RDPCFLOptions

    def setup(self) -> None:
        super().setup()  # round 1 trains one global model
        self.initial = {k: v.copy() for k, v in self.clusters[0].arrays.items()}
        self.posteriors: dict[int, np.ndarray] = {}
        self.switch_round: int | None = None
        self.selection_rounds: list[int] = []
        self.max_overlap: float | None = None
        self.phase = "cluster"

    # -- privacy: the two-stage plan -----------------------------------------------------------
    def planned_schedule(self, community: CommunityInfo) -> list[tuple[float, int]]:
        rest = self.steps_per_round(community) * (self.cfg.train.rounds - 1)
        plan = [(1.0, self.options.first_round_steps)]
        return plan + ([(self.sample_rate(community), rest)] if rest else [])

    def plan(self, community: CommunityInfo, server_round: int) -> DPPlan | None:
        plan = super().plan(community, server_round)
        if plan is None or server_round > 1:
            return plan
        return DPPlan(
            1.0, self.options.first_round_steps, plan.noise_multiplier, plan.max_grad_norm
        )

    # -- the rounds ------------------------------------------------------------------------------
    def before_round(self, grid: Grid, server_round: int) -> None:
        if server_round == 1:
            return
        if server_round in self.selection_rounds:
            self.phase = "select"
            eps = (
                self.selection_epsilon / len(self.selection_rounds)
                if self.is_private
                else float("inf")
            )
            chosen = self.select_clusters(
                grid,
                server_round,
                self.participants(server_round),
                sorted(self.clusters),
                "accuracy",
                eps,
            )
            self.assignment.update(chosen)
        elif self.switch_round is not None and server_round <= self.switch_round:
            self.phase = "soft"
            ids = sorted(self.posteriors)
            draws = sample_from_posteriors(np.stack([self.posteriors[c] for c in ids]), self.rng)
            self.assignment.update({c: int(k) for c, k in zip(ids, draws, strict=True)})
        else:
            self.phase = "frozen"

    def aggregate(self, server_round: int, replies: list[Reply]) -> None:
        if server_round == 1:
            self._cluster(replies)
            return
        # the reference averages cluster members with equal weights
        for cluster_id, members in self.by_cluster(replies).items():
            self.clusters[cluster_id].arrays = average_arrays(
                [r.arrays for r in members], [1.0] * len(members)
            )

    def _cluster(self, replies: list[Reply]) -> None:
        ids = [r.community_id for r in replies]
        updates = [{k: r.arrays[k] - self.initial[k] for k in self.initial} for r in replies]
        result = rdpcfl_cluster(
            flatten_updates(updates),
            self.options.k,
            self.cfg.seed,
            self.cfg.train.rounds,
            k_max=self.options.k_max,
        )
        self.max_overlap = float(result.max_overlap)
        self.switch_round = int(result.switch_round)
        self.selection_rounds = rdpcfl_selection_rounds(
            self.switch_round, self.cfg.train.rounds, self.options.selection_ratio
        )
        self.posteriors = {c: result.posteriors[i] for i, c in enumerate(ids)}
        labels = {c: int(result.labels[i]) for i, c in enumerate(ids)}
        rank = self.clusters[0].rank
        global_avg = average_arrays([r.arrays for r in replies], [1.0] * len(replies))
        self.clusters = {}
        for k in range(result.fit.k):
            members = [r for r in replies if labels[r.community_id] == k]
            arrays = (
                average_arrays([r.arrays for r in members], [1.0] * len(members))
                if members
                else global_avg
            )
            self.clusters[k] = Cluster(arrays, rank)
        # communities that missed round 1 start in the largest cluster until they select
        largest = int(np.argmax(np.bincount(list(labels.values()), minlength=result.fit.k)))
        self.assignment = {c: labels.get(c, largest) for c in self.communities}

    def round_record(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "k": len(self.clusters),
            "max_overlap": self.max_overlap,
            "switch_round": self.switch_round,
            "selection_rounds": self.selection_rounds,
        }

    def summary_extras(self) -> dict[str, Any]:
        return {
            "k": len(self.clusters),
            "switch_round": self.switch_round,
            "max_overlap": self.max_overlap,
        }
