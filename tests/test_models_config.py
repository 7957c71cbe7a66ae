"""[model] config section and backbone construction."""

from __future__ import annotations

import pytest
import torch

from fedcascade.configtools import build
from fedcascade.errors import ConfigError
from fedcascade.models import ModelConfig, PretrainConfig, build_backbone

torch.set_num_threads(1)


def test_defaults_and_nested_pretrain_table():
    cfg = build(ModelConfig, {"hidden": [32], "pretrain": {"enabled": False, "epochs": 3}}, "model")
    assert cfg.hidden == (32,)
    assert cfg.pretrain == PretrainConfig(enabled=False, epochs=3)
    assert build(ModelConfig, None, "model") == ModelConfig()


@pytest.mark.parametrize(
    ("raw", "key", "fragment"),
    [
        ({"backbone": "cnnn"}, "model.backbone", "did you mean 'cnn'"),
        ({"lora_rnk": 2}, "model.lora_rnk", "did you mean 'lora_rank'"),
        ({"lora_rank": 0}, "model.lora_rank", ">= 1"),
        ({"lora_dropout": 1.0}, "model.lora_dropout", "< 1.0"),
        ({"hidden": [64, 0]}, "model.hidden[1]", ">= 1"),
        ({"cnn_channels": []}, "model.cnn_channels", "at least one"),
        ({"pretrain": {"lr": 0}}, "model.pretrain.lr", "> 0.0"),
    ],
)
def test_bad_values_name_the_key(raw, key, fragment):
    with pytest.raises(ConfigError) as err:
        build(ModelConfig, raw, "model")
    assert err.value.key == key
    assert fragment in str(err.value)


def test_auto_picks_cnn_for_images_and_mlp_otherwise():
    cfg = ModelConfig()
    assert build_backbone(cfg, (1, 8, 8), 10, 0).kind == "cnn"
    assert build_backbone(cfg, (14,), 2, 0).kind == "mlp"
    mlp_on_images = build_backbone(ModelConfig(backbone="mlp"), (1, 8, 8), 10, 0)
    assert mlp_on_images(torch.zeros(3, 1, 8, 8)).shape == (3, 10)


def test_cnn_on_tabular_data_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model.backbone.*\(14,\)"):
        build_backbone(ModelConfig(backbone="cnn"), (14,), 2, 0)


def test_backbone_shapes_flat_input_and_no_batchnorm():
    cfg = ModelConfig(embedding_dim=12, cnn_channels=(4, 8, 8))
    cnn = build_backbone(cfg, (1, 8, 8), 10, 0)
    assert cnn(torch.zeros(5, 64)).shape == (5, 10)  # flat rows are reshaped to images
    assert cnn.embed(torch.zeros(5, 1, 8, 8)).shape == (5, 12)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in cnn.modules())


def test_build_is_deterministic_per_seed():
    a = build_backbone(ModelConfig(), (14,), 2, 3).state_dict()
    b = build_backbone(ModelConfig(), (14,), 2, 3).state_dict()
    c = build_backbone(ModelConfig(), (14,), 2, 4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="n_classes"):
        build_backbone(ModelConfig(), (14,), 1, 0)
    with pytest.raises(ValueError, match="input_shape"):
        build_backbone(ModelConfig(), (0,), 2, 0)
