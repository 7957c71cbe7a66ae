"""group_report end to end on a quickstart-sized synthetic run, and its input checks."""

import time

import numpy as np
import pytest
import torch
from fairlearn.metrics import demographic_parity_difference as fl_dp
from fairlearn.metrics import equalized_odds_difference as fl_eo

from fedcascade.configtools import build
from fedcascade.errors import ConfigError, DataError
from fedcascade.metrics import (
    MembershipArrays,
    MetricsConfig,
    RunArrays,
    cascade_table,
    expected_calibration_error,
    group_report,
    membership_by_group,
    report_rows,
)

GROUPS = [f"c{i}" for i in range(6)]
PER_GROUP = 300
D = 16


def _run(seed=0, collapse="c5", with_model=True):
    """Six communities of 300 test records; ``collapse``'s embeddings keep one direction only."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n = len(GROUPS) * PER_GROUP
    groups = np.repeat(np.array(GROUPS), PER_GROUP)
    x = rng.normal(size=(n, D)).astype(np.float32)
    x[:, :4] *= np.linspace(0.5, 1.5, len(GROUPS)).repeat(PER_GROUP)[:, None]  # groups differ
    y = (x[:, 0] + 0.5 * x[:, 1] + 0.7 * rng.normal(size=n) > 0).astype(np.int64)
    model = torch.nn.Sequential(torch.nn.Linear(D, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    with torch.no_grad():
        probs = torch.softmax(model(xt).double(), dim=1).numpy()
    q, _ = np.linalg.qr(rng.normal(size=(24, D)))
    emb = x @ q.T  # an isometric embedding: nothing flattened ...
    c = groups == collapse
    emb[c] = np.outer(x[c, 0], q[:, 0]) + 0.001 * rng.normal(size=(c.sum(), 24))  # ... but here
    m_grp = np.repeat(np.array(GROUPS), 100)
    mem = MembershipArrays(
        member_losses=rng.exponential(0.5, 600),
        member_groups=m_grp,
        nonmember_losses=rng.exponential(1.0, 600),
        nonmember_groups=m_grp,
        member_reference_losses=rng.exponential(1.0, 600),
        nonmember_reference_losses=rng.exponential(1.0, 600),
        member_subdistributions=np.repeat([0, 0, 1, 1, 2, 2], 100),
        nonmember_subdistributions=np.repeat([0, 0, 1, 1, 2, 2], 100),
    )
    flip = rng.random((2, n)) < 0.1
    seeds = np.stack([probs.argmax(1), probs.argmax(1) ^ flip[0], probs.argmax(1) ^ flip[1]])
    return RunArrays(
        groups=groups,
        labels=y,
        probs=probs,
        subdistributions=np.repeat([0, 0, 1, 1, 2, 2], PER_GROUP),
        embeddings=emb,
        inputs=x,
        membership=mem,
        epsilon={g: 2.0 + i for i, g in enumerate(GROUPS)},
        model=model if with_model else None,
        seed_predictions=seeds,
    )


def test_quickstart_sized_report_is_fast_and_complete():
    arrays = _run()
    start = time.perf_counter()
    rep = group_report(arrays)
    elapsed = time.perf_counter() - start
    assert elapsed < 20.0  # the brief allows 60 s for the whole report; this part takes ~0.5 s
    assert set(rep["groups"]) == set(GROUPS)
    row = rep["groups"]["c0"]
    for key in [
        "n",
        "accuracy",
        "loss",
        "selection_rate",
        "tpr",
        "fpr",
        "ece",
        "confident_error_rate",
        "effective_rank",
        "participation_ratio",
        "intrinsic_dim",
        "intrinsic_dim_input",
        "flattening",
        "flattening_linear",
        "mia_auc",
        "mia_advantage",
        "mia_auc_calibrated",
        "mia_advantage_calibrated",
        "epsilon",
        "acc_noise_0.1",
        "acc_noise_1",
        "acc_adversarial",
        "ambiguity",
        "discrepancy",
    ]:
        assert key in row and np.isfinite(row[key]), key
    assert row["n"] == PER_GROUP
    assert rep["groups"]["c3"]["epsilon"] == 5.0
    assert set(rep["subdistributions"]) == {0, 1, 2}
    assert rep["subdistributions"][1]["n"] == 2 * PER_GROUP
    assert "mia_auc" in rep["subdistributions"][1]
    assert rep["overall"]["n"] == len(GROUPS) * PER_GROUP
    assert rep["settings"]["noise_scales"] == [0.1, 0.25, 0.5, 1.0]


def test_report_values_agree_with_the_standalone_metrics_and_fairlearn():
    arrays = _run(with_model=False)
    rep = group_report(arrays)
    pred = arrays.probs.argmax(1)
    acc = {
        g: float(np.mean(pred[arrays.groups == g] == arrays.labels[arrays.groups == g]))
        for g in GROUPS
    }
    assert {g: rep["groups"][g]["accuracy"] for g in GROUPS} == pytest.approx(acc)
    worst = min(acc, key=acc.get)
    assert rep["summary"]["worst_group"] == worst
    assert rep["summary"]["accuracy_gap"] == pytest.approx(max(acc.values()) - acc[worst])
    m = arrays.groups == "c2"
    assert rep["groups"]["c2"]["ece"] == pytest.approx(
        expected_calibration_error(arrays.probs[m], arrays.labels[m])
    )
    mem = arrays.membership
    mia = membership_by_group(
        mem.member_losses, mem.member_groups, mem.nonmember_losses, mem.nonmember_groups
    )
    assert rep["groups"]["c4"]["mia_auc"] == mia["c4"]["mia_auc"]
    assert rep["summary"]["dp_difference"] == pytest.approx(
        fl_dp(arrays.labels, pred, sensitive_features=arrays.groups)
    )
    assert rep["summary"]["eo_difference"] == pytest.approx(
        fl_eo(arrays.labels, pred, sensitive_features=arrays.groups)
    )
    assert "acc_adversarial" not in rep["groups"]["c0"]  # no model, no robustness columns


def test_the_collapsed_group_is_the_most_flattened():
    rep = group_report(_run(collapse="c2", with_model=False))
    assert rep["summary"]["flattening_worst_group"] == "c2"
    assert rep["groups"]["c2"]["flattening"] > 0.7
    others = [rep["groups"][g]["flattening"] for g in GROUPS if g != "c2"]
    assert max(abs(f) for f in others) < 0.1
    assert rep["summary"]["effective_rank_worst_group"] == "c2"


def test_rows_of_several_runs_feed_the_cascade_table():
    rows = []
    for seed in range(3):
        rows += report_rows(group_report(_run(seed=seed, with_model=False)), run=f"seed{seed}")
    assert len(rows) == 3 * len(GROUPS)
    assert rows[0]["run"] == "seed0" and rows[0]["group"] == "c0"
    table = cascade_table(rows, n_boot=200)
    assert {t["outcome"] for t in table} >= {"accuracy", "mia_auc", "ece", "ambiguity"}
    with pytest.raises(DataError, match="level"):
        report_rows({"groups": {}}, run="x", level="clusters")


def test_representation_sample_caps_the_records_per_group():
    arrays = _run(with_model=False)
    cfg = build(MetricsConfig, {"representation_sample": 50})
    rep = group_report(arrays, cfg)
    # At most 50 points: the effective rank of a 50-point cloud is below 50.
    assert rep["groups"]["c0"]["effective_rank"] < 50
    assert rep == group_report(arrays, cfg)  # seeded subsample: reproducible


def test_bad_run_arrays_are_named_in_the_error():
    probs = np.array([[0.2, 0.8], [0.5, 0.5]])
    with pytest.raises(DataError, match="RunArrays.probs.*softmax"):
        RunArrays(groups=["a", "b"], labels=[0, 1], probs=[[2.0, 1.0], [0.5, 0.5]])
    with pytest.raises(DataError, match="RunArrays.labels"):
        RunArrays(groups=["a", "b"], labels=[0, 3], probs=probs)
    with pytest.raises(DataError, match="RunArrays.embeddings"):
        RunArrays(groups=["a", "b"], labels=[0, 1], probs=probs, embeddings=np.zeros((3, 4)))
    with pytest.raises(DataError, match="model_inputs"):
        RunArrays(groups=["a", "b"], labels=[0, 1], probs=probs, model=torch.nn.Linear(2, 2))


def test_metrics_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="metrics.ece_bin.*did you mean 'ece_bins'"):
        build(MetricsConfig, {"ece_bin": 10}, "metrics")
    with pytest.raises(ConfigError, match="metrics.representation_sample"):
        build(MetricsConfig, {"representation_sample": 10, "id_neighbors": 10}, "metrics")
    with pytest.raises(ConfigError, match="metrics.noise_scales"):
        build(MetricsConfig, {"noise_scales": [0.1, 0.1]}, "metrics")


class _ImageModel(torch.nn.Module):
    """Takes (n, 1, 4, 4) images only, as a CNN would."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(16, 2)

    def forward(self, x):
        assert x.ndim == 4, "the model must get image-shaped inputs"
        return self.head(x.flatten(1))


def test_image_shaped_inputs_reach_the_model_unflattened():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 1, 4, 4)).astype(np.float32)
    model = _ImageModel()
    with torch.no_grad():
        probs = torch.softmax(model(torch.as_tensor(x)).double(), 1).numpy()
    arrays = RunArrays(
        groups=np.repeat(["a", "b"], 60),
        labels=rng.integers(0, 2, 120),
        probs=probs,
        embeddings=x.reshape(120, -1)[:, :8],
        inputs=x,
        model=model,
    )
    rep = group_report(arrays)
    assert np.isfinite(rep["groups"]["a"]["acc_adversarial"])
    assert rep["groups"]["a"]["flattening"] > 0.2  # 8 of 16 pixels kept
