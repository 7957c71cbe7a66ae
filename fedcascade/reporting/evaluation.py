"""Rebuild a finished run's models and evaluate them record by record.

A run directory keeps each cluster's final adapter (``models/cluster-K.npz``) and which cluster
each community used (``communities.csv``); the config rebuilds the communities (deterministic,
cached) and the frozen backbone (cached on disk). From these this module computes, for every
test record of every community, the quantities the disparity metrics need: probabilities,
losses, embeddings, predictions under input noise and under an FGSM/PGD attack, and the
membership-inference losses of training (member) versus test (non-member) records, under the
final model and under the pretrained backbone (the reference model of the calibrated attack;
the initial adapter predicts exactly what the backbone predicts).

Models that share a LoRA rank share one cached instance, so clusters are processed one after
the other: load a cluster's arrays, compute everything for its communities, move on.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedcascade.metrics import MembershipArrays, MetricsConfig, RunArrays, noise_key
from fedcascade.reporting.rundir import RunDir
from fedcascade.results import load_models

__all__ = [
    "RunEvaluation",
    "evaluate_run",
    "load_cluster_models",
    "predict_records",
    "federation_of",
]


@dataclass
class RunEvaluation:
    """Per-record results of one run's final models on its communities' test records.

    All test-record arrays are aligned (one row per test record, communities in id order).

    Attributes
    ----------
    community : np.ndarray of int, shape (n,)
        Community id of each test record.
    community_name : np.ndarray of str, shape (n,)
        Community name of each test record.
    groups : np.ndarray of str, shape (n,)
        Sensitive group of each test record.
    subdistributions : np.ndarray of str, shape (n,)
        Ground-truth sub-distribution name of each test record.
    labels : np.ndarray of int, shape (n,)
    probs : np.ndarray of shape (n, n_classes)
    losses : np.ndarray of shape (n,)
    embeddings : np.ndarray of shape (n, d_emb)
    inputs : np.ndarray of shape (n, ...)
        The test records as the model takes them.
    robustness : dict of str to np.ndarray of bool, shape (n,)
        ``acc_noise_<sigma>`` and ``acc_adversarial``: whether each record is still classified
        correctly under that perturbation.
    membership : MembershipArrays
        Member (training) and non-member (test) losses with groups and sub-distributions, and the
        same losses under the pretrained backbone (reference model).
    member_community, nonmember_community : np.ndarray of int
        Community of each member / non-member record (for the per-community view).
    community_accuracy : dict of int to float
        Recomputed test accuracy per community (compare with ``communities.csv``).
    epsilon_by_group, epsilon_by_subdistribution, epsilon_by_community : dict
        Privacy budget spent: a record's guarantee is its community's epsilon, so a group's is
        the largest epsilon over the communities holding its records.
    skipped_communities : list of int
        Communities without a usable model (their records are left out).
    """

    community: np.ndarray
    community_name: np.ndarray
    groups: np.ndarray
    subdistributions: np.ndarray
    labels: np.ndarray
    probs: np.ndarray
    losses: np.ndarray
    embeddings: np.ndarray
    inputs: np.ndarray
    robustness: dict[str, np.ndarray]
    membership: MembershipArrays
    member_community: np.ndarray
    nonmember_community: np.ndarray
    community_accuracy: dict[int, float]
    epsilon_by_group: dict[str, float] = field(default_factory=dict)
    epsilon_by_subdistribution: dict[str, float] = field(default_factory=dict)
    epsilon_by_community: dict[str, float] = field(default_factory=dict)
    skipped_communities: list[int] = field(default_factory=list)

    @property
    def n_classes(self) -> int:
        """Number of classes of the task."""
        return int(self.probs.shape[1])

    def run_arrays(self, view: str = "groups", seed_predictions: Any = None) -> RunArrays:
        """The :class:`~fedcascade.metrics.RunArrays` of one view.

        ``"groups"``: records keyed by sensitive group, with sub-distributions as the second
        view. ``"communities"``: records keyed by community name (no second view).
        Robustness is not included (the model differs per cluster): see :attr:`robustness`.
        ``seed_predictions`` (``(n_seeds, n)``) adds the multiplicity metrics.
        """
        mem = self.membership
        if view == "groups":
            return RunArrays(
                groups=self.groups,
                labels=self.labels,
                probs=self.probs,
                subdistributions=self.subdistributions,
                losses=self.losses,
                embeddings=self.embeddings,
                inputs=self.inputs,
                membership=mem,
                epsilon=self.epsilon_by_group,
                seed_predictions=seed_predictions,
            )
        names = self.community_name
        lookup = dict(zip(self.community.tolist(), names.tolist(), strict=True))
        return RunArrays(
            groups=names,
            labels=self.labels,
            probs=self.probs,
            losses=self.losses,
            embeddings=self.embeddings,
            inputs=self.inputs,
            membership=MembershipArrays(
                mem.member_losses,
                np.array([lookup.get(c, str(c)) for c in self.member_community.tolist()]),
                mem.nonmember_losses,
                np.array([lookup.get(c, str(c)) for c in self.nonmember_community.tolist()]),
                mem.member_reference_losses,
                mem.nonmember_reference_losses,
            ),
            epsilon=self.epsilon_by_community,
            seed_predictions=seed_predictions,
        )


def load_cluster_models(run_dir: Path) -> dict[int, tuple[int, dict[str, np.ndarray]]]:
    """``{cluster id: (rank, arrays)}`` from ``run_dir/models/cluster-K.npz``."""
    return load_models(run_dir)


def federation_of(run: RunDir, section: str = "records") -> Any:
    """The run's federation rebuilt from its config, or None (with a note saying why)."""
    if run.config is None:
        run.note(section, "the config could not be loaded, so the communities were not rebuilt")
        return None
    from fedcascade.data import build_federation

    try:
        return build_federation(run.config.data, run.config.seed)
    except Exception as e:  # noqa: BLE001 - e.g. deployed data that lives only on the nodes
        run.note(
            section,
            f"the communities could not be rebuilt from config.toml ({e}); record-level metrics "
            "need the data on this machine (a deployed run keeps it on the nodes)",
        )
        return None


