"""The cost of one private client-round, three ways, in one run.

Run: ``python experiments/bench_client.py [--rounds 14]`` (about 10 s on one core).

Workload: the quickstart's synthetic data with ``records_per_community = 286``, so community 1
holds exactly 200 training records; the quickstart's MLP backbone (24 -> 64 -> 64 -> 32, head to
2 classes) with LoRA rank 4 (4,450 trainable numbers). One client-round = 8 steps at Poisson
sample rate 25/200 = 1/8 (one local epoch at expected batch 25), noise calibrated so that 15
such rounds (the length of the disparity experiments) spend epsilon 2.91 (3 minus the selection
reserve) at delta 1e-4, PRV accounting, one torch thread.

Each round feeds the adapter arrays it returns into the next round, and the privacy history
grows by one round, so the accounting cost is that of a real run: by default every round of a
15-round run is timed but the first. The three ways:

``naive``
    Flower's Opacus example: build the adapter model from scratch and ``load_state_dict`` the
    round's arrays, a NEW ``opacus.PrivacyEngine()`` (its default accountant is PRV in Opacus
    1.6) and ``make_private(..., poisson_sampling=True)`` over a ``DataLoader``, one epoch of
    training (8 Poisson batches), then ``privacy_engine.get_epsilon(delta)`` from scratch over
    the community's whole history so far (the previous rounds' entries are put back into the
    new engine's accountant, merged the way one long-lived accountant would merge them).
``fedcascade``
    :func:`fedcascade.community_runtime.train_community`: cached community and adapter model
    (arrays loaded in place), the JSON privacy ledger charged before training (PRV with
    discretisations reused across rounds, memoised epsilons), ghost-clipping DP-SGD, arrays out.
    Also timed, not part of the ratios: a second 200-record community with the same plan right
    after it in the same worker, whose epsilon is a memo hit (in a run, communities of equal
    size share sample rate, noise and step count, so all but the first pay no accounting).
``floor``
    Non-private plain PyTorch: the same cached adapter model, arrays loaded in place, 8 SGD steps
    on shuffled batches of 25 (the expected batch size), arrays out. No clipping, no noise, no
    accounting.

Every method runs one untimed warm-up round first (excluded: imports, building the federation,
pretraining the backbone, the first adapter-model build, Opacus' and PyTorch's first-call
set-up, and the ledger's first PRV discretisation of round 1). Then ``--rounds`` rounds are
timed, the three methods interleaved within each round so that load changes on a shared machine
hit all three alike. Medians are reported; the last line is
``naive/fedcascade=X fedcascade/floor=Y``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedcascade import community_runtime as runtime  # noqa: E402
from fedcascade.config import ExperimentConfig, load_config  # noqa: E402
from fedcascade.data import Community  # noqa: E402
from fedcascade.models import (  # noqa: E402
    adapter_model,
    cached_adapter_model,
    get_backbone,
    load_trainable_arrays,
    trainable_arrays,
)
from fedcascade.privacy import (  # noqa: E402
    DPPlan,
    calibrate_noise_multiplier,
    planned_schedule,
    steps_per_epoch,
)
from fedcascade.protocol import STATUS_OK, TrainInstruction  # noqa: E402

QUICKSTART = Path(__file__).resolve().parent / "quickstart.toml"
COMMUNITY, TWIN = 1, 2  # both hold 200 training records with records_per_community = 286
BATCH = 25  # 200 / 25 = 8: Opacus' DataLoader (q = 1 / len(loader)) and our plan agree exactly
PLANNED_ROUNDS = 15  # the noise is calibrated for this many rounds (warm-up + timed must fit)
LR = 0.1

Arrays = dict[str, np.ndarray]


@dataclass
class Workload:
    """Everything the three methods share: config, data, the DP plan and the initial arrays."""

    cfg: ExperimentConfig
    community: Community
    plan: DPPlan
    delta: float
    rank: int
    arrays: Arrays
    state_dir: str
    backbone: torch.nn.Module = field(repr=False)


def build_workload(state_dir: str) -> Workload:
    """The 200-record community, its calibrated DP plan and the initial adapter arrays."""
    cfg = load_config(
        QUICKSTART,
        [
            "data.synthetic.records_per_community=286",
            f"privacy.batch_size={BATCH}",
            f"train.rounds={PLANNED_ROUNDS}",
            "model.pretrain.cache=false",  # no files outside the temporary directory
            "model.pretrain.epochs=2",  # the backbone's accuracy does not matter here
            f'output.dir="{state_dir}/run"',
        ],
    )
    fed = runtime.federation(cfg)
    community = fed.communities[COMMUNITY]
    n = community.n_train
    for c in (COMMUNITY, TWIN):  # the workload is defined by these sizes; fail loudly if not
        if fed.communities[c].n_train != 200:
            raise RuntimeError(
                f"community {c} has {fed.communities[c].n_train} training records, expected 200"
            )
    delta = cfg.privacy.delta_for(n)
    schedule = planned_schedule(n, BATCH, PLANNED_ROUNDS)
    sigma = calibrate_noise_multiplier(
        cfg.privacy.training_epsilon, delta, schedule, cfg.privacy.accountant
    )
    plan = DPPlan(
        sample_rate=cfg.privacy.sample_rate_for(n),
        steps=steps_per_epoch(n, BATCH),
        noise_multiplier=sigma,
        max_grad_norm=cfg.privacy.max_grad_norm,
    )
    rank = cfg.model.lora_rank
    backbone = get_backbone(
        cfg.model, fed.input_shape, fed.n_classes, fed.public_x, fed.public_y, cfg.seed
    )
    return Workload(
        cfg=cfg,
        community=community,
        plan=plan,
        delta=delta,
        rank=rank,
        arrays=runtime.initial_arrays(cfg, rank, cfg.seed),
        state_dir=state_dir,
        backbone=backbone,
    )


# ------------------------------------------------------------------------------------ the naive
@dataclass
class NaiveClient:
    """Flower's Opacus-example client; keeps only the accountant history across rounds."""

    work: Workload
    history: list[tuple[float, float, int]] = field(default_factory=list)
    phases: dict[str, list[float]] = field(default_factory=dict)

    def round(self, arrays: Arrays, server_round: int) -> tuple[Arrays, float]:
        from opacus import PrivacyEngine
        from torch.utils.data import DataLoader, TensorDataset

        w = self.work
        t0 = time.perf_counter()
        model = adapter_model(w.backbone, w.cfg.model, w.rank, seed=w.cfg.seed)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()}, strict=False)
        model.train()
        t1 = time.perf_counter()
        engine = PrivacyEngine()
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
        loader = DataLoader(
            TensorDataset(w.community.x_train, w.community.y_train),
            batch_size=BATCH,
            generator=torch.Generator().manual_seed(server_round),
        )
        module, optimizer, loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=w.plan.noise_multiplier,
            max_grad_norm=w.plan.max_grad_norm,
            poisson_sampling=True,
        )
        t2 = time.perf_counter()
        for xb, yb in loader:
            optimizer.zero_grad()
            F.cross_entropy(module(xb), yb).backward()
            optimizer.step()
        t3 = time.perf_counter()
        # Compose over rounds: this round's entries after all earlier ones, from scratch.
        self.history = _merged(self.history + list(engine.accountant.history))
        engine.accountant.history = list(self.history)
        epsilon = engine.get_epsilon(w.delta)
        t4 = time.perf_counter()
        for name, dt in zip(
            ("build model + load", "PrivacyEngine + make_private", "train", "get_epsilon"),
            (t1 - t0, t2 - t1, t3 - t2, t4 - t3),
        ):
            self.phases.setdefault(name, []).append(dt)
        return trainable_arrays(module), float(epsilon)


