"""evaluate() and embed() on backbones and adapter models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedcascade.models import ModelConfig, adapter_model, build_backbone, embed, evaluate

torch.set_num_threads(1)


@pytest.fixture
def model_xy():
    cfg = ModelConfig(lora_dropout=0.5)
    model = adapter_model(build_backbone(cfg, (1, 8, 8), 10, 0), cfg, 2, 0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 1, 8, 8))  # float64 on purpose: evaluate casts
    y = rng.integers(0, 10, size=50)
    return model, x, y


def test_evaluate_matches_a_direct_computation(model_xy):
    model, x, y = model_xy
    res = evaluate(model, x, y, batch_size=7)
    with torch.no_grad():
        logits = model.eval()(torch.tensor(x, dtype=torch.float32)).double()
    expected = F.cross_entropy(logits, torch.tensor(y), reduction="none").numpy()
    np.testing.assert_allclose(res.per_record_loss, expected, rtol=1e-6)
    assert res.loss == pytest.approx(expected.mean())
    np.testing.assert_array_equal(res.predictions, logits.argmax(1).numpy())
    assert res.accuracy == pytest.approx(np.mean(res.predictions == y))
    np.testing.assert_allclose(res.probabilities.sum(axis=1), 1.0)
    assert res.probabilities.shape == (50, 10)


def test_batch_size_does_not_change_results_and_mode_is_restored(model_xy):
    model, x, y = model_xy
    model.train()  # dropout on: evaluate must switch it off, then switch it back
    a = evaluate(model, x, y, batch_size=1)
    b = evaluate(model, x, y, batch_size=1024)
    assert model.training
    np.testing.assert_allclose(a.per_record_loss, b.per_record_loss, rtol=1e-6)
    np.testing.assert_array_equal(a.predictions, b.predictions)


def test_embed_shape_and_accepts_flat_rows(model_xy):
    model, x, _ = model_xy
    e = embed(model, x)
    assert e.shape == (50, 32) and e.dtype == np.float32
    np.testing.assert_allclose(
        embed(model, x.reshape(50, -1), batch_size=8), e, rtol=1e-4, atol=1e-6
    )


def test_empty_and_bad_inputs(model_xy):
    model, x, y = model_xy
    res = evaluate(model, x[:0], y[:0])
    assert np.isnan(res.loss) and res.predictions.shape == (0,)
    assert res.probabilities.shape == (0, 10)
    assert embed(model, x[:0]).shape == (0, 32)
    with pytest.raises(ValueError, match="labels"):
        evaluate(model, x, np.full(50, 10))
    with pytest.raises(ValueError, match="records"):
        evaluate(model, x, y[:10])
