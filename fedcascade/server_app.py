"""Flower ServerApp: build the strategy from the config, run it, write the run directory.

Two ways in, one code path (:func:`run_on_grid`):

* ``flwr run .`` uses :data:`app`, which reads ``experiment`` (a TOML path) and ``overrides``
  (``"k=v;k=v"``) from ``[tool.flwr.app.config]`` / ``--run-config``;
* ``fedcascade run`` builds the config itself and passes it to :func:`make_server_app`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from fedcascade import community_runtime as runtime
from fedcascade.config import ExperimentConfig, dump_config, load_config
from fedcascade.results import (
    RunWriter,
    group_accuracies,
    majority_group,
    prepare_run_dir,
    save_models,
    weighted_accuracy,
)
from strategies.base import StrategyContext, discover_communities
from strategies.registry import resolve_strategy

ProgressFn = Callable[[int, int, float | None], None]


def ground_truth(cfg: ExperimentConfig) -> dict[int, dict[str, Any]]:
    """Evaluation-only facts per community (name, hidden sub-distribution), when the server can
    build the data itself (simulation). Never handed to a strategy."""
    try:
        fed = runtime.federation(cfg)
    except Exception as e:  # noqa: BLE001 - deployed data may live only on the nodes
        log(WARNING, "ground truth unavailable on the server (%s); those columns stay empty", e)
        return {}
    names = fed.sub_distribution_names
    return {
        c.community_id: {
            "name": c.name,
            "sub_distribution": c.sub_distribution,
            "sub_distribution_name": names[c.sub_distribution]
            if c.sub_distribution < len(names)
            else str(c.sub_distribution),
            "minority": c.sub_distribution in fed.minority_sub_distributions,
        }
        for c in fed.communities
    }


def with_ari(record: dict[str, Any], truth: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Add the adjusted Rand index of the round's assignment against the hidden truth.

    Computed here, outside the strategy, so the ground truth never reaches it.
    """
    if not truth:
        return record
    from sklearn.metrics import adjusted_rand_score

    ids = [c for c in sorted(truth) if str(c) in record["assignment"]]
    ari = adjusted_rand_score(
        [truth[c]["sub_distribution"] for c in ids], [record["assignment"][str(c)] for c in ids]
    )
    return {**record, "ari": float(ari)}


