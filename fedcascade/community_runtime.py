"""What one community does when the server asks: plain functions, no Flower inside.

The ClientApp (:mod:`fedcascade.client_app`) only decodes messages and calls these. Everything a
worker process builds once is cached here: the parsed experiment, the communities (by the data
layer), the frozen backbone, and one adapter model per LoRA rank.
"""

from __future__ import annotations

import math
import os
import socket
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from fedcascade.config import ExperimentConfig, config_digest, config_from_dict
from fedcascade.data import Community, Federation, build_federation, load_community
from fedcascade.data.local import load_local_community
from fedcascade.errors import MISSING, ConfigError, PrivacyBudgetExceeded
from fedcascade.models import (
    cached_adapter_model,
    evaluate,
    get_backbone,
    initial_adapter_arrays,
    load_trainable_arrays,
    trainable_arrays,
)
from fedcascade.privacy import DPPlan, PrivacyLedger, train_dp
from fedcascade.protocol import STATUS_BUDGET, STATUS_OK, TrainInstruction

# Small matrices: one BLAS thread per worker is faster than contending for the machine's cores
# (deployed ClientApps do not go through the CLI, which sets the same limit).
threadpool_limits(1)

# Opacus' hooks on the first adapter layer (whose input needs no gradient) make torch warn on
# every backward pass; it is expected and harmless here, and would flood every client's log.
warnings.filterwarnings("ignore", message="Full backward hook is firing")


@lru_cache(maxsize=8)
def experiment_from_toml(text: str) -> ExperimentConfig:
    """Parse (and validate) the experiment TOML a server sent; cached by content."""
    import tomllib

    return config_from_dict(tomllib.loads(text), resolve_strategy=False)


def served_communities(node_config: Mapping[str, Any], n_communities: int) -> list[int]:
    """Which communities a node serves.

    A node with ``community-id`` serves exactly that community (deployment: one SuperNode per
    community). A simulated node with ``partition-id`` p of ``num-partitions`` P serves every
    community c with c mod P == p, so `flwr run .` works with any number of SuperNodes.

    Raises
    ------
    ConfigError
        If the node has its own data file (``data-path``) but no ``community-id``.
    """
    if "community-id" in node_config:
        return [int(node_config["community-id"])]
    if node_data_path(node_config):
        raise ConfigError(
            "community-id (node config)",
            MISSING,
            "an integer community id next to data-path, e.g. community-id=0 "
            'data-path="/data/community.csv"',
            "a node's file holds exactly one community, so the node must say which",
        )
    p = int(node_config.get("partition-id", 0))
    n_parts = int(node_config.get("num-partitions", 1))
    return [c for c in range(n_communities) if c % n_parts == p]


def node_data_path(node_config: Mapping[str, Any]) -> str | None:
    """The node's own data file (node config ``data-path``), if it has one."""
    value = node_config.get("data-path")
    return str(value) if value else None


def community_data(cfg: ExperimentConfig, community_id: int, data_path: str | None) -> Community:
    """A community's records: from the node's ``data-path`` file when given (a deployed
    community with real data, encoded like the experiment's reference csv file), else from the
    experiment's ``[data]`` section (simulation)."""
    if data_path:
        return load_local_community(cfg.data, cfg.seed, community_id, data_path)
    return load_community(cfg.data, cfg.seed, community_id)


def worker_id() -> str:
    """Where this call runs: the Ray node id when inside Ray, else host:pid."""
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - Ray is optional here; fall back to the host name
        pass
    return f"{socket.gethostname()}:{os.getpid()}"


def federation(cfg: ExperimentConfig) -> Federation:
    """The experiment's federation (built once per process by the data layer)."""
    return build_federation(cfg.data, cfg.seed)


