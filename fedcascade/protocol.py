"""What travels between the ServerApp and the ClientApp, in one place.

Three message kinds, all Flower ``Message`` objects with a ``RecordDict`` content:

``query`` (``action = "info"``)
    server -> node: the resolved experiment TOML. Reply: which communities the node serves and
    their public record counts (counts of records per community are public; see design.md).
``train``
    server -> node, one message per community: the adapter arrays of the community's cluster
    (``ArrayRecord``) and a :class:`TrainInstruction` (``ConfigRecord``): community id, cluster
    id, LoRA rank, learning rate, DP plan. Reply: the trained adapter arrays, a ``MetricRecord``
    (num-examples, train loss, epsilon spent) and the community's privacy ledger summary.
``evaluate``
    server -> node, one per community: arrays and instruction. Reply: loss/accuracy and per-group
    correct/total counts on the community's test split.
``query`` with ``action = "select"`` / ``"probe"``
    server -> node: pick a cluster model privately (only the index comes back), or release the
    community's DP clustering probe (``fedcascade.clustering.probe``). Both are charged to the
    community's ledger before anything is computed; the reply carries the ledger summary.

The hidden sub-distribution id of a community never appears in any message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedcascade.privacy import DPPlan

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
PRIVACY = "privacy"
INFO = "info"
PROBE = "probe"  # the array name of a released clustering probe

STATUS_OK = "ok"
STATUS_BUDGET = "budget_exhausted"


def arrays_to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Wrap ordered named numpy arrays in a Flower ArrayRecord (order is kept)."""
    return ArrayRecord(array_dict={k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def record_to_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Inverse of :func:`arrays_to_record`."""
    return {k: v.numpy() for k, v in record.items()}


@dataclass(frozen=True)
class TrainInstruction:
    """What the server asks one community to do in one round."""

    community_id: int
    cluster_id: int
    lora_rank: int
    lr: float
    server_round: int
    experiment: str  # the resolved experiment TOML; clients cache its parse by content
    plan: DPPlan | None = None  # None: non-private training
    extra: dict[str, Any] = field(default_factory=dict)  # strategy-specific, JSON-serialisable

    def to_record(self) -> ConfigRecord:
        d: dict[str, Any] = {
            "community-id": self.community_id,
            "cluster-id": self.cluster_id,
            "lora-rank": self.lora_rank,
            "lr": self.lr,
            "server-round": self.server_round,
            "experiment": self.experiment,
            "private": self.plan is not None,
            "extra": json.dumps(self.extra),
        }
        if self.plan is not None:
            d.update({f"plan-{k}": v for k, v in self.plan.to_config().items()})
        return ConfigRecord(d)

    @classmethod
    def from_record(cls, rec: ConfigRecord) -> TrainInstruction:
        plan = None
        if rec["private"]:
            plan = DPPlan.from_config(
                {k[len("plan-") :]: v for k, v in rec.items() if k.startswith("plan-")}
            )
        return cls(
            community_id=int(rec["community-id"]),
            cluster_id=int(rec["cluster-id"]),
            lora_rank=int(rec["lora-rank"]),
            lr=float(rec["lr"]),
            server_round=int(rec["server-round"]),
            experiment=str(rec["experiment"]),
            plan=plan,
            extra=json.loads(str(rec["extra"])),
        )


def instruction_content(
    arrays: Mapping[str, np.ndarray] | None, instr: TrainInstruction
) -> RecordDict:
    """The content of a train/evaluate message."""
    content = RecordDict({CONFIG: instr.to_record()})
    if arrays is not None:
        content[ARRAYS] = arrays_to_record(arrays)
    return content


def privacy_to_record(summary: Mapping[str, Any]) -> ConfigRecord:
    """A ledger summary as a ConfigRecord (nested values JSON-encoded)."""
    return ConfigRecord({"json": json.dumps(summary, default=float)})


def record_to_privacy(rec: ConfigRecord) -> dict[str, Any]:
    """Inverse of :func:`privacy_to_record`."""
    return json.loads(str(rec["json"]))


def metrics_record(values: Mapping[str, float | int]) -> MetricRecord:
    """A MetricRecord that tolerates numpy scalars."""
    return MetricRecord(
        {
            k: (float(v) if isinstance(v, (float, np.floating)) else int(v))
            for k, v in values.items()
        }
    )
