"""``cascade``: noise-aware clustering, then noise and adapter capacity scaled by cluster size.

Ours; the formulas are in ``docs/method.md``. In order:

1. the clustering signal (``cluster_signal``):

   * ``"both"`` (default): the two below together, each whitened by its own DP noise, so the
     noise-corrected Gram matrix adds their signals (they fail on different data: the probe
     where a shift shows in the input's class-conditional means but not the backbone, the
     update where it shows in the backbone's features; docs/method.md, "Which signal").
   * ``"probe"``: before round 1 every community releases a DP probe of its data, the
     class-conditional means of its record-standardised inputs (one Gaussian release of
     sensitivity 1 spending ``probe_budget`` of its GDP budget, charged to its ledger;
     :mod:`fedcascade.clustering.probe`); clusters exist from round 1.
   * ``"update"``: ``warmup_rounds`` rounds of *full-batch* DP-SGD on one global adapter that
     together spend ``warmup_budget`` of each budget (:func:`warmup_noise_multiplier`); every
     community's update (reply minus the model it was sent) is kept with its known noise scale,
     and only the blocks whose spread beats the noise are clustered
     (:func:`select_signal_blocks`; LoRA ``A`` carries only noise while ``B = 0``).

2. clustering (post-processing of DP releases, free): :func:`cascade_cluster` removes the noise
   variance from the Gram matrix, embeds above the noise edge and picks the number of clusters.
   Every community is measured whatever ``train.participation``; one whose probe is missing
   releases it when next sampled and joins by :func:`assign_by_update` (free), one whose warm-up
   update is missing picks a cluster by report-noisy-max (charged);
3. capacity: each cluster's LoRA rank scales with its precision ``Pi_k = sum N_i^2 mu_i^2``
   (:func:`cluster_ranks`), small clusters train fewer parameters, so less noise;
4. noise: :func:`cluster_noise_plan` gives precision-weighted aggregation inside a cluster, sample
   rates high enough for efficient accounting (``sigma_target``) and, if ``min_round_fraction <
   1``, fewer rounds for small clusters; the learning rate is scaled so that ``lr x steps`` over
   the rest of the run stays what the base plan had (``lr_scaling``). Each community's noise
   multiplier for the rest of the run is recalibrated against what its ledger already holds
   (``calibrate_noise_multiplier(..., spent=...)``), so the total is exact;
5. optionally a shared global adapter (``shared``): the named tensors are aggregated over every
   cluster (HetLoRA padding across ranks) and the rest stay per cluster.

``noise_scaling = false`` and ``rank_scaling = false`` switch 3 and 4 off (the ablation).
"""

from __future__ import annotations

from dataclasses import dataclass
from logging import WARNING
from typing import Any, Literal

import numpy as np
from flwr.common import log

from fedcascade.clustering import (
    assign_by_update,
    cascade_cluster,
    cluster_noise_plan,
    cluster_precision,
    cluster_ranks,
    combine_rounds,
    dp_update_noise_std,
    flatten_updates,
    gdp_mu,
    hetlora_aggregate,
    probe_noise_multiplier,
    truncate_lora,
)
from fedcascade.clustering.lora_aggregate import lora_layers
from fedcascade.clustering.warmup import (
    block_slices,
    select_signal_blocks,
    warmup_noise_multiplier,
)
from fedcascade.configtools import param
from fedcascade.errors import ConfigError
from fedcascade.privacy import DPPlan, calibrate_noise_multiplier
from strategies.base import Cluster, CommunityInfo, FedcascadeStrategy, Reply, average_arrays