# Per-process caches keyed by a digest of the sections that determine them (the config itself
# holds dicts, so it is not hashable).
_BACKBONES: dict[str, torch.nn.Module] = {}
# config_digest serialises the whole config (~0.5 ms); a worker sees the same (frozen) config
# object every round, so digests are remembered per object. The config is kept in the value so
# that its id cannot be reused by another object while the entry exists.
_DIGESTS: dict[tuple[int, tuple[str, ...]], tuple[ExperimentConfig, str]] = {}
_DIGESTS_MAX = 256


def _digest(cfg: ExperimentConfig, *sections: str) -> str:
    """:func:`config_digest`, remembered per config object."""
    key = (id(cfg), sections)
    hit = _DIGESTS.get(key)
    if hit is not None and hit[0] is cfg:
        return hit[1]
    if len(_DIGESTS) >= _DIGESTS_MAX:
        _DIGESTS.clear()  # sweeps build many configs; a worker only ever uses a few at a time
    digest = config_digest(cfg, *sections)
    _DIGESTS[key] = (cfg, digest)
    return digest


def _backbone(cfg: ExperimentConfig) -> torch.nn.Module:
    key = _digest(cfg, "data", "model")
    if key not in _BACKBONES:
        fed = federation(cfg)
        _BACKBONES[key] = get_backbone(
            cfg.model, fed.input_shape, fed.n_classes, fed.public_x, fed.public_y, cfg.seed
        )
    return _BACKBONES[key]


def _adapter(cfg: ExperimentConfig, rank: int) -> torch.nn.Module:
    # One instance per rank, reused across rounds; the models layer clears any Opacus state
    # a previous round left on it.
    return cached_adapter_model(_backbone(cfg), cfg.model, rank, cfg.seed)


def model_at_rank(
    cfg: ExperimentConfig, rank: int, arrays: Mapping[str, np.ndarray]
) -> torch.nn.Module:
    """The cached adapter model at ``rank`` with ``arrays`` loaded into its trainable tensors."""
    model = _adapter(cfg, rank)
    load_trainable_arrays(model, arrays)
    return model


def initial_arrays(cfg: ExperimentConfig, rank: int, seed: int) -> dict[str, np.ndarray]:
    """Deterministic initial adapter arrays at ``rank`` (the server starts each cluster here)."""
    fed = federation(cfg)
    return initial_adapter_arrays(
        cfg.model, fed.input_shape, fed.n_classes, rank, seed, _backbone(cfg)
    )


def ledger_path(cfg: ExperimentConfig, community_id: int, state_dir: str | None) -> Path:
    """Where a community's privacy ledger lives.

    Deployed nodes keep it in their own ``state-dir`` (node config); simulations keep it in the
    run directory. The config digest in the name keeps different experiments apart, while a
    restarted run of the same experiment finds - and keeps honouring - what it already spent.
    """
    base = Path(state_dir) if state_dir else cfg.run_dir.resolve() / "ledgers"
    return (
        base
        / f"{cfg.name}-{_digest(cfg, 'data', 'privacy', 'train', 'strategy')}"
        / f"community-{community_id}.json"
    )


#: Open ledgers of this process, by file: a handle re-reads its file only when another process
#: wrote it since (see PrivacyLedger), so reusing it saves opening and parsing it every round.
_LEDGERS: dict[tuple[Path, float, float, str], PrivacyLedger] = {}


def open_ledger(
    cfg: ExperimentConfig,
    community_id: int,
    n_train: int,
    state_dir: str | None,
    horizon_steps: int = 0,
) -> PrivacyLedger:
    """The community's persistent ledger (created on first use, then reused by this process).

    ``horizon_steps`` (the run's planned DP-SGD steps) only sizes the PRV grid once for the
    whole run; see :class:`~fedcascade.privacy.PrivacyLedger`.
    """
    path = ledger_path(cfg, community_id, state_dir)
    budget = (cfg.privacy.target_epsilon, cfg.privacy.delta_for(n_train), cfg.privacy.accountant)
    key = (path, *budget)
    ledger = _LEDGERS.get(key)
    if ledger is None or not path.exists():  # a deleted file starts afresh, as before
        ledger = PrivacyLedger(
            path, target_epsilon=budget[0], delta=budget[1], accountant=budget[2]
        )
        _LEDGERS[key] = ledger
    ledger.horizon_steps = max(ledger.horizon_steps, horizon_steps)
    return ledger


