"""Robustness per group: accuracy under input Gaussian noise and under an FGSM / PGD attack.

The model is any ``torch.nn.Module`` whose ``forward(x)`` returns logits. It is evaluated in
eval mode (its previous mode is restored afterwards) and its parameters never receive a
gradient: the attack differentiates the loss with respect to the inputs only
(``torch.autograd.grad``), so ``.grad`` of every parameter is left untouched.

* Noise: ``x + sigma * N(0, I)`` for each ``sigma`` in ``scales`` (input units; inputs are
  expected to be standardised, so ``sigma = 0.5`` is half a feature's standard deviation).
* FGSM (Goodfellow et al. 2015): ``x + eps * sign(grad_x CE(f(x), y))``.
* PGD (Madry et al. 2018): ``steps`` signed-gradient steps of size ``step_size`` (default
  ``2.5 eps / steps``), each projected back onto the L-infinity ball of radius ``eps`` around x.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from fedcascade.errors import DataError
from fedcascade.metrics._groups import as_1d, group_index, group_key, group_mean, same_length

__all__ = [
    "predict",
    "noisy_predictions",
    "noise_accuracy",
    "adversarial_predictions",
    "adversarial_accuracy",
]


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _as_tensor(x: Any, field: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if not torch.is_floating_point(t):
        t = t.float()
    if t.ndim < 1:
        raise DataError(field, f"a tensor of shape {tuple(t.shape)}", "one row per record")
    return t


def _batches(n: int, batch_size: int) -> range:
    if batch_size < 1:
        raise DataError("batch_size", batch_size, "a positive integer")
    return range(0, n, batch_size)


def _params_dtype(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    p = next(model.parameters(), None)
    return x.to(dtype=p.dtype, device=p.device) if p is not None else x


def predict(model: torch.nn.Module, inputs: Any, batch_size: int = 1024) -> np.ndarray:
    """Predicted class of each input (eval mode, no gradient)."""
    x = _params_dtype(model, _as_tensor(inputs, "inputs"))
    out = []
    with _eval_mode(model), torch.no_grad():
        for s in _batches(len(x), batch_size):
            out.append(model(x[s : s + batch_size]).argmax(dim=-1).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=int)


def _group_acc(pred: np.ndarray, labels: np.ndarray, inv: np.ndarray, names: np.ndarray) -> dict:
    acc = group_mean(pred == labels, inv, len(names))
    return {group_key(n): float(a) for n, a in zip(names, acc, strict=True)}


def noisy_predictions(
    model: torch.nn.Module,
    inputs: Any,
    scales: Sequence[float] = (0.0, 0.1, 0.25, 0.5, 1.0),
    seed: int = 0,
    batch_size: int = 1024,
) -> np.ndarray:
    """Predictions on ``inputs + scale * N(0, I)`` for each scale: shape ``(len(scales), n)``.

    One noise draw (seeded) is scaled for every ``scale``, so accuracy-versus-noise curves are
    smooth and reproducible.
    """
    x = _params_dtype(model, _as_tensor(inputs, "inputs"))
    if any(not np.isfinite(s) or s < 0 for s in scales):
        raise DataError("scales", list(scales), "finite noise standard deviations >= 0")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
    preds = [predict(model, x + float(scale) * noise, batch_size) for scale in scales]
    return np.stack(preds) if preds else np.zeros((0, len(x)), dtype=int)


def noise_accuracy(
    model: torch.nn.Module,
    inputs: Any,
    labels: Any,
    groups: Any,
    scales: Sequence[float] = (0.0, 0.1, 0.25, 0.5, 1.0),
    seed: int = 0,
    batch_size: int = 1024,
) -> dict[float, dict[Any, float]]:
    """Accuracy of each group with Gaussian noise of each standard deviation added to the inputs.

    Parameters
    ----------
    model : torch.nn.Module
        Returns logits.
    inputs : array-like or torch.Tensor of shape (n, ...)
        Model inputs (standardised).
    labels, groups : array-like of shape (n,)
        True class and group of each record.
    scales : sequence of float
        Noise standard deviations, in input units.
    seed : int
        Seed of the noise.
    batch_size : int
        Records per forward pass.

    Returns
    -------
    dict
        ``{scale: {group: accuracy}}``.
    """
    y = as_1d(labels, "labels")
    names, inv = group_index(groups)
    same_length({"inputs": _as_tensor(inputs, "inputs"), "labels": y, "groups": inv})
    preds = noisy_predictions(model, inputs, scales, seed, batch_size)
    return {float(sc): _group_acc(p, y, inv, names) for sc, p in zip(scales, preds, strict=True)}


def adversarial_predictions(
    model: torch.nn.Module,
    inputs: Any,
    labels: Any,
    eps: float = 0.1,
    steps: int = 1,
    step_size: float | None = None,
    batch_size: int = 1024,
) -> np.ndarray:
    """Predictions on FGSM (``steps=1``) / PGD (``steps>1``) perturbed inputs, shape ``(n,)``.

    See :func:`adversarial_accuracy` for the parameters.
    """
    if not np.isfinite(eps) or eps < 0:
        raise DataError("eps", eps, "a finite perturbation radius >= 0")
    if steps < 1:
        raise DataError("steps", steps, "an integer >= 1 (1 = FGSM)")
    alpha = eps if steps == 1 else (step_size if step_size is not None else 2.5 * eps / steps)
    x = _params_dtype(model, _as_tensor(inputs, "inputs"))
    y_np = as_1d(labels, "labels").astype(np.int64)
    same_length({"inputs": x, "labels": y_np})
    y = torch.as_tensor(y_np, device=x.device)
    preds = []
    with _eval_mode(model):
        for s in _batches(len(x), batch_size):
            xb, yb = x[s : s + batch_size], y[s : s + batch_size]
            adv = xb.clone()
            for _ in range(steps):
                adv.requires_grad_(True)
                # Sum, not mean: the sign is the same and small per-record gradients stay
                # representable.
                loss = torch.nn.functional.cross_entropy(model(adv), yb, reduction="sum")
                (grad,) = torch.autograd.grad(loss, adv)
                with torch.no_grad():
                    adv = adv + alpha * grad.sign()
                    adv = xb + (adv - xb).clamp(-eps, eps)
            with torch.no_grad():
                preds.append(model(adv).argmax(dim=-1).cpu())
    return torch.cat(preds).numpy() if preds else np.zeros(0, dtype=int)


def adversarial_accuracy(
    model: torch.nn.Module,
    inputs: Any,
    labels: Any,
    groups: Any,
    eps: float = 0.1,
    steps: int = 1,
    step_size: float | None = None,
    batch_size: int = 1024,
) -> dict[Any, float]:
    """Accuracy of each group under an L-infinity FGSM (``steps=1``) or PGD (``steps>1``) attack.

    Parameters
    ----------
    model : torch.nn.Module
        Returns logits; left in its original mode with untouched parameter gradients.
    inputs : array-like or torch.Tensor of shape (n, ...)
        Model inputs (standardised; ``eps`` is in input units).
    labels, groups : array-like of shape (n,)
        True class and group of each record.
    eps : float
        Radius of the L-infinity ball.
    steps : int
        1 for FGSM, more for PGD (no random start, so results are deterministic).
    step_size : float, optional
        PGD step; default ``2.5 * eps / steps``.
    batch_size : int
        Records per forward/backward pass.

    Returns
    -------
    dict
        ``{group: accuracy on the perturbed inputs}``.
    """
    y = as_1d(labels, "labels")
    names, inv = group_index(groups)
    same_length({"labels": y, "groups": inv})
    pred = adversarial_predictions(model, inputs, y, eps, steps, step_size, batch_size)
    return _group_acc(pred, y, inv, names)
