"""Local training of one community: DP-SGD (Opacus, or an equivalent fast path) or plain SGD.

DP-SGD here is the textbook algorithm (Abadi et al. 2016):

* Poisson sampling: each record joins each step's batch independently with probability ``q``
  (:func:`poisson_batches`; empty batches still take a noise-only step, as the accountant
  assumes);
* each example's gradient clipped to ``max_grad_norm`` (factor ``min(1, C / (norm + 1e-6))``),
  summed, ``N(0, (sigma C)^2)`` noise added, divided by the *expected* batch size ``q n``, and an
  SGD step taken.

Two engines compute it, with identical results for the same seed (tested):

``"opacus"``
    Opacus' ``GradSampleHooks`` (per-sample gradients of any layer Opacus supports: Linear,
    Conv, norms, embeddings...) and ``DPOptimizer`` over ``torch.optim.SGD``.
``"ghost"``
    :class:`fedcascade.privacy.ghost.LinearDPStep`: for models whose trainable layers are all
    ``nn.Linear`` (LoRA A/B and a head), per-example norms from ``||g_i|| ||a_i||`` and the
    clipped sum as one matrix product, in a single backward pass. ``"auto"`` (default) uses it
    when it applies; it removes most of the DP overhead (see ``benchmarks/bench_privacy.py``).

Hooks are attached for the call only and removed afterwards with every attribute Opacus adds,
so the caller's model stays a plain ``nn.Module``. Attaching costs ~0.3 ms, far below one
round, so nothing is cached across rounds (a cached wrapper would keep hooks on a model the
caller also evaluates and aggregates).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from opacus.grad_sample.grad_sample_module import GradSampleHooks
from opacus.optimizers import DPOptimizer
from torch import Tensor, nn

from fedcascade.privacy.config import DPPlan
from fedcascade.privacy.ghost import LinearDPStep, ghost_eligible
from fedcascade.privacy.ledger import PrivacyLedger

__all__ = ["TrainResult", "train_dp", "poisson_batches"]

LossFn = Callable[[Tensor, Tensor], Tensor]

# DPOptimizer needs a number for the clipping norm; "no clipping" = a norm no gradient reaches.
# Only used with noise 0 (DPPlan enforces it), so the noise std 0 * this stays 0.
_NO_CLIP = 1e30


@dataclass
class TrainResult:
    """What one local training call did.

    Attributes
    ----------
    loss : float
        Mean training loss over the examples processed. Computed from raw private data and
        NOT privatized: do not send it to the server in a private run unless it is accounted.
    steps : int
        Optimizer steps taken.
    n_examples : int
        Training records of the community (``len(x)``; public, the FedAvg weight).
    seconds : float
        Wall time of the call.
    examples_processed : int
        Sum of the batch sizes over all steps.
    private : bool
        True if the steps were clipped and noised (a DP plan with noise > 0).
    """

    loss: float
    steps: int
    n_examples: int
    seconds: float
    examples_processed: int = 0
    private: bool = False


def _seeds(seed: int) -> tuple[int, int, int]:
    """Independent seeds for batch sampling, DP noise and the model's own randomness (dropout)."""
    a, b, c = np.random.SeedSequence(int(seed)).generate_state(3)
    return int(a), int(b), int(c)


def poisson_batches(n: int, sample_rate: float, steps: int, seed: int) -> list[Tensor]:
    """The record indices of each step's Poisson batch, as :func:`train_dp` draws them.

    Parameters
    ----------
    n : int
        Number of records.
    sample_rate : float
        Inclusion probability ``q`` in (0, 1].
    steps : int
        Number of batches.
    seed : int
        The ``seed`` given to :func:`train_dp`.

    Returns
    -------
    list of torch.Tensor
        ``steps`` int64 index tensors (possibly empty).
    """
    if sample_rate >= 1.0:
        return [torch.arange(n) for _ in range(steps)]
    gen = torch.Generator().manual_seed(_seeds(seed)[0])
    return [
        torch.nonzero(torch.rand(n, generator=gen) < sample_rate).flatten() for _ in range(steps)
    ]


