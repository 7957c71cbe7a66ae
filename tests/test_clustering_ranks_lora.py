"""LoRA rank by cluster size and aggregation across ranks (HetLoRA, FlexLoRA)."""

from __future__ import annotations

import numpy as np
import pytest

from fedcascade.clustering import (
    cluster_ranks,
    flexlora_aggregate,
    hetlora_aggregate,
    lora_param_count,
    lora_rank,
    pad_lora,
    truncate_lora,
    weighted_average,
)

ALPHA = 16.0


def _adapter(rank: int, seed: int, conv: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if conv:
        a = rng.standard_normal((rank, 3, 3, 3))
        b = rng.standard_normal((8, rank, 1, 1))
    else:
        a = rng.standard_normal((rank, 6))
        b = rng.standard_normal((5, rank))
    return {
        "features.0.lora_A.default.weight": a.astype(np.float32),
        "features.0.lora_B.default.weight": b.astype(np.float32),
        "head.weight": rng.standard_normal((3, 5)).astype(np.float32),
    }


def _dense(arrays: dict[str, np.ndarray]) -> np.ndarray:
    a = np.asarray(arrays["features.0.lora_A.default.weight"], float)
    b = np.asarray(arrays["features.0.lora_B.default.weight"], float)
    r = a.shape[0]
    return (ALPHA / r) * (b.reshape(b.shape[0], r) @ a.reshape(r, -1))


def test_cluster_ranks_formula() -> None:
    sizes = [1.0, 4.0, 16.0]
    # r_k = clip(round(16 * (s / 16)^gamma), 2, 16)
    assert cluster_ranks(sizes, 2, 16, gamma=0.5).tolist() == [4, 8, 16]
    assert cluster_ranks(sizes, 2, 16, gamma=1.0).tolist() == [2, 4, 16]  # 1 clipped to 2
    assert cluster_ranks(sizes, 2, 16, gamma=0.0).tolist() == [16, 16, 16]
    r = cluster_ranks(np.linspace(1, 100, 30), 1, 32)
    assert (np.diff(r) >= 0).all() and r[-1] == 32
    with pytest.raises(ValueError, match="r_min"):
        cluster_ranks(sizes, 0, 16)
    with pytest.raises(ValueError, match="sizes"):
        cluster_ranks([1.0, -2.0], 1, 8)


def test_lora_param_count() -> None:
    # two adapted layers 64->128 and 128->10 at rank 4, plus a head of 130
    assert lora_param_count([(128, 64), (10, 128)], 4, extra=130) == 4 * (192 + 138) + 130


@pytest.mark.parametrize("conv", [False, True])
def test_pad_and_truncate_keep_the_dense_update(conv: bool) -> None:
    ad = _adapter(3, 0, conv)
    padded = pad_lora(ad, 8, ALPHA)
    assert lora_rank(padded) == 8
    np.testing.assert_allclose(_dense(padded), _dense(ad), rtol=1e-5)
    back = truncate_lora(padded, 3, ALPHA)
    for k in ad:
        np.testing.assert_allclose(back[k], ad[k], rtol=1e-6)
    np.testing.assert_allclose(back["head.weight"], ad["head.weight"])
    with pytest.raises(ValueError, match="truncate_lora"):
        pad_lora(ad, 2, ALPHA)


def test_hetlora_equals_plain_average_at_equal_ranks_and_pads_mixed_ranks() -> None:
    ads = [_adapter(4, s) for s in range(3)]
    w = [1.0, 2.0, 1.0]
    het = hetlora_aggregate(ads, w, 4, ALPHA)
    plain = weighted_average(ads, w)
    for k in plain:
        np.testing.assert_allclose(het[k], plain[k], rtol=1e-6)
    mixed = [_adapter(2, 0), _adapter(4, 1), _adapter(8, 2)]
    out = hetlora_aggregate(mixed, w, 8, ALPHA)
    assert lora_rank(out) == 8
    single = hetlora_aggregate([mixed[0]], [1.0], 8, ALPHA)
    np.testing.assert_allclose(_dense(single), _dense(mixed[0]), rtol=1e-5)
    # norm weighting moves the average towards the client with the largest update
    big = dict(mixed[0])
    big["features.0.lora_B.default.weight"] = big["features.0.lora_B.default.weight"] * 50
    nw = hetlora_aggregate([big, mixed[1]], [1.0, 1.0], 8, ALPHA, norm_weighting=True)
    pw = hetlora_aggregate([big, mixed[1]], [1.0, 1.0], 8, ALPHA)
    target = pad_lora(big, 8, ALPHA)["features.0.lora_B.default.weight"]
    assert np.linalg.norm(nw["features.0.lora_B.default.weight"] - target) < np.linalg.norm(
        pw["features.0.lora_B.default.weight"] - target
    )


@pytest.mark.parametrize("conv", [False, True])
def test_flexlora_factorises_the_average_dense_update(conv: bool) -> None:
    ads = [_adapter(2, 0, conv), _adapter(4, 1, conv), _adapter(3, 2, conv)]
    w = np.array([0.2, 0.5, 0.3])
    avg_dense = sum(wi * _dense(a) for wi, a in zip(w, ads))
    out = flexlora_aggregate(ads, w, [2, 9], ALPHA)
    assert set(out) == {2, 9}
    # rank 9 >= rank of the average (<= 2 + 4 + 3): exact
    np.testing.assert_allclose(_dense(out[9]), avg_dense, rtol=1e-4, atol=1e-5)
    # rank 2: the best rank-2 approximation (Eckart-Young)
    s = np.linalg.svd(avg_dense, compute_uv=False)
    err = np.linalg.norm(_dense(out[2]) - avg_dense)
    assert err == pytest.approx(np.sqrt((s[2:] ** 2).sum()), rel=1e-4)
    assert out[2]["features.0.lora_A.default.weight"].shape[0] == 2
    np.testing.assert_allclose(
        out[2]["head.weight"],
        weighted_average([{"h": a["head.weight"]} for a in ads], w)["h"],
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match="weights"):
        flexlora_aggregate(ads, [1.0, -1.0, 1.0], [2], ALPHA)
