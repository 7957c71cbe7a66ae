"""One-pass DP-SGD step for models whose trainable layers are all ``nn.Linear`` (LoRA + head).

For a linear layer ``z = W a + b`` on a 2-D input, example ``i``'s gradient is the outer product
``g_i a_i^T`` (``g_i`` = gradient of example i's loss w.r.t. ``z_i``), so

* its norm is ``||g_i|| ||a_i||`` ("ghost" norm, Goodfellow 2015; Li et al. 2022) - no
  per-example gradient tensor is ever built, and
* the clipped sum ``sum_i c_i g_i a_i^T`` is one matrix product ``(c * G)^T A``.

One backward pass (``torch.autograd.grad`` w.r.t. the layer outputs only, so no parameter
gradients are computed) gives every ``g_i``. A layer called on a 3-D input or more than once
per forward falls back to materialising its per-example gradients (still exact).

This computes exactly what Opacus' ``GradSampleHooks`` + ``DPOptimizer`` compute (same clip
factor ``min(1, C / (norm + 1e-6))``, same noise draws from the same generator in the same
parameter order, same division by the expected batch size); ``tests/test_privacy_trainer.py``
checks the two agree. It exists because Opacus' generic hooks cost ~1-2 ms of Python per step,
several times the arithmetic of a small LoRA model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

__all__ = ["ghost_eligible", "LinearDPStep"]


def ghost_eligible(model: nn.Module) -> bool:
    """True if every trainable parameter is the weight or bias of exactly one ``nn.Linear``."""
    owners: dict[int, int] = {}
    for m in model.modules():
        for name, p in m.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if type(m) is not nn.Linear or name not in ("weight", "bias"):
                return False
            owners[id(p)] = owners.get(id(p), 0) + 1
    return bool(owners) and all(v == 1 for v in owners.values())


class LinearDPStep:
    """Clipped, noised SGD steps for a :func:`ghost_eligible` model.

    Parameters
    ----------
    model : nn.Module
    params : list of nn.Parameter
        The trainable parameters, in the order noise is drawn (Opacus' order: as given).
    lr : float
    noise_multiplier : float
    max_grad_norm : float or None
        ``None``: no clipping.
    expected_batch_size : float
        ``q n``; the noisy sum is divided by it.
    generator : torch.Generator
        Source of the noise.
    """

    def __init__(
        self,
        model: nn.Module,
        params: list[nn.Parameter],
        *,
        lr: float,
        noise_multiplier: float,
        max_grad_norm: float | None,
        expected_batch_size: float,
        generator: torch.Generator,
    ) -> None:
        self.model = model
        self.params = params
        self.lr = lr
        self.std = noise_multiplier * (max_grad_norm if max_grad_norm is not None else 0.0)
        self.max_grad_norm = max_grad_norm
        self.expected_batch_size = expected_batch_size
        self.generator = generator
        self.layers = [m for m in model.modules() if type(m) is nn.Linear and _trainable(m)]
        self._records: dict[nn.Linear, list[tuple[Tensor, Tensor]]] = {}
        self._segments: tuple | None = None  # cached by _ghost_sq_norms
        # per layer, looked up once rather than through nn.Module.__getattr__ on every step:
        # (weight trainable, bias trainable, id of weight, id of bias)
        self._wb = {
            m: (
                m.weight.requires_grad,
                _has_trainable_bias(m),
                id(m.weight),
                id(m.bias) if m.bias is not None else None,
            )
            for m in self.layers
        }
        self._noise_specs = [(p, id(p), p.shape, p.device) for p in params]

    @contextmanager
    def attached(self) -> Iterator[LinearDPStep]:
        """Install the forward hooks for the duration of the block."""
        handles = [m.register_forward_hook(self._capture) for m in self.layers]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()
            self._records.clear()

    def _capture(self, module: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> Tensor:
        # Keep the layer's own output and hand the rest of the network a fresh tensor: an
        # in-place op downstream (ReLU(inplace=True)) then cannot change what we differentiate.
        self._records.setdefault(module, []).append((inputs[0].detach(), out))
        return out + 0

    def step(self, x: Tensor, y: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor]) -> float:
        """One DP-SGD step on the batch ``(x, y)`` (may be empty). Returns the batch mean loss."""
        self._records.clear()
        sums: dict[int, Tensor] = {}
        loss_value = float("nan")
        if len(x) > 0:
            loss = loss_fn(self.model(x), y)
            loss_value = float(loss.detach())
            missing = [m for m in self.layers if m not in self._records]
            if missing:
                raise RuntimeError(
                    f"{len(missing)} trainable nn.Linear layer(s) were not called through their "
                    "forward() (e.g. used via F.linear or unused): per-example gradients would be "
                    "wrong. Use train_dp(..., engine='opacus') for this model."
                )
            outs = [out for m in self.layers for _, out in self._records[m]]
            grads = iter(torch.autograd.grad(loss, outs, allow_unused=True))
            per_layer = []
            for m in self.layers:
                uses = []
                for a, out in self._records[m]:
                    g = next(grads)
                    # gradients of the MEAN loss: example i's own gradient is B times these;
                    # _clipped_sums folds the factor B into the clip factors (fewer tensor ops)
                    uses.append((a, torch.zeros_like(out) if g is None else g))
                per_layer.append((m, uses))
            self._records.clear()
            sums = self._clipped_sums(per_layer, len(x))
        with torch.no_grad():
            params, totals = [], []
            for p, pid, shape, device in self._noise_specs:
                total = sums.get(pid)
                if self.std > 0:  # same call as Opacus' _generate_noise: identical draws
                    noise = torch.normal(
                        mean=0,
                        std=self.std,
                        size=shape,
                        device=device,
                        generator=self.generator,
                    )
                    total = noise if total is None else total.add_(noise)
                if total is not None:
                    params.append(p)
                    totals.append(total)
            if params:  # one fused update: p -= lr * total / (q n)
                torch._foreach_add_(params, totals, alpha=-self.lr / self.expected_batch_size)
        return loss_value

    def _clipped_sums(
        self, per_layer: list[tuple[nn.Linear, list[tuple[Tensor, Tensor]]]], batch: int
    ) -> dict[int, Tensor]:
        """Sums over the batch of the clipped per-example gradients, by parameter id.

        ``per_layer`` holds gradients of the batch-MEAN loss; example i's own gradient is
        ``batch`` times its share, so norms are scaled by ``batch`` and the clipped sums use
        the factor ``batch * clip_i`` (the same numbers as scaling every gradient first).
        """
        sq_norm = torch.zeros(batch, dtype=self.params[0].dtype, device=self.params[0].device)
        ghosts = []  # (layer, a, g) for the cheap path
        dense = []  # (layer, per-example weight grads, per-example bias grads)
        for m, uses in per_layer:
            if len(uses) == 1 and uses[0][0].dim() == 2:
                a, g = uses[0]
                ghosts.append((m, a, g))
            else:
                gw = sum(torch.einsum("n...o,n...i->noi", g, a) for a, g in uses)
                gb = sum(g.reshape(batch, -1, g.shape[-1]).sum(1) for _, g in uses)
                if m.weight.requires_grad:
                    sq_norm += gw.reshape(batch, -1).pow(2).sum(1)
                if m.bias is not None and m.bias.requires_grad:
                    sq_norm += gb.pow(2).sum(1)
                dense.append((m, gw, gb))
        if ghosts:
            sq_norm += self._ghost_sq_norms(ghosts)
        if self.max_grad_norm is None:
            factor = torch.full_like(sq_norm, float(batch))
        else:
            norm = sq_norm.sqrt_().mul_(batch)  # the per-example gradient norms
            factor = (self.max_grad_norm / norm.add_(1e-6)).clamp_(max=1.0).mul_(batch)
        sums: dict[int, Tensor] = {}
        if ghosts:
            # one product for every layer's output gradients, then a view per layer
            scaled = torch.cat([g for _, _, g in ghosts], 1).mul_(factor[:, None])
            splits = scaled.split([g.shape[1] for _, _, g in ghosts], 1)
            for (m, a, _), gc in zip(ghosts, splits):
                w_on, b_on, w_id, b_id = self._wb[m]
                if w_on:
                    sums[w_id] = gc.t() @ a
                if b_on:
                    sums[b_id] = gc.sum(0)
        for m, gw, gb in dense:
            if m.weight.requires_grad:
                sums[id(m.weight)] = torch.einsum("n,noi->oi", factor, gw)
            if m.bias is not None and m.bias.requires_grad:
                sums[id(m.bias)] = factor @ gb
        return sums

    def _ghost_sq_norms(self, ghosts: list[tuple[nn.Linear, Tensor, Tensor]]) -> Tensor:
        """Squared per-example gradient norms of the 2-D layers, summed over layers.

        Example i's weight gradient ``g_i a_i^T`` has squared norm ``||a_i||^2 ||g_i||^2`` and its
        bias gradient ``||g_i||^2``. The per-layer squared norms of all layers at once: square
        the concatenated inputs (outputs), then sum each layer's columns with one product by a
        0/1 matrix - a handful of tensor operations per step instead of several per layer.
        """
        a_all = torch.cat([a for _, a, _ in ghosts], 1)
        g_all = torch.cat([g for _, _, g in ghosts], 1)
        key = tuple((a.shape[1], g.shape[1], *self._wb[m][:2]) for m, a, g in ghosts)
        if self._segments is None or self._segments[0] != key:
            self._segments = (key, *_segment_matrices(key, a_all))
        _, seg_a, seg_g, w_mask, b_mask = self._segments
        a_sq = a_all.square() @ seg_a  # (batch, layers): ||a_i||^2 per layer
        g_sq = g_all.square() @ seg_g  # (batch, layers): ||g_i||^2 per layer
        return ((a_sq * w_mask).add_(b_mask) * g_sq).sum(1)


def _has_trainable_bias(m: nn.Linear) -> bool:
    return m.bias is not None and m.bias.requires_grad


def _segment_matrices(
    key: tuple[tuple[int, int, bool, bool], ...], like: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """0/1 matrices summing each layer's input (output) columns, and weight / bias masks."""
    layers = torch.arange(len(key), device=like.device)
    in_dims = torch.tensor([k[0] for k in key], device=like.device)
    out_dims = torch.tensor([k[1] for k in key], device=like.device)
    seg_a = (layers.repeat_interleave(in_dims)[:, None] == layers).to(like.dtype)
    seg_g = (layers.repeat_interleave(out_dims)[:, None] == layers).to(like.dtype)
    w_mask = torch.tensor([float(k[2]) for k in key], dtype=like.dtype, device=like.device)
    b_mask = torch.tensor([float(k[3]) for k in key], dtype=like.dtype, device=like.device)
    return seg_a, seg_g, w_mask, b_mask


def _trainable(m: nn.Module) -> bool:
    return any(p.requires_grad for p in m.parameters(recurse=False))
