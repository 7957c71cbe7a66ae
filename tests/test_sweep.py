"""Sweep expansion, rules, validation before running, deduplication and failure handling."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from fedcascade.errors import ConfigError
from fedcascade.sweep import load_sweep, run_sweep, select_best, where_rules

REPO = Path(__file__).resolve().parents[1]


def fake_run(cfg, run_dir: Path) -> Path:
    """Stands in for a simulation: writes a summary whose accuracy encodes the point."""
    run_dir.mkdir(parents=True, exist_ok=True)
    acc = 0.5 + 0.01 * cfg.seed + (0.1 if cfg.strategy.name == "cascade" else 0.0)
    (run_dir / "summary.json").write_text(
        json.dumps({"accuracy": acc, "strategy_label": cfg.strategy.name})
    )
    return run_dir


def test_every_experiment_sweep_expands_and_validates():
    for path in sorted((REPO / "experiments").glob("*.toml")):
        raw = path.read_text()
        if "[sweep" not in raw:
            continue
        for quick in (False, True):
            points = load_sweep(path, quick=quick)
            assert points, path
            assert len({p.name for p in points}) == len(points)


def test_where_rules_apply_only_to_matching_points(tmp_path):
    points = load_sweep(REPO / "experiments" / "disparity_synthetic.toml", quick=True)
    opts = {p.cfg.strategy.name: p.cfg.strategy.options for p in points}
    assert opts["r-dpcfl"] == {"k": 4} and opts["fedavg"] == {} and opts["cascade"] == {}
    full = load_sweep(REPO / "experiments" / "disparity_synthetic.toml")
    assert len(full) == 6 * 3 * 3
    # a quick_only rule applies to --quick sweeps only
    exp = tmp_path / "e.toml"
    exp.write_text(
        '[sweep.grid]\n"strategy.name" = ["fedavg", "cascade"]\n[train]\nrounds = 6\n'
        '[sweep.quick]\n"train.rounds" = 4\n'
        '[[sweep.where]]\nmatch = { "strategy.name" = "cascade" }\n'
        'set = { "strategy.options.probe_budget" = 0.25 }\nquick_only = true\n'
    )
    quick = {p.cfg.strategy.name: p.cfg.strategy.options for p in load_sweep(exp, quick=True)}
    assert quick == {"fedavg": {}, "cascade": {"probe_budget": 0.25}}
    assert all(p.cfg.strategy.options == {} for p in load_sweep(exp))


def test_a_bad_point_fails_before_anything_runs(tmp_path):
    exp = tmp_path / "e.toml"
    exp.write_text('[sweep.grid]\n"train.rounds" = [2, 0]\n')
    with pytest.raises(ConfigError, match="train.rounds.*in sweep point rounds-0"):
        load_sweep(exp)


def test_identical_runs_are_run_once_and_failures_do_not_lose_others(tmp_path):
    exp = tmp_path / "e.toml"
    exp.write_text(
        '[sweep.grid]\n"strategy.name" = ["fedavg", "cascade"]\n"privacy.target_epsilon" = [1.0, 3.0]\n'
        "seed = [0, 1]\n[train]\nrounds = 6\n"
    )
    calls = []

    def run_one(cfg, run_dir):
        calls.append(run_dir.name)
        if cfg.strategy.name == "cascade" and cfg.seed == 1 and cfg.privacy.target_epsilon == 3.0:
            raise RuntimeError("boom")
        return fake_run(cfg, run_dir)

    out, failed = run_sweep(load_sweep(exp), tmp_path / "sw", run_one, log=lambda m: None)
    # non-private fedavg ignores epsilon: 2 runs (one per seed) serve 4 points
    assert sum(c.startswith("strategy-fedavg") for c in calls) == 2
    assert (
        out / "strategy-fedavg_eps-3.0_seed-0" / "same_as.txt"
    ).read_text().strip() == "strategy-fedavg_eps-1.0_seed-0"
    assert failed == ["strategy-cascade_eps-3.0_seed-1"]
    with open(out / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 7  # the failed point is missing, every other kept
    md = (out / "sweep.md").read_text()
    assert "0.6050 ± 0.0071" in md  # cascade at eps 1: mean and std over seeds 0 and 1
    # rerunning keeps finished points and only retries the failure
    calls.clear()
    run_sweep(load_sweep(exp), tmp_path / "sw", fake_run_logged(calls), log=lambda m: None)
    assert calls == ["strategy-cascade_eps-3.0_seed-1"]


def fake_run_logged(calls):
    def run_one(cfg, run_dir):
        calls.append(run_dir.name)
        return fake_run(cfg, run_dir)

    return run_one


def test_select_best_picks_the_best_validation_value_per_strategy(tmp_path):
    exp = tmp_path / "e.toml"
    exp.write_text(
        '[sweep.grid]\n"strategy.name" = ["fedavg", "dp-fedavg"]\n"train.lr" = [0.05, 0.1, 0.3]\n'
    )

    def run_one(cfg, run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
        # fedavg peaks at 0.3; dp-fedavg is flat (a tie, so the default 0.1 wins)
        val = {
            "fedavg": {0.05: 0.5, 0.1: 0.6, 0.3: 0.7},
            "dp-fedavg": {0.05: 0.4, 0.1: 0.4, 0.3: 0.4},
        }
        v = val[cfg.strategy.name][cfg.train.lr]
        (run_dir / "summary.json").write_text(json.dumps({"accuracy": 0.0, "val_accuracy": v}))
        return run_dir

    out, _ = run_sweep(load_sweep(exp), tmp_path / "sw", run_one, log=lambda m: None)
    best = select_best(out, "strategy.name", "train.lr", "val_accuracy", default=0.1)
    assert best == {"fedavg": 0.3, "dp-fedavg": 0.1}
    rules = where_rules(best, "strategy.name", "train.lr")
    assert (
        'match = { "strategy.name" = "fedavg" }' in rules and 'set = { "train.lr" = 0.3 }' in rules
    )
