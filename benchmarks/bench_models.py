"""Benchmark of the model layer's per-client-call costs.

Measures, for the default MLP (synthetic data, 24 features, 2 classes) and the default CNN
(digits, 1x8x8, 10 classes):

* ``adapter_model`` construction (deepcopy + peft injection) vs ``cached_adapter_model`` reuse;
* ``load_trainable_arrays`` and ``trainable_arrays``;
* one forward+backward of a batch of 64 records, for scale;
* trainable parameter count vs backbone parameter count, per rank;
* ``get_backbone``: pretraining (20 epochs on 2,000 public records) vs disk vs in-process cache.

Run from the repo root: ``PYTHONPATH=. python benchmarks/bench_models.py`` (single thread, ~10 s).
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from fedcascade.models import (
    CACHE_ENV,
    ModelConfig,
    adapter_model,
    build_backbone,
    cached_adapter_model,
    clear_adapter_cache,
    clear_backbone_cache,
    get_backbone,
    load_trainable_arrays,
    trainable_arrays,
)

CASES = {"mlp": ((24,), 2), "cnn": ((1, 8, 8), 10)}


def timed(fn, repeat: int) -> float:
    """Median seconds per call over ``repeat`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def bench_one(cfg: ModelConfig, shape: tuple[int, ...], n_classes: int) -> list[tuple[str, object]]:
    """Rows ``(what, value)`` for one backbone kind."""
    backbone = build_backbone(cfg, shape, n_classes, 0)
    for p in backbone.parameters():
        p.requires_grad_(False)
    rank = cfg.lora_rank
    build_s = timed(lambda: adapter_model(backbone, cfg, rank, 0), 30)
    clear_adapter_cache()
    cached_adapter_model(backbone, cfg, rank)
    reuse_s = timed(lambda: cached_adapter_model(backbone, cfg, rank), 300)
    model = cached_adapter_model(backbone, cfg, rank)
    arrays = trainable_arrays(model)
    load_s = timed(lambda: load_trainable_arrays(model, arrays), 300)
    dump_s = timed(lambda: trainable_arrays(model), 300)
    x = torch.randn(64, *shape)
    y = torch.randint(0, n_classes, (64,))

    def step() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    step_s = timed(step, 100)
    rows: list[tuple[str, object]] = [
        ("adapter_model build (ms)", build_s * 1e3),
        ("cached_adapter_model reuse (ms)", reuse_s * 1e3),
        ("  build / reuse ratio", build_s / reuse_s),
        ("load_trainable_arrays (ms)", load_s * 1e3),
        ("trainable_arrays (ms)", dump_s * 1e3),
        ("fwd+bwd batch 64 (ms)", step_s * 1e3),
    ]
    n_backbone = sum(p.numel() for p in backbone.parameters())
    for r in (1, 2, 4, 8):
        m = adapter_model(backbone, cfg, r, 0)
        n_lora = sum(p.numel() for n, p in m.named_parameters() if p.requires_grad and "lora_" in n)
        n_train = sum(p.numel() for p in m.parameters() if p.requires_grad)
        share = f"{n_train}/{n_backbone} ({100 * n_train / n_backbone:.1f}%, lora {n_lora})"
        rows.append((f"rank {r}: trainable / backbone params", share))
    return rows


def bench_pretrain_cache(cfg: ModelConfig, n_public: int = 2000) -> list[tuple[str, object]]:
    """get_backbone cold (pretrain + write), from disk, and from the in-process cache."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n_public, 24)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ[CACHE_ENV] = tmp
        clear_backbone_cache()
        t = time.perf_counter()
        get_backbone(cfg, (24,), 2, x, y, 0)
        cold = time.perf_counter() - t
        clear_backbone_cache()
        t = time.perf_counter()
        get_backbone(cfg, (24,), 2, x, y, 0)
        disk = time.perf_counter() - t
        hot = timed(lambda: get_backbone(cfg, (24,), 2, x, y, 0), 50)
        del os.environ[CACHE_ENV]
    return [
        (f"get_backbone cold, {n_public} rec (ms)", cold * 1e3),
        ("get_backbone from disk (ms)", disk * 1e3),
        ("get_backbone in-process (ms)", hot * 1e3),
    ]


def main() -> None:
    torch.set_num_threads(1)
    cfg = ModelConfig()
    adapter_model(build_backbone(cfg, (4,), 2, 0), cfg, 1, 0)  # pay the peft import up front
    print(f"{'model':5} {'what':34} {'value':>12}")
    for kind, (shape, n_classes) in CASES.items():
        for what, value in bench_one(cfg, shape, n_classes):
            shown = f"{value:12.3f}" if isinstance(value, float) else f"{value:>12}"
            print(f"{kind:5} {what:34} {shown}")
    for what, value in bench_pretrain_cache(cfg):
        print(f"{'mlp':5} {what:34} {value:12.3f}")


if __name__ == "__main__":
    main()
