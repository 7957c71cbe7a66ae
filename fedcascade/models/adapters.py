"""LoRA adapters (peft) at a given rank on a frozen backbone, and their flat array state.

An adapter model is a copy of the backbone whose Linear / Conv2d layers inside ``features`` carry
a peft LoRA branch of rank ``r`` (``W x + (alpha / r) B A x``), plus a trainable head (initialised
from the backbone's head). Everything else is frozen. The trainable tensors travel between server
and clients as a flat, ordered ``dict[str, np.ndarray]`` (see :func:`trainable_arrays`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from fedcascade.models.config import ModelConfig

__all__ = [
    "adapter_model",
    "cached_adapter_model",
    "clear_adapter_cache",
    "release_training_state",
    "trainable_arrays",
    "load_trainable_arrays",
    "initial_adapter_arrays",
    "lora_pairs",
    "lora_scaling",
    "lora_delta",
    "model_rank",
    "unwrap",
]

ADAPTER_NAME = "default"
_A_SUFFIX = f".lora_A.{ADAPTER_NAME}.weight"
_B_SUFFIX = f".lora_B.{ADAPTER_NAME}.weight"


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside Opacus wrappers (``GradSampleModule._module``), or ``model`` itself."""
    while hasattr(model, "_module") and isinstance(model._module, nn.Module):
        model = model._module
    return model


def lora_scaling(cfg: ModelConfig, rank: int) -> float:
    """Factor peft applies to ``B @ A`` at ``rank``: ``lora_alpha / rank``."""
    return float(cfg.lora_alpha) / int(rank)


def _target_layers(backbone: nn.Module) -> list[str]:
    # LoRA on every Linear / Conv2d of the representation; the head is trained in full instead.
    features = getattr(backbone, "features", backbone)
    prefix = "features." if features is not backbone else ""
    return [
        prefix + name
        for name, m in features.named_modules()
        if name and isinstance(m, (nn.Linear, nn.Conv2d))
    ]


def _check_rank(rank: int) -> int:
    if isinstance(rank, bool) or int(rank) != rank or rank < 1:
        raise ValueError(f"LoRA rank must be an integer >= 1, got {rank!r}")
    return int(rank)


