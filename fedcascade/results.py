"""The run directory: the results contract users and other tools depend on.

``DIR/config.toml``
    the fully resolved config, enough to rerun exactly (``fedcascade run DIR/config.toml``).
``DIR/rounds.jsonl``
    one JSON object per round (see :meth:`strategies.base.FedcascadeStrategy.run`).
``DIR/communities.csv``
    one row per community, columns :data:`COMMUNITY_COLUMNS` (unused ones present and empty).
``DIR/summary.json``
    run-level figures, keys :data:`SUMMARY_KEYS` at least.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedcascade.errors import ConfigError

COMMUNITY_COLUMNS = [
    "community_id",
    "name",
    "group",
    "sub_distribution",
    "n_train",
    "n_val",
    "n_test",
    "cluster",
    "lora_rank",
    "accuracy",
    "loss",
    "epsilon",
    "target_epsilon",
    "delta",
    "accountant",
    "noise_multiplier",
    "sample_rate",
    "steps",
    "pure_epsilon",
    "privacy_blocks",
    "status",
    "worker",
]

SUMMARY_KEYS = [
    "strategy",
    "strategy_label",
    "private",
    "seed",
    "target_epsilon",
    "rounds",
    "n_communities",
    "wall_seconds",
    "accuracy",
    "accuracy_by_group",
    "accuracy_by_sub_distribution",
    "worst_group_accuracy",
    "accuracy_gap",
    "max_epsilon_spent",
]


def prepare_run_dir(path: Path, overwrite: bool) -> Path:
    """Create the run directory; refuse to mix results into a non-empty one.

    Raises
    ------
    ConfigError
        If ``path`` exists, is not empty and ``overwrite`` is false (nothing is touched).
    """
    if path.exists() and not path.is_dir():
        raise ConfigError("output.dir", str(path), "a directory path (a file is in the way)")
    if path.exists() and any(path.iterdir()):
        if not overwrite:
            raise ConfigError(
                "output.dir",
                str(path),
                "a new or empty directory",
                "it already holds results; pass --out NEW_DIR or --overwrite (which deletes them)",
            )
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def _finite(x: Any) -> Any:
    """JSON has no inf/nan: write them as strings a reader can still parse with float()."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, Mapping):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


class RunWriter:
    """Writes the files of one run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = Path(run_dir)

    def write_config(self, toml_text: str) -> None:
        """``config.toml``: the fully resolved config."""
        _atomic_write(self.dir / "config.toml", toml_text)

    def append_round(self, record: Mapping[str, Any]) -> None:
        """One line of ``rounds.jsonl`` (flushed at once, so a crash keeps finished rounds)."""
        with open(self.dir / "rounds.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(_finite(dict(record)), default=_json_default) + "\n")

    def write_communities(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """``communities.csv`` with every contract column (missing values written empty)."""
        tmp = self.dir / "communities.csv.tmp"
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=COMMUNITY_COLUMNS, extrasaction="ignore")
            w.writeheader()
            for row in rows:
                w.writerow(
                    {c: ("" if row.get(c) is None else row.get(c)) for c in COMMUNITY_COLUMNS}
                )
        os.replace(tmp, self.dir / "communities.csv")

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        """``summary.json``."""
        _atomic_write(
            self.dir / "summary.json",
            json.dumps(_finite(dict(summary)), indent=2, default=_json_default),
        )


def group_accuracies(evals: Mapping[int, Mapping[str, float]]) -> dict[str, float]:
    """Accuracy per group from per-community ``group-correct/G`` and ``group-total/G`` counts."""
    correct: dict[str, float] = {}
    total: dict[str, float] = {}
    for m in evals.values():
        for k, v in m.items():
            if k.startswith("group-correct/"):
                g = k.split("/", 1)[1]
                correct[g] = correct.get(g, 0) + v
            elif k.startswith("group-total/"):
                g = k.split("/", 1)[1]
                total[g] = total.get(g, 0) + v
    return {g: correct.get(g, 0) / total[g] for g in sorted(total) if total[g] > 0}


def weighted_accuracy(
    evals: Mapping[int, Mapping[str, float]], ids: Sequence[int] | None = None
) -> float | None:
    """Record-weighted accuracy over the test records of the communities ``ids`` (all if None)."""
    chosen = [evals[c] for c in (ids if ids is not None else evals) if c in evals]
    n = sum(m["num-examples"] for m in chosen)
    return sum(m["correct"] for m in chosen) / n if n else None


def majority_group(evals: Mapping[str, float]) -> str | None:
    """The group holding most of a community's test records (its ``group`` column)."""
    totals = {k.split("/", 1)[1]: v for k, v in evals.items() if k.startswith("group-total/")}
    return max(totals, key=lambda g: (totals[g], g)) if totals else None


def save_models(
    run_dir: Path, clusters: Mapping[int, tuple[int, Mapping[str, np.ndarray]]]
) -> None:
    """``DIR/models/cluster-K.npz``: each cluster's final adapter arrays with its rank, so reports
    can rebuild every community's model (the backbone comes from the config, cached on disk)."""
    models = Path(run_dir) / "models"
    models.mkdir(exist_ok=True)
    for k, (rank, arrays) in clusters.items():
        np.savez(models / f"cluster-{k}.npz", __rank__=np.array(rank), **arrays)


def load_models(run_dir: Path) -> dict[int, tuple[int, dict[str, np.ndarray]]]:
    """Inverse of :func:`save_models`: ``{cluster id: (rank, arrays)}`` (files not named
    ``cluster-<int>.npz`` are ignored)."""
    out: dict[int, tuple[int, dict[str, np.ndarray]]] = {}
    for path in sorted((Path(run_dir) / "models").glob("cluster-*.npz")):
        try:
            cid = int(path.stem.split("-", 1)[1])
        except ValueError:
            continue
        with np.load(path) as z:
            out[cid] = (int(z["__rank__"]), {k: z[k] for k in z.files if k != "__rank__"})
    return out
