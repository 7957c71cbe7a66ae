"""Flattening, averaging and the DP noise level of client updates."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedcascade.clustering import dp_update_noise_std, flatten_updates, unflatten, weighted_average


def _upd(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "layer.lora_A.default.weight": rng.standard_normal((2, 3)).astype(np.float32),
        "layer.lora_B.default.weight": rng.standard_normal((4, 2)).astype(np.float32),
        "head.bias": rng.standard_normal(5).astype(np.float32),
    }


def test_flatten_rows_follow_key_order_and_unflatten_inverts() -> None:
    ups = [_upd(0), _upd(1), _upd(2)]
    X = flatten_updates(ups)
    assert X.shape == (3, 6 + 8 + 5)
    assert X.dtype == np.float64
    np.testing.assert_allclose(X[1, :6], ups[1]["layer.lora_A.default.weight"].ravel())
    back = unflatten(X[2], ups[0])
    for k, v in ups[2].items():
        assert back[k].shape == v.shape and back[k].dtype == v.dtype
        np.testing.assert_allclose(back[k], v)
    # a subset of keys in a chosen order
    Y = flatten_updates(ups, keys=["head.bias"])
    np.testing.assert_allclose(Y[0], ups[0]["head.bias"])


def test_flatten_names_the_client_and_array_on_mismatch() -> None:
    ups = [_upd(0), _upd(1)]
    ups[1]["layer.lora_A.default.weight"] = np.zeros((4, 3))  # another rank
    with pytest.raises(ValueError, match=r"updates\[1\]\['layer.lora_A.default.weight'\].*rank"):
        flatten_updates(ups)
    ups = [_upd(0), {k: v for k, v in _upd(1).items() if k != "head.bias"}]
    with pytest.raises(ValueError, match=r"updates\[1\].*missing \['head.bias'\]"):
        flatten_updates(ups)
    with pytest.raises(ValueError, match="at least one"):
        flatten_updates([])


def test_weighted_average_normalises_weights_and_keeps_dtype() -> None:
    ups = [_upd(0), _upd(1)]
    avg = weighted_average(ups, [1.0, 3.0])
    for k in ups[0]:
        assert avg[k].dtype == np.float32
        np.testing.assert_allclose(avg[k], 0.25 * ups[0][k] + 0.75 * ups[1][k], rtol=1e-6)
    with pytest.raises(ValueError, match="weights"):
        weighted_average(ups, [1.0, -1.0])
    with pytest.raises(ValueError, match="one per client"):
        weighted_average(ups, [1.0])


def test_dp_update_noise_std_matches_simulated_dp_sgd() -> None:
    # T steps of plain SGD on noisy mean gradients: (sum clipped + N(0, sigma^2 C^2)) / b
    sigma, C, b, T, lr, p = 1.3, 0.7, 32.0, 9, 0.05, 20000
    rng = np.random.default_rng(0)
    noise = sum(-lr * rng.normal(0.0, sigma * C, size=p) / b for _ in range(T))
    expected = dp_update_noise_std(sigma, C, b, T, lr)
    assert expected == pytest.approx(lr * sigma * C * math.sqrt(T) / b)
    assert np.std(noise) == pytest.approx(expected, rel=0.02)
    assert dp_update_noise_std(0.0, C, b, T) == 0.0
    with pytest.raises(ValueError, match="steps"):
        dp_update_noise_std(sigma, C, b, 0)
    with pytest.raises(ValueError, match="batch_size"):
        dp_update_noise_std(sigma, C, -1.0, 2)