def adapter_model(backbone: nn.Module, cfg: ModelConfig, rank: int, seed: int) -> nn.Module:
    """A LoRA-adapted copy of ``backbone`` at ``rank`` with a trainable head.

    Parameters
    ----------
    backbone : nn.Module
        A :class:`~fedcascade.models.backbones.Backbone`; it is not modified.
    cfg : ModelConfig
        Supplies ``lora_alpha`` and ``lora_dropout``.
    rank : int
        LoRA rank (>= 1) of every adapted layer.
    seed : int
        Seed of the LoRA ``A`` initialisation (``B`` starts at zero, so the initial adapter model
        computes exactly what the backbone computes). The global torch RNG is left untouched.

    Returns
    -------
    nn.Module
        Same class as ``backbone`` (``.embed`` and ``forward`` work), in eval mode, whose
        trainable parameters are exactly the LoRA ``A``/``B`` matrices and the head.
    """
    # peft pulls in transformers (seconds of import time): import it only when a model is built,
    # so reading configs and the CLI stay fast.
    from peft import LoraConfig, inject_adapter_in_model

    rank = _check_rank(rank)
    model = copy.deepcopy(unwrap(backbone))
    for p in model.parameters():
        p.requires_grad_(False)
    lora = LoraConfig(
        r=rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=_target_layers(model),
        bias="none",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = inject_adapter_in_model(lora, model, adapter_name=ADAPTER_NAME)
    for p in model.head.parameters():
        p.requires_grad_(True)
    model.lora_rank = rank  # type: ignore[assignment]  # read by model_rank()
    model.eval()
    return model


def model_rank(model: nn.Module) -> int:
    """LoRA rank of a model made by :func:`adapter_model`."""
    return int(unwrap(model).lora_rank)


# Per-process reuse: one adapter model per (backbone, lora settings, rank). The backbone itself is
# stored in the value so that an id()-based key cannot be recycled while the entry lives.
_ADAPTER_CACHE: dict[tuple, tuple[nn.Module, nn.Module]] = {}


def _backbone_key(backbone: nn.Module) -> object:
    return getattr(backbone, "fedcascade_key", None) or ("id", id(backbone))


def cached_adapter_model(
    backbone: nn.Module, cfg: ModelConfig, rank: int, seed: int = 0
) -> nn.Module:
    """Like :func:`adapter_model`, but returns the same instance for the same backbone and rank.

    The returned model's trainable tensors hold whatever the previous user left in them: load the
    round's arrays with :func:`load_trainable_arrays` before use. Leftover gradients and Opacus
    hooks / per-sample gradients are cleared here (:func:`release_training_state`). ``seed`` only
    matters when the instance is first built.

    Parameters
    ----------
    backbone : nn.Module
        Backbone (from :func:`~fedcascade.models.pretrain.get_backbone`, which tags it with a
        stable ``fedcascade_key``; otherwise its identity is used).
    cfg : ModelConfig
        Supplies ``lora_alpha`` and ``lora_dropout``.
    rank : int
        LoRA rank.
    seed : int, optional
        Seed used when the instance is first built.
    """
    rank = _check_rank(rank)
    key = (_backbone_key(backbone), cfg.lora_alpha, cfg.lora_dropout, rank)
    hit = _ADAPTER_CACHE.get(key)
    if hit is None:
        hit = (adapter_model(backbone, cfg, rank, seed), backbone)
        _ADAPTER_CACHE[key] = hit
    model = hit[0]
    release_training_state(model)
    model.eval()
    return model


# Attributes Opacus attaches to parameters / modules while a GradSampleModule wraps them.
_OPACUS_PARAM_ATTRS = (
    "grad_sample",
    "summed_grad",
    "_forward_counter",
    "_current_grad_sample",
    "_norm_sample",
)
_OPACUS_MODULE_ATTRS = ("activations", "max_batch_len", "ft_compute_sample_grad")


def release_training_state(model: nn.Module) -> None:
    """Clear gradients and anything Opacus left on ``model`` so it can be wrapped again.

    A trainer should unwrap with ``GradSampleModule._close()``; this is the safety net for a
    cached instance whose previous user did not (Opacus refuses to hook a model twice).
    """
    model = unwrap(model)
    handles = getattr(model, "autograd_grad_sample_hooks", None)
    if handles is not None:
        while handles:
            handles.pop().remove()
        delattr(model, "autograd_grad_sample_hooks")
    for p in model.parameters():
        if not p.requires_grad:  # frozen tensors never get gradients or Opacus state
            continue
        p.grad = None
        for attr in _OPACUS_PARAM_ATTRS:
            if hasattr(p, attr):
                delattr(p, attr)
    for m in model.modules():
        for attr in _OPACUS_MODULE_ATTRS:
            if attr in m.__dict__:
                delattr(m, attr)


def clear_adapter_cache() -> None:
    """Forget every cached adapter model (for tests and long-lived workers)."""
    _ADAPTER_CACHE.clear()


def _trainable_named(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in unwrap(model).named_parameters() if p.requires_grad]


def trainable_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    """The trainable tensors of ``model`` as an ordered ``{name: float32 array}`` (copies).

    Only LoRA matrices and the head appear; the frozen backbone never leaves the process. Names
    are those of the unwrapped model, so an Opacus-wrapped model gives the same keys.
    """
    return {
        name: p.detach().cpu().numpy().astype(np.float32, copy=True)
        for name, p in _trainable_named(model)
    }


def load_trainable_arrays(model: nn.Module, arrays: Mapping[str, np.ndarray]) -> None:
    """Copy ``arrays`` into the trainable tensors of ``model`` in place.

    In-place copies keep parameter identity, so an optimizer or Opacus wrapper built on ``model``
    stays valid.

    Raises
    ------
    ValueError
        If a name is missing or unexpected, or a shape differs (usually: arrays of another rank),
        listing what was expected.
    """
    params = dict(_trainable_named(model))
    missing = [n for n in params if n not in arrays]
    extra = [n for n in arrays if n not in params]
    if missing or extra:
        raise ValueError(
            "adapter arrays do not match the model: "
            f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{' ...' if len(extra) > 5 else ''}; "
            f"expected exactly the {len(params)} trainable tensors {list(params)[:5]}..."
        )
    for name, p in params.items():
        value = np.asarray(arrays[name])
        if tuple(value.shape) != tuple(p.shape):
            hint = ""
            if ".lora_" in name:
                hint = f" (the model has LoRA rank {model_rank(model)}; were the arrays made at another rank?)"
            raise ValueError(
                f"adapter array '{name}' has shape {tuple(value.shape)}, the model expects "
                f"{tuple(p.shape)}{hint}"
            )
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(torch.as_tensor(np.asarray(arrays[name]), dtype=p.dtype))


def initial_adapter_arrays(
    cfg: ModelConfig,
    input_shape: tuple[int, ...],
    n_classes: int,
    rank: int,
    seed: int,
    backbone: nn.Module,
) -> dict[str, np.ndarray]:
    """Initial trainable arrays of a cluster's adapter model, deterministic given ``seed``.

    LoRA ``A`` is random (seeded), ``B`` is zero and the head copies the backbone's head, so the
    initial model predicts exactly what the (pretrained) backbone predicts.

    Parameters
    ----------
    cfg : ModelConfig
        Model config.
    input_shape, n_classes
        Data shape and number of classes; checked against ``backbone``.
    rank : int
        LoRA rank.
    seed : int
        Seed of the ``A`` initialisation.
    backbone : nn.Module
        The shared backbone (from :func:`~fedcascade.models.pretrain.get_backbone`).
    """
    inner = unwrap(backbone)
    shape = getattr(inner, "input_shape", None)
    if shape is not None and tuple(shape) != tuple(input_shape):
        raise ValueError(
            f"backbone input_shape {tuple(shape)} != data input_shape {tuple(input_shape)}"
        )
    classes = getattr(inner, "n_classes", None)
    if classes is not None and classes != n_classes:
        raise ValueError(f"backbone has {classes} classes, the data has {n_classes}")
    return trainable_arrays(adapter_model(backbone, cfg, rank, seed))


def lora_pairs(arrays: Mapping[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Group LoRA matrices by adapted layer: ``{layer: (A, B)}``, in array order.

    ``A`` has shape ``(r, in)`` for Linear or ``(r, in, kh, kw)`` for Conv2d; ``B`` has shape
    ``(out, r)`` or ``(out, r, 1, 1)``. Non-LoRA entries (the head) are ignored. The dense update
    of a layer is :func:`lora_delta` ``(A, B, lora_scaling(cfg, r))``.
    """
    a_mats: dict[str, np.ndarray] = {}
    b_mats: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        if name.endswith(_A_SUFFIX):
            a_mats[name[: -len(_A_SUFFIX)]] = np.asarray(value)
        elif name.endswith(_B_SUFFIX):
            b_mats[name[: -len(_B_SUFFIX)]] = np.asarray(value)
    if set(a_mats) != set(b_mats):
        raise ValueError(
            f"LoRA arrays are unpaired: A without B for {sorted(set(a_mats) - set(b_mats))}, "
            f"B without A for {sorted(set(b_mats) - set(a_mats))}"
        )
    return {layer: (a_mats[layer], b_mats[layer]) for layer in a_mats}


def lora_delta(a: np.ndarray, b: np.ndarray, scaling: float) -> np.ndarray:
    """Dense weight update ``scaling * B @ A`` in the layer's weight shape.

    Linear: ``(out, in)``. Conv2d: ``(out, in, kh, kw)`` (peft's conv ``B`` is 1x1, so the product
    is taken over the flattened ``A``).
    """
    r = a.shape[0]
    dense = b.reshape(b.shape[0], r) @ a.reshape(r, -1)
    return (scaling * dense).reshape((b.shape[0],) + a.shape[1:])


def layer_name_of(array_name: str) -> str | None:
    """Adapted layer of a LoRA array name, or ``None`` for a head tensor."""
    m = re.match(r"(.*)\.lora_[AB]\." + ADAPTER_NAME + r"\.weight$", array_name)
    return m.group(1) if m else None
