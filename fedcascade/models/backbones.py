"""Backbones: a small MLP (tabular / synthetic) and a small CNN (digits), both Opacus-friendly.

A backbone is ``features`` (input -> embedding) followed by ``head`` (embedding -> logits). It has
no BatchNorm (per-sample gradients need per-sample independence), only Linear / Conv2d /
GroupNorm / ReLU / MaxPool layers that Opacus and peft LoRA both support.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fedcascade.errors import ConfigError
from fedcascade.models.config import ModelConfig

__all__ = ["Backbone", "build_backbone", "resolve_backbone_kind"]


class Backbone(nn.Module):
    """``features`` then ``head``; inputs are reshaped to ``input_shape`` (or flattened for MLPs).

    Parameters
    ----------
    features : nn.Module
        Maps a batch of shape ``(n, *input_shape)`` to ``(n, embedding_dim)``.
    head : nn.Linear
        Maps the embedding to class logits.
    input_shape : tuple of int
        Shape of one record.
    kind : str
        ``"mlp"`` or ``"cnn"``.
    """

    def __init__(
        self, features: nn.Module, head: nn.Linear, input_shape: tuple[int, ...], kind: str
    ) -> None:
        super().__init__()
        self.features = features
        self.head = head
        self.input_shape = tuple(int(d) for d in input_shape)
        self.kind = kind
        self.embedding_dim = head.in_features
        self.n_classes = head.out_features

    def _shape_input(self, x: torch.Tensor) -> torch.Tensor:
        # Accept flat rows as well as shaped records, so callers need not know the backbone kind.
        if self.kind == "mlp":
            return x.reshape(x.shape[0], -1)
        return x.reshape(x.shape[0], *self.input_shape)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Representation ``(n, embedding_dim)`` that the head reads."""
        return self.features(self._shape_input(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(n, n_classes)``."""
        return self.head(self.embed(x))


def resolve_backbone_kind(cfg: ModelConfig, input_shape: tuple[int, ...]) -> str:
    """``"cnn"`` or ``"mlp"``: what ``cfg.backbone`` means for records of ``input_shape``."""
    if cfg.backbone == "auto":
        return "cnn" if len(input_shape) == 3 else "mlp"
    if cfg.backbone == "cnn" and len(input_shape) != 3:
        raise ConfigError(
            "model.backbone",
            "cnn",
            "'mlp' or 'auto' for this data",
            f"a CNN needs image records of shape (channels, height, width); the data has shape "
            f"{tuple(input_shape)}",
        )
    return cfg.backbone


def _group_count(channels: int) -> int:
    # GroupNorm needs groups | channels; up to 4 groups keeps it meaningful for 16-32 channels.
    return math.gcd(channels, 4)


def _mlp_features(cfg: ModelConfig, in_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = in_dim
    for h in cfg.hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers += [nn.Linear(width, cfg.embedding_dim), nn.ReLU()]
    return nn.Sequential(*layers)


def _cnn_features(cfg: ModelConfig, input_shape: tuple[int, ...]) -> nn.Sequential:
    c, h, w = input_shape
    layers: list[nn.Module] = []
    for out in cfg.cnn_channels:
        layers += [
            nn.Conv2d(c, out, kernel_size=3, padding=1),
            nn.GroupNorm(_group_count(out), out),
            nn.ReLU(),
        ]
        if h >= 2 and w >= 2:  # halve the image while there is something left to halve
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
        c = out
    layers += [nn.Flatten(), nn.Linear(c * h * w, cfg.embedding_dim), nn.ReLU()]
    return nn.Sequential(*layers)


def build_backbone(
    cfg: ModelConfig, input_shape: tuple[int, ...], n_classes: int, seed: int
) -> Backbone:
    """Build a randomly initialised (deterministic given ``seed``) backbone.

    Parameters
    ----------
    cfg : ModelConfig
        Architecture settings.
    input_shape : tuple of int
        Shape of one record, e.g. ``(14,)`` for tabular or ``(1, 8, 8)`` for digits.
    n_classes : int
        Number of classes (>= 2).
    seed : int
        Seed of the weight initialisation; the global torch RNG is left untouched.

    Returns
    -------
    Backbone
        Module with ``.embed(x)`` and ``forward(x) -> logits``, in eval mode, trainable.
    """
    input_shape = tuple(int(d) for d in input_shape)
    if not input_shape or any(d < 1 for d in input_shape):
        raise ValueError(f"input_shape must be non-empty positive sizes, got {input_shape}")
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    kind = resolve_backbone_kind(cfg, input_shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "mlp":
            features = _mlp_features(cfg, math.prod(input_shape))
        else:
            features = _cnn_features(cfg, input_shape)
        head = nn.Linear(cfg.embedding_dim, n_classes)
    model = Backbone(features, head, input_shape, kind)
    model.eval()
    return model