@contextmanager
def _training_mode(model: nn.Module) -> Iterator[None]:
    """``model.train()``, except frozen normalisation layers, which stay in eval mode.

    A frozen BatchNorm in train mode would update its running statistics from the private
    batch: a change to the "frozen" backbone, and an un-noised use of private data.
    """
    before = {m: m.training for m in model.modules()}
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and not any(
            p.requires_grad for p in m.parameters(recurse=False)
        ):
            m.eval()
    try:
        yield
    finally:
        for m, flag in before.items():
            m.training = flag


@contextmanager
def _per_sample_gradients(model: nn.Module) -> Iterator[None]:
    """Attach Opacus' per-sample-gradient hooks to ``model`` for the duration of the block."""
    for name, m in model.named_modules():
        if any(p.requires_grad for p in m.parameters(recurse=False)) and any(
            True for _ in m.buffers(recurse=False)
        ):
            raise ValueError(
                f"layer '{name}' ({type(m).__name__}) is trainable and has buffers (e.g. "
                "BatchNorm statistics): DP-SGD needs per-sample gradients, which such layers "
                "mix across samples. Freeze it, or use GroupNorm/LayerNorm instead."
            )
    hooks = GradSampleHooks(model, batch_first=True, loss_reduction="mean", strict=False)
    try:
        with warnings.catch_warnings():
            # The first trainable layer sees inputs without grad; its output grad is all Opacus needs.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            yield
    finally:
        hooks.cleanup()  # removes hooks and grad_sample/_forward_counter/... attributes
        for p in model.parameters():
            if hasattr(p, "summed_grad"):  # added by DPOptimizer
                del p.summed_grad
        for m in model.modules():
            for attr in ("activations", "max_batch_len"):
                if hasattr(m, attr):
                    delattr(m, attr)


def _check_inputs(model: nn.Module, x: Tensor, y: Tensor, lr: float) -> list[nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(
            "the model has no trainable parameters (requires_grad=True): nothing to train"
        )
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} records vs {len(y)} labels")
    if len(x) == 0:
        raise ValueError("no training records (len(x) == 0)")
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    return params


def train_dp(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    plan: DPPlan | None,
    lr: float,
    seed: int,
    *,
    loss_fn: LossFn = F.cross_entropy,
    non_private_batch_size: int = 32,
    ledger: PrivacyLedger | None = None,
    engine: Literal["auto", "ghost", "opacus"] = "auto",
) -> TrainResult:
    """Train the trainable parameters of ``model`` in place, with DP-SGD or plain SGD.

    Parameters
    ----------
    model : nn.Module
        Any module; only parameters with ``requires_grad=True`` change (frozen ones stay
        bit-for-bit identical). Left a plain module, in the train/eval mode it came in.
    x, y : torch.Tensor
        The community's training inputs (first dimension = records) and targets.
    plan : DPPlan or None
        ``None``: one epoch of plain mini-batch SGD (shuffled, batches of
        ``non_private_batch_size``, mean loss). Otherwise exactly ``plan.steps`` Poisson-sampled
        steps, per-sample clipping at ``plan.max_grad_norm`` (none if ``None``), Gaussian noise
        ``plan.noise_multiplier * max_grad_norm``, and the sum divided by the expected batch
        size ``q n``.
    lr : float
        SGD learning rate.
    seed : int
        Makes batches, noise and dropout deterministic; the global torch RNG is left untouched.
    loss_fn : callable
        ``loss_fn(outputs, targets)`` returning the MEAN loss over the batch (Opacus rescales
        per-sample gradients from it).
    non_private_batch_size : int
        Batch size of the plain-SGD path.
    ledger : PrivacyLedger, optional
        If given, ``ledger.record(plan)`` runs first; a refusal raises
        :class:`~fedcascade.errors.PrivacyBudgetExceeded` before any training.
    engine : {"auto", "ghost", "opacus"}
        How per-example gradients are clipped. ``"opacus"``: Opacus' ``GradSampleHooks`` +
        ``DPOptimizer`` (any layer Opacus supports). ``"ghost"``: the one-pass equivalent of
        :mod:`fedcascade.privacy.ghost`, several times faster, for models whose trainable
        layers are all ``nn.Linear``. ``"auto"`` picks ghost when it applies. Both give the
        same result for the same seed.

    Returns
    -------
    TrainResult
    """
    t0 = time.perf_counter()
    params = _check_inputs(model, x, y, lr)
    if engine not in ("auto", "ghost", "opacus"):
        raise ValueError(f"engine must be 'auto', 'ghost' or 'opacus', got {engine!r}")
    use_ghost = engine == "ghost" or (engine == "auto" and ghost_eligible(model))
    if engine == "ghost" and not ghost_eligible(model):
        raise ValueError(
            "engine='ghost' needs every trainable parameter to be the weight/bias of one "
            "nn.Linear; use engine='opacus' (or 'auto') for this model"
        )
    if ledger is not None and plan is not None:
        ledger.record(plan)  # refuse BEFORE touching the model
    sample_seed, noise_seed, model_seed = _seeds(seed)
    with torch.random.fork_rng(devices=[]), _training_mode(model):
        # CPU generator only: torch.manual_seed would also seed (lazily) every accelerator,
        # which costs more than a short training round; fork_rng restores it afterwards anyway
        torch.default_generator.manual_seed(model_seed)
        if plan is None:
            loss_sum, seen, steps = _train_plain(
                model, x, y, params, lr, seed, loss_fn, non_private_batch_size
            )
        else:
            train = _train_ghost if use_ghost else _train_dpsgd
            loss_sum, seen, steps = train(model, x, y, params, plan, lr, seed, noise_seed, loss_fn)
    for p in params:
        p.grad = None
    return TrainResult(
        loss=loss_sum / seen if seen else float("nan"),
        steps=steps,
        n_examples=len(x),
        seconds=time.perf_counter() - t0,
        examples_processed=seen,
        private=plan is not None and plan.private,
    )