#: what a non-private community reports instead of a ledger summary
_NON_PRIVATE: dict[str, Any] = {"epsilon": float("inf"), "accountant": "", "private": False}


@dataclass
class TrainOutcome:
    """What a community sends back after a train instruction."""

    arrays: dict[str, np.ndarray]
    n_train: int
    loss: float
    status: str
    privacy: dict[str, Any]
    seconds: float
    worker: str


def train_community(
    cfg: ExperimentConfig,
    instr: TrainInstruction,
    arrays: Mapping[str, np.ndarray],
    state_dir: str | None = None,
    data_path: str | None = None,
) -> TrainOutcome:
    """Run one block of (DP-)SGD for one community and account for it.

    The ledger is checked and charged *before* training: a plan that would exceed the budget is
    refused (status ``budget_exhausted``), the arrays come back unchanged and nothing is spent.
    """
    torch.set_num_threads(cfg.simulation.torch_threads)
    community = community_data(cfg, instr.community_id, data_path)
    private = instr.plan is not None
    ledger = None
    if private:
        horizon = cfg.train.rounds * instr.plan.steps  # the run's planned steps at this plan
        ledger = open_ledger(cfg, instr.community_id, community.n_train, state_dir, horizon)
    if ledger is not None:
        try:
            ledger.record(instr.plan)
        except PrivacyBudgetExceeded:
            return TrainOutcome(
                dict(arrays),
                community.n_train,
                float("nan"),
                STATUS_BUDGET,
                ledger.summary(),
                0.0,
                worker_id(),
            )
    model = model_at_rank(cfg, instr.lora_rank, arrays)
    seed = (cfg.seed * 1_000_003 + instr.server_round * 7919 + instr.community_id) % 2**31
    result = train_dp(model, community.x_train, community.y_train, instr.plan, instr.lr, seed)
    summary = ledger.summary() if ledger is not None else _NON_PRIVATE
    return TrainOutcome(
        trainable_arrays(model),
        community.n_train,
        # the training loss is computed on raw private records, so a private community does not
        # report it (design.md: anything computed from raw data is privatized or not sent)
        float("nan") if private else result.loss,
        STATUS_OK,
        summary,
        result.seconds,
        worker_id(),
    )


def evaluate_community(
    cfg: ExperimentConfig,
    instr: TrainInstruction,
    arrays: Mapping[str, np.ndarray],
    split: str = "test",
    data_path: str | None = None,
) -> dict[str, float]:
    """Loss, accuracy and per-group correct/total counts of the community's ``split``."""
    torch.set_num_threads(cfg.simulation.torch_threads)
    community = community_data(cfg, instr.community_id, data_path)
    x, y, groups = {
        "test": (community.x_test, community.y_test, community.groups_test),
        "val": (community.x_val, community.y_val, community.groups_val),
    }[split]
    model = model_at_rank(cfg, instr.lora_rank, arrays)
    res = evaluate(model, x, y)
    correct = res.predictions == y.numpy()
    out: dict[str, float] = {
        "num-examples": int(len(y)),
        "loss": float(res.loss),
        "accuracy": float(res.accuracy),
        "correct": int(correct.sum()),
    }
    for g in np.unique(groups):
        mask = groups == g
        out[f"group-correct/{g}"] = int(correct[mask].sum())
        out[f"group-total/{g}"] = int(mask.sum())
    return out


@dataclass
class ProbeOutcome:
    """A community's DP clustering probe (:mod:`fedcascade.clustering.probe`)."""

    vector: np.ndarray | None  # None when the budget refused the release
    n_train: int
    status: str
    privacy: dict[str, Any]