@dataclass(frozen=True)
class CascadeOptions:
    """``[strategy.options]`` of ``cascade``."""

    cluster_signal: Literal["probe", "update", "both"] = param(
        "both",
        doc="what is clustered: each community's DP probe, released once before round 1 "
        "(fedcascade.clustering.probe), its DP adapter updates of the warm-up rounds, or both",
    )
    probe_budget: float = param(
        0.3, gt=0, lt=1, doc="share of the budget (GDP mu^2) the probe spends"
    )
    warmup_rounds: int = param(
        1,
        ge=1,
        le=1000,
        doc="rounds of global DP-SGD whose updates are clustered (cluster_signal = update)",
    )
    warmup_budget: float | None = param(
        0.5,
        gt=0,
        lt=1,
        doc="share of the budget (GDP mu^2) the warm-up spends in full-batch steps; "
        "None: mini-batch warm-up under the run's single noise multiplier",
    )
    warmup_steps: int = param(1, ge=1, le=1000, doc="full-batch DP-SGD steps per warm-up round")
    warmup_clip: float | None = param(
        None, gt=0, doc="clipping norm of the warm-up steps (None: privacy.max_grad_norm)"
    )
    cluster_on: Literal["signal", "all"] = param(
        "signal",
        doc="coordinates clustered: the blocks whose spread beats the DP noise, or every one",
    )
    k_max: int = param(8, ge=1, le=1000, doc="largest number of clusters considered")
    criterion: Literal["bic", "silhouette", "edge"] = param(
        "silhouette", doc="how the number of clusters is chosen"
    )
    shared: tuple[str, ...] = param(
        (),
        doc="adapter tensors (by name substring) kept as ONE global adapter aggregated over "
        "every cluster, the rest per cluster; e.g. ['features'] shares the LoRA adapters of the "
        "backbone and keeps a head per cluster. Must keep LoRA A/B pairs together",
    )
    noise_scaling: bool = param(
        True, doc="precision weights and per-cluster rounds (off: FedAvg weights, every round)"
    )
    rank_scaling: bool = param(
        True, doc="LoRA rank by cluster precision (off: model.lora_rank everywhere)"
    )
    r_min: int = param(1, ge=1, doc="smallest LoRA rank a cluster gets")
    rank_gamma: float = param(0.5, ge=0, le=1, doc="exponent of the rank rule r_k ~ Pi_k^gamma")
    min_round_fraction: float = param(
        0.5,
        gt=0,
        le=1,
        doc="floor on the share of rounds a cluster trains (1: every cluster every round)",
    )
    sigma_target: float = param(
        3.0, gt=0, doc="noise multiplier the noise plan raises sample rates to reach"
    )
    lr_scaling: bool = param(
        True,
        doc="scale the learning rate by the drop in steps per round the noise plan causes "
        "(linear scaling rule), so bigger batches do not mean less progress",
    )


