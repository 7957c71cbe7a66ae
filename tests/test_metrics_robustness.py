"""Accuracy under input noise and FGSM / PGD, per group, on a model with a known answer."""

import numpy as np
import pytest
import torch

from fedcascade.errors import DataError
from fedcascade.metrics.robustness import adversarial_accuracy, noise_accuracy, predict


class _Linear(torch.nn.Module):
    """Two-class linear model: class 1 iff w . x > 0, so an L-inf attack of radius eps flips
    exactly the correctly classified points with |w . x| < eps * ||w||_1."""

    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(torch.as_tensor(w, dtype=torch.float32))
        self.dropout = torch.nn.Dropout(0.5)  # would make eval-mode mistakes visible

    def forward(self, x):
        s = self.dropout(x) @ self.w
        return torch.stack([-s, s], dim=1)


def _data(seed=0):
    rng = np.random.default_rng(seed)
    w = np.array([1.0, -2.0, 0.5])
    x = rng.normal(size=(600, 3)).astype(np.float32)
    margin = x @ w
    y = (margin > 0).astype(int)  # the model is right on every clean record
    # "near" records sit close to the decision boundary, "far" ones away from it.
    groups = np.where(np.abs(margin) < 1.0, "near", "far")
    return w, x, y, groups, margin


def test_fgsm_and_pgd_flip_exactly_the_points_within_reach():
    torch.set_num_threads(1)
    w, x, y, groups, margin = _data()
    model = _Linear(w)
    eps = 0.2
    flipped = np.abs(margin) < eps * np.abs(w).sum()
    for steps in (1, 5):
        acc = adversarial_accuracy(model, x, y, groups, eps=eps, steps=steps)
        for g in ("near", "far"):
            m = groups == g
            assert acc[g] == pytest.approx(1.0 - flipped[m].mean()), (steps, g)
    assert acc["near"] < acc["far"]


def test_the_attack_leaves_model_mode_and_parameter_gradients_alone():
    w, x, y, groups, _ = _data()
    model = _Linear(w)
    model.train()
    adversarial_accuracy(model, x, y, groups, eps=0.1)
    assert model.training
    assert model.w.grad is None
    assert model.w.requires_grad


def test_noise_accuracy_starts_at_clean_accuracy_and_hurts_the_near_group_most():
    torch.set_num_threads(1)
    w, x, y, groups, _ = _data()
    model = _Linear(w).train()  # eval mode must be used inside, or dropout would corrupt scale 0
    res = noise_accuracy(model, x, y, groups, scales=(0.0, 0.5, 2.0), seed=1)
    assert res[0.0] == {"far": 1.0, "near": 1.0}
    assert res[2.0]["near"] < res[0.5]["near"] < 1.0
    assert res[2.0]["near"] < res[2.0]["far"]
    assert noise_accuracy(model, x, y, groups, scales=(0.5,), seed=1) == {0.5: res[0.5]}
    np.testing.assert_array_equal(predict(model, x), y)


def test_bad_attack_settings_are_rejected_clearly():
    w, x, y, groups, _ = _data()
    with pytest.raises(DataError, match="eps"):
        adversarial_accuracy(_Linear(w), x, y, groups, eps=-1.0)
    with pytest.raises(DataError, match="steps"):
        adversarial_accuracy(_Linear(w), x, y, groups, steps=0)
    with pytest.raises(DataError, match="scales"):
        noise_accuracy(_Linear(w), x, y, groups, scales=(float("nan"),))
