"""What every fedcascade strategy needs, so a new strategy is about 50 lines.

A strategy keeps a set of *clusters* (each: adapter arrays + LoRA rank) and an *assignment* of
communities to clusters. Each round it sends every participating community the arrays of its
cluster, a LoRA rank and a DP plan; it validates the replies and aggregates them per cluster.
Subclasses override a few hooks:

``setup()``
    create the initial clusters and assignment (default: one global cluster).
``plan(community, server_round)``
    the DP plan of one community (default: the uniform plan calibrated for the whole run).
``aggregate(server_round, replies)``
    turn validated replies into new cluster arrays / assignment (default: per-cluster
    record-weighted average).
``round_record()``
    extra fields for this round's line in rounds.jsonl (e.g. the ARI).

The round loop (:meth:`FedcascadeStrategy.run`) reads top to bottom; Flower's abstract
``configure_*``/``aggregate_*`` methods are implemented on top of the hooks, so the class also
works with Flower's own ``Strategy.start``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any, ClassVar

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedcascade import protocol as P
from fedcascade.clustering import weighted_average
from fedcascade.config import ExperimentConfig, dump_config
from fedcascade.configtools import build
from fedcascade.errors import ConfigError
from fedcascade.privacy import DPPlan, calibrate_noise_multiplier

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class NoOptions:
    """A strategy without options."""


@dataclass(frozen=True)
class CommunityInfo:
    """What a strategy may know about a community: public counts only.

    The hidden sub-distribution is deliberately not here: it never reaches a strategy.
    """

    community_id: int
    node_id: int
    n_train: int
    n_val: int
    n_test: int
    #: the node trains on its own file (deployment ``data-path``), not the experiment's data
    local_data: bool = False


@dataclass
class Cluster:
    """One cluster model: adapter arrays at a LoRA rank."""

    arrays: Arrays
    rank: int


@dataclass
class Reply:
    """A validated train reply of one community."""

    community_id: int
    cluster_id: int
    arrays: Arrays
    n_train: int
    loss: float
    status: str
    privacy: dict[str, Any]
    worker: str
    seconds: float


@dataclass
class StrategyContext:
    """Everything the runner hands a strategy."""

    cfg: ExperimentConfig
    options: Any
    communities: list[CommunityInfo]
    initial_arrays: Callable[[int, int], Arrays]  # (rank, seed) -> arrays
    log_round: Callable[[dict[str, Any]], None] = lambda record: None
    on_progress: Callable[[int, int, float | None], None] = lambda r, n, acc: None
    #: hidden sub-distribution per community; filled ONLY for strategies that declare
    #: ``uses_ground_truth`` (the oracle evaluation ceiling), empty for every other strategy
    truth_for_evaluation: dict[int, int] = field(default_factory=dict)


def failed(reply: Message, what: str) -> bool:
    """True (after logging why) when a node answered ``what`` with an error instead of content."""
    if reply.has_error():
        log(
            WARNING,
            "%s reply from node %s failed: %s",
            what,
            reply.metadata.src_node_id,
            reply.error.reason,
        )
        return True
    return False


def average_arrays(arrays: list[Mapping[str, np.ndarray]], weights: Iterable[float]) -> Arrays:
    """Weighted average of same-shaped named arrays (weights need not sum to one)."""
    return weighted_average(arrays, list(weights))


def dp_update_norm_bound(
    plan: DPPlan, n_train: int, n_params: int, lr: float, tail: float = 10.0
) -> float:
    """A bound on the norm of a DP-SGD round update that honest training never exceeds.

    Each of the ``T`` steps moves the trainable tensors by ``lr / (q n)`` times the sum of at most
    ``n`` clipped gradients (norm <= n C) plus Gaussian noise N(0, sigma^2 C^2 I_p), whose norm
    exceeds ``sigma C (sqrt(p) + tail)`` with probability below exp(-tail^2 / 2) (Gaussian
    concentration; 2e-22 for tail 10). So ``|update| <= T lr C (n + sigma (sqrt(p) + tail)) / (q n)``.
    Plain SGD without momentum, as :func:`fedcascade.privacy.train_dp` runs it.
    """
    c = plan.max_grad_norm or 0.0
    per_step = (
        lr
        * c
        * (n_train + plan.noise_multiplier * (math.sqrt(n_params) + tail))
        / (plan.sample_rate * n_train)
    )
    return plan.steps * per_step


class FedcascadeStrategy(Strategy):
    """Base class of every fedcascade strategy (see the module docstring for the hooks)."""

    #: registered name (``strategy.name`` in the config)
    name: ClassVar[str] = ""
    #: how outputs label the strategy (e.g. marks an evaluation-only ceiling)
    label: ClassVar[str] = ""
    #: False for strategies that ignore ``[privacy]`` and train without DP
    private: ClassVar[bool] = True
    #: the strategy's options dataclass, built from ``[strategy.options]``
    Options: ClassVar[type] = NoOptions
    #: True only for evaluation ceilings that may see the hidden sub-distributions
    uses_ground_truth: ClassVar[bool] = False
    #: True when communities privately choose among cluster models (costs a pure-DP share)
    uses_selection: ClassVar[bool] = False

    # -- configuration -------------------------------------------------------------------------
    @classmethod
    def build_options(cls, raw: Mapping[str, Any], key: str = "strategy.options") -> Any:
        """Validate ``[strategy.options]`` into :attr:`Options` (clear errors on bad keys)."""
        return build(cls.Options, raw, key)

    @classmethod
    def check_config(cls, cfg: ExperimentConfig) -> None:
        """Cross-section checks a strategy needs (override; raise ConfigError)."""

    def __init__(self, ctx: StrategyContext) -> None:
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.options = ctx.options
        self.communities = {c.community_id: c for c in ctx.communities}
        self.clusters: dict[int, Cluster] = {}
        self.assignment: dict[int, int] = {}
        self.rng = np.random.default_rng(self.cfg.seed + 17)
        self.experiment_toml = dump_config(self.cfg)
        self._round_train: dict[str, Any] = {}
        self._round_eval: dict[str, Any] = {}
        self.last_eval: dict[int, dict[str, float]] = {}
        self.val_eval: dict[int, dict[str, float]] = {}
        self.privacy: dict[int, dict[str, Any]] = {}
        self.workers: dict[int, str] = {}
        self.budget_exhausted: set[int] = set()
        self._participants: dict[int, list[int]] = {}
        self._sent: dict[int, P.TrainInstruction] = {}  # this round's train instructions

    @property
    def is_private(self) -> bool:
        """Whether communities train with DP-SGD in this run."""
        return self.private and self.cfg.privacy.enabled

    # -- hooks ---------------------------------------------------------------------------------
    def setup(self) -> None:
        """Create the initial clusters and assignment: one global adapter at the config rank."""
        rank = self.cfg.model.lora_rank
        self.clusters = {0: Cluster(self.ctx.initial_arrays(rank, self.cfg.seed), rank)}
        self.assignment = {cid: 0 for cid in self.communities}

    def participants(self, server_round: int) -> list[CommunityInfo]:
        """Communities sampled this round (all, or ``train.participation`` of them).

        Drawn once per round, so selection and training see the same sample.
        """
        if server_round not in self._participants:
            ids = sorted(c for c in self.communities if c not in self.budget_exhausted)
            frac = self.cfg.train.participation
            if frac < 1.0 and ids:
                k = max(1, round(frac * len(ids)))
                ids = sorted(self.rng.choice(ids, size=k, replace=False).tolist())
            self._participants[server_round] = ids
        return [
            self.communities[c]
            for c in self._participants[server_round]
            if c not in self.budget_exhausted
        ]

    def sample_rate(self, community: CommunityInfo) -> float:
        """Poisson sampling rate giving the configured expected batch size."""
        return min(1.0, self.cfg.privacy.batch_size / community.n_train)

    def steps_per_round(self, community: CommunityInfo) -> int:
        """Local DP-SGD steps per round: ``local_epochs`` expected passes over the data."""
        return max(1, math.ceil(self.cfg.train.local_epochs / self.sample_rate(community)))

    def planned_schedule(self, community: CommunityInfo) -> list[tuple[float, int]]:
        """The whole run's planned (sample rate, steps) blocks; the noise is calibrated to it."""
        return [
            (self.sample_rate(community), self.steps_per_round(community) * self.cfg.train.rounds)
        ]

    @property
    def selection_epsilon(self) -> float:
        """The share of every community's epsilon reserved for private cluster selection."""
        if not (self.uses_selection and self.is_private):
            return 0.0
        return self.cfg.privacy.target_epsilon * self.cfg.privacy.selection_epsilon_fraction

    @property
    def training_epsilon(self) -> float:
        """The epsilon DP-SGD is calibrated to: the target minus the selection share.

        The ledger composes both (basic composition), so the total stays within the target.
        """
        return self.cfg.privacy.target_epsilon - self.selection_epsilon

    def noise_multiplier(self, community: CommunityInfo) -> float:
        """Smallest sigma whose planned schedule meets the community's training epsilon
        (calibration is cached by the privacy layer)."""
        return calibrate_noise_multiplier(
            self.training_epsilon,
            self.delta(community),
            self.planned_schedule(community),
            self.cfg.privacy.accountant,
        )

    def delta(self, community: CommunityInfo) -> float:
        """The community's delta: the configured one, or the default below 1/n_train."""
        return self.cfg.privacy.delta_for(community.n_train)

    def plan(self, community: CommunityInfo, server_round: int) -> DPPlan | None:
        """This round's DP plan for ``community`` (None when training is non-private)."""
        if not self.is_private:
            return None
        return DPPlan(
            sample_rate=self.sample_rate(community),
            steps=self.steps_per_round(community),
            noise_multiplier=self.noise_multiplier(community),
            max_grad_norm=self.cfg.privacy.max_grad_norm,
        )

    def lr(self, community: CommunityInfo, server_round: int) -> float:
        """Local learning rate."""
        return self.cfg.train.lr

    def instruction(
        self, community: CommunityInfo, server_round: int, **extra: Any
    ) -> P.TrainInstruction:
        """The train/evaluate instruction for one community."""
        cluster_id = self.assignment[community.community_id]
        return P.TrainInstruction(
            community_id=community.community_id,
            cluster_id=cluster_id,
            lora_rank=self.clusters[cluster_id].rank,
            lr=self.lr(community, server_round),
            server_round=server_round,
            experiment=self.experiment_toml,
            plan=self.plan(community, server_round),
            extra=extra,
        )

    def aggregate(self, server_round: int, replies: list[Reply]) -> None:
        """Per-cluster record-weighted average of the members' trained arrays."""
        for cluster_id, members in self.by_cluster(replies).items():
            self.clusters[cluster_id].arrays = average_arrays(
                [r.arrays for r in members], [r.n_train for r in members]
            )

    def before_round(self, grid: Grid, server_round: int) -> None:
        """Work before a round's training (e.g. private cluster selection). Default: none."""

    def round_record(self) -> dict[str, Any]:
        """Extra fields for this round's rounds.jsonl line."""
        return {}

    def summary_extras(self) -> dict[str, Any]:
        """Extra fields for summary.json (e.g. the final ARI)."""
        return {}

    # -- helpers for subclasses ------------------------------------------------------------------
    @staticmethod
    def by_cluster(replies: Iterable[Reply]) -> dict[int, list[Reply]]:
        """Group replies by the cluster they trained."""
        out: dict[int, list[Reply]] = {}
        for r in replies:
            out.setdefault(r.cluster_id, []).append(r)
        return out

    def cluster_sizes(self) -> dict[int, int]:
        """Communities per cluster under the current assignment."""
        sizes = {k: 0 for k in self.clusters}
        for k in self.assignment.values():
            sizes[k] = sizes.get(k, 0) + 1
        return sizes

    def select_clusters(
        self,
        grid: Grid,
        server_round: int,
        communities: Iterable[CommunityInfo],
        cluster_ids: list[int],
        metric: str,
        epsilon: float,
    ) -> dict[int, int]:
        """Each community privately picks one of ``cluster_ids`` on its own training data.

        The community scores every candidate model (``metric`` "accuracy" or "loss") and answers
        with report-noisy-max at ``epsilon``, charged to its ledger as a pure-DP event; only the
        chosen index comes back (``epsilon = inf``: exact choice, for non-private runs). Returns
        {community_id: chosen cluster id}; communities whose budget refused the selection are
        left out and marked exhausted.
        """
        base = {
            f"cluster-{j}": P.arrays_to_record(self.clusters[k].arrays)
            for j, k in enumerate(cluster_ids)
        }
        ranks = [self.clusters[k].rank for k in cluster_ids]
        conf = {"metric": metric, "epsilon": float(epsilon), "ranks": ranks}
        answers = self._private_query(
            grid, server_round, "select", communities, lambda c: conf, "selection", base
        )
        return {cid: cluster_ids[int(reply.content[P.INFO]["choice"])] for cid, reply in answers}

    def _private_query(
        self,
        grid: Grid,
        server_round: int,
        action: str,
        communities: Iterable[CommunityInfo],
        conf_of: Callable[[CommunityInfo], dict[str, Any]],
        what: str,
        base: Mapping[str, Any] | None = None,
    ) -> list[tuple[int, Message]]:
        """Send each community a ``query`` with ``action`` (plus ``conf_of(c)`` and the shared
        ``base`` records) and a fresh seed; return (community_id, reply) for the answers that
        computed something. Every answer's ledger summary is kept; failed or malformed answers
        and budget refusals (the community is then marked exhausted) are logged and left out."""
        msgs = []
        for c in communities:
            content = RecordDict(dict(base or {}))
            content[P.CONFIG] = ConfigRecord(
                {
                    "action": action,
                    "experiment": self.experiment_toml,
                    "community-id": c.community_id,
                    "server-round": server_round,
                    **conf_of(c),
                    "seed": int(self.rng.integers(2**31)),
                }
            )
            msgs.append(Message(content=content, message_type="query", dst_node_id=c.node_id))
        answers: list[tuple[int, Message]] = []
        for reply in grid.send_and_receive(msgs, timeout=self.cfg.train.timeout_seconds):
            if failed(reply, what):
                continue
            try:
                info = reply.content[P.INFO]
                cid = int(info["community-id"])
                self.privacy[cid] = P.record_to_privacy(reply.content[P.PRIVACY])
                status = str(info["status"])
            except (KeyError, ValueError, TypeError) as e:
                log(WARNING, "malformed %s reply dropped: %r", what, e)
                continue
            if status == P.STATUS_BUDGET:
                log(WARNING, "community %s refused %s: privacy budget exhausted", cid, what)
                self.budget_exhausted.add(cid)
                continue
            answers.append((cid, reply))
        return answers

    def release_probes(
        self,
        grid: Grid,
        server_round: int,
        communities: Iterable[CommunityInfo],
        noise_multiplier: Callable[[CommunityInfo], float | None],
    ) -> dict[int, tuple[np.ndarray, float]]:
        """Each community releases its DP clustering probe (:mod:`fedcascade.clustering.probe`).

        ``noise_multiplier(c)`` is ``None`` for an exact (non-private) probe. The release is
        charged to the community's ledger before it is computed. Returns {community_id: (probe,
        per-coordinate noise std)}; communities that failed, refused (budget) or sent a malformed
        probe (wrong dtype or length, non-finite, norm beyond :func:`probe_norm_bound`) are left
        out with a logged reason.
        """
        from fedcascade.clustering.probe import probe_noise_std, probe_norm_bound

        sigmas: dict[int, float | None] = {}

        def conf_of(c: CommunityInfo) -> dict[str, Any]:
            sigma = sigmas[c.community_id] = noise_multiplier(c)
            return {"private": sigma is not None, "noise-multiplier": float(sigma or 0.0)}

        got: dict[int, tuple[np.ndarray, int]] = {}
        for cid, reply in self._private_query(
            grid, server_round, "probe", communities, conf_of, "probe"
        ):
            try:
                vec = P.record_to_arrays(reply.content[P.ARRAYS])[P.PROBE]
                got[cid] = (vec, int(reply.content[P.INFO]["n-train"]))
            except (KeyError, ValueError, TypeError) as e:
                log(WARNING, "malformed probe reply dropped: %r", e)
        shapes = [v.shape for v, _ in got.values()]
        common = max(set(shapes), key=shapes.count) if shapes else None
        out: dict[int, tuple[np.ndarray, float]] = {}
        for cid, (vec, n) in sorted(got.items()):
            sigma = sigmas.get(cid)
            problem = None
            if cid not in sigmas:
                problem = "no probe was asked of it"
            elif vec.dtype != np.float64 or vec.ndim != 1 or vec.shape != common:
                problem = f"probe is {vec.dtype}{list(vec.shape)}, expected float64{list(common)}"
            elif not np.isfinite(vec).all():
                problem = "probe has non-finite values"
            elif n != self.communities[cid].n_train:
                problem = (
                    f"probe over {n} records, the community has {self.communities[cid].n_train}"
                )
            elif np.linalg.norm(vec) > probe_norm_bound(n, vec.size, sigma or 0.0):
                problem = (
                    f"probe norm {np.linalg.norm(vec):.4g} exceeds the bound "
                    f"{probe_norm_bound(n, vec.size, sigma or 0.0):.4g} its noise allows"
                )
            if problem:
                log(WARNING, "probe of community %s dropped: %s", cid, problem)
                continue
            out[cid] = (vec, probe_noise_std(sigma or 0.0, n))
        return out

    def message(
        self, community: CommunityInfo, server_round: int, kind: str, **extra: Any
    ) -> Message:
        """A train/evaluate message for ``community`` carrying its cluster's arrays."""
        instr = self.instruction(community, server_round, **extra)
        if kind == "train":
            self._sent[community.community_id] = instr
        content = P.instruction_content(self.clusters[instr.cluster_id].arrays, instr)
        return Message(content=content, message_type=kind, dst_node_id=community.node_id)

    # -- Flower's Strategy interface --------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One train message per participating community."""
        return [self.message(c, server_round, "train") for c in self.participants(server_round)]

    def validate_train_replies(self, replies: Iterable[Message]) -> list[Reply]:
        """Keep well-formed replies; log (not crash on) errors and malformed ones."""
        good: list[Reply] = []
        for msg in replies:
            if failed(msg, "train"):
                continue
            try:
                c = msg.content
                info = c[P.INFO]
                cid = int(info["community-id"])
                reply = Reply(
                    community_id=cid,
                    cluster_id=self.assignment[cid],
                    arrays=P.record_to_arrays(c[P.ARRAYS]),
                    n_train=int(c[P.METRICS]["num-examples"]),
                    loss=float(c[P.METRICS]["train-loss"]),
                    status=str(info["status"]),
                    privacy=P.record_to_privacy(c[P.PRIVACY]),
                    worker=str(info["worker"]),
                    seconds=float(c[P.METRICS]["seconds"]),
                )
            except (KeyError, ValueError, TypeError) as e:
                log(
                    WARNING,
                    "malformed train reply from node %s dropped: %r",
                    msg.metadata.src_node_id,
                    e,
                )
                continue
            # what the community's ledger spent counts even when its update is unusable
            self.privacy[cid] = reply.privacy
            self.workers[cid] = reply.worker
            problem = self.reply_problem(reply)
            if problem:
                log(WARNING, "train reply of community %s dropped: %s", cid, problem)
                continue
            if reply.status == P.STATUS_BUDGET:
                log(WARNING, "community %s refused training: privacy budget exhausted", cid)
                self.budget_exhausted.add(cid)
                continue
            good.append(reply)
        return good

    def reply_problem(self, reply: Reply) -> str | None:
        """Why a reply cannot be aggregated (None if it can): names, shapes, dtypes, finite
        values, and an update norm within what the DP plan allows (:func:`dp_update_norm_bound`)."""
        expected = self.clusters[reply.cluster_id].arrays
        if set(reply.arrays) != set(expected):
            return f"adapter tensors {sorted(set(reply.arrays) ^ set(expected))[:4]} do not match the cluster's"
        for k, ref in expected.items():
            got = reply.arrays[k]
            if got.shape != ref.shape or got.dtype != ref.dtype:
                return f"{k} is {got.dtype}{list(got.shape)}, expected {ref.dtype}{list(ref.shape)}"
            if not np.isfinite(got).all():
                return f"{k} has non-finite values"
        instr = self._sent.get(reply.community_id)
        if instr is not None and instr.plan is not None and reply.status == P.STATUS_OK:
            norm = math.sqrt(
                sum(
                    float(np.sum((reply.arrays[k].astype(np.float64) - v) ** 2))
                    for k, v in expected.items()
                )
            )
            p = sum(v.size for v in expected.values())
            bound = dp_update_norm_bound(instr.plan, reply.n_train, p, instr.lr)
            if norm > bound:
                return f"update norm {norm:.4g} exceeds the bound {bound:.4g} its DP plan allows"
        return None

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate, aggregate per cluster, and summarise the round's training."""
        valid = self.validate_train_replies(replies)
        if valid:
            self.aggregate(server_round, valid)
        n = sum(r.n_train for r in valid)
        self._round_train = {
            "participants": sorted(r.community_id for r in valid),
            # private communities do not report a training loss (it would leak)
            "train_loss": (sum(r.loss * r.n_train for r in valid) / n)
            if n and not self.is_private
            else None,
            "max_epsilon": max((float(r.privacy.get("epsilon", 0.0)) for r in valid), default=None),
            "workers": {str(r.community_id): r.worker for r in valid},
        }
        return None, MetricRecord({"num-replies": len(valid)})

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Every community evaluates its cluster's model on its own test split."""
        return [
            self.message(c, server_round, "evaluate", split="test")
            for c in self.communities.values()
        ]

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Record-weighted test accuracy and loss over all communities."""
        for msg in replies:
            if failed(msg, "evaluate"):
                continue
            cid = int(msg.content[P.INFO]["community-id"])
            self.last_eval[cid] = dict(msg.content[P.METRICS])
        n = sum(m["num-examples"] for m in self.last_eval.values())
        if not n:
            return None
        acc = sum(m["correct"] for m in self.last_eval.values()) / n
        loss = sum(m["loss"] * m["num-examples"] for m in self.last_eval.values()) / n
        self._round_eval = {"eval_accuracy": acc, "eval_loss": loss}
        return MetricRecord({"accuracy": acc, "loss": loss})

    def summary(self) -> None:
        """Log what this strategy is."""
        log(
            INFO,
            "strategy %s (%s): %d communities",
            self.name,
            self.label or self.__class__.__name__,
            len(self.communities),
        )

    # -- the round loop ------------------------------------------------------------------------------
    def run(self, grid: Grid) -> None:
        """Set up, then train and evaluate ``train.rounds`` rounds, logging one record per round."""
        self.setup()
        self.summary()
        timeout = self.cfg.train.timeout_seconds
        rounds = self.cfg.train.rounds
        for server_round in range(1, rounds + 1):
            t0 = time.perf_counter()
            self.before_round(grid, server_round)
            replies = grid.send_and_receive(
                self.configure_train(server_round, ArrayRecord(), ConfigRecord(), grid),
                timeout=timeout,
            )
            self.aggregate_train(server_round, replies)
            ev = grid.send_and_receive(
                self.configure_evaluate(server_round, ArrayRecord(), ConfigRecord(), grid),
                timeout=timeout,
            )
            self.aggregate_evaluate(server_round, ev)
            sizes = self.cluster_sizes()
            record = {
                "round": server_round,
                "wall_seconds": round(time.perf_counter() - t0, 4),
                "participants": self._round_train.get("participants", []),
                "assignment": {str(c): k for c, k in sorted(self.assignment.items())},
                "cluster_sizes": {str(k): v for k, v in sorted(sizes.items())},
                "cluster_ranks": {str(k): c.rank for k, c in sorted(self.clusters.items())},
                "train": {
                    k: v
                    for k, v in self._round_train.items()
                    if k not in ("participants", "workers")
                },
                "eval": dict(self._round_eval),
                "workers": self._round_train.get("workers", {}),
                **self.round_record(),
            }
            self.ctx.log_round(record)
            self.ctx.on_progress(server_round, rounds, self._round_eval.get("eval_accuracy"))
        self.evaluate_validation(grid)

    def evaluate_validation(self, grid: Grid) -> None:
        """Final models on every community's validation split (held out of training).

        Hyperparameters are chosen on this number, never on the test split.
        """
        msgs = [
            self.message(c, self.cfg.train.rounds, "evaluate", split="val")
            for c in self.communities.values()
        ]
        for msg in grid.send_and_receive(msgs, timeout=self.cfg.train.timeout_seconds):
            if not msg.has_error():
                self.val_eval[int(msg.content[P.INFO]["community-id"])] = dict(
                    msg.content[P.METRICS]
                )


def discover_communities(
    grid: Grid, experiment_toml: str, n_communities: int, timeout: float, poll: float = 2.0
) -> list[CommunityInfo]:
    """Ask every node which communities it serves; map community ids to node ids.

    Deployed SuperNodes connect at their own pace, so new nodes are asked until every community
    is served or ``min(timeout, 300)`` seconds have passed.

    Raises
    ------
    ConfigError
        If two nodes serve one community, or some community is still unserved at the deadline.
    """
    deadline = time.time() + min(timeout, 300)
    content = RecordDict(
        {P.CONFIG: ConfigRecord({"experiment": experiment_toml, "action": "info"})}
    )
    found: dict[int, CommunityInfo] = {}
    asked: set[int] = set()
    while True:
        new = [n for n in grid.get_node_ids() if n not in asked]
        asked.update(new)
        msgs = [Message(content=content, message_type="query", dst_node_id=n) for n in new]
        for reply in grid.send_and_receive(msgs, timeout=timeout) if msgs else []:
            if failed(reply, "info query"):
                continue
            info = reply.content[P.INFO]
            local = (
                list(info["local-data"])
                if "local-data" in info
                else [False] * len(info["community-ids"])
            )
            for cid, ntr, nv, nte, loc in zip(
                info["community-ids"], info["n-train"], info["n-val"], info["n-test"], local
            ):
                if int(cid) in found:
                    raise ConfigError(
                        "community-id", int(cid), "each community served by exactly one SuperNode"
                    )
                found[int(cid)] = CommunityInfo(
                    int(cid), reply.metadata.src_node_id, int(ntr), int(nv), int(nte), bool(loc)
                )
        missing = sorted(set(range(n_communities)) - set(found))
        if not missing:
            return [found[c] for c in sorted(found)]
        if time.time() >= deadline:
            raise ConfigError(
                "data.n_communities",
                n_communities,
                f"communities served by the connected nodes ({len(asked)} nodes)",
                f"no node serves communities {missing[:10]} (is every SuperNode up and registered?)",
            )
        time.sleep(poll)
