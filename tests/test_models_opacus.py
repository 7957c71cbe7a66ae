"""Adapter models must work with Opacus per-sample gradients (the privacy trainer relies on it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.validators import ModuleValidator

from fedcascade.configtools import build
from fedcascade.models import (
    ModelConfig,
    adapter_model,
    build_backbone,
    cached_adapter_model,
    clear_adapter_cache,
    trainable_arrays,
)

torch.set_num_threads(1)


@pytest.fixture(params=[("mlp", (14,), 2), ("cnn", (1, 8, 8), 10)], ids=["mlp", "cnn"])
def model_and_data(request):
    _, shape, n_classes = request.param
    cfg = build(ModelConfig, {"lora_dropout": 0.0}, "model")
    backbone = build_backbone(cfg, shape, n_classes, seed=0)
    model = adapter_model(backbone, cfg, rank=2, seed=1)
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.normal(size=(6, *shape)).astype(np.float32))
    y = torch.tensor(rng.integers(0, n_classes, size=6))
    return cfg, backbone, model, x, y


def test_module_validator_finds_no_errors(model_and_data):
    _, _, model, _, _ = model_and_data
    model.train()
    assert ModuleValidator.validate(model, strict=False) == []


def test_grad_sample_matches_per_record_gradients(model_and_data):
    _, _, model, x, y = model_and_data
    # Give every trainable tensor non-zero values (a fresh B = 0 would make A's gradient zero).
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    model.train()
    gsm = GradSampleModule(model, loss_reduction="sum")
    F.cross_entropy(gsm(x), y, reduction="sum").backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    for name, p in trainable:
        assert p.grad_sample is not None and p.grad_sample.abs().sum() > 0, (
            f"no grad_sample for {name}"
        )
        assert p.grad_sample.shape == (len(x), *p.shape)
    per_sample = {name: p.grad_sample.clone() for name, p in trainable}
    gsm._close()  # the reference loop below must not run through Opacus hooks
    for i in range(len(x)):
        grads = torch.autograd.grad(
            F.cross_entropy(model(x[i : i + 1]), y[i : i + 1], reduction="sum"),
            [p for _, p in trainable],
        )
        for (name, _), g in zip(trainable, grads, strict=True):
            torch.testing.assert_close(per_sample[name][i], g, atol=1e-5, rtol=1e-4, msg=name)


def test_frozen_params_get_no_grad_sample(model_and_data):
    _, _, model, x, y = model_and_data
    model.train()
    gsm = GradSampleModule(model)
    F.cross_entropy(gsm(x), y).backward()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert getattr(p, "grad_sample", None) is None, name
            assert p.grad is None, name
    gsm._close()


def test_wrapped_model_exposes_same_arrays(model_and_data):
    _, _, model, _, _ = model_and_data
    gsm = GradSampleModule(model)
    assert list(trainable_arrays(gsm)) == list(trainable_arrays(model))
    gsm._close()


def test_cached_model_can_be_rewrapped_after_a_trainer_forgot_cleanup(model_and_data):
    cfg, backbone, _, x, y = model_and_data
    clear_adapter_cache()
    model = cached_adapter_model(backbone, cfg, 2)
    model.train()
    gsm = GradSampleModule(model)  # deliberately never closed
    F.cross_entropy(gsm(x), y).backward()
    again = cached_adapter_model(backbone, cfg, 2)
    assert again is model
    assert all(getattr(p, "grad_sample", None) is None for p in again.parameters())
    again.train()
    gsm2 = GradSampleModule(again)  # Opacus refuses to hook a model twice without the cleanup
    F.cross_entropy(gsm2(x), y).backward()
    assert all(p.grad_sample is not None for p in again.parameters() if p.requires_grad)
    gsm2._close()
    clear_adapter_cache()
