"""End to end through Flower's simulation engine with Ray: the CLI, a sweep, and `flwr run .`.

One tiny experiment (4 communities, 2 rounds) runs once per module through the real CLI; the
sweep reruns the same config as one of its points, which doubles as the reproducibility check.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fedcascade.cli import main
from fedcascade.config import load_config
from fedcascade.data import build_federation
from fedcascade.privacy import compute_epsilon
from fedcascade.results import COMMUNITY_COLUMNS, SUMMARY_KEYS

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "data" / "tiny.toml"


def read_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "communities.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("e2e") / "run"
    assert main(["run", str(TINY), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "sw"
    assert main(["sweep", str(TINY), "--out", str(out)]) == 0
    return out


def test_results_contract_files(run_dir):
    for name in ("config.toml", "rounds.jsonl", "communities.csv", "summary.json"):
        assert (run_dir / name).is_file(), name
    # the resolved config reruns exactly: it loads and equals the original but for the output dir
    resolved = load_config(run_dir / "config.toml")
    original = load_config(TINY)
    assert resolved.data == original.data and resolved.privacy == original.privacy
    assert resolved.train == original.train and resolved.strategy == original.strategy
    assert Path(resolved.output.dir) == run_dir.resolve()


def test_rounds_log(run_dir):
    lines = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in lines] == [1, 2]
    for r in lines:
        assert r["wall_seconds"] > 0
        assert r["participants"] == [0, 1, 2, 3]
        assert r["assignment"] == {"0": 0, "1": 0, "2": 0, "3": 0}
        assert r["cluster_sizes"] == {"0": 4}
        assert 0 <= r["eval"]["eval_accuracy"] <= 1
        assert r["train"]["train_loss"] is None  # a private community never reports it
        assert set(r["workers"]) == {"0", "1", "2", "3"}
    # privacy is spent round by round, never more than the target
    eps = [r["train"]["max_epsilon"] for r in lines]
    assert eps[0] < eps[1] <= 3.0 + 1e-9


def test_communities_table_is_consistent(run_dir):
    cfg = load_config(TINY)
    fed = build_federation(cfg.data, cfg.seed)
    rows = read_rows(run_dir)
    with open(run_dir / "communities.csv", newline="") as f:
        assert next(csv.reader(f)) == COMMUNITY_COLUMNS
    assert [int(r["community_id"]) for r in rows] == [0, 1, 2, 3]
    assert sum(int(r["n_train"]) for r in rows) == sum(c.n_train for c in fed.communities)
    for r, c in zip(rows, fed.communities, strict=True):
        assert int(r["n_train"]) == c.n_train and int(r["n_test"]) == c.n_test
        assert int(r["sub_distribution"]) == c.sub_distribution
        assert r["group"] == c.groups_test[0]
        assert 0.0 <= float(r["accuracy"]) <= 1.0
        assert r["accountant"] == "prv" and r["status"] == "ok"
        eps, delta = float(r["epsilon"]), float(r["delta"])
        assert 0 < eps <= 3.0 + 1e-9
        assert delta < 1 / c.n_train
        # everything needed to recompute epsilon independently is in the row
        blocks = json.loads(r["privacy_blocks"])
        assert len(blocks) == 2 and sum(b["steps"] for b in blocks) == int(r["steps"])
        recomputed = compute_epsilon(
            [(b["sample_rate"], b["noise_multiplier"], b["steps"]) for b in blocks], delta, "prv"
        )
        assert recomputed == pytest.approx(eps, rel=1e-6)
        assert float(r["noise_multiplier"]) > 0.3
        assert int(r["lora_rank"]) == 2 and r["cluster"] == "0"


def test_summary_agrees_with_the_table(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(SUMMARY_KEYS) <= set(summary)
    rows = read_rows(run_dir)
    n = sum(int(r["n_test"]) for r in rows)
    weighted = sum(float(r["accuracy"]) * int(r["n_test"]) for r in rows) / n
    assert summary["accuracy"] == pytest.approx(weighted)
    assert summary["max_epsilon_spent"] == pytest.approx(max(float(r["epsilon"]) for r in rows))
    assert set(summary["accuracy_by_group"]) == {"majority", "minority"}
    assert summary["worst_group_accuracy"] == min(summary["accuracy_by_group"].values())
    assert summary["accuracy_gap"] == pytest.approx(
        max(summary["accuracy_by_group"].values()) - min(summary["accuracy_by_group"].values())
    )
    assert summary["strategy"] == "dp-fedavg" and summary["rounds"] == 2 and summary["seed"] == 3


def test_sweep_writes_table_and_is_reproducible(sweep_dir, run_dir):
    with open(sweep_dir / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["strategy.name"] for r in rows] == ["fedavg", "dp-fedavg"]
    assert all(0 <= float(r["accuracy"]) <= 1 for r in rows)
    assert "| strategy.name |" in (sweep_dir / "sweep.md").read_text()
    # fedavg is non-private: infinite epsilon, no DP columns
    fedavg = read_rows(sweep_dir / rows[0]["run"])
    assert all(r["epsilon"] == "inf" and r["noise_multiplier"] == "" for r in fedavg)
    # the dp-fedavg point is the same config and seed as the CLI run: identical accuracies
    same = read_rows(sweep_dir / rows[1]["run"])
    assert [r["accuracy"] for r in same] == [r["accuracy"] for r in read_rows(run_dir)]


def test_report_of_a_run(run_dir):
    assert main(["report", str(run_dir)]) == 0
    text = (run_dir / "report.md").read_text()
    assert "worst_group_accuracy" in text and "minority" in text


def test_flwr_run_completes(tmp_path):
    """`flwr run .` with Flower's own managed local SuperLink (2 SuperNodes by default)."""
    if shutil.which("flwr") is None:
        pytest.skip("flwr CLI not on PATH")
    out = tmp_path / "flwr-run"
    env = dict(os.environ, FLWR_HOME=str(tmp_path / "flwr_home"))
    cmd = [
        "flwr",
        "run",
        ".",
        "--stream",
        "--run-config",
        f'experiment="tests/data/tiny.toml" overrides="output.dir={out};train.rounds=1"',
    ]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_communities"] == 4 and summary["rounds"] == 1
    assert len(read_rows(out)) == 4
    # 2 SuperNodes served 4 communities between them
    workers = json.loads((out / "rounds.jsonl").read_text().splitlines()[0])["workers"]
    assert set(workers) == {"0", "1", "2", "3"}
    # the repo's own files were not touched by Flower's config migration
    assert "federations" not in (REPO / "pyproject.toml").read_text()


def test_inline_engine_matches_ray(run_dir, tmp_path):
    """`simulation.engine = "inline"` runs the same apps in-process: same numbers as Ray."""
    out = tmp_path / "inline"
    assert main(["run", str(TINY), "--out", str(out), "--set", 'simulation.engine="inline"']) == 0
    assert [r["accuracy"] for r in read_rows(out)] == [r["accuracy"] for r in read_rows(run_dir)]
    assert [r["epsilon"] for r in read_rows(out)] == [r["epsilon"] for r in read_rows(run_dir)]
