"""Strategy behaviour through the real ServerApp/ClientApp code on the in-process grid."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from fedcascade import community_runtime
from fedcascade.config import load_config
from fedcascade.errors import ConfigError
from fedcascade.inline_grid import InlineGrid
from fedcascade.privacy import DPPlan, compute_epsilon
from fedcascade.server_app import run_on_grid
from strategies.base import FedcascadeStrategy, average_arrays
from strategies.registry import resolve_strategy

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "data" / "tiny.toml"


def run(tmp_path: Path, *overrides: str, nodes: int = 2) -> tuple[Path, InlineGrid]:
    cfg = load_config(TINY, list(overrides))
    grid = InlineGrid(nodes)
    return run_on_grid(grid, cfg, run_dir=tmp_path / "run"), grid


def rows_of(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "communities.csv", newline="") as f:
        return list(csv.DictReader(f))


def rounds_of(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "rounds.jsonl").read_text().splitlines()]


def test_registry_errors_are_clear():
    with pytest.raises(ConfigError, match="did you mean 'ifca'"):
        resolve_strategy("icfa")
    with pytest.raises(ConfigError, match="import failed"):
        resolve_strategy("no_such_module.x:Y")
    with pytest.raises(ConfigError, match="subclass of strategies.base.FedcascadeStrategy"):
        resolve_strategy("fedcascade.config:ExperimentConfig")
    for name in ("fedavg", "dp-fedavg", "ifca", "r-dpcfl", "oracle-clustered", "cascade"):
        assert issubclass(resolve_strategy(name), FedcascadeStrategy)


def test_average_arrays_is_weighted():
    a = {"w": np.array([0.0, 2.0], dtype=np.float32)}
    b = {"w": np.array([4.0, 6.0], dtype=np.float32)}
    out = average_arrays([a, b], [1, 3])
    assert out["w"].dtype == np.float32
    np.testing.assert_allclose(out["w"], [3.0, 5.0])


def test_sub_distribution_never_reaches_a_strategy(tmp_path, monkeypatch):
    seen = {}
    original = FedcascadeStrategy.__init__

    def spy(self, ctx):
        seen["truth"] = dict(ctx.truth_for_evaluation)
        seen["fields"] = [f for c in ctx.communities for f in vars(c)]
        original(self, ctx)

    monkeypatch.setattr(FedcascadeStrategy, "__init__", spy)
    run_dir, grid = run(tmp_path, "train.rounds=1")
    assert seen["truth"] == {}
    assert not any("sub" in f for f in seen["fields"])
    # no reply a strategy receives carries it either
    for reply in grid.replies:
        for name, record in reply.content.items():
            assert "sub" not in name
            for key in record.keys():
                assert "sub" not in key, (name, key)
    # ...while the results (written outside the strategy) do have it, for evaluation
    assert [r["sub_distribution"] for r in rows_of(run_dir)] == ["0", "0", "0", "1"]


def test_oracle_gets_the_truth_and_is_labelled_a_ceiling(tmp_path):
    run_dir, _ = run(tmp_path, 'strategy.name="oracle-clustered"')
    rows = rows_of(run_dir)
    assert [r["cluster"] for r in rows] == ["0", "0", "0", "1"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "ceiling" in summary["strategy_label"] and summary["ari"] == 1.0
    assert all(r["ari"] == 1.0 for r in rounds_of(run_dir))


def test_one_node_can_serve_many_communities(tmp_path):
    run_dir, grid = run(tmp_path, "train.rounds=1", nodes=1)
    assert len(rows_of(run_dir)) == 4
    assert {m.metadata.dst_node_id for m in grid.sent} == {100}


def test_malformed_reply_is_dropped_not_fatal(tmp_path, monkeypatch):
    real = community_runtime.train_community

    def poisoned(cfg, instr, arrays, state_dir=None):
        out = real(cfg, instr, arrays, state_dir)
        if instr.community_id == 2:
            out.arrays = {k: np.full_like(v, np.nan) for k, v in out.arrays.items()}
        return out

    monkeypatch.setattr("fedcascade.client_app.train_community", poisoned)
    run_dir, _ = run(tmp_path, "train.rounds=1")
    record = rounds_of(run_dir)[0]
    assert record["participants"] == [0, 1, 3]  # community 2's NaN update never got averaged
    with np.load(run_dir / "models" / "cluster-0.npz") as z:
        assert all(np.isfinite(z[k]).all() for k in z.files)


class Overspender(FedcascadeStrategy):
    """Plans more steps per round than it calibrated for, to meet the ledger."""

    name = "overspender"
    label = "test only"

    def plan(self, community, server_round):
        plan = super().plan(community, server_round)
        return DPPlan(plan.sample_rate, plan.steps * 3, plan.noise_multiplier, plan.max_grad_norm)


def test_ledger_refuses_overspending_and_the_run_says_so(tmp_path):
    run_dir, _ = run(tmp_path, f'strategy.name="{__name__}:Overspender"', "train.rounds=3")
    rows = rows_of(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["budget_exhausted"] == [0, 1, 2, 3]
    for r in rows:
        assert r["status"] == "budget_exhausted"
        eps = float(r["epsilon"])
        assert eps <= 3.0 + 1e-9
        blocks = json.loads(r["privacy_blocks"])
        # only the blocks that fitted were run and recorded; recomputation agrees
        assert compute_epsilon(
            [(b["sample_rate"], b["noise_multiplier"], b["steps"]) for b in blocks],
            float(r["delta"]),
            "prv",
        ) == pytest.approx(eps, rel=1e-6)
    # the last round had no one left to train
    assert rounds_of(run_dir)[-1]["participants"] == []