def community_rows(strategy: Any, truth: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """One results row per community, from the strategy's final state and ledger summaries."""
    rows = []
    for cid, info in sorted(strategy.communities.items()):
        ev = strategy.last_eval.get(cid, {})
        priv = strategy.privacy.get(cid, {})
        blocks = priv.get("blocks", [])
        sigmas = sorted({float(b["noise_multiplier"]) for b in blocks})
        rates = sorted({float(b["sample_rate"]) for b in blocks})
        cluster = strategy.assignment.get(cid)
        rows.append(
            {
                "community_id": cid,
                "name": truth.get(cid, {}).get("name"),
                "group": majority_group(ev),
                "sub_distribution": truth.get(cid, {}).get("sub_distribution"),
                "n_train": info.n_train,
                "n_val": info.n_val,
                "n_test": info.n_test,
                "cluster": cluster,
                "lora_rank": strategy.clusters[cluster].rank
                if cluster in strategy.clusters
                else None,
                "accuracy": ev.get("accuracy"),
                "loss": ev.get("loss"),
                "epsilon": priv.get("epsilon") if strategy.is_private else float("inf"),
                "target_epsilon": strategy.cfg.privacy.target_epsilon
                if strategy.is_private
                else None,
                "delta": priv.get("delta"),
                "accountant": priv.get("accountant") or None,
                "noise_multiplier": ";".join(f"{s:.6g}" for s in sigmas) or None,
                "sample_rate": ";".join(f"{q:.6g}" for q in rates) or None,
                "steps": sum(int(b["steps"]) for b in blocks)
                if blocks
                else (None if strategy.is_private else None),
                "pure_epsilon": priv.get("epsilon_pure"),
                "privacy_blocks": json.dumps(blocks) if blocks else None,
                "status": "budget_exhausted" if cid in strategy.budget_exhausted else "ok",
                "worker": strategy.workers.get(cid),
            }
        )
    return rows


def summarise(
    strategy: Any, rows: list[dict[str, Any]], truth: dict[int, dict[str, Any]], wall: float
) -> dict[str, Any]:
    """``summary.json`` contents."""
    evals = strategy.last_eval
    by_group = group_accuracies(evals)
    by_sub: dict[str, float] = {}
    minority_ids = [c for c, t in truth.items() if t["minority"]]
    for name in sorted({t["sub_distribution_name"] for t in truth.values()}):
        ids = [c for c, t in truth.items() if t["sub_distribution_name"] == name]
        acc = weighted_accuracy(evals, ids)
        if acc is not None:
            by_sub[name] = acc
    eps = [float(r["epsilon"]) for r in rows if r["epsilon"] not in (None, "")]
    return {
        "strategy": strategy.name,
        "strategy_label": strategy.label,
        "private": strategy.is_private,
        "seed": strategy.cfg.seed,
        "target_epsilon": strategy.cfg.privacy.target_epsilon if strategy.is_private else None,
        "rounds": strategy.cfg.train.rounds,
        "n_communities": len(strategy.communities),
        "wall_seconds": round(wall, 3),
        "accuracy": weighted_accuracy(evals),
        "val_accuracy": weighted_accuracy(strategy.val_eval),
        "val_worst_group_accuracy": min(group_accuracies(strategy.val_eval).values(), default=None),
        "accuracy_by_group": by_group,
        "accuracy_by_sub_distribution": by_sub,
        "worst_group_accuracy": min(by_group.values()) if by_group else None,
        "accuracy_gap": (max(by_group.values()) - min(by_group.values())) if by_group else None,
        "max_epsilon_spent": max(eps) if eps else None,
        "minority_accuracy": weighted_accuracy(evals, minority_ids) if minority_ids else None,
        "majority_accuracy": weighted_accuracy(evals, [c for c in truth if c not in minority_ids])
        if truth
        else None,
        "budget_exhausted": sorted(strategy.budget_exhausted),
        "ari": with_ari(
            {"assignment": {str(c): k for c, k in strategy.assignment.items()}}, truth
        ).get("ari"),
        **strategy.summary_extras(),
    }


def run_on_grid(
    grid: Grid,
    cfg: ExperimentConfig,
    progress: ProgressFn | None = None,
    run_dir: Path | None = None,
) -> Path:
    """Run the experiment ``cfg`` on ``grid`` and write its run directory; return its path."""
    t0 = time.perf_counter()
    run_dir = (run_dir or cfg.run_dir).resolve()
    prepare_run_dir(run_dir, cfg.output.overwrite)
    # The resolved config names the run directory it actually wrote (clients keep their privacy
    # ledgers there in simulation, and `fedcascade run DIR/config.toml` reruns it exactly).
    cfg = replace(cfg, output=replace(cfg.output, dir=str(run_dir), overwrite=False))
    writer = RunWriter(run_dir)
    toml_text = dump_config(cfg)
    writer.write_config(toml_text)
    log(INFO, "fedcascade: writing results to %s", run_dir)

    cls = resolve_strategy(cfg.strategy.name)
    options = cls.build_options(cfg.strategy.options)
    communities = discover_communities(
        grid, toml_text, cfg.data.n_communities, cfg.train.timeout_seconds
    )
    truth = ground_truth(cfg)
    # communities training on their node's own file (deployment data-path) have no ground truth
    # here: the server's data is only a public reference file
    truth = {
        c: t
        for c, t in truth.items()
        if not any(i.community_id == c and i.local_data for i in communities)
    }
    ctx = StrategyContext(
        cfg=cfg,
        options=options,
        communities=communities,
        initial_arrays=lambda rank, seed: runtime.initial_arrays(cfg, rank, seed),
        log_round=lambda record: writer.append_round(with_ari(record, truth)),
        on_progress=progress or (lambda r, n, acc: None),
        truth_for_evaluation=(
            {c: t["sub_distribution"] for c, t in truth.items()} if cls.uses_ground_truth else {}
        ),
    )
    strategy = cls(ctx)
    strategy.run(grid)
    save_models(run_dir, {k: (c.rank, c.arrays) for k, c in strategy.clusters.items()})
    rows = community_rows(strategy, truth)
    writer.write_communities(rows)
    writer.write_summary(summarise(strategy, rows, truth, time.perf_counter() - t0))
    return run_dir


def config_from_run_config(run_config: dict[str, Any]) -> ExperimentConfig:
    """The experiment named by a Flower run config (``experiment`` path + ``overrides``)."""
    path = Path(str(run_config.get("experiment", "experiments/quickstart.toml")))
    if not path.is_absolute() and not path.exists():
        # `flwr run` installs the app elsewhere: look next to the installed package too.
        alt = Path(__file__).resolve().parent.parent / path
        path = alt if alt.exists() else path
    overrides = [o for o in str(run_config.get("overrides", "")).split(";") if o.strip()]
    return load_config(path, overrides)


def make_server_app(
    cfg: ExperimentConfig,
    progress: ProgressFn | None = None,
    run_dir: Path | None = None,
    errors: list[BaseException] | None = None,
) -> ServerApp:
    """A ServerApp that runs the already-validated ``cfg`` (used by ``fedcascade run``).

    Exceptions are appended to ``errors`` too: the simulation runtime only logs them.
    """
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        try:
            run_on_grid(grid, cfg, progress, run_dir)
        except BaseException as e:
            if errors is not None:
                errors.append(e)
            raise

    return server


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point for ``flwr run .``."""
    run_on_grid(grid, config_from_run_config(dict(context.run_config)))
