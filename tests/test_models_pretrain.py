"""Backbone pretraining on the public pool, and its in-process and on-disk caches."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch

import fedcascade.models.pretrain as pretrain_mod
from fedcascade.configtools import build
from fedcascade.errors import DataError
from fedcascade.models import (
    CACHE_ENV,
    ModelConfig,
    backbone_cache_dir,
    backbone_cache_key,
    clear_backbone_cache,
    evaluate,
    get_backbone,
)

torch.set_num_threads(1)

SHAPE = (14,)


def _pool(seed: int = 0, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    x = rng.normal(size=(n, *SHAPE)).astype(np.float32) + 1.5 * y[:, None]
    return x, y


def _cfg(**pretrain) -> ModelConfig:
    return build(ModelConfig, {"pretrain": {"epochs": 5, **pretrain}}, "model")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    clear_backbone_cache()
    yield tmp_path / "cache" / "backbones"
    clear_backbone_cache()


def test_pretraining_learns_the_public_pool_and_freezes():
    x, y = _pool()
    pre = get_backbone(_cfg(), SHAPE, 2, x, y, seed=0)
    raw = get_backbone(_cfg(enabled=False), SHAPE, 2, None, None, seed=0)
    assert evaluate(pre, x, y).accuracy > 0.9
    assert evaluate(pre, x, y).accuracy > evaluate(raw, x, y).accuracy + 0.2
    assert not any(p.requires_grad for p in pre.parameters())
    assert not pre.training


def test_same_inputs_give_the_same_instance():
    x, y = _pool()
    a = get_backbone(_cfg(), SHAPE, 2, x, y, seed=0)
    assert get_backbone(_cfg(), SHAPE, 2, x.copy(), y.copy(), seed=0) is a
    assert get_backbone(_cfg(), SHAPE, 2, x, y, seed=1) is not a


def test_disk_cache_is_written_atomically_and_reloaded_without_training(
    isolated_cache, monkeypatch
):
    x, y = _pool()
    first = get_backbone(_cfg(), SHAPE, 2, x, y, seed=0)
    files = sorted(p.name for p in isolated_cache.iterdir())
    assert files == [f"{first.fedcascade_key}.pt"], "expected one cache file and no temp files"

    clear_backbone_cache()

    def no_training(*args, **kwargs):
        raise AssertionError("pretrained again although the disk cache holds the backbone")

    monkeypatch.setattr(pretrain_mod, "pretrain_backbone", no_training)
    second = get_backbone(_cfg(), SHAPE, 2, x, y, seed=0)
    assert second is not first
    for k, v in first.state_dict().items():
        assert torch.equal(v, second.state_dict()[k]), k


def test_cache_key_tracks_what_determines_the_weights():
    x, y = _pool()
    cfg = _cfg()
    key = backbone_cache_key(cfg, SHAPE, 2, x, y, 0)
    x2 = x.copy()
    x2[0, 0] += 1.0
    assert backbone_cache_key(cfg, SHAPE, 2, x2, y, 0) != key
    assert backbone_cache_key(cfg, SHAPE, 2, x, y, 1) != key
    assert backbone_cache_key(_cfg(epochs=6), SHAPE, 2, x, y, 0) != key
    assert backbone_cache_key(dataclasses.replace(cfg, hidden=(32,)), SHAPE, 2, x, y, 0) != key
    # LoRA settings and the cache location do not change the backbone.
    same = dataclasses.replace(
        cfg, lora_rank=8, lora_alpha=1.0, pretrain=_cfg(cache_dir="/x").pretrain
    )
    assert backbone_cache_key(same, SHAPE, 2, x, y, 0) == key


def test_cache_dir_resolution(tmp_path, monkeypatch):
    cfg = _cfg(cache_dir=str(tmp_path / "mine"))
    assert backbone_cache_dir(cfg.pretrain) == tmp_path / "cache" / "backbones"  # env wins
    monkeypatch.delenv(CACHE_ENV)
    assert backbone_cache_dir(cfg.pretrain) == tmp_path / "mine"
    assert backbone_cache_dir(_cfg().pretrain).parts[-3:] == (".cache", "fedcascade", "backbones")


def test_corrupt_cache_file_is_retrained_and_replaced(isolated_cache):
    x, y = _pool()
    key = backbone_cache_key(_cfg(), SHAPE, 2, x, y, 0)
    isolated_cache.mkdir(parents=True)
    (isolated_cache / f"{key}.pt").write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="unreadable cached backbone"):
        model = get_backbone(_cfg(), SHAPE, 2, x, y, seed=0)
    assert evaluate(model, x, y).accuracy > 0.9
    assert (isolated_cache / f"{key}.pt").stat().st_size > 1000


def test_unwritable_cache_warns_but_still_returns_a_backbone(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    monkeypatch.delenv(CACHE_ENV)
    x, y = _pool()
    with pytest.warns(UserWarning, match="could not cache"):
        model = get_backbone(_cfg(cache_dir=str(blocker / "sub")), SHAPE, 2, x, y, seed=0)
    assert evaluate(model, x, y).accuracy > 0.9


def test_cache_off_and_pretraining_off_write_nothing(isolated_cache):
    x, y = _pool()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        get_backbone(_cfg(cache=False), SHAPE, 2, x, y, seed=0)
        get_backbone(_cfg(enabled=False), SHAPE, 2, None, None, seed=0)
    assert not isolated_cache.exists() or not any(isolated_cache.iterdir())


@pytest.mark.parametrize(
    ("px", "py", "match"),
    [
        (None, None, "public pretraining pool"),
        (np.zeros((0, 14)), np.zeros(0, dtype=int), "public pretraining pool"),
        (np.zeros((5, 13)), np.zeros(5, dtype=int), "record shape"),
        (np.zeros((5, 14)), np.array([0, 1, 2, 0, 1]), "labels"),
        (np.zeros((5, 14)), np.zeros(4, dtype=int), "equal counts"),
    ],
)
def test_bad_public_pool_is_a_clear_data_error(px, py, match):
    with pytest.raises(DataError, match=match):
        get_backbone(_cfg(), SHAPE, 2, px, py, seed=0)