def release_community_probe(
    cfg: ExperimentConfig,
    community_id: int,
    noise_multiplier: float | None,
    seed: int,
    state_dir: str | None = None,
    data_path: str | None = None,
) -> ProbeOutcome:
    """Release the community's clustering probe, charged to its ledger *before* it is computed.

    The release is one Gaussian mechanism of sensitivity 1, recorded as the DP-SGD block it
    equals (``DPPlan(1.0, 1, sigma, 1.0)``); ``noise_multiplier = None`` releases the exact
    probe (non-private runs, nothing charged).
    """
    from fedcascade.clustering.probe import release_probe

    community = community_data(cfg, community_id, data_path)
    summary = _NON_PRIVATE
    if noise_multiplier is not None:
        ledger = open_ledger(cfg, community_id, community.n_train, state_dir)
        try:
            ledger.record(DPPlan(1.0, 1, float(noise_multiplier), 1.0))
        except PrivacyBudgetExceeded:
            return ProbeOutcome(None, community.n_train, STATUS_BUDGET, ledger.summary())
        summary = ledger.summary()
    vector = release_probe(
        community.x_train.numpy(),
        community.y_train.numpy(),
        federation(cfg).n_classes,
        float(noise_multiplier or 0.0),
        np.random.default_rng(seed),
    )
    return ProbeOutcome(vector, community.n_train, STATUS_OK, summary)


@dataclass
class SelectOutcome:
    """A community's privatized choice among cluster models."""

    choice: int | None  # None when the budget refused the selection
    status: str
    privacy: dict[str, Any]


def selection_sensitivity(metric: str, n_train: int, loss_clip: float) -> float:
    """Sensitivity of the mean score over ``n_train`` records when one record is replaced.

    Accuracy lies in [0, 1]; the loss is clipped per record to [0, loss_clip]. Record counts are
    public, so the mean of n bounded values moves by at most (range / n).
    """
    return (1.0 if metric == "accuracy" else loss_clip) / n_train


def select_cluster(
    cfg: ExperimentConfig,
    community_id: int,
    candidates: list[tuple[int, Mapping[str, np.ndarray]]],
    metric: str,
    epsilon: float,
    seed: int,
    state_dir: str | None = None,
    loss_clip: float = 5.0,
    data_path: str | None = None,
) -> SelectOutcome:
    """Pick the best cluster model on the community's own training data, privately.

    Report-noisy-max (Gumbel noise of scale 2 * sensitivity / epsilon, i.e. the exponential
    mechanism) over accuracies, or over negated clipped losses for ``metric = "loss"``. The
    ledger is charged ``epsilon`` (pure DP) *before* any score is computed; the scores never
    leave this function, only the chosen index does.
    """
    from fedcascade.clustering import report_noisy_max

    community = community_data(cfg, community_id, data_path)
    private = math.isfinite(epsilon)  # epsilon = inf: a non-private run picks the exact best
    ledger = open_ledger(cfg, community_id, community.n_train, state_dir) if private else None
    if ledger is not None:
        try:
            ledger.record_pure(epsilon, f"cluster selection ({metric}) seed {seed}")
        except PrivacyBudgetExceeded:
            return SelectOutcome(None, STATUS_BUDGET, ledger.summary())
    scores = []
    for rank, arrays in candidates:
        res = evaluate(model_at_rank(cfg, rank, arrays), community.x_train, community.y_train)
        if metric == "accuracy":
            scores.append(float(res.accuracy))
        else:
            scores.append(-float(np.minimum(res.per_record_loss, loss_clip).mean()))
    if not private:
        return SelectOutcome(int(np.argmax(scores)), STATUS_OK, _NON_PRIVATE)
    sens = selection_sensitivity(metric, community.n_train, loss_clip)
    choice = int(report_noisy_max(np.asarray(scores), epsilon, sens, np.random.default_rng(seed)))
    return SelectOutcome(choice, STATUS_OK, ledger.summary())
