"""Flower ClientApp: thin handlers that decode a message, call the library, encode the reply.

The science lives in :mod:`fedcascade.community_runtime`; this module only speaks Flower.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedcascade import protocol as P
from fedcascade.community_runtime import (
    community_data,
    evaluate_community,
    experiment_from_toml,
    node_data_path,
    release_community_probe,
    select_cluster,
    served_communities,
    train_community,
    worker_id,
)

app = ClientApp()


def _state_dir(context: Context) -> str | None:
    value = context.node_config.get("state-dir")
    return str(value) if value else None


def _data_kwargs(context: Context) -> dict[str, str]:
    # Passed only when the node has its own file, so wrappers of the runtime functions written
    # before data-path existed (tests, plug-ins) keep working on simulated nodes.
    path = node_data_path(context.node_config)
    return {"data_path": path} if path else {}


@app.query()
def query(msg: Message, context: Context) -> Message:
    """``info``: which communities this node serves; ``select``: a private cluster choice;
    ``probe``: the community's DP clustering probe."""
    action = str(msg.content[P.CONFIG].get("action", "info"))
    if action == "select":
        return _select(msg, context)
    if action == "probe":
        return _probe(msg, context)
    cfg = experiment_from_toml(str(msg.content[P.CONFIG]["experiment"]))
    ids = served_communities(context.node_config, cfg.data.n_communities)
    data_path = node_data_path(context.node_config)
    communities = [community_data(cfg, c, data_path) for c in ids]
    info = ConfigRecord(
        {
            "community-ids": [c.community_id for c in communities],
            "n-train": [c.n_train for c in communities],
            "n-val": [c.n_val for c in communities],
            "n-test": [c.n_test for c in communities],
            "worker": worker_id(),
            # records from the node's own file: the server's copy of [data] does not describe
            # them, so its evaluation-only ground truth does not apply to them
            "local-data": [bool(data_path)] * len(communities),
        }
    )
    return Message(RecordDict({P.INFO: info}), reply_to=msg)


def _select(msg: Message, context: Context) -> Message:
    conf = msg.content[P.CONFIG]
    cfg = experiment_from_toml(str(conf["experiment"]))
    ranks = [int(r) for r in conf["ranks"]]
    candidates = [(r, P.record_to_arrays(msg.content[f"cluster-{k}"])) for k, r in enumerate(ranks)]
    out = select_cluster(
        cfg,
        int(conf["community-id"]),
        candidates,
        str(conf["metric"]),
        float(conf["epsilon"]),
        int(conf["seed"]),
        _state_dir(context),
        **_data_kwargs(context),
    )
    info = {"community-id": int(conf["community-id"]), "status": out.status, "worker": worker_id()}
    if out.choice is not None:
        info["choice"] = out.choice
    content = RecordDict({P.INFO: ConfigRecord(info), P.PRIVACY: P.privacy_to_record(out.privacy)})
    return Message(content, reply_to=msg)


def _probe(msg: Message, context: Context) -> Message:
    conf = msg.content[P.CONFIG]
    cfg = experiment_from_toml(str(conf["experiment"]))
    sigma = float(conf["noise-multiplier"])
    out = release_community_probe(
        cfg,
        int(conf["community-id"]),
        sigma if conf["private"] else None,
        int(conf["seed"]),
        _state_dir(context),
        **_data_kwargs(context),
    )
    info = {
        "community-id": int(conf["community-id"]),
        "status": out.status,
        "worker": worker_id(),
        "n-train": out.n_train,
    }
    content = RecordDict({P.INFO: ConfigRecord(info), P.PRIVACY: P.privacy_to_record(out.privacy)})
    if out.vector is not None:
        content[P.ARRAYS] = P.arrays_to_record({P.PROBE: out.vector})
    return Message(content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One community trains its cluster's adapter (DP-SGD when the plan says so)."""
    instr = P.TrainInstruction.from_record(msg.content[P.CONFIG])
    cfg = experiment_from_toml(instr.experiment)
    out = train_community(
        cfg,
        instr,
        P.record_to_arrays(msg.content[P.ARRAYS]),
        _state_dir(context),
        **_data_kwargs(context),
    )
    content = RecordDict(
        {
            P.ARRAYS: P.arrays_to_record(out.arrays),
            P.METRICS: P.metrics_record(
                {
                    "num-examples": out.n_train,
                    "train-loss": out.loss,
                    "epsilon": out.privacy.get("epsilon", float("inf")),
                    "seconds": out.seconds,
                }
            ),
            P.PRIVACY: P.privacy_to_record(out.privacy),
            P.INFO: ConfigRecord(
                {"community-id": instr.community_id, "status": out.status, "worker": out.worker}
            ),
        }
    )
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the community's cluster model on its own held-out test split."""
    instr = P.TrainInstruction.from_record(msg.content[P.CONFIG])
    cfg = experiment_from_toml(instr.experiment)
    split = str(instr.extra.get("split", "test"))
    arrays = P.record_to_arrays(msg.content[P.ARRAYS])
    metrics = evaluate_community(cfg, instr, arrays, split, **_data_kwargs(context))
    content = RecordDict(
        {
            P.METRICS: P.metrics_record(metrics),
            P.INFO: ConfigRecord({"community-id": instr.community_id, "worker": worker_id()}),
        }
    )
    return Message(content, reply_to=msg)
