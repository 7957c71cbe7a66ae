"""Membership inference: AUC / advantage on known cases, memorisation, calibration, groups."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from fedcascade.errors import DataError
from fedcascade.metrics import (
    attack_summary,
    calibrated_scores,
    loss_threshold_scores,
    max_advantage,
    membership_by_group,
    roc_auc,
)


def test_auc_and_advantage_on_hand_made_scores():
    assert roc_auc([3, 4, 5], [0, 1, 2]) == 1.0
    assert max_advantage([3, 4, 5], [0, 1, 2]) == 1.0
    assert roc_auc([0, 1], [2, 3]) == 0.0
    assert max_advantage([0, 1], [2, 3]) == 0.0  # never below 0: a threshold above all scores
    assert roc_auc([1, 1], [1, 1]) == 0.5  # ties count one half
    # Members {2, 4}, non-members {1, 3}: 3 of 4 pairs ordered right; best threshold 2 or 4
    # gives TPR - FPR = 1 - 1/2 = 1/2.
    assert roc_auc([2, 4], [1, 3]) == 0.75
    assert max_advantage([2, 4], [1, 3]) == 0.5
    assert np.isnan(roc_auc([], [1.0]))


def test_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 5, 300).astype(float), rng.integers(0, 4, 200).astype(float)
    y = np.r_[np.ones(300), np.zeros(200)]
    assert roc_auc(pos, neg) == pytest.approx(roc_auc_score(y, np.r_[pos, neg]))


def _fit(x, y, steps, seed):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    return model


def _losses(model, x, y):
    with torch.no_grad():
        return torch.nn.functional.cross_entropy(
            model(torch.as_tensor(x)), torch.as_tensor(y), reduction="none"
        ).numpy()


def _data(rng, n):
    x = rng.normal(size=(n, 20)).astype(np.float32)
    y = ((x[:, 0] > 0).astype(int) * 5 + rng.integers(0, 5, n)).astype(np.int64)  # noisy labels
    return x, y


def test_auc_near_half_when_the_model_saw_neither_set():
    torch.set_num_threads(1)
    rng = np.random.default_rng(1)
    model = _fit(*_data(rng, 300), steps=150, seed=0)
    train, held = _data(rng, 600), _data(rng, 600)
    res = attack_summary(
        loss_threshold_scores(_losses(model, *train)), loss_threshold_scores(_losses(model, *held))
    )
    assert abs(res["auc"] - 0.5) < 0.05
    assert res["advantage"] < 0.12


def test_auc_high_when_the_model_memorised_its_training_set():
    torch.set_num_threads(1)
    rng = np.random.default_rng(2)
    train, held = _data(rng, 200), _data(rng, 200)
    model = _fit(*train, steps=300, seed=0)
    res = attack_summary(
        loss_threshold_scores(_losses(model, *train)), loss_threshold_scores(_losses(model, *held))
    )
    assert res["auc"] > 0.9
    assert res["advantage"] > 0.7


def test_calibrated_attack_beats_loss_threshold_when_difficulty_varies():
    # Each record has an intrinsic difficulty (its loss under any model) spread far wider than
    # the small drop that training on it causes: only calibration can see the drop.
    rng = np.random.default_rng(3)
    n = 2000
    difficulty = rng.exponential(2.0, size=n)
    member = rng.random(n) < 0.5
    target = difficulty * np.where(member, 0.7, 1.0) + rng.normal(0, 0.05, n)
    one_ref = difficulty + rng.normal(0, 0.05, n)
    many_ref = difficulty + rng.normal(0, 0.05, size=(8, n))
    plain = roc_auc(-target[member], -target[~member])
    single = calibrated_scores(target, one_ref)
    multi = calibrated_scores(target, many_ref)
    assert plain < 0.7
    assert roc_auc(single[member], single[~member]) > 0.85
    assert roc_auc(multi[member], multi[~member]) > 0.85


def test_membership_by_group_splits_by_group_and_reports_counts():
    m_loss = np.array([0.1, 0.2, 0.3, 1.0, 1.0])
    m_grp = np.array(["a", "a", "a", "b", "b"])
    n_loss = np.array([0.5, 0.6, 1.0, 1.0])
    n_grp = np.array(["a", "a", "b", "b"])
    res = membership_by_group(m_loss, m_grp, n_loss, n_grp)
    assert res["a"]["mia_auc"] == 1.0 and res["a"]["mia_advantage"] == 1.0
    assert res["b"]["mia_auc"] == 0.5 and res["b"]["mia_advantage"] == 0.0
    assert (res["a"]["mia_n_members"], res["a"]["mia_n_nonmembers"]) == (3, 2)
    assert "mia_auc_calibrated" not in res["a"]
    cal = membership_by_group(m_loss, m_grp, n_loss, n_grp, m_loss + 1.0, n_loss)
    assert cal["b"]["mia_auc_calibrated"] == 1.0


def test_membership_input_errors_name_the_field():
    with pytest.raises(DataError, match="member_groups"):
        membership_by_group([0.1, 0.2], ["a"], [0.3], ["a"])
    with pytest.raises(DataError, match="both"):
        membership_by_group([0.1], ["a"], [0.3], ["a"], member_reference_losses=[0.2])
    with pytest.raises(DataError, match="reference_losses"):
        calibrated_scores([0.1, 0.2], np.ones((3, 5)))
