"""Smoke test of the experiment pipeline: every sweep's `--quick` size runs, and its outputs
exist and agree with each other. It checks the pipeline, not the scientific outcome."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest

from fedcascade.cli import main
from fedcascade.results import COMMUNITY_COLUMNS
from fedcascade.sweep import load_sweep

REPO = Path(__file__).resolve().parents[1]
SWEEPS = ["disparity_synthetic", "disparity_digits", "adult", "ablation"]


@pytest.mark.slow
@pytest.mark.parametrize("name", SWEEPS)
def test_quick_sweep_outputs_are_complete_and_consistent(name, tmp_path):
    config = REPO / "experiments" / f"{name}.toml"
    out = tmp_path / name
    t0 = time.perf_counter()
    assert main(["sweep", str(config), "--quick", "--out", str(out)]) == 0
    assert time.perf_counter() - t0 < 300  # the budget for a quick sweep
    points = load_sweep(config, quick=True)
    with open(out / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == [p.name for p in points]
    for row, point in zip(rows, points, strict=True):
        run = out / point.name
        summary = json.loads((run / "summary.json").read_text())
        with open(run / "communities.csv", newline="") as f:
            table = list(csv.DictReader(f))
        assert list(table[0]) == COMMUNITY_COLUMNS
        assert len(table) == summary["n_communities"] == point.cfg.data.n_communities
        assert summary["rounds"] == point.cfg.train.rounds
        assert float(row["accuracy"]) == pytest.approx(summary["accuracy"])
        if summary["private"]:
            assert summary["max_epsilon_spent"] <= point.cfg.privacy.target_epsilon + 1e-9
        lines = (run / "rounds.jsonl").read_text().splitlines()
        assert len(lines) == point.cfg.train.rounds
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").is_file() and (out / "report.json").is_file()
    json.loads((out / "report.json").read_text())  # strict JSON
