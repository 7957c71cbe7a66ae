"""Config sections ``[model]`` and ``[model.pretrain]``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fedcascade.configtools import check, join_key, param

__all__ = ["PretrainConfig", "ModelConfig"]


@dataclass(frozen=True)
class PretrainConfig:
    """Central, non-private pretraining of the backbone on the public pool (``[model.pretrain]``)."""

    enabled: bool = param(True, doc="pretrain the backbone on the public pool before federation")
    epochs: int = param(20, ge=1, doc="passes over the public pool")
    lr: float = param(0.05, gt=0.0, doc="SGD learning rate (momentum 0.9)")
    batch_size: int = param(64, ge=1, doc="mini-batch size of pretraining")
    weight_decay: float = param(0.0, ge=0.0, doc="L2 weight decay of pretraining")
    cache_dir: str | None = param(
        None,
        doc="directory of cached pretrained backbones; default ~/.cache/fedcascade/backbones "
        "(the environment variable FEDCASCADE_CACHE overrides it with $FEDCASCADE_CACHE/backbones)",
    )
    cache: bool = param(True, doc="read and write pretrained backbones on disk")


@dataclass(frozen=True)
class ModelConfig:
    """Backbone architecture and LoRA adapter settings (``[model]``)."""

    backbone: Literal["auto", "mlp", "cnn"] = param(
        "auto", doc="auto = cnn for image-shaped (C, H, W) inputs, mlp otherwise"
    )
    hidden: tuple[int, ...] = param((64, 64), ge=1, doc="hidden widths of the MLP backbone")
    embedding_dim: int = param(32, ge=1, doc="width of the representation the head reads")
    cnn_channels: tuple[int, ...] = param((16, 32), ge=1, doc="channels of the CNN conv blocks")
    lora_rank: int = param(4, ge=1, doc="default / maximum LoRA rank the strategy scales from")
    lora_alpha: float = param(8.0, gt=0.0, doc="LoRA alpha; the update is scaled by alpha / rank")
    lora_dropout: float = param(0.0, ge=0.0, lt=1.0, doc="dropout on the LoRA branch input")
    pretrain: PretrainConfig = param(default_factory=PretrainConfig)

    def validate(self, key: str) -> None:
        """Cross-field checks (called by :func:`fedcascade.configtools.build`)."""
        check(
            len(self.cnn_channels) >= 1,
            join_key(key, "cnn_channels"),
            list(self.cnn_channels),
            "a list of at least one channel count",
        )
