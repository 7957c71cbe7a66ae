"""Backbones, backbone pretraining (cached), and peft LoRA adapters at a given rank.

Typical use in a client::

    backbone = get_backbone(cfg.model, input_shape, n_classes, public_x, public_y, seed)
    model = cached_adapter_model(backbone, cfg.model, rank)
    load_trainable_arrays(model, arrays)
    ...  # DP-SGD on the trainable parameters
    reply = trainable_arrays(model)
"""

from fedcascade.models.adapters import (
    adapter_model,
    cached_adapter_model,
    clear_adapter_cache,
    initial_adapter_arrays,
    layer_name_of,
    load_trainable_arrays,
    lora_delta,
    lora_pairs,
    lora_scaling,
    model_rank,
    release_training_state,
    trainable_arrays,
    unwrap,
)
from fedcascade.models.backbones import Backbone, build_backbone, resolve_backbone_kind
from fedcascade.models.config import ModelConfig, PretrainConfig
from fedcascade.models.evaluation import EvalResult, embed, evaluate, predict_proba
from fedcascade.models.pretrain import (
    CACHE_ENV,
    backbone_cache_dir,
    backbone_cache_key,
    clear_backbone_cache,
    data_fingerprint,
    get_backbone,
    pretrain_backbone,
)

__all__ = [
    "Backbone",
    "CACHE_ENV",
    "EvalResult",
    "ModelConfig",
    "PretrainConfig",
    "adapter_model",
    "backbone_cache_dir",
    "backbone_cache_key",
    "build_backbone",
    "cached_adapter_model",
    "clear_adapter_cache",
    "clear_backbone_cache",
    "data_fingerprint",
    "embed",
    "evaluate",
    "get_backbone",
    "initial_adapter_arrays",
    "layer_name_of",
    "load_trainable_arrays",
    "lora_delta",
    "lora_pairs",
    "lora_scaling",
    "model_rank",
    "predict_proba",
    "pretrain_backbone",
    "release_training_state",
    "resolve_backbone_kind",
    "trainable_arrays",
    "unwrap",
]
