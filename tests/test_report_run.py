"""`fedcascade report` on a real tiny run (4 communities, one of them marginalized, oracle
clustering so that two cluster models are rebuilt): every section, numbers consistent with the
run's own communities.csv / summary.json, strict JSON, valid PNGs; and the degraded cases (no
models, data that cannot be rebuilt) still give a report with notes instead of a traceback.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from fedcascade.cli import main
from fedcascade.report import write_report

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "data" / "tiny.toml"
SECTIONS = [
    "## 1. Performance",
    "## 2. Representation",
    "## 3. Privacy",
    "## 4. Robustness",
    "## 5. Calibration",
    "## 6. Multiplicity",
    "## 7. The cascade",
    "## Communities",
]


def strict_json(path: Path) -> dict:
    def refuse(token: str) -> None:
        raise ValueError(f"non-standard JSON literal {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def rows_of(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "communities.csv", newline="") as f:
        return list(csv.DictReader(f))


def assert_png(path: Path) -> None:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100, img.shape


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report_run") / "run"
    args = ["run", str(TINY), "--out", str(out), "--set", "strategy.name=oracle-clustered"]
    assert main([*args, "--set", "train.rounds=1"]) == 0
    assert main(["report", str(out)]) == 0
    return out


def test_files_and_every_section(run_dir):
    text = (run_dir / "report.md").read_text()
    for heading in SECTIONS:
        assert heading in text, heading
    for png in ("disparities", "robustness"):
        assert f"figures/{png}.png" in text
        assert_png(run_dir / "figures" / f"{png}.png")
    # one run has no sibling seeds: multiplicity says how to get it instead of failing
    assert "run a sweep with a seed axis" in text
    assert "match the run's own" in text


def test_numbers_agree_with_the_run(run_dir):
    report = strict_json(run_dir / "report.json")
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = rows_of(run_dir)
    groups = report["views"]["groups"]
    assert report["record_level"] and report["consistency"]["matches"]
    # oracle clustering: the marginalized community has its own cluster model
    assert len({r["cluster"] for r in rows}) == 2
    assert set(groups) == set(summary["accuracy_by_group"])
    for g, acc in summary["accuracy_by_group"].items():
        assert groups[g]["accuracy"] == pytest.approx(acc, abs=1e-12)
    for r in rows:
        view = report["views"]["communities"][r["name"]]
        assert view["accuracy"] == pytest.approx(float(r["accuracy"]), abs=1e-12)
        assert view["epsilon"] == pytest.approx(float(r["epsilon"]))
        assert view["n"] == int(r["n_test"])
    for g in groups:
        members = [r for r in rows if r["group"] == g]
        # a group's epsilon is the largest over its communities; MIA uses all their records
        assert groups[g]["epsilon"] == pytest.approx(max(float(r["epsilon"]) for r in members))
        assert groups[g]["mia_n_members"] == sum(int(r["n_train"]) for r in members)
        assert groups[g]["mia_n_nonmembers"] == sum(int(r["n_test"]) for r in members)
        for key in ("flattening", "effective_rank", "mia_auc_calibrated", "ece", "acc_adversarial"):
            assert groups[g][key] is not None, (g, key)
        for key in ("acc_noise_0.1", "acc_noise_1", "acc_adversarial"):
            assert 0.0 <= groups[g][key] <= 1.0
    worst = report["worst"]["groups"]
    assert worst["worst_group"] == min(
        summary["accuracy_by_group"], key=summary["accuracy_by_group"].get
    )
    assert "dp_difference" in worst and "eo_difference" in worst  # binary synthetic task
    assert {t["outcome"] for t in report["cascade"]["communities"]} >= {"accuracy", "mia_auc"}


def test_a_run_without_models_still_gets_a_report(run_dir, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(run_dir, bare, ignore=shutil.ignore_patterns("models", "report*", "figures"))
    text = write_report(bare).read_text()
    for heading in SECTIONS:
        assert heading in text, heading
    assert "models/cluster-*.npz are missing" in text
    report = strict_json(bare / "report.json")
    assert not report["record_level"]
    summary = json.loads((bare / "summary.json").read_text())
    for g, acc in summary["accuracy_by_group"].items():
        assert report["views"]["groups"][g]["accuracy"] == pytest.approx(acc)


def test_data_that_cannot_be_rebuilt_is_a_note(run_dir, tmp_path, monkeypatch):
    import fedcascade.data as data
    from fedcascade.errors import DataError

    def unavailable(cfg, seed):
        raise DataError("data.csv.path", "/nodes/only.csv", "a readable file on this machine")

    monkeypatch.setattr(data, "build_federation", unavailable)
    copy = tmp_path / "deployed"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("report*", "figures"))
    text = write_report(copy).read_text()
    assert "the communities could not be rebuilt" in text and "/nodes/only.csv" in text
    assert strict_json(copy / "report.json")["record_level"] is False


def test_sweep_of_seed_copies_has_multiplicity_and_cascade(run_dir, tmp_path):
    """Two 'seeds' of the same models disagree nowhere: ambiguity 0 for every group."""
    sweep = tmp_path / "sw"
    names = []
    for strategy, private, seed in (
        ("fedavg", False, 0),
        ("oracle-clustered", True, 0),
        ("oracle-clustered", True, 1),
        ("fedavg", False, 1),
    ):
        name = f"{strategy}-s{seed}"
        names.append((name, strategy, seed))
        shutil.copytree(run_dir, sweep / name, ignore=shutil.ignore_patterns("report*", "figures"))
        s = json.loads((sweep / name / "summary.json").read_text())
        s.update(strategy=strategy, private=private, seed=seed)
        (sweep / name / "summary.json").write_text(json.dumps(s))
    with open(sweep / "sweep.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "strategy.name", "seed", "strategy_label", "accuracy"])
        for name, strategy, seed in names:
            w.writerow([name, strategy, seed, strategy, 0.5])
    from fedcascade.reporting.sweep_report import write_sweep_report

    text = write_sweep_report(sweep, per_run=False, log=lambda m: None).read_text()
    assert "### Multiplicity across seeds" in text
    report = strict_json(sweep / "report.json")
    for a in report["runs_analysed"].values():
        assert a["record_level"] and len(a["multiplicity_runs"]) == 2
        assert all(row["ambiguity"] == 0.0 for row in a["groups"].values())
    # identical models: private minus non-private accuracy is 0 for everyone
    with open(sweep / "disparity.csv", newline="") as f:
        di = [r["disparate_impact"] for r in csv.DictReader(f) if r["private"] == "True"]
    assert [float(v) for v in di] == [0.0, 0.0]
    assert report["cascade"]["groups"] and "figures/cascade.png" in text
    assert_png(sweep / "figures" / "cascade.png")