def _usable_clusters(
    run: RunDir, fed: Any, models: Mapping[int, tuple[int, Any]]
) -> dict[int, list[int]]:
    """``{cluster: [community ids]}`` for communities whose recorded cluster has a saved model."""
    table = run.cluster_of()
    by_cluster: dict[int, list[int]] = {}
    missing = []
    for c in fed.communities:
        cluster, rank = table.get(c.community_id, (None, None))
        if cluster is None or cluster not in models:
            missing.append(c.community_id)
            continue
        if rank is not None and rank != models[cluster][0]:
            run.note(
                "records",
                f"community {c.community_id}: communities.csv says rank {rank} but "
                f"models/cluster-{cluster}.npz has rank {models[cluster][0]}; the saved model is used",
            )
        by_cluster.setdefault(cluster, []).append(c.community_id)
    if missing:
        run.note(
            "records",
            f"communities {missing} have no saved cluster model; their records are left out",
        )
    return by_cluster


def _max_by(keys: Sequence[str], eps: Sequence[float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, e in zip(keys, eps, strict=True):
        if math.isnan(e):
            continue
        out[k] = max(out.get(k, -math.inf), e)
    return out


def evaluate_run(run: RunDir, config: MetricsConfig | None = None) -> RunEvaluation | None:
    """Evaluate the final models of ``run`` on every community's records.

    Parameters
    ----------
    run : RunDir
        A run read by :func:`fedcascade.reporting.rundir.read_run` (with its config).
    config : MetricsConfig, optional
        Noise scales, attack radius and steps, batch size, seed.

    Returns
    -------
    RunEvaluation or None
        None when the data or the models cannot be rebuilt; the reason is added to
        ``run.notes``.
    """
    from fedcascade.models import get_backbone

    cfg_m = config if config is not None else MetricsConfig()
    fed = federation_of(run)
    if fed is None:
        return None
    if run.communities and len(run.communities) != fed.n_communities:
        run.note(
            "records",
            f"communities.csv has {len(run.communities)} rows but the rebuilt data has "
            f"{fed.n_communities} communities; the record-level metrics were skipped",
        )
        return None
    models = load_cluster_models(run.path)
    if not models:
        run.note(
            "records",
            "models/cluster-*.npz are missing (the run predates saved models or was cut short): "
            "representation, privacy attacks, robustness and calibration were skipped",
        )
        return None
    by_cluster = _usable_clusters(run, fed, models)
    if not by_cluster:
        return None

    cfg = run.config
    with _torch_threads(cfg.simulation.torch_threads):
        # From the disk cache the run wrote; pretrained again (deterministic) if it is gone.
        backbone = get_backbone(
            cfg.model, fed.input_shape, fed.n_classes, fed.public_x, fed.public_y, cfg.seed
        )
        return _evaluate(run, cfg, cfg_m, fed, backbone, models, by_cluster)


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch threads (the run's own setting), then restore the caller's.

    The models are small: on a shared machine one thread is many times faster than the
    default of one per core, which contends with every other process.
    """
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _model_at_rank(cfg: Any, backbone: Any, rank: int, arrays: Mapping[str, np.ndarray]) -> Any:
    """The cached adapter model at ``rank`` with ``arrays`` loaded.

    What :func:`fedcascade.community_runtime.model_at_rank` does (same caches), without
    importing the Flower message layer into a report.
    """
    from fedcascade.models import cached_adapter_model, load_trainable_arrays

    model = cached_adapter_model(backbone, cfg.model, rank, cfg.seed)
    load_trainable_arrays(model, arrays)
    return model


def _evaluate(
    run: RunDir,
    cfg: Any,
    cfg_m: MetricsConfig,
    fed: Any,
    backbone: Any,
    models: Mapping[int, tuple[int, dict[str, np.ndarray]]],
    by_cluster: Mapping[int, list[int]],
) -> RunEvaluation:
    from fedcascade.metrics.robustness import adversarial_predictions, noisy_predictions
    from fedcascade.models import embed, evaluate

    names = fed.sub_distribution_names
    comm = {c.community_id: c for c in fed.communities}
    parts: dict[int, dict[str, Any]] = {}
    bs = cfg_m.batch_size
    for cluster, ids in sorted(by_cluster.items()):
        rank, arrays = models[cluster]
        model = _model_at_rank(cfg, backbone, rank, arrays)
        x_test = np.concatenate([comm[c].x_test.numpy() for c in ids])
        y_test = np.concatenate([comm[c].y_test.numpy() for c in ids])
        res = evaluate(model, x_test, y_test, bs)
        emb = embed(model, x_test, bs)
        noisy = noisy_predictions(model, x_test, cfg_m.noise_scales, cfg_m.seed, bs)
        adv = adversarial_predictions(
            model, x_test, y_test, cfg_m.adversarial_eps, cfg_m.adversarial_steps, batch_size=bs
        )
        x_train = [comm[c].x_train.numpy() for c in ids]
        y_train = [comm[c].y_train.numpy() for c in ids]
        member = evaluate(model, np.concatenate(x_train), np.concatenate(y_train), bs)
        start = 0
        start_m = 0
        for c in ids:
            n, n_m = comm[c].n_test, comm[c].n_train
            sl, sl_m = slice(start, start + n), slice(start_m, start_m + n_m)
            parts[c] = {
                "probs": res.probabilities[sl],
                "losses": res.per_record_loss[sl],
                "pred": res.predictions[sl],
                "emb": emb[sl],
                "noisy": noisy[:, sl],
                "adv": adv[sl],
                "member_losses": member.per_record_loss[sl_m],
            }
            start += n
            start_m += n_m

    order = sorted(parts)
    cs = [comm[c] for c in order]
    x = np.concatenate([c.x_test.numpy() for c in cs])
    y = np.concatenate([c.y_test.numpy() for c in cs]).astype(np.int64)
    xm = np.concatenate([c.x_train.numpy() for c in cs])
    ym = np.concatenate([c.y_train.numpy() for c in cs]).astype(np.int64)
    # The reference model of the calibrated attack: the frozen pretrained backbone (what every
    # cluster starts from), trained on neither the members nor the non-members.
    ref_test = evaluate(backbone, x, y, bs).per_record_loss
    ref_train = evaluate(backbone, xm, ym, bs).per_record_loss

    def cat(key: str) -> np.ndarray:
        return np.concatenate([parts[c][key] for c in order])

    def attr_of(c: Any, attr: str) -> Any:
        if attr == "sub":
            return (
                names[c.sub_distribution]
                if c.sub_distribution < len(names)
                else str(c.sub_distribution)
            )
        return getattr(c, attr)

    def each(attr: str, split: str) -> np.ndarray:
        return np.concatenate([np.repeat(attr_of(c, attr), getattr(c, f"n_{split}")) for c in cs])

    noisy = np.concatenate([parts[c]["noisy"] for c in order], axis=1)
    robust = {noise_key(s): noisy[i] == y for i, s in enumerate(cfg_m.noise_scales)}
    robust["acc_adversarial"] = cat("adv") == y
    membership = MembershipArrays(
        member_losses=cat("member_losses"),
        member_groups=np.concatenate([c.groups_train for c in cs]).astype(str),
        nonmember_losses=cat("losses"),
        nonmember_groups=np.concatenate([c.groups_test for c in cs]).astype(str),
        member_reference_losses=ref_train,
        nonmember_reference_losses=ref_test,
        member_subdistributions=each("sub", "train").astype(str),
        nonmember_subdistributions=each("sub", "test").astype(str),
    )
    community = each("community_id", "test").astype(np.int64)
    groups = np.concatenate([c.groups_test for c in cs]).astype(str)
    subs = each("sub", "test").astype(str)
    eps_c = run.epsilon_of()
    eps_rec = [eps_c.get(int(c), math.nan) for c in community]
    accuracy = {c: float(np.mean(parts[c]["pred"] == comm[c].y_test.numpy())) for c in order}
    return RunEvaluation(
        community=community,
        community_name=each("name", "test").astype(str),
        groups=groups,
        subdistributions=subs,
        labels=y,
        probs=cat("probs"),
        losses=cat("losses"),
        embeddings=cat("emb"),
        inputs=x,
        robustness=robust,
        membership=membership,
        member_community=each("community_id", "train").astype(np.int64),
        nonmember_community=community,
        community_accuracy=accuracy,
        epsilon_by_group=_max_by(groups.tolist(), eps_rec),
        epsilon_by_subdistribution=_max_by(subs.tolist(), eps_rec),
        epsilon_by_community={c.name: eps_c.get(c.community_id, math.nan) for c in cs},
        skipped_communities=sorted(set(comm) - set(order)),
    )


def predict_records(
    run: RunDir, community_ids: np.ndarray, inputs: np.ndarray, batch_size: int = 1024
) -> np.ndarray | None:
    """Predicted class of each record under the final model of the record's community in ``run``.

    Used for multiplicity: the models of several seeds predict the same records (those of one
    reference run). Returns None when ``run`` has no usable models (a note says why).
    """
    from fedcascade.metrics.robustness import predict
    from fedcascade.models import get_backbone

    if run.config is None:
        run.note("multiplicity", "the config could not be loaded")
        return None
    fed = federation_of(run, "multiplicity")
    if fed is None:
        return None
    cfg = run.config
    with _torch_threads(cfg.simulation.torch_threads):
        backbone = get_backbone(
            cfg.model, fed.input_shape, fed.n_classes, fed.public_x, fed.public_y, cfg.seed
        )
    models = load_cluster_models(run.path)
    table = run.cluster_of()
    out = np.full(len(community_ids), -1, dtype=np.int64)
    needed = sorted(set(community_ids.tolist()))
    for cluster in sorted({table.get(c, (None, None))[0] for c in needed} - {None}):
        if cluster not in models:
            continue
        rank, arrays = models[cluster]
        mask = np.isin(community_ids, [c for c in needed if table.get(c, (None,))[0] == cluster])
        with _torch_threads(cfg.simulation.torch_threads):
            model = _model_at_rank(cfg, backbone, rank, arrays)
            out[mask] = predict(model, inputs[mask], batch_size)
    if (out < 0).any():
        run.note("multiplicity", "some communities have no saved model in this run")
        return None
    return out
