"""LoRA adapter models: frozen backbone, trainable set, array state, determinism, rank caching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedcascade.configtools import build
from fedcascade.models import (
    ModelConfig,
    adapter_model,
    build_backbone,
    cached_adapter_model,
    clear_adapter_cache,
    initial_adapter_arrays,
    layer_name_of,
    load_trainable_arrays,
    lora_delta,
    lora_pairs,
    lora_scaling,
    model_rank,
    trainable_arrays,
)

torch.set_num_threads(1)

SHAPES = {"mlp": ((14,), 2), "cnn": ((1, 8, 8), 10)}


@pytest.fixture(params=["mlp", "cnn"])
def setup(request):
    shape, n_classes = SHAPES[request.param]
    cfg = build(ModelConfig, {}, "model")
    backbone = build_backbone(cfg, shape, n_classes, seed=0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, *shape)).astype(np.float32)
    y = rng.integers(0, n_classes, size=32)
    return cfg, backbone, shape, n_classes, torch.tensor(x), torch.tensor(y)


def _sgd_steps(model, x, y, steps=5, lr=0.5):
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()


def test_trainable_params_are_exactly_lora_and_head(setup):
    cfg, backbone, *_ = setup
    model = adapter_model(backbone, cfg, rank=3, seed=1)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names, "adapter model has nothing to train"
    for n in names:
        assert ".lora_A." in n or ".lora_B." in n or n.startswith("head."), n
    assert {"head.weight", "head.bias"} <= set(names)
    adapted = {layer_name_of(n) for n in names} - {None}
    linear_or_conv = {
        f"features.{n}"
        for n, m in backbone.features.named_modules()
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
    }
    assert adapted == linear_or_conv
    for n in names:
        if ".lora_A." in n:
            assert dict(model.named_parameters())[n].shape[0] == 3


def test_backbone_frozen_bit_for_bit_after_training(setup):
    cfg, backbone, _, _, x, y = setup
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    model = adapter_model(backbone, cfg, rank=4, seed=1)
    base_before = {
        k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k and "head" not in k
    }
    out_before = model(x).detach()
    _sgd_steps(model, x, y)
    assert not torch.allclose(model(x).detach(), out_before), "training changed nothing"
    for k, v in backbone.state_dict().items():
        assert torch.equal(v, before[k]), f"backbone tensor {k} changed"
    for k, v in model.state_dict().items():
        if k in base_before:
            assert torch.equal(v, base_before[k]), f"frozen tensor {k} of the adapter model changed"


def test_initial_adapter_model_computes_the_backbone(setup):
    cfg, backbone, _, _, x, _ = setup
    model = adapter_model(backbone, cfg, rank=2, seed=5)
    torch.testing.assert_close(model(x), backbone(x))
    torch.testing.assert_close(model.embed(x), backbone.embed(x))
    assert model.embed(x).shape == (len(x), cfg.embedding_dim)


def test_arrays_round_trip_and_are_ordered_copies(setup):
    cfg, backbone, _, _, x, y = setup
    trained = adapter_model(backbone, cfg, rank=4, seed=1)
    _sgd_steps(trained, x, y)
    arrays = trainable_arrays(trained)
    assert list(arrays) == [n for n, p in trained.named_parameters() if p.requires_grad]
    assert all(a.dtype == np.float32 for a in arrays.values())
    fresh = adapter_model(backbone, cfg, rank=4, seed=99)
    assert not torch.allclose(fresh(x), trained(x))
    load_trainable_arrays(fresh, arrays)
    torch.testing.assert_close(fresh(x), trained(x))
    # Returned arrays are copies: mutating them must not touch the model.
    arrays["head.bias"][:] = 123.0
    assert not np.any(trainable_arrays(trained)["head.bias"] == 123.0)


def test_load_is_in_place_so_optimizers_stay_valid(setup):
    cfg, backbone, *_ = setup
    model = adapter_model(backbone, cfg, rank=2, seed=1)
    ids = [id(p) for p in model.parameters()]
    load_trainable_arrays(
        model, initial_adapter_arrays(cfg, *SHAPES[backbone.kind], 2, 7, backbone)
    )
    assert ids == [id(p) for p in model.parameters()]


def test_load_rejects_missing_extra_and_other_rank(setup):
    cfg, backbone, *_ = setup
    model = adapter_model(backbone, cfg, rank=4, seed=1)
    arrays = trainable_arrays(model)
    missing = dict(arrays)
    missing.pop("head.weight")
    with pytest.raises(ValueError, match=r"missing \['head.weight'\]"):
        load_trainable_arrays(model, missing)
    with pytest.raises(ValueError, match="unexpected"):
        load_trainable_arrays(model, {**arrays, "features.99.weight": np.zeros(1)})
    other_rank = trainable_arrays(adapter_model(backbone, cfg, rank=2, seed=1))
    with pytest.raises(ValueError, match="LoRA rank 4"):
        load_trainable_arrays(model, other_rank)


def test_initial_arrays_deterministic_and_rng_untouched(setup):
    cfg, backbone, shape, n_classes, *_ = setup
    torch.manual_seed(1234)
    expected_next = torch.rand(1)
    torch.manual_seed(1234)
    a = initial_adapter_arrays(cfg, shape, n_classes, 4, 11, backbone)
    assert torch.equal(torch.rand(1), expected_next), "global torch RNG was consumed"
    b = initial_adapter_arrays(cfg, shape, n_classes, 4, 11, backbone)
    c = initial_adapter_arrays(cfg, shape, n_classes, 4, 12, backbone)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], c[k]) for k in a if ".lora_A." in k)
    # B starts at zero and the head is the backbone's, so round 0 predicts like the backbone.
    assert all(not a[k].any() for k in a if ".lora_B." in k)
    np.testing.assert_array_equal(a["head.weight"], backbone.head.weight.detach().numpy())
    with pytest.raises(ValueError, match="classes"):
        initial_adapter_arrays(cfg, shape, n_classes + 1, 4, 11, backbone)


def test_cached_adapter_model_reuses_one_instance_per_rank(setup):
    cfg, backbone, _, _, x, y = setup
    clear_adapter_cache()
    m2 = cached_adapter_model(backbone, cfg, 2)
    m4 = cached_adapter_model(backbone, cfg, 4)
    assert m2 is not m4
    assert model_rank(m2) == 2 and model_rank(m4) == 4
    _sgd_steps(m2, x, y, steps=1)
    assert any(p.grad is not None for p in m2.parameters())
    again = cached_adapter_model(backbone, cfg, 2)
    assert again is m2
    assert all(p.grad is None for p in again.parameters()), "stale gradients survived reuse"
    clear_adapter_cache()
    assert cached_adapter_model(backbone, cfg, 2) is not m2


def test_adapter_model_rejects_bad_rank(setup):
    cfg, backbone, *_ = setup
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="rank"):
            adapter_model(backbone, cfg, bad, seed=0)


def test_lora_pairs_dense_delta_reproduces_the_adapted_layer(setup):
    cfg, backbone, _, _, x, y = setup
    model = adapter_model(backbone, cfg, rank=3, seed=2)
    _sgd_steps(model, x, y)
    arrays = trainable_arrays(model)
    pairs = lora_pairs(arrays)
    assert set(pairs) == {layer_name_of(n) for n in arrays} - {None}
    assert lora_scaling(cfg, 3) == pytest.approx(8.0 / 3)
    # Merging W + delta into a plain copy of the backbone must give the adapter model's outputs.
    merged = build_backbone(cfg, backbone.input_shape, backbone.n_classes, seed=0)
    merged.load_state_dict(backbone.state_dict())
    params = dict(merged.named_parameters())
    with torch.no_grad():
        for layer, (a, b) in pairs.items():
            delta = lora_delta(a, b, lora_scaling(cfg, 3))
            params[f"{layer}.weight"] += torch.from_numpy(delta)
        merged.head.weight.copy_(torch.from_numpy(arrays["head.weight"]))
        merged.head.bias.copy_(torch.from_numpy(arrays["head.bias"]))
    torch.testing.assert_close(merged(x), model(x), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="unpaired"):
        lora_pairs({k: v for k, v in arrays.items() if ".lora_B." not in k})
