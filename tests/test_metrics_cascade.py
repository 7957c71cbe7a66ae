"""Spearman with bootstrap intervals, the cascade table's verdicts, and the cascade plot."""

import numpy as np
import pytest
from scipy.stats import spearmanr

from fedcascade.errors import DataError
from fedcascade.metrics import bootstrap_spearman, cascade_table, plot_cascade, spearman


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 6, 80), rng.integers(0, 4, 80) + rng.integers(0, 6, 80) // 2
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)
    assert np.isnan(spearman([1, 1, 1, 1], [1, 2, 3, 4]))


def test_bootstrap_interval_is_seeded_and_brackets_rho():
    rng = np.random.default_rng(1)
    x = rng.normal(size=60)
    y = x + rng.normal(size=60)
    a = bootstrap_spearman(x, y, n_boot=500, seed=7)
    assert a == bootstrap_spearman(x, y, n_boot=500, seed=7)
    rho, low, high = a
    assert low < rho < high
    assert 0.3 < low and high < 1.0


def _rows(n_runs=10, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(n_runs):
        level = rng.normal()  # e.g. a different epsilon: shifts every group of the run
        for g in range(6):
            flat = rng.uniform(0, 0.6)
            rows.append(
                {
                    "run": f"run{r}",
                    "group": f"c{g}",
                    "flattening": flat,
                    "accuracy": 0.8 + 0.05 * level - 0.4 * flat + rng.normal(0, 0.03),
                    "mia_auc": 0.55 + 0.2 * flat + rng.normal(0, 0.03),
                    "ece": rng.uniform(0, 0.1),
                    "n": 300,
                }
            )
    return rows


def test_cascade_table_finds_planted_relations_and_reads_their_sign():
    table = {t["outcome"]: t for t in cascade_table(_rows(), n_boot=500)}
    assert set(table) == {"accuracy", "mia_auc", "ece"}  # bookkeeping keys are not outcomes
    assert table["accuracy"]["spearman"] < -0.6
    assert table["accuracy"]["expected_sign"] == -1
    assert table["accuracy"]["verdict"] == "supports cascade"
    assert table["mia_auc"]["verdict"] == "supports cascade"
    assert table["ece"]["verdict"] == "inconclusive"
    assert table["accuracy"]["n"] == 60


def test_within_run_centring_removes_a_run_level_confound():
    # Runs differ in level (both scores move together with, e.g., epsilon), but inside a run
    # the groups' flattening says nothing about their accuracy.
    rng = np.random.default_rng(2)
    rows = []
    for r in range(12):
        level = r / 12
        for g in range(5):
            rows.append(
                {
                    "run": r,
                    "group": g,
                    "flattening": level + rng.uniform(0, 0.05),
                    "accuracy": 0.9 - level + rng.uniform(0, 0.05),
                }
            )
    pooled = cascade_table(rows, within_run=False, n_boot=300)[0]
    centred = cascade_table(rows, within_run=True, n_boot=300)[0]
    assert pooled["verdict"] == "supports cascade" and pooled["spearman"] < -0.9
    assert centred["verdict"] == "inconclusive"


def test_missing_values_drop_only_that_row_for_that_outcome():
    rows = _rows(n_runs=4)
    rows[0]["mia_auc"] = float("nan")
    del rows[1]["ece"]
    table = {t["outcome"]: t for t in cascade_table(rows, n_boot=200)}
    assert (table["accuracy"]["n"], table["mia_auc"]["n"], table["ece"]["n"]) == (24, 23, 23)


def test_constant_outcome_and_bad_input_are_reported_clearly():
    rows = _rows(n_runs=3)
    for r in rows:
        r["epsilon"] = 4.0
    (eps,) = cascade_table(rows, outcomes=["epsilon"], within_run=False, n_boot=100)
    assert eps["verdict"] == "no variation"
    with pytest.raises(DataError, match="rows"):
        cascade_table([])
    with pytest.raises(DataError, match="run"):
        cascade_table([{"group": "a", "flattening": 0.1, "accuracy": 0.5}])
    with pytest.raises(DataError, match="effective_rank"):
        cascade_table(rows, representation="effective_rank")


def test_plot_cascade_writes_a_png_and_returns_its_table(tmp_path):
    rows = _rows()
    path = tmp_path / "sub" / "cascade.png"
    table = plot_cascade(rows, path, n_boot=300)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 20_000
    assert table == cascade_table(rows, n_boot=300)
