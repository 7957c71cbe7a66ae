"""What privacy costs: a DP-SGD round vs a plain SGD round, and per-round accounting.

Run: ``python benchmarks/bench_privacy.py`` (about a minute, one thread). Prints medians and the
ratios the privacy brief asks for:

* training: 500 records, expected batch 64, 20 steps, on a small LoRA-like MLP and on the peft
  adapter models of ``fedcascade.models`` (MLP and CNN). Plain SGD on the same Poisson batches is
  the baseline; "opacus engine" is Opacus' hooks + DPOptimizer attached once per round,
  "ghost engine" the one-pass path used by default for Linear-only adapters, and "PrivacyEngine
  per round" what Flower's Opacus example does every round.
* accounting: the ledger's per-round epsilon (PRV) of a growing history vs a fresh Opacus
  ``PRVAccountant`` per round, and the one-off noise calibration of an R-DPCFL schedule.
"""

from __future__ import annotations

import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedcascade.privacy import (  # noqa: E402
    DPPlan,
    PrivacyLedger,
    accounting,
    calibrate_noise_multiplier,
    planned_schedule,
    poisson_batches,
    train_dp,
)

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
N, BATCH, STEPS, SEED = 500, 64, 20, 0
Q = BATCH / N


def median_ms(fn: Callable[[], object], repeats: int = 7) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


class LoRALinear(nn.Module):
    def __init__(self, d_in: int, d_out: int, rank: int) -> None:
        super().__init__()
        self.base = nn.Linear(d_in, d_out).requires_grad_(False)
        self.lora_A = nn.Linear(d_in, rank, bias=False)
        self.lora_B = nn.Linear(rank, d_out, bias=False)

    def forward(self, x):
        return self.base(x) + self.lora_B(self.lora_A(x))


def toy_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        LoRALinear(32, 128, 4), nn.ReLU(), LoRALinear(128, 128, 4), nn.ReLU(), nn.Linear(128, 10)
    )


def plain_round(model: nn.Module, x, y) -> None:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    model.train()
    for idx in poisson_batches(len(x), Q, STEPS, SEED):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()


def privacy_engine_round(model: nn.Module, x, y) -> None:
    """Flower's Opacus example: a new PrivacyEngine + make_private every round."""
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    engine = PrivacyEngine(accountant="prv")
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH)
    gsm, opt, loader = engine.make_private(
        module=model, optimizer=opt, data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0
    )
    gsm.train()
    for step, (xb, yb) in enumerate(loader):
        if step == STEPS:
            break
        opt.zero_grad()
        F.cross_entropy(gsm(xb), yb).backward()
        opt.step()
    engine.accountant.get_epsilon(1e-5)  # it reports a per-round epsilon
    gsm._close()


def bench_training() -> None:
    g = torch.Generator().manual_seed(0)
    plan = DPPlan(Q, STEPS, 1.0, 1.0)
    rows = [("toy LoRA MLP", toy_model, torch.randn(N, 32, generator=g), 10)]
    try:
        from fedcascade.configtools import build
        from fedcascade.models import ModelConfig, adapter_model, build_backbone

        cfg = build(ModelConfig, None, "model")
        for shape in ((14,), (1, 8, 8)):
            backbone = build_backbone(cfg, shape, 10, seed=0)
            rows.append(
                (
                    f"fedcascade.models {backbone.kind} rank 4",
                    lambda b=backbone: adapter_model(b, cfg, 4, seed=0),
                    torch.randn(N, *shape, generator=g),
                    10,
                )
            )
    except ImportError as err:  # pragma: no cover - models package absent
        print(f"(fedcascade.models unavailable: {err})")
    print(f"\nTraining one round: {N} records, expected batch {BATCH}, {STEPS} steps (median ms)")
    print(
        f"{'model':32s} {'plain':>7s} {'ghost':>7s} {'opacus':>7s} {'PE/round':>8s}   ratios to plain"
    )
    for name, make, xs, classes in rows:
        ys = torch.randint(0, classes, (N,), generator=g)
        m = make()
        t_plain = median_ms(lambda m=m, xs=xs, ys=ys: plain_round(m, xs, ys))
        ghost_ok = _ghost_ok(m)
        t_ghost = (
            median_ms(
                lambda m=m, xs=xs, ys=ys: train_dp(m, xs, ys, plan, 0.05, SEED, engine="ghost")
            )
            if ghost_ok
            else float("nan")
        )
        t_opacus = median_ms(
            lambda m=m, xs=xs, ys=ys: train_dp(m, xs, ys, plan, 0.05, SEED, engine="opacus")
        )
        t_pe = median_ms(lambda m=m, xs=xs, ys=ys: privacy_engine_round(m, xs, ys), repeats=5)
        print(
            f"{name:32s} {t_plain:7.1f} {t_ghost:7.1f} {t_opacus:7.1f} {t_pe:8.1f}   "
            f"ghost {t_ghost / t_plain:.2f}x  opacus {t_opacus / t_plain:.2f}x  "
            f"PrivacyEngine/round {t_pe / t_plain:.2f}x"
        )


def _ghost_ok(model: nn.Module) -> bool:
    from fedcascade.privacy.ghost import ghost_eligible

    return ghost_eligible(model)


def bench_accounting() -> None:
    from opacus.accountants import PRVAccountant

    rounds, delta = 30, 1e-5
    sigma = calibrate_noise_multiplier(3.0, delta, [(Q, STEPS * rounds)])
    plan = DPPlan(Q, STEPS, sigma, 1.0)
    ledger = PrivacyLedger(None, 3.0, delta)
    per_round = []
    for _ in range(rounds):
        t = time.perf_counter()
        ledger.record(plan)  # would_spend + record: one PRV evaluation of the longer history
        ledger.spent()
        per_round.append(time.perf_counter() - t)

    def opacus_at(r: int) -> float:
        acc = PRVAccountant()
        acc.history = [(sigma, Q, STEPS * r)]
        t = time.perf_counter()
        acc.get_epsilon(delta)
        return time.perf_counter() - t

    opx = [opacus_at(r) for r in (1, 10, 30)]
    ours = statistics.median(per_round)
    print(
        f"\nPer-round accounting (PRV, q={Q:.3f}, {STEPS} steps/round, {rounds} rounds, sigma {sigma:.3f})"
    )
    print(
        f"  ledger record+spent: median {1e3 * ours:.1f} ms/round (total {sum(per_round):.2f} s); "
        f"fresh Opacus PRVAccountant: {1e3 * statistics.median(opx):.1f} ms/round "
        f"-> {statistics.median(opx) / ours:.1f}x faster"
    )
    sched = planned_schedule(6400, 32, rounds=200, full_batch_first_round=True)
    accounting._calibrate.cache_clear()
    t = time.perf_counter()
    s = calibrate_noise_multiplier(2.91, 1e-4, sched)
    first = time.perf_counter() - t
    t = time.perf_counter()
    calibrate_noise_multiplier(2.91, 1e-4, sched)
    again = time.perf_counter() - t
    print(
        f"  calibration, R-DPCFL schedule {sched} -> sigma {s:.4f}: {first:.2f} s, "
        f"cached {1e6 * again:.0f} us"
    )


if __name__ == "__main__":
    bench_training()
    bench_accounting()
