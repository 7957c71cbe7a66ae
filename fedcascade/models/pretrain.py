"""Central, non-private backbone pretraining on the public pool, cached in-process and on disk.

The cache key is a hash of everything that determines the weights: the model config (without the
cache location), the record shape, the number of classes, a fingerprint of the public data and the
seed. Files are written atomically (temporary file + ``os.replace``), so concurrent workers that
pretrain the same backbone at once never read a half-written file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedcascade.configtools import to_dict
from fedcascade.errors import DataError
from fedcascade.models.backbones import Backbone, build_backbone
from fedcascade.models.config import ModelConfig, PretrainConfig

__all__ = [
    "get_backbone",
    "pretrain_backbone",
    "backbone_cache_key",
    "backbone_cache_dir",
    "data_fingerprint",
    "clear_backbone_cache",
    "CACHE_ENV",
]

CACHE_ENV = "FEDCASCADE_CACHE"
# Bump when the architecture or the pretraining procedure changes, to invalidate old files.
_FORMAT_VERSION = 2  # 2: pretraining on one thread (deterministic across processes)

_BACKBONES: dict[str, Backbone] = {}


def data_fingerprint(x: np.ndarray | None, y: np.ndarray | None) -> str:
    """SHA-256 of the public pool's values, shapes and dtypes (``"none"`` without data)."""
    if x is None:
        return "none"
    h = hashlib.sha256()
    for arr in (x, y):
        a = np.ascontiguousarray(np.asarray(arr))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def backbone_cache_key(
    cfg: ModelConfig,
    input_shape: tuple[int, ...],
    n_classes: int,
    public_x: np.ndarray | None,
    public_y: np.ndarray | None,
    seed: int,
) -> str:
    """Hex key naming the backbone these inputs produce (LoRA settings do not enter it)."""
    model = to_dict(cfg)
    for k in ("lora_rank", "lora_alpha", "lora_dropout"):
        model.pop(k, None)
    pre = model.get("pretrain", {})
    pre.pop("cache_dir", None)
    pre.pop("cache", None)
    if not cfg.pretrain.enabled:
        model["pretrain"] = {"enabled": False}
    payload = {
        "v": _FORMAT_VERSION,
        "model": model,
        "input_shape": [int(d) for d in input_shape],
        "n_classes": int(n_classes),
        "data": data_fingerprint(public_x, public_y) if cfg.pretrain.enabled else "none",
        "seed": int(seed),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def backbone_cache_dir(pcfg: PretrainConfig) -> Path:
    """Where pretrained backbones are stored.

    ``$FEDCASCADE_CACHE/backbones`` if that variable is set, else ``pretrain.cache_dir``, else
    ``~/.cache/fedcascade/backbones``.
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser() / "backbones"
    if pcfg.cache_dir:
        return Path(pcfg.cache_dir).expanduser()
    return Path.home() / ".cache" / "fedcascade" / "backbones"


def _check_public(
    public_x: np.ndarray | None,
    public_y: np.ndarray | None,
    input_shape: tuple[int, ...],
    n_classes: int,
) -> tuple[np.ndarray, np.ndarray]:
    if public_x is None or public_y is None or len(public_x) == 0:
        raise DataError(
            "public pretraining pool",
            None if public_x is None else f"{len(public_x)} records",
            "a non-empty (public_x, public_y) pool, or model.pretrain.enabled = false",
        )
    x = np.asarray(public_x, dtype=np.float32)
    y = np.asarray(public_y).reshape(-1)
    if len(x) != len(y):
        raise DataError(
            "public pretraining pool", f"{len(x)} records, {len(y)} labels", "equal counts"
        )
    if int(np.prod(x.shape[1:])) != int(np.prod(input_shape)):
        raise DataError(
            "public_x record shape", tuple(x.shape[1:]), f"records of shape {tuple(input_shape)}"
        )
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= n_classes:
        raise DataError(
            "public_y labels",
            f"{y.dtype} in [{y.min()}, {y.max()}]",
            f"integers in [0, {n_classes - 1}]",
        )
    return x, y.astype(np.int64)


def pretrain_backbone(
    model: Backbone, pcfg: PretrainConfig, x: np.ndarray, y: np.ndarray, seed: int
) -> list[float]:
    """Train all of ``model`` in place with SGD (momentum 0.9) on ``(x, y)``.

    Returns
    -------
    list of float
        Mean training loss of each epoch (for logs and tests).
    """
    xt = torch.as_tensor(x, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.long)
    opt = torch.optim.SGD(
        model.parameters(), lr=pcfg.lr, momentum=0.9, weight_decay=pcfg.weight_decay
    )
    gen = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    # One intra-op thread: CPU kernels reduce in a thread-count-dependent order, and over many
    # epochs those rounding differences grew to 0.075 in the weights, so the same cache key
    # gave different backbones in processes with different thread settings.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _epochs(model, pcfg, xt, yt, opt, gen, losses)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return losses


def _epochs(model, pcfg, xt, yt, opt, gen, losses) -> None:  # noqa: ANN001 - private helper
    for _ in range(pcfg.epochs):
        order = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for i in range(0, len(xt), pcfg.batch_size):
            idx = order[i : i + pcfg.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / len(xt))


def _load(path: Path, model: Backbone) -> bool:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        return True
    except (FileNotFoundError, NotADirectoryError):
        return False
    except Exception as e:  # corrupt or stale file: retrain and overwrite it
        warnings.warn(f"ignoring unreadable cached backbone {path}: {e}", stacklevel=3)
        return False


def _save_atomic(path: Path, model: Backbone) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(model.state_dict(), f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:  # a read-only cache must not stop an experiment
        warnings.warn(f"could not cache the pretrained backbone at {path}: {e}", stacklevel=3)


def get_backbone(
    cfg: ModelConfig,
    input_shape: tuple[int, ...],
    n_classes: int,
    public_x: np.ndarray | None,
    public_y: np.ndarray | None,
    seed: int,
) -> Backbone:
    """The shared, frozen backbone: built, pretrained (or loaded from cache) once per process.

    Parameters
    ----------
    cfg : ModelConfig
        Architecture and ``cfg.pretrain`` settings.
    input_shape : tuple of int
        Shape of one record.
    n_classes : int
        Number of classes.
    public_x, public_y : np.ndarray or None
        The public pretraining pool (ignored, and may be ``None``, when pretraining is off).
    seed : int
        Seed of the initialisation and of the pretraining shuffles.

    Returns
    -------
    Backbone
        Frozen (no parameter requires grad), eval mode, tagged with ``fedcascade_key``. The same
        instance is returned for equal inputs; do not modify it (use
        :func:`~fedcascade.models.adapters.adapter_model`).

    Raises
    ------
    DataError
        If pretraining is on and the public pool is missing or does not fit the data shape.
    """
    input_shape = tuple(int(d) for d in input_shape)
    pcfg = cfg.pretrain
    if pcfg.enabled:
        x, y = _check_public(public_x, public_y, input_shape, n_classes)
    key = backbone_cache_key(cfg, input_shape, n_classes, public_x, public_y, seed)
    hit = _BACKBONES.get(key)
    if hit is not None:
        return hit
    model = build_backbone(cfg, input_shape, n_classes, seed)
    if pcfg.enabled:
        path = backbone_cache_dir(pcfg) / f"{key}.pt"
        if not (pcfg.cache and _load(path, model)):
            pretrain_backbone(model, pcfg, x, y, seed)
            if pcfg.cache:
                _save_atomic(path, model)
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    model.fedcascade_key = key  # type: ignore[assignment]  # read by cached_adapter_model
    _BACKBONES[key] = model
    return model


def clear_backbone_cache() -> None:
    """Forget the in-process backbones (the disk cache is left alone)."""
    _BACKBONES.clear()
