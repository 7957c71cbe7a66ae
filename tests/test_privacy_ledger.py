"""The per-community privacy ledger: refusal, persistence, pure-DP composition, reporting."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from fedcascade.errors import ConfigError, DataError, PrivacyBudgetExceeded
from fedcascade.privacy import (
    DPPlan,
    PrivacyLedger,
    calibrate_noise_multiplier,
    compute_epsilon,
    train_dp,
)

DELTA = 1e-5
Q, STEPS, ROUNDS = 0.1, 20, 5


@pytest.fixture(scope="module")
def sigma():
    # noise for exactly ROUNDS rounds of STEPS steps within epsilon 2
    return calibrate_noise_multiplier(2.0, DELTA, [(Q, STEPS * ROUNDS)], "prv")


def test_planned_rounds_fit_and_the_next_step_is_refused(sigma, tmp_path):
    path = tmp_path / "community-0.json"
    ledger = PrivacyLedger(path, 2.0, DELTA, "prv")
    plan = DPPlan(Q, STEPS, sigma, 1.0)
    for _ in range(ROUNDS):
        eps = ledger.record(plan)
    assert eps <= 2.0
    assert ledger.would_spend(DPPlan(Q, 1, sigma, 1.0)) > 2.0
    before = path.read_text()
    with pytest.raises(PrivacyBudgetExceeded, match="nothing was spent"):
        ledger.record(DPPlan(Q, 1, sigma, 1.0))
    assert ledger.spent() == eps  # refusal changed nothing, in memory ...
    assert path.read_text() == before  # ... or on disk


def test_non_private_plan_is_refused_unless_budget_is_unbounded():
    with pytest.raises(PrivacyBudgetExceeded):
        PrivacyLedger(None, 3.0, DELTA).record(DPPlan(Q, 5, 0.0, None))
    open_ledger = PrivacyLedger(None, math.inf, DELTA)
    assert open_ledger.record(DPPlan(Q, 5, 0.0, None)) == math.inf


def test_ledger_survives_a_restart_and_checks_the_budget(sigma, tmp_path):
    path = tmp_path / "c.json"
    first = PrivacyLedger(path, 2.0, DELTA, "prv")
    first.record(DPPlan(Q, STEPS, sigma, 1.0))
    first.record_pure(0.05, "cluster selection round 3")
    reopened = PrivacyLedger(path, 2.0, DELTA, "prv")
    assert reopened.spent() == first.spent()
    assert reopened.summary()["pure_events"] == [
        {"epsilon": 0.05, "what": "cluster selection round 3"}
    ]
    assert not list(tmp_path.glob("*.tmp"))  # atomic write left no temp file
    with pytest.raises(ConfigError, match="privacy.target_epsilon"):
        PrivacyLedger(path, 3.0, DELTA, "prv")
    with pytest.raises(ConfigError, match="privacy.accountant"):
        PrivacyLedger(path, 2.0, DELTA, "rdp")


def test_two_handles_on_one_file_see_each_other(sigma, tmp_path):
    # e.g. two worker processes serving the same community in different rounds
    path = tmp_path / "c.json"
    a = PrivacyLedger(path, 2.0, DELTA)
    b = PrivacyLedger(path, 2.0, DELTA)
    plan = DPPlan(Q, STEPS, sigma, 1.0)
    for _ in range(ROUNDS - 1):
        a.record(plan)
    b.record(plan)  # the last planned round, counted on top of a's records
    assert b.spent() == a.spent() == compute_epsilon([(Q, sigma, STEPS * ROUNDS)], DELTA)
    with pytest.raises(PrivacyBudgetExceeded):
        a.record(plan)


def test_corrupt_file_is_a_clear_error(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("{not json")
    with pytest.raises(DataError, match="privacy ledger"):
        PrivacyLedger(path, 2.0, DELTA)


def test_pure_events_compose_by_basic_composition(sigma):
    ledger = PrivacyLedger(None, 2.0, DELTA)
    ledger.record(DPPlan(Q, STEPS, sigma, 1.0))
    sgd = ledger.spent()
    assert ledger.would_spend_pure(0.1) == pytest.approx(sgd + 0.1)
    assert ledger.record_pure(0.1, "selection") == pytest.approx(sgd + 0.1)
    with pytest.raises(PrivacyBudgetExceeded, match="selection 2"):
        ledger.record_pure(2.0, "selection 2")
    assert ledger.spent() == pytest.approx(sgd + 0.1)


def test_summary_lets_anyone_recompute_epsilon(sigma):
    ledger = PrivacyLedger(None, 10.0, DELTA, "rdp")
    ledger.record(DPPlan(1.0, 1, sigma, 1.0))
    ledger.record(DPPlan(Q, STEPS, sigma, 1.0))
    ledger.record_pure(0.02, "selection")
    s = json.loads(json.dumps(ledger.summary()))  # must be JSON-serialisable as is
    blocks = [(b["sample_rate"], b["noise_multiplier"], b["steps"]) for b in s["blocks"]]
    recomputed = compute_epsilon(blocks, s["delta"], s["accountant"]) + sum(
        e["epsilon"] for e in s["pure_events"]
    )
    assert s["epsilon"] == pytest.approx(recomputed)
    assert (s["total_steps"], s["last_sample_rate"], s["last_noise_multiplier"]) == (
        STEPS + 1,
        Q,
        sigma,
    )
    assert set(ledger.metrics()) >= {"epsilon", "delta", "total_steps", "last_noise_multiplier"}


def test_train_dp_refuses_before_touching_the_model(sigma):
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    before = [p.detach().clone() for p in model.parameters()]
    ledger = PrivacyLedger(None, 0.5, DELTA)
    x, y = torch.randn(50, 4), torch.randint(0, 2, (50,))
    with pytest.raises(PrivacyBudgetExceeded):
        train_dp(model, x, y, DPPlan(Q, STEPS * ROUNDS, sigma, 1.0), 0.1, 0, ledger=ledger)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert ledger.spent() == 0.0


# --------------------------------------------------------------------------- persistence cost


def test_a_handle_does_not_reread_its_own_write_but_sees_others(sigma, tmp_path, monkeypatch):
    path = tmp_path / "c.json"
    a = PrivacyLedger(path, 2.0, DELTA)
    b = PrivacyLedger(path, 2.0, DELTA)
    plan = DPPlan(Q, STEPS, sigma, 1.0)
    loads = []
    real_load = PrivacyLedger._load
    monkeypatch.setattr(PrivacyLedger, "_load", lambda self: loads.append(self) or real_load(self))
    a.record(plan)  # a has not read b's creation write (same content): one load
    a.record(plan)
    a.spent()
    assert loads.count(a) <= 1
    b.record(plan)  # b must see a's two blocks
    assert b.summary()["total_steps"] == 3 * STEPS
    assert a.spent() == b.spent()  # and a sees b's
    state = json.loads(path.read_text())  # still one JSON document, one block per line
    assert len(state["blocks"]) == 3 and state["epsilon"] == pytest.approx(a.spent())


def test_durable_ledger_fsyncs_and_default_does_not(sigma, tmp_path, monkeypatch):
    import os

    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd) or real(fd))
    plan = DPPlan(Q, STEPS, sigma, 1.0)
    PrivacyLedger(tmp_path / "fast.json", 2.0, DELTA).record(plan)
    assert calls == []
    PrivacyLedger(tmp_path / "durable.json", 2.0, DELTA, durable=True).record(plan)
    assert len(calls) >= 2  # the file and its directory
    reopened = PrivacyLedger(tmp_path / "fast.json", 2.0, DELTA)
    assert reopened.summary()["total_steps"] == STEPS


def test_runtime_reuses_ledger_handles(sigma, tmp_path):
    from fedcascade.community_runtime import open_ledger
    from fedcascade.config import load_config

    quickstart = Path(__file__).resolve().parents[1] / "experiments" / "quickstart.toml"
    cfg = load_config(quickstart, [f'output.dir="{tmp_path}/run"'])
    first = open_ledger(cfg, 0, 200, str(tmp_path), horizon_steps=100)
    again = open_ledger(cfg, 0, 200, str(tmp_path))
    assert again is first and first.horizon_steps == 100
    other = PrivacyLedger(first.path, first.target_epsilon, first.delta, first.accountant)
    other.record(DPPlan(Q, STEPS, sigma, 1.0))  # e.g. another worker process
    assert open_ledger(cfg, 0, 200, str(tmp_path)).summary()["total_steps"] == STEPS