class Cascade(FedcascadeStrategy):
    """Noise-aware clustering with automatic k, then noise and rank scaled by cluster size."""

    name = "cascade"
    label = "cascade (ours: noise-aware clustering, size-scaled noise and rank)"
    Options = CascadeOptions

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        from fedcascade.configtools import check

        opts = cls.build_options(cfg.strategy.options)
        check(
            opts.cluster_signal == "probe" or opts.warmup_rounds < cfg.train.rounds,
            "strategy.options.warmup_rounds",
            opts.warmup_rounds,
            f"fewer than train.rounds = {cfg.train.rounds}",
            "cascade needs rounds left after the warm-up",
        )
        if opts.cluster_signal == "both" and opts.warmup_budget is not None:
            check(
                opts.warmup_budget + opts.probe_budget < 1.0,
                "strategy.options.probe_budget",
                opts.probe_budget,
                f"less than 1 - warmup_budget = {1.0 - opts.warmup_budget:g}",
                "the probe and the warm-up together must leave budget for training",
            )

    def setup(self) -> None:
        super().setup()
        self.history: list[dict[int, np.ndarray]] = []
        self.noise: list[dict[int, float]] = []
        self.rounds_of: dict[int, list[int]] = {}
        self.weights: dict[int, float] = {}
        self.plans: dict[int, DPPlan] = {}
        self.lr_factor: dict[int, float] = {}
        self.late: set[int] = set()  # missed the warm-up: join a cluster by private selection
        self.joined: list[int] = []  # late communities that have chosen their cluster
        self.nsr: dict[str, list[float]] | None = None  # noise-to-signal before/after the plan
        self.result = None
        self.shared_keys = self._shared_keys()
        self.probes: dict[int, tuple[np.ndarray, float]] = {}

    def _shared_keys(self) -> list[str]:
        """The adapter tensors ``shared`` names; a LoRA pair is shared whole or not at all."""
        arrays = self.clusters[0].arrays
        keys = [k for k in arrays if any(pat in k for pat in self.options.shared)]
        for pat in self.options.shared:
            if not any(pat in k for k in arrays):
                raise ConfigError(
                    "strategy.options.shared",
                    pat,
                    f"a substring of an adapter tensor name: {sorted(arrays)}",
                )
        for a_name, b_name in lora_layers(arrays).values():
            if (a_name in keys) != (b_name in keys):
                raise ConfigError(
                    "strategy.options.shared",
                    list(self.options.shared),
                    "patterns that keep each LoRA pair together",
                    f"{a_name if a_name in keys else b_name} is shared but its partner is not",
                )
        return keys

    @property
    def warmup(self) -> int:
        """Rounds before the clusters exist: 0 with the probe (clustered before round 1)."""
        return 0 if self.options.cluster_signal == "probe" else self.options.warmup_rounds

    # -- privacy ---------------------------------------------------------------------------------
    def planned_schedule(self, community: CommunityInfo) -> list[tuple[float, int]]:
        # the base plan (a mini-batch warm-up uses its sigma); a full-batch warm-up has its own
        # sigma (warmup_plan) and after clustering the rest is re-planned and recalibrated
        return [
            (self.sample_rate(community), self.steps_per_round(community) * self.cfg.train.rounds)
        ]

    def plan(self, community: CommunityInfo, server_round: int) -> DPPlan | None:
        if server_round > self.warmup and community.community_id in self.plans:
            return self.plans[community.community_id]
        if (
            server_round <= self.warmup
            and self.is_private
            and self.options.warmup_budget is not None
        ):
            return self.warmup_plan(community)
        return super().plan(community, server_round)

    def warmup_plan(self, community: CommunityInfo) -> DPPlan:
        """Full-batch DP-SGD spending ``warmup_budget`` of the GDP budget over the warm-up.

        Full-batch steps compose exactly (no subsampling), so the share is exact in GDP; what
        is left is re-planned after clustering against the ledger's actual blocks.
        """
        o = self.options
        steps = o.warmup_steps * o.warmup_rounds
        sigma = warmup_noise_multiplier(
            self.training_epsilon, self.delta(community), o.warmup_budget, steps
        )
        clip = o.warmup_clip if o.warmup_clip is not None else self.cfg.privacy.max_grad_norm
        return DPPlan(1.0, o.warmup_steps, sigma, clip)

    def participants(self, server_round: int) -> list[CommunityInfo]:
        if server_round <= self.warmup:
            # the warm-up measures every community from the same model: a community sampled
            # out of it could only be guessed into a cluster (train.participation applies after)
            return [
                c for cid, c in sorted(self.communities.items()) if cid not in self.budget_exhausted
            ]
        # late communities wait (untrained) until they have chosen a cluster in before_round
        return [c for c in self._sampled(server_round) if c.community_id not in self.late]

    def _sampled(self, server_round: int) -> list[CommunityInfo]:
        """This round's sample among the communities whose cluster trains in it."""
        everyone = super().participants(server_round)
        if not self.rounds_of:
            return everyone
        return [
            c for c in everyone if server_round in self.rounds_of[self.assignment[c.community_id]]
        ]

    def lr(self, community: CommunityInfo, server_round: int) -> float:
        factor = self.lr_factor.get(community.community_id, 1.0)
        return self.cfg.train.lr * (factor if server_round > self.warmup else 1.0)

    # -- aggregation -------------------------------------------------------------------------------
    def aggregate(self, server_round: int, replies: list[Reply]) -> None:
        w = self.warmup
        if server_round <= w:
            sent = self.clusters[0].arrays
            self.history.append(
                {r.community_id: flatten_updates([self._delta(r, sent)])[0] for r in replies}
            )
            self.noise.append({r.community_id: self._noise_std(r) for r in replies})
            super().aggregate(server_round, replies)
            if server_round == w:
                self._cluster(replies)
            return
        for cluster_id, members in self.by_cluster(replies).items():
            weights = [self.weights.get(r.community_id, r.n_train) for r in members]
            self.clusters[cluster_id].arrays = average_arrays([r.arrays for r in members], weights)
        if self.shared_keys and replies:
            self._aggregate_shared(replies)

    def _aggregate_shared(self, replies: list[Reply]) -> None:
        """The shared global part: every reply, whatever its cluster, padded to the largest rank
        and averaged with the same weights (HetLoRA), then handed back to each cluster at its
        rank. Clusters that did not train this round get it too: it is one adapter."""
        alpha = self.cfg.model.lora_alpha
        r_max = max(c.rank for c in self.clusters.values())
        glob = hetlora_aggregate(
            [{k: r.arrays[k] for k in self.shared_keys} for r in replies],
            [self.weights.get(r.community_id, r.n_train) for r in replies],
            r_max,
            alpha,
        )
        for cluster in self.clusters.values():
            part = truncate_lora(glob, cluster.rank, alpha)
            cluster.arrays.update({k: v.astype(cluster.arrays[k].dtype) for k, v in part.items()})

    @staticmethod
    def _delta(reply: Reply, sent: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: reply.arrays[k] - sent[k] for k in sent}

    def _noise_std(self, reply: Reply) -> float:
        c = self.communities[reply.community_id]
        plan = self.plan(c, 1)
        if plan is None:
            return 0.0
        return dp_update_noise_std(
            plan.noise_multiplier,
            plan.max_grad_norm,
            plan.sample_rate * c.n_train,
            plan.steps,
            self.cfg.train.lr,
        )

    def _cluster(self, replies: list[Reply]) -> None:
        ids = sorted(set.intersection(*(set(h) for h in self.history)))
        hist = [np.stack([h[c] for c in ids]) for h in self.history]
        scales = np.array([[n[c] for c in ids] for n in self.noise]) if self.is_private else None
        self.blocks_used = list(self.clusters[0].arrays)
        if self.options.cluster_on == "signal" and scales is not None and len(ids) > 1:
            # post-processing: keep the coordinates whose spread beats the known DP noise
            U, v = combine_rounds(hist, scales)
            slices = block_slices(self.clusters[0].arrays)
            self.blocks_used = select_signal_blocks(U, v, slices)
            cols = np.concatenate(
                [np.arange(slices[b].start, slices[b].stop) for b in self.blocks_used]
            )
            hist = [h[:, cols] for h in hist]
        if self.options.cluster_signal == "both":
            ids, hist, scales = self._with_probes(ids, hist, scales)
        self._install(self._fit(hist, scales), ids)

    def _fit(self, hist: list[np.ndarray], scales: np.ndarray | None) -> Any:
        return cascade_cluster(
            hist, scales, self.options.k_max, self.cfg.seed, criterion=self.options.criterion
        )

    def _with_probes(
        self, ids: list[int], hist: list[np.ndarray], scales: np.ndarray | None
    ) -> tuple[list[int], list[np.ndarray], np.ndarray | None]:
        """Append each community's probe to its combined warm-up update, both whitened by their
        own DP noise (unit variance per coordinate), so the noise-corrected Gram matrix adds the
        two signals. Communities lacking either are late."""
        keep = [i for i, c in enumerate(ids) if c in self.probes]
        ids = [ids[i] for i in keep]
        hist = [h[keep] for h in hist]
        P = np.stack([self.probes[c][0] for c in ids]) if ids else np.zeros((0, 1))
        self.blocks_used = [*self.blocks_used, "probe"]
        if scales is None:  # non-private: no noise to whiten by; give both parts equal weight
            U = np.mean(hist, axis=0)
            parts = [X / max(np.linalg.norm(X) / np.sqrt(max(len(ids), 1)), 1e-12) for X in (U, P)]
            return ids, [np.hstack(parts)], None
        U, v = combine_rounds(hist, scales[:, keep])
        ps = np.array([self.probes[c][1] for c in ids])
        white = np.hstack([U / np.sqrt(v)[:, None], P / ps[:, None]])
        return ids, [white], np.ones((1, len(ids)))

    def _cluster_probes(self, probes: dict[int, tuple[np.ndarray, float]]) -> None:
        """Cluster the communities' DP probes (post-processing, free)."""
        ids = sorted(probes)
        if not ids:
            log(WARNING, "cascade: no community released a probe; one cluster for everyone")
            self._install(None, [])
            return
        U = np.stack([probes[c][0] for c in ids])
        scales = np.array([[probes[c][1] for c in ids]]) if self.is_private else None
        self.blocks_used = ["probe"]
        self._install(self._fit([U], scales), ids)

    def _install(self, result: Any, ids: list[int]) -> None:
        """Adopt a clustering of the communities ``ids``: assignment, ranks, cluster models and
        the rest of the run's DP plans. Communities not in ``ids`` are late."""
        self.result = result
        labels = {c: int(result.labels[i]) for i, c in enumerate(ids)} if result else {}
        largest = 0  # clusters are ordered by size; a placeholder until a late community selects
        self.assignment = {c: labels.get(c, largest) for c in self.communities}
        self.late = {c for c in self.communities if c not in labels}
        k = result.k if result else 1
        cids = sorted(self.communities)
        records = np.array([self.communities[c].n_train for c in cids])
        lab = np.array([self.assignment[c] for c in cids])
        mu = np.array(
            [
                gdp_mu(self.training_epsilon, self.delta(self.communities[c]))
                if self.is_private
                else 1.0
                for c in cids
            ]
        )
        precision = cluster_precision(records, lab, mu)
        r_max = self.cfg.model.lora_rank
        ranks = (
            cluster_ranks(precision, min(self.options.r_min, r_max), r_max, self.options.rank_gamma)
            if self.options.rank_scaling
            else np.full(k, r_max)
        )
        # every cluster starts from the warm-up's global model, cut to its rank
        start = self.clusters[0].arrays
        self.clusters = {
            j: Cluster(
                truncate_lora(start, int(ranks[j]), self.cfg.model.lora_alpha), int(ranks[j])
            )
            for j in range(k)
        }
        self._plan_rest(cids, records, lab, ranks)

    def _plan_rest(
        self, cids: list[int], records: np.ndarray, lab: np.ndarray, ranks: np.ndarray
    ) -> None:
        w, rounds = self.warmup, self.cfg.train.rounds
        rest = rounds - w
        if not self.is_private:
            self.rounds_of = {k: list(range(w + 1, rounds + 1)) for k in range(len(ranks))}
            return
        scaled = self.options.noise_scaling
        param_counts = [
            sum(a.size for a in self.clusters[k].arrays.values()) for k in range(len(ranks))
        ]
        plan = cluster_noise_plan(
            records,
            lab,
            epsilon=self.training_epsilon,
            delta=float(np.median([self.delta(self.communities[c]) for c in cids])),
            rounds=rest,
            local_epochs=self.cfg.train.local_epochs,
            param_counts=param_counts,
            weighting="precision" if scaled else "records",
            min_round_fraction=self.options.min_round_fraction if scaled else 1.0,
            sigma_target=self.options.sigma_target,
        )
        self.nsr = {"before": plan.nsr_before.tolist(), "after": plan.nsr_after.tolist()}
        self.rounds_of = {k: [w + r for r in rs] for k, rs in enumerate(plan.rounds_of)}
        self.weights = {c: float(plan.weights[i]) for i, c in enumerate(cids)}
        for i, c in enumerate(cids):
            info = self.communities[c]
            q = float(plan.sample_rate[i]) if scaled else self.sample_rate(info)
            steps = int(plan.steps_per_round[i]) if scaled else self.steps_per_round(info)
            n_rounds = len(self.rounds_of[int(lab[i])])
            self.plans[c] = self._calibrated_plan(c, q, steps, n_rounds)
            if self.options.lr_scaling:
                # linear scaling rule: keep lr x (steps over the rest of the run) as planned
                # before the noise plan changed batch size and rounds
                self.lr_factor[c] = (self.steps_per_round(info) * rest) / (steps * n_rounds)

    def _calibrated_plan(self, c: int, q: float, steps: int, n_rounds: int) -> DPPlan:
        """The rest of community ``c``'s run at one sigma, recalibrated against what its ledger
        already holds, so the total meets the budget. A late community also keeps room for its
        private cluster selection (pure DP, composed by the ledger)."""
        spent = [
            (b["sample_rate"], b["noise_multiplier"], b["steps"])
            for b in self.privacy.get(c, {}).get("blocks", [])
        ]
        pure = float(self.privacy.get(c, {}).get("epsilon_pure", 0.0))
        # (probe mode: a late community's plan is recalibrated once its probe is on the ledger)
        selects = c in self.late and self.options.cluster_signal != "probe"
        reserve = self.late_selection_epsilon if selects else 0.0
        sigma = calibrate_noise_multiplier(
            self.training_epsilon - pure - reserve,
            self.delta(self.communities[c]),
            [(q, steps * n_rounds)],
            self.cfg.privacy.accountant,
            spent=spent,
        )
        return DPPlan(q, steps, sigma, self.cfg.privacy.max_grad_norm)

    @property
    def late_selection_epsilon(self) -> float:
        """What a late community's private cluster selection costs (``privacy.
        selection_epsilon_fraction`` of its budget; only late communities pay it)."""
        if not self.is_private:
            return float("inf")  # non-private: the exact best cluster
        return self.cfg.privacy.target_epsilon * self.cfg.privacy.selection_epsilon_fraction

    def before_round(self, grid: Any, server_round: int) -> None:
        """Probe mode: every community releases its DP probe before round 1 and the clusters are
        formed from them; a community whose probe is missing (failed, refused, joined late)
        releases it when it is next sampled and joins the nearest cluster by
        :func:`assign_by_update` (post-processing of its probe, free).

        Update (and both) mode: the probes, if any, are released before the warm-up round;
        late communities (absent from the warm-up, so without an update to cluster) pick a
        cluster by report-noisy-max over accuracy on their own data, charged."""
        probe_only = self.options.cluster_signal == "probe"
        if server_round == 1 and self.options.cluster_signal != "update":
            everyone = [self.communities[c] for c in sorted(self.communities)]
            self.probes = self.release_probes(grid, server_round, everyone, self._probe_sigma)
            if probe_only:
                self._cluster_probes(self.probes)
            return
        if probe_only:
            self._join_by_probe(grid, server_round)
            return
        if server_round <= self.warmup + 1 or not self.late:
            return  # (in the first round after clustering the cluster models are still alike)
        now = [c for c in self._sampled(server_round) if c.community_id in self.late]
        if not now:
            return
        chosen = self.select_clusters(
            grid, server_round, now, sorted(self.clusters), "accuracy", self.late_selection_epsilon
        )
        self._join(chosen, server_round)

    def _join_by_probe(self, grid: Any, server_round: int) -> None:
        """Late communities sampled now release their probes and join the nearest cluster."""
        now = [c for c in self._sampled(server_round) if c.community_id in self.late]
        if not now:
            return
        new = self.release_probes(grid, server_round, now, self._probe_sigma)
        if not new:
            return
        self.probes.update(new)
        if self.result is None:
            # nobody had a probe before: nothing has trained yet, so cluster from scratch
            self._cluster_probes(self.probes)
            return
        ids = sorted(new)
        labels, _ = assign_by_update(
            np.stack([new[c][0] for c in ids]),
            np.array([new[c][1] for c in ids]) if self.is_private else 0.0,
            self.result,
        )
        self._join({c: int(labels[i]) for i, c in enumerate(ids)}, server_round)

    def _probe_sigma(self, community: CommunityInfo) -> float | None:
        if not self.is_private:
            return None
        return probe_noise_multiplier(
            self.training_epsilon, self.delta(community), self.options.probe_budget
        )

    def _join(self, chosen: dict[int, int], server_round: int) -> None:
        """Late communities join their chosen clusters; the rest of their run is re-planned
        against what their ledgers now hold."""
        for cid, k in chosen.items():
            self.assignment[cid] = k
            self.late.discard(cid)
            if self.is_private and cid in self.plans:
                old = self.plans[cid]
                left = [t for t in self.rounds_of[k] if t >= server_round]
                self.plans[cid] = self._calibrated_plan(cid, old.sample_rate, old.steps, len(left))
        self.joined = sorted(set(self.joined) | set(chosen))

    def round_record(self) -> dict[str, Any]:
        if not self.rounds_of:
            return {"phase": "warm-up"}
        return {
            "phase": "clustered",
            "cluster_signal": self.options.cluster_signal,
            "k": len(self.clusters),
            "criterion_scores": (
                {str(k): float(v) for k, v in self.result.scores.items()} if self.result else {}
            ),
            "clustered_blocks": self.blocks_used,
            "noise_to_signal": self.nsr,
            "cluster_rounds": {str(k): len(v) for k, v in self.rounds_of.items()},
            "late": sorted(self.late),
            "joined_late": self.joined,
        }

    def summary_extras(self) -> dict[str, Any]:
        return {"k": len(self.clusters)}