def _merged(history: list[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    """Merge consecutive equal (noise, sample rate) entries, as Opacus' accountant.step does."""
    out: list[tuple[float, float, int]] = []
    for sigma, q, steps in history:
        if out and out[-1][:2] == (sigma, q):
            out[-1] = (sigma, q, out[-1][2] + steps)
        else:
            out.append((sigma, q, steps))
    return out


# ----------------------------------------------------------------------------------- fedcascade
def fedcascade_round(
    work: Workload, arrays: Arrays, server_round: int, community_id: int = COMMUNITY
) -> tuple[Arrays, float, float]:
    """One train instruction through fedcascade's client path.

    Returns
    -------
    (arrays, epsilon, train_seconds)
        The new adapter arrays, the community's epsilon so far and the seconds spent in DP-SGD.
    """
    instr = TrainInstruction(
        community_id=community_id,
        cluster_id=0,
        lora_rank=work.rank,
        lr=LR,
        server_round=server_round,
        experiment="",  # train_community takes the parsed config; the TOML is for messages
        plan=work.plan,
    )
    out = runtime.train_community(work.cfg, instr, arrays, state_dir=work.state_dir)
    if out.status != STATUS_OK:
        raise RuntimeError(f"round {server_round}: {out.status} ({out.privacy})")
    return out.arrays, float(out.privacy["epsilon"]), out.seconds


# ---------------------------------------------------------------------------------------- floor
def floor_round(work: Workload, arrays: Arrays, server_round: int) -> Arrays:
    """Non-private plain PyTorch SGD: same model, data, step count and (expected) batch size."""
    model = cached_adapter_model(work.backbone, work.cfg.model, work.rank, work.cfg.seed)
    load_trainable_arrays(model, arrays)
    model.train()
    x, y = work.community.x_train, work.community.y_train
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(server_round))
    for step in range(work.plan.steps):
        idx = order[step * BATCH : (step + 1) * BATCH]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    model.eval()
    return trainable_arrays(model)


# ------------------------------------------------------------------------------------------ run
def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _ms(values: list[float]) -> str:
    return (
        f"{1e3 * statistics.median(values):8.2f} {1e3 * statistics.fmean(values):8.2f}"
        f"   [{1e3 * min(values):.1f} .. {1e3 * max(values):.1f}]"
    )


def run(rounds: int = PLANNED_ROUNDS - 1) -> tuple[float, float]:
    """Time ``rounds`` client-rounds of each method after one warm-up round; print the results.

    Parameters
    ----------
    rounds : int
        Timed rounds, 1 .. ``PLANNED_ROUNDS - 1`` (the run has one more: the warm-up).

    Returns
    -------
    (naive/fedcascade, fedcascade/floor) : tuple of float
        Ratios of the median round times, as printed on the last line.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or not 1 <= rounds < PLANNED_ROUNDS:
        raise ValueError(
            f"--rounds must be an integer in [1, {PLANNED_ROUNDS - 1}] (the noise is calibrated "
            f"for {PLANNED_ROUNDS} rounds including the warm-up), got {rounds!r}"
        )
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench_client-") as tmp:
        t_setup = time.perf_counter()
        work = build_workload(tmp)
        setup = time.perf_counter() - t_setup
        naive = NaiveClient(work)
        state = {k: work.arrays for k in ("naive", "fedcascade", "twin", "floor")}
        times: dict[str, list[float]] = {k: [] for k in state}
        eps = {"naive": 0.0, "fedcascade": 0.0, "twin": 0.0}
        fc_train: list[float] = []
        for r in range(1, rounds + 2):  # round 1 is the warm-up
            dt = {}
            dt["naive"], (state["naive"], eps["naive"]) = _timed(
                lambda r=r: naive.round(state["naive"], r)
            )
            dt["fedcascade"], (state["fedcascade"], eps["fedcascade"], train_s) = _timed(
                lambda r=r: fedcascade_round(work, state["fedcascade"], r)
            )
            dt["twin"], (state["twin"], eps["twin"], _) = _timed(
                lambda r=r: fedcascade_round(work, state["twin"], r, TWIN)
            )
            dt["floor"], state["floor"] = _timed(lambda r=r: floor_round(work, state["floor"], r))
            if r == 1:
                for phase in naive.phases.values():
                    phase.clear()
                continue
            for k, v in dt.items():
                times[k].append(v)
            fc_train.append(train_s)
    med = {k: statistics.median(v) for k, v in times.items()}
    plan = work.plan
    print(
        f"One client-round: {work.community.n_train} records, MLP {_describe(work)}, LoRA rank "
        f"{work.rank}; {plan.steps} DP-SGD steps at q={plan.sample_rate:g}, "
        f"sigma={plan.noise_multiplier:.3f}, C={plan.max_grad_norm:g}, delta={work.delta:g}, "
        "PRV accountant, 1 torch thread."
    )
    print(
        f"Not timed: imports, data, pretraining, calibration ({setup:.1f} s) and round 1 "
        f"(warm-up). Timed: rounds 2..{rounds + 1} (privacy history {2 * plan.steps}.."
        f"{(rounds + 1) * plan.steps} steps)."
    )
    print(f"  {'ms per client-round':30s}   median     mean   [min .. max]")
    print(f"  {'naive (Flower Opacus example)':30s} {_ms(times['naive'])}")
    for phase, values in naive.phases.items():
        print(f"    {phase:28s} {_ms(values)}")
    print(f"  {'fedcascade (train_community)':30s} {_ms(times['fedcascade'])}")
    ledger_etc = [t - s for t, s in zip(times["fedcascade"], fc_train)]
    print(f"    {'DP-SGD (train_dp)':28s} {_ms(fc_train)}")
    print(f"    {'ledger, data, arrays in/out':28s} {_ms(ledger_etc)}")
    print(f"  {'  same plan, 2nd community':30s} {_ms(times['twin'])}   (memoised epsilon)")
    print(f"  {'floor (non-private PyTorch)':30s} {_ms(times['floor'])}")
    print(
        f"  epsilon after {rounds + 1} rounds: naive (Opacus PRV) {eps['naive']:.4f}, "
        f"fedcascade ledger {eps['fedcascade']:.4f} (2nd community {eps['twin']:.4f})"
    )
    a, b = med["naive"] / med["fedcascade"], med["fedcascade"] / med["floor"]
    print(f"naive/fedcascade={a:.2f} fedcascade/floor={b:.2f}")
    return a, b


def _describe(work: Workload) -> str:
    dims = [work.community.x_train.shape[1], *work.cfg.model.hidden, work.cfg.model.embedding_dim]
    return " -> ".join(str(d) for d in dims)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``--rounds`` timed rounds per method (default: all but the warm-up)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--rounds",
        type=int,
        default=PLANNED_ROUNDS - 1,
        help=f"timed rounds per method, 1..{PLANNED_ROUNDS - 1} (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")  # small-test-set and Opacus notices are not the point here
    if not 1 <= args.rounds < PLANNED_ROUNDS:
        parser.error(
            f"--rounds must be in [1, {PLANNED_ROUNDS - 1}] (the noise is calibrated for "
            f"{PLANNED_ROUNDS} rounds including the warm-up), got {args.rounds}"
        )
    run(args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
