"""The sweep report on hand-built sweep directories (results files only, no models): disparate
impact of DP against the matching non-private run, strategy x epsilon tables, ARI per round,
disparity.csv, strict JSON, and notes instead of tracebacks for what cannot be computed."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from fedcascade.cli import main
from fedcascade.report import write_report
from fedcascade.reporting.jsonsafe import dumps, json_safe
from fedcascade.reporting.markdown import fmt, fmt_mean_std
from fedcascade.results import COMMUNITY_COLUMNS

# (strategy, private, epsilon grid value, seed, minority accuracy, majority accuracy)
RUNS = [
    ("fedavg", False, 1.0, 0, 0.70, 0.85),
    ("fedavg", False, 4.0, 0, 0.70, 0.85),  # same run repeated along the epsilon axis
    ("fedavg", False, 1.0, 1, 0.60, 0.90),
    ("fedavg", False, 4.0, 1, 0.60, 0.90),
    ("dp-fedavg", True, 1.0, 0, 0.50, 0.80),  # DI = (0.70-0.50) - (0.85-0.80) = 0.15
    ("dp-fedavg", True, 1.0, 1, 0.50, 0.85),  # DI = (0.60-0.50) - (0.90-0.85) = 0.05
    ("dp-fedavg", True, 4.0, 0, 0.65, 0.85),  # DI = 0.05
    ("dp-fedavg", True, 4.0, 1, 0.60, 0.90),  # DI = 0.00
    ("ifca", True, 1.0, 0, 0.55, 0.82),
    ("ifca", True, 1.0, 1, 0.52, 0.86),
]


def strict_json(path: Path) -> dict:
    def refuse(token: str) -> None:
        raise ValueError(f"non-standard JSON literal {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def _name(strategy: str, eps: float, seed: int) -> str:
    return f"strategy-{strategy}_eps-{eps}_seed-{seed}"


def make_run(
    run_dir: Path,
    strategy: str,
    private: bool,
    eps: float,
    seed: int,
    minority: float,
    majority: float,
) -> None:
    """A run directory with the results files only (no config, no models)."""
    run_dir.mkdir(parents=True)
    spent = eps * 0.999 if private else math.inf
    summary = {
        "strategy": strategy,
        "strategy_label": strategy.upper(),
        "private": private,
        "seed": seed,
        "target_epsilon": eps if private else None,
        "rounds": 3,
        "n_communities": 2,
        "wall_seconds": 1.0,
        "accuracy": (minority + 3 * majority) / 4,
        "accuracy_by_group": {"majority": majority, "minority": minority},
        "accuracy_by_sub_distribution": {"majority": majority, "minority": minority},
        "worst_group_accuracy": min(minority, majority),
        "accuracy_gap": abs(majority - minority),
        "max_epsilon_spent": spent if private else "inf",
        "minority_accuracy": minority,
        "majority_accuracy": majority,
        "budget_exhausted": [],
        "ari": 1.0 if strategy == "ifca" else 0.0,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    with open(run_dir / "communities.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COMMUNITY_COLUMNS)
        w.writeheader()
        for cid, (group, acc, n) in enumerate(
            (("majority", majority, 300), ("minority", minority, 60))
        ):
            w.writerow(
                {
                    "community_id": cid,
                    "name": f"{group}-c0",
                    "group": group,
                    "sub_distribution": cid,
                    "n_train": n,
                    "n_test": n // 5,
                    "cluster": cid if strategy == "ifca" else 0,
                    "lora_rank": 4,
                    "accuracy": acc,
                    "epsilon": spent,
                    "status": "ok",
                }
            )
    with open(run_dir / "rounds.jsonl", "w") as f:
        for r, ari in enumerate((0.0, 0.5, 1.0) if strategy == "ifca" else (0.0, 0.0, 0.0), 1):
            sizes = {"0": 1, "1": 1} if strategy == "ifca" and r > 1 else {"0": 2}
            f.write(json.dumps({"round": r, "cluster_sizes": sizes, "ari": ari}) + "\n")


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep_report") / "sw"
    root.mkdir()
    for strategy, private, eps, seed, mino, majo in RUNS:
        make_run(root / _name(strategy, eps, seed), strategy, private, eps, seed, mino, majo)
    with open(root / "sweep.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["run", "strategy.name", "privacy.target_epsilon", "seed", "strategy_label", "accuracy"]
        )
        for strategy, _, eps, seed, *_ in RUNS:
            w.writerow([_name(strategy, eps, seed), strategy, eps, seed, strategy.upper(), 0.5])
    (root / "failed.txt").write_text("strategy-ifca_eps-4.0_seed-0: RunFailed('boom')\n")
    write_report(root)
    return root


def read_disparity(sweep_dir: Path) -> dict[str, dict[str, str]]:
    with open(sweep_dir / "disparity.csv", newline="") as f:
        return {r["run"]: r for r in csv.DictReader(f)}


def test_disparate_impact_against_the_matching_non_private_run(sweep_dir):
    rows = read_disparity(sweep_dir)
    assert len(rows) == len(RUNS)
    expected = {
        _name("dp-fedavg", 1.0, 0): 0.15,
        _name("dp-fedavg", 1.0, 1): 0.05,
        _name("dp-fedavg", 4.0, 0): 0.05,
        _name("dp-fedavg", 4.0, 1): 0.0,
    }
    for run, di in expected.items():
        assert float(rows[run]["disparate_impact"]) == pytest.approx(di, abs=1e-12)
    # the reference shares the seed and, when there is one, the epsilon grid value
    assert rows[_name("dp-fedavg", 4.0, 1)]["reference_run"] == _name("fedavg", 4.0, 1)
    assert float(rows[_name("dp-fedavg", 1.0, 0)]["minority_drop"]) == pytest.approx(0.20)
    # the non-private reference has no disparate impact of its own, and epsilon inf
    assert rows[_name("fedavg", 1.0, 0)]["disparate_impact"] == ""
    assert rows[_name("fedavg", 1.0, 0)]["epsilon"] == "inf"


def test_headline_tables_are_strategy_by_epsilon_mean_std(sweep_dir):
    text = (sweep_dir / "report.md").read_text()
    di = text.split("### Disparate impact of DP")[1].split("###")[0]
    # DI at epsilon 1: mean of 0.15 and 0.05 = 0.100, sample std 0.0707
    assert "| dp-fedavg | 0.100 ± 0.071 | 0.025 ± 0.035 |" in di
    # the reference row has no DI and is left out of that table
    assert "| fedavg |" not in di
    minority = text.split("### Minority accuracy")[1].split("###")[0]
    # FedAvg is non-private: one column, counted once per seed despite the epsilon axis
    assert "| fedavg | – | – | 0.650 ± 0.071 |" in minority
    assert "| ifca | 0.535 ± 0.021 | – | – |" in minority


def test_cluster_recovery_and_figures(sweep_dir):
    text = (sweep_dir / "report.md").read_text()
    assert "| ifca ε=1 | 3 | 0.000 | 1.000 | 0.000 |" in text
    assert "Single-model strategies (dp-fedavg, fedavg)" in text
    for name in ("accuracy_vs_epsilon", "disparate_impact_vs_epsilon", "ari_by_round"):
        png = sweep_dir / "figures" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"figures/{name}.png" in text


def test_json_is_strict_and_notes_explain_what_was_skipped(sweep_dir):
    report = strict_json(sweep_dir / "report.json")
    assert report["kind"] == "sweep" and len(report["disparity"]) == len(RUNS)
    cell = report["headline"]["disparate_impact"]["dp-fedavg"]["ε=1"]
    assert cell["mean"] == pytest.approx(0.10) and cell["n"] == 2
    fedavg = next(r for r in report["disparity"] if r["strategy"] == "fedavg")
    assert fedavg["epsilon"] == "inf" and fedavg["disparate_impact"] is None
    text = (sweep_dir / "report.md").read_text()
    assert "failed point: strategy-ifca_eps-4.0_seed-0" in text
    # no models / config: every run still gets a report, with the reason
    run_md = (sweep_dir / _name("ifca", 1.0, 0) / "report.md").read_text()
    assert "config.toml is missing" in run_md
    assert "| majority |" in run_md and "## 7. The cascade" in run_md
    strict_json(sweep_dir / _name("ifca", 1.0, 0) / "report.json")


def test_missing_reference_is_a_note(tmp_path):
    root = tmp_path / "sw"
    make_run(root / "a", "dp-fedavg", True, 1.0, 0, 0.5, 0.8)
    make_run(root / "b", "dp-fedavg", True, 1.0, 1, 0.6, 0.8)
    out = write_report(root, per_run=False)
    text = out.read_text()
    assert "sweep.csv is missing" in text
    assert "add 'fedavg' to the strategy axis" in text
    assert "| dp-fedavg | 0.550 ± 0.071 |" in text


def test_cli_rejects_a_directory_that_is_neither(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "a run directory (with summary.json)" in err


def test_json_safe_and_cell_format():
    import numpy as np

    data = {"a": float("nan"), "b": float("inf"), "c": np.float32(0.5), 3: (np.int64(2),)}
    assert json_safe(data) == {"a": None, "b": "inf", "c": 0.5, "3": [2]}
    assert "NaN" not in dumps({"x": [float("nan"), -math.inf]})
    assert fmt(float("nan")) == "–" and fmt(math.inf) == "∞" and fmt(0.12345) == "0.123"
    assert fmt_mean_std([0.1, 0.3, float("nan")]) == "0.200 ± 0.141"
    assert fmt_mean_std([0.25]) == "0.250"