def _train_plain(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    params: list[nn.Parameter],
    lr: float,
    seed: int,
    loss_fn: LossFn,
    batch_size: int,
) -> tuple[float, int, int]:
    n = len(x)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(_seeds(seed)[0]))
    opt = torch.optim.SGD(params, lr=lr)
    loss_sum, steps = 0.0, 0
    for start in range(0, n, max(1, batch_size)):
        idx = order[start : start + batch_size]
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        loss_sum += float(loss.detach()) * len(idx)
        steps += 1
    return loss_sum, n, steps


def _train_dpsgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    params: list[nn.Parameter],
    plan: DPPlan,
    lr: float,
    seed: int,
    noise_seed: int,
    loss_fn: LossFn,
) -> tuple[float, int, int]:
    n = len(x)
    batches = poisson_batches(n, plan.sample_rate, plan.steps, seed)
    loss_sum, seen = 0.0, 0
    with _per_sample_gradients(model):
        opt = DPOptimizer(
            torch.optim.SGD(params, lr=lr),
            noise_multiplier=plan.noise_multiplier,
            max_grad_norm=plan.max_grad_norm if plan.max_grad_norm is not None else _NO_CLIP,
            expected_batch_size=plan.sample_rate * n,  # exact q n: the unbiased DP-SGD average
            loss_reduction="mean",
            generator=torch.Generator().manual_seed(noise_seed),
        )
        for idx in batches:
            opt.zero_grad(set_to_none=True)
            if len(idx) == 0:
                # Empty Poisson batch: no gradient, but the step (and its noise) must happen.
                for p in params:
                    p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
            else:
                loss = loss_fn(model(x[idx]), y[idx])
                loss.backward()
                loss_sum += float(loss.detach()) * len(idx)
                seen += len(idx)
            opt.step()
        opt.zero_grad(set_to_none=True)
    return loss_sum, seen, len(batches)


def _train_ghost(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    params: list[nn.Parameter],
    plan: DPPlan,
    lr: float,
    seed: int,
    noise_seed: int,
    loss_fn: LossFn,
) -> tuple[float, int, int]:
    batches = poisson_batches(len(x), plan.sample_rate, plan.steps, seed)
    stepper = LinearDPStep(
        model,
        params,
        lr=lr,
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=plan.max_grad_norm,
        expected_batch_size=plan.sample_rate * len(x),
        generator=torch.Generator().manual_seed(noise_seed),
    )
    loss_sum, seen = 0.0, 0
    with stepper.attached():
        for idx in batches:
            loss = stepper.step(x[idx], y[idx], loss_fn)
            if len(idx):
                loss_sum += loss * len(idx)
                seen += len(idx)
    return loss_sum, seen, len(batches)
