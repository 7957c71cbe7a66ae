"""Batched evaluation and embeddings of any classifier module (adapter models included)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EvalResult", "evaluate", "embed", "predict_proba"]


@dataclass(frozen=True)
class EvalResult:
    """Outcome of :func:`evaluate` on ``n`` records.

    Attributes
    ----------
    loss : float
        Mean cross-entropy (NaN when ``n == 0``).
    accuracy : float
        Fraction of correct predictions (NaN when ``n == 0``).
    predictions : np.ndarray
        ``(n,)`` int64 predicted classes.
    per_record_loss : np.ndarray
        ``(n,)`` float64 cross-entropy of each record.
    probabilities : np.ndarray
        ``(n, n_classes)`` float64 softmax probabilities.
    """

    loss: float
    accuracy: float
    predictions: np.ndarray
    per_record_loss: np.ndarray
    probabilities: np.ndarray


def _as_float_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x, dtype=torch.float32)


class _EvalMode:
    # Evaluate without dropout, then give the caller its module back in the mode it was in.
    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.was_training = model.training

    def __enter__(self) -> nn.Module:
        self.model.eval()
        return self.model

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)


def _logits(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    with _EvalMode(model), torch.no_grad():
        return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def evaluate(
    model: nn.Module,
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    batch_size: int = 1024,
) -> EvalResult:
    """Loss, accuracy, predictions, per-record losses and probabilities of ``model`` on ``(x, y)``.

    Parameters
    ----------
    model : nn.Module
        Classifier returning logits; its train/eval mode is restored afterwards.
    x : array
        Records, ``(n, *input_shape)`` or flat ``(n, d)``.
    y : array
        ``(n,)`` integer labels.
    batch_size : int
        Records per forward pass (bounds memory, not results).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    xt = _as_float_tensor(x)
    yt = torch.as_tensor(np.asarray(y) if not torch.is_tensor(y) else y, dtype=torch.long).reshape(
        -1
    )
    if len(xt) != len(yt):
        raise ValueError(f"x has {len(xt)} records but y has {len(yt)} labels")
    if len(xt) == 0:
        n_classes = getattr(model, "n_classes", 0)
        empty = np.zeros(0)
        return EvalResult(
            float("nan"), float("nan"), empty.astype(np.int64), empty, np.zeros((0, n_classes))
        )
    logits = _logits(model, xt, batch_size)
    if yt.min() < 0 or yt.max() >= logits.shape[1]:
        raise ValueError(
            f"labels must lie in [0, {logits.shape[1] - 1}], got range [{int(yt.min())}, {int(yt.max())}]"
        )
    per_record = F.cross_entropy(logits.double(), yt, reduction="none")
    probs = torch.softmax(logits.double(), dim=1)
    pred = logits.argmax(dim=1)
    return EvalResult(
        loss=float(per_record.mean()),
        accuracy=float((pred == yt).double().mean()),
        predictions=pred.numpy().astype(np.int64),
        per_record_loss=per_record.numpy(),
        probabilities=probs.numpy(),
    )


def predict_proba(
    model: nn.Module, x: np.ndarray | torch.Tensor, batch_size: int = 1024
) -> np.ndarray:
    """``(n, n_classes)`` softmax probabilities of ``model`` on ``x``."""
    xt = _as_float_tensor(x)
    if len(xt) == 0:
        return np.zeros((0, getattr(model, "n_classes", 0)))
    return torch.softmax(_logits(model, xt, batch_size).double(), dim=1).numpy()


def embed(model: nn.Module, x: np.ndarray | torch.Tensor, batch_size: int = 1024) -> np.ndarray:
    """``(n, embedding_dim)`` float32 representation the head reads (used by disparity metrics).

    Works on backbones, adapter models, and Opacus-wrapped models.
    """
    inner = model
    while not hasattr(inner, "embed") and hasattr(inner, "_module"):
        inner = inner._module
    if not hasattr(inner, "embed"):
        raise TypeError(f"{type(model).__name__} has no .embed(x); build it with fedcascade.models")
    xt = _as_float_tensor(x)
    if len(xt) == 0:
        return np.zeros((0, getattr(inner, "embedding_dim", 0)), dtype=np.float32)
    with _EvalMode(inner), torch.no_grad():
        out = torch.cat(
            [inner.embed(xt[i : i + batch_size]) for i in range(0, len(xt), batch_size)]
        )
    return out.numpy().astype(np.float32)
