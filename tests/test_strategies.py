"""Strategy behaviour through the real ServerApp/ClientApp code on the in-process grid."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from fedcascade import community_runtime
from fedcascade.config import load_config
from fedcascade.errors import ConfigError
from fedcascade.inline_grid import InlineGrid
from fedcascade.privacy import DPPlan, compute_epsilon
from fedcascade.server_app import run_on_grid
from strategies.base import FedcascadeStrategy, average_arrays
from strategies.registry import resolve_strategy

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "data" / "tiny.toml"


def run(tmp_path: Path, *overrides: str, nodes: int = 2) -> tuple[Path, InlineGrid]:
    cfg = load_config(TINY, list(overrides))
    grid = InlineGrid(nodes)
    return run_on_grid(grid, cfg, run_dir=tmp_path / "run"), grid


def rows_of(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "communities.csv", newline="") as f:
        return list(csv.DictReader(f))


def rounds_of(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "rounds.jsonl").read_text().splitlines()]


def test_registry_errors_are_clear():
    with pytest.raises(ConfigError, match="did you mean 'ifca'"):
        resolve_strategy("icfa")
    with pytest.raises(ConfigError, match="import failed"):
        resolve_strategy("no_such_module.x:Y")
    with pytest.raises(ConfigError, match="subclass of strategies.base.FedcascadeStrategy"):
        resolve_strategy("fedcascade.config:ExperimentConfig")
    for name in ("fedavg", "dp-fedavg", "ifca", "r-dpcfl", "oracle-clustered", "cascade"):
        assert issubclass(resolve_strategy(name), FedcascadeStrategy)


def test_average_arrays_is_weighted():
    a = {"w": np.array([0.0, 2.0], dtype=np.float32)}
    b = {"w": np.array([4.0, 6.0], dtype=np.float32)}
    out = average_arrays([a, b], [1, 3])
    assert out["w"].dtype == np.float32
    np.testing.assert_allclose(out["w"], [3.0, 5.0])


def test_sub_distribution_never_reaches_a_strategy(tmp_path, monkeypatch):
    seen = {}
    original = FedcascadeStrategy.__init__

    def spy(self, ctx):
        seen["truth"] = dict(ctx.truth_for_evaluation)
        seen["fields"] = [f for c in ctx.communities for f in vars(c)]
        original(self, ctx)

    monkeypatch.setattr(FedcascadeStrategy, "__init__", spy)
    run_dir, grid = run(tmp_path, "train.rounds=1")
    assert seen["truth"] == {}
    assert not any("sub" in f for f in seen["fields"])
    # no reply a strategy receives carries it either
    for reply in grid.replies:
        for name, record in reply.content.items():
            assert "sub" not in name
            for key in record.keys():
                assert "sub" not in key, (name, key)
    # ...while the results (written outside the strategy) do have it, for evaluation
    assert [r["sub_distribution"] for r in rows_of(run_dir)] == ["0", "0", "0", "1"]


def test_oracle_gets_the_truth_and_is_labelled_a_ceiling(tmp_path):
    run_dir, _ = run(tmp_path, 'strategy.name="oracle-clustered"')
    rows = rows_of(run_dir)
    assert [r["cluster"] for r in rows] == ["0", "0", "0", "1"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "ceiling" in summary["strategy_label"] and summary["ari"] == 1.0
    assert all(r["ari"] == 1.0 for r in rounds_of(run_dir))


def test_one_node_can_serve_many_communities(tmp_path):
    run_dir, grid = run(tmp_path, "train.rounds=1", nodes=1)
    assert len(rows_of(run_dir)) == 4
    assert {m.metadata.dst_node_id for m in grid.sent} == {100}


def test_malformed_reply_is_dropped_not_fatal(tmp_path, monkeypatch):
    real = community_runtime.train_community

    def poisoned(cfg, instr, arrays, state_dir=None):
        out = real(cfg, instr, arrays, state_dir)
        if instr.community_id == 2:
            out.arrays = {k: np.full_like(v, np.nan) for k, v in out.arrays.items()}
        return out

    monkeypatch.setattr("fedcascade.client_app.train_community", poisoned)
    run_dir, _ = run(tmp_path, "train.rounds=1")
    record = rounds_of(run_dir)[0]
    assert record["participants"] == [0, 1, 3]  # community 2's NaN update never got averaged
    with np.load(run_dir / "models" / "cluster-0.npz") as z:
        assert all(np.isfinite(z[k]).all() for k in z.files)


class Overspender(FedcascadeStrategy):
    """Plans more steps per round than it calibrated for, to meet the ledger."""

    name = "overspender"
    label = "test only"

    def plan(self, community, server_round):
        plan = super().plan(community, server_round)
        return DPPlan(plan.sample_rate, plan.steps * 3, plan.noise_multiplier, plan.max_grad_norm)


def test_ledger_refuses_overspending_and_the_run_says_so(tmp_path):
    run_dir, _ = run(tmp_path, f'strategy.name="{__name__}:Overspender"', "train.rounds=3")
    rows = rows_of(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["budget_exhausted"] == [0, 1, 2, 3]
    for r in rows:
        assert r["status"] == "budget_exhausted"
        eps = float(r["epsilon"])
        assert eps <= 3.0 + 1e-9
        blocks = json.loads(r["privacy_blocks"])
        # only the blocks that fitted were run and recorded; recomputation agrees
        assert compute_epsilon(
            [(b["sample_rate"], b["noise_multiplier"], b["steps"]) for b in blocks],
            float(r["delta"]),
            "prv",
        ) == pytest.approx(eps, rel=1e-6)
    # the last round had no one left to train
    assert rounds_of(run_dir)[-1]["participants"] == []


@pytest.mark.parametrize(
    "poison, reason",
    [
        (lambda a: {k: np.zeros((2, 2), np.float32) for k in a}, "expected"),  # wrong shapes
        (lambda a: {k: v.astype(np.float64) for k, v in a.items()}, "float64"),  # wrong dtype
        (lambda a: {k: v * 1e6 for k, v in a.items()}, "bound"),  # finite, but no DP plan allows it
    ],
)
def test_bad_replies_are_dropped_with_a_reason(tmp_path, monkeypatch, caplog, poison, reason):
    real = community_runtime.train_community

    def bad(cfg, instr, arrays, state_dir=None):
        out = real(cfg, instr, arrays, state_dir)
        if instr.community_id == 1:
            out.arrays = poison(out.arrays)
            if reason == "bound":  # keep zeros zero: scale the update, not the init
                out.arrays = {
                    k: arrays[k] + (v / 1e6 - arrays[k]) * 1e6 for k, v in out.arrays.items()
                }
        return out

    monkeypatch.setattr("fedcascade.client_app.train_community", bad)
    run_dir, _ = run(tmp_path, "train.rounds=1")
    assert rounds_of(run_dir)[0]["participants"] == [0, 2, 3]
    assert any(
        "community 1 dropped" in r.getMessage() and reason in r.getMessage() for r in caplog.records
    )


def test_honest_updates_stay_within_the_dp_norm_bound(tmp_path, caplog):
    run_dir, _ = run(tmp_path, "train.rounds=2", "train.lr=0.5")
    assert all(r["participants"] == [0, 1, 2, 3] for r in rounds_of(run_dir))
    assert not any("dropped" in r.getMessage() for r in caplog.records)


def test_cascade_recovers_planted_clusters_and_follows_its_formulas(tmp_path):
    from fedcascade.clustering import cluster_precision, cluster_ranks, gdp_mu

    run_dir, _ = run(
        tmp_path,
        'strategy.name="cascade"',
        "train.rounds=4",
        'strategy.options.cluster_signal="update"',
        "strategy.options.warmup_rounds=2",
    )
    rounds = rounds_of(run_dir)
    assert [r["phase"] for r in rounds] == ["warm-up", "clustered", "clustered", "clustered"]
    last = rounds[-1]
    assert last["ari"] == 1.0 and last["k"] == 2
    rows = rows_of(run_dir)
    # rank rule: r_k = clip(round(r_max (Pi_k / max Pi)^gamma), r_min, r_max), Pi_k = sum N_i^2 mu_i^2
    n = np.array([int(r["n_train"]) for r in rows])
    labels = np.array([int(r["cluster"]) for r in rows])
    cfg = load_config(TINY)
    mu = np.array([gdp_mu(3.0 * (1 - 0.0), float(r["delta"])) for r in rows])
    ranks = cluster_ranks(cluster_precision(n, labels, mu), 1, cfg.model.lora_rank, 0.5)
    assert {str(k): int(v) for k, v in enumerate(ranks)} == last["cluster_ranks"]
    assert all(int(r["lora_rank"]) == ranks[int(r["cluster"])] for r in rows)
    # the whole run, warm-up and re-planned rest together, stays within every budget
    assert all(float(r["epsilon"]) <= 3.0 + 1e-9 for r in rows)


def test_cascade_ablation_switches_scaling_off(tmp_path):
    run_dir, _ = run(
        tmp_path,
        'strategy.name="cascade"',
        "train.rounds=3",
        "strategy.options.rank_scaling=false",
        "strategy.options.noise_scaling=false",
    )
    last = rounds_of(run_dir)[-1]
    assert set(last["cluster_ranks"].values()) == {2}  # model.lora_rank everywhere
    assert last["participants"] == [0, 1, 2, 3]  # every cluster trains every round


def test_ifca_charges_every_private_choice_to_the_ledger(tmp_path):
    run_dir, grid = run(tmp_path, 'strategy.name="ifca"', "strategy.options.k=2", "train.rounds=3")
    rows = rows_of(run_dir)
    for r in rows:
        # 3% of epsilon 3 for selection, spread over 3 rounds, one pure-DP event per round
        assert float(r["pure_epsilon"]) == pytest.approx(0.09)
        assert float(r["epsilon"]) <= 3.0 + 1e-9
    selects = [
        m
        for m in grid.sent
        if m.metadata.message_type == "query" and m.content["config"]["action"] == "select"
    ]
    assert len(selects) == 3 * 4
    # only the chosen index comes back: no scores or losses leave a community
    for reply in grid.replies:
        if "info" in reply.content and "choice" in reply.content["info"]:
            assert set(reply.content["info"].keys()) == {
                "community-id",
                "status",
                "worker",
                "choice",
            }


def test_rdpcfl_runs_its_phases_with_a_full_batch_first_round(tmp_path):
    run_dir, _ = run(tmp_path, 'strategy.name="r-dpcfl"', "strategy.options.k=2", "train.rounds=6")
    rounds = rounds_of(run_dir)
    assert rounds[0]["phase"] == "cluster" and rounds[0]["k"] == 2
    switch, selection = rounds[-1]["switch_round"], rounds[-1]["selection_rounds"]
    # E_c = int((1 - overlap) * E / 2) and int(0.1 E) selection rounds from there, as the reference
    assert switch == int((1 - rounds[-1]["max_overlap"]) * 6 / 2)
    for r in rounds[1:]:
        expected = (
            "select" if r["round"] in selection else ("soft" if r["round"] <= switch else "frozen")
        )
        assert r["phase"] == expected, r
    for row in rows_of(run_dir):
        blocks = json.loads(row["privacy_blocks"])
        assert blocks[0]["sample_rate"] == 1.0 and blocks[0]["steps"] == 1  # full-batch round 1
        assert all(b["sample_rate"] < 1.0 for b in blocks[1:])
        assert float(row["epsilon"]) <= 3.0 + 1e-9


def test_cascade_late_community_joins_by_private_selection(tmp_path, monkeypatch):
    real = community_runtime.train_community

    def lost_in_warmup(cfg, instr, arrays, state_dir=None):
        out = real(cfg, instr, arrays, state_dir)
        if instr.community_id == 1 and instr.server_round == 1:
            out.arrays = {k: np.full_like(v, np.nan) for k, v in out.arrays.items()}
        return out

    monkeypatch.setattr("fedcascade.client_app.train_community", lost_in_warmup)
    run_dir, _ = run(
        tmp_path,
        'strategy.name="cascade"',
        "train.rounds=4",
        'strategy.options.cluster_signal="update"',
        "strategy.options.warmup_rounds=1",
        "strategy.options.min_round_fraction=1",  # every cluster every round: joins are visible
    )
    rounds = rounds_of(run_dir)
    assert rounds[0]["participants"] == [0, 2, 3]  # community 1's warm-up update was unusable
    # it waits while the new clusters train once, then chooses one privately
    assert rounds[1]["participants"] == [0, 2, 3] and rounds[1]["late"] == [1]
    assert rounds[2]["joined_late"] == [1] and rounds[2]["participants"] == [0, 1, 2, 3]
    rows = rows_of(run_dir)
    # which cluster it picks is a noisy choice (3% of epsilon over 140 records); that it picked
    # one of the found clusters, paid for it and stayed within budget is what is checked here
    assert rows[1]["cluster"] in {rows[0]["cluster"], rows[3]["cluster"]}
    # the selection was charged (3% of epsilon 3) and the whole run stayed within budget
    assert float(rows[1]["pure_epsilon"]) == pytest.approx(0.09)
    assert all(float(r["pure_epsilon"] or 0) == 0 for i, r in enumerate(rows) if i != 1)
    assert all(float(r["epsilon"]) <= 3.0 + 1e-9 for r in rows)
    assert rows[1]["status"] == "ok"


def _probe_block(row: dict[str, str]) -> dict:
    return json.loads(row["privacy_blocks"])[0]


def test_cascade_clusters_dp_probes_before_round_one(tmp_path):
    from fedcascade.clustering import probe_noise_multiplier

    run_dir, grid = run(
        tmp_path,
        'strategy.name="cascade"',
        "train.rounds=3",
        'strategy.options.cluster_signal="probe"',
        "strategy.options.probe_budget=0.35",
    )
    rounds = rounds_of(run_dir)
    assert all(r["phase"] == "clustered" for r in rounds)  # clusters exist from round 1
    assert rounds[0]["ari"] == 1.0 and rounds[0]["k"] == 2
    assert rounds[0]["clustered_blocks"] == ["probe"]
    probes = [
        m
        for m in grid.sent
        if m.metadata.message_type == "query" and m.content["config"]["action"] == "probe"
    ]
    assert sorted(int(m.content["config"]["community-id"]) for m in probes) == [0, 1, 2, 3]
    for r in rows_of(run_dir):
        # the probe is one Gaussian release of sensitivity 1, on the ledger as the full-batch
        # DP-SGD step it equals, spending 35% of the GDP budget; the rest is training
        block = _probe_block(r)
        assert (block["sample_rate"], block["steps"], block["max_grad_norm"]) == (1.0, 1, 1.0)
        assert block["noise_multiplier"] == pytest.approx(
            probe_noise_multiplier(3.0, float(r["delta"]), 0.35)
        )
        assert float(r["pure_epsilon"] or 0) == 0.0
        assert 0.97 * 3.0 <= float(r["epsilon"]) <= 3.0 + 1e-9


@pytest.mark.parametrize(
    ("poison", "reason"),
    [
        (lambda v: np.full_like(v, np.nan), "non-finite"),
        (lambda v: v[:-1], "expected float64"),
        (lambda v: v.astype(np.float32), "expected float64"),
        (lambda v: v * 1e6, "exceeds the bound"),
    ],
)
def test_a_bad_probe_is_dropped_and_its_community_joins_by_its_next_one(
    tmp_path, monkeypatch, caplog, poison, reason
):
    real = community_runtime.release_community_probe
    calls: list[int] = []

    def first_bad(cfg, community_id, sigma, seed, state_dir=None):
        out = real(cfg, community_id, sigma, seed, state_dir)
        if community_id == 1 and not calls:
            calls.append(1)
            out.vector = poison(out.vector)
        return out

    monkeypatch.setattr("fedcascade.client_app.release_community_probe", first_bad)
    run_dir, _ = run(
        tmp_path,
        'strategy.name="cascade"',
        "train.rounds=3",
        'strategy.options.cluster_signal="probe"',
        "strategy.options.min_round_fraction=1",  # every cluster every round: joins are visible
    )
    assert any(
        "probe of community 1 dropped" in r.getMessage() and reason in r.getMessage()
        for r in caplog.records
    )
    rounds = rounds_of(run_dir)
    assert rounds[0]["participants"] == [0, 2, 3] and rounds[0]["late"] == [1]
    # round 2: it releases a new probe and joins the nearest cluster (post-processing, free)
    assert rounds[1]["joined_late"] == [1] and rounds[1]["participants"] == [0, 1, 2, 3]
    rows = rows_of(run_dir)
    assert rows[1]["cluster"] == rows[0]["cluster"] == rows[2]["cluster"] != rows[3]["cluster"]
    assert rounds[-1]["ari"] == 1.0
    # both of its releases were charged (the bad one too: the ledger pays before computing),
    # no pure-DP selection was needed, and the rest of its run was recalibrated to fit
    blocks = json.loads(rows[1]["privacy_blocks"])
    assert [b["sample_rate"] for b in blocks[:2]] == [1.0, 1.0]
    assert float(rows[1]["pure_epsilon"] or 0) == 0.0
    assert all(float(r["epsilon"]) <= 3.0 + 1e-9 for r in rows)


def test_cascade_shared_global_adapter_is_one_adapter_across_clusters(tmp_path):
    from fedcascade.clustering import truncate_lora
    from fedcascade.results import load_models

    run_dir, _ = run(
        tmp_path,
        'strategy.name="cascade"',
        "train.rounds=3",
        'strategy.options.shared=["features"]',
    )
    assert rounds_of(run_dir)[-1]["k"] == 2
    models = load_models(run_dir)
    (r_small, small), (r_big, big) = sorted(models.values(), key=lambda m: m[0])
    shared = [k for k in big if k.startswith("features")]
    assert shared and len(shared) < len(big)
    # the shared part is one global adapter: each cluster holds it at its own rank
    cut = truncate_lora({k: big[k] for k in shared}, r_small, load_config(TINY).model.lora_alpha)
    for k in shared:
        np.testing.assert_allclose(small[k], cut[k], rtol=1e-5, atol=1e-7)
    # the heads stay per cluster
    assert not np.allclose(small["head.weight"], big["head.weight"])


@pytest.mark.parametrize(
    ("patterns", "match"), [('["lora_A"]', "partner"), ('["decoder"]', "substring")]
)
def test_cascade_shared_patterns_are_checked(tmp_path, patterns, match):
    with pytest.raises(ConfigError, match=match):
        run(tmp_path, 'strategy.name="cascade"', f"strategy.options.shared={patterns}")


def test_cascade_both_signals_a_community_without_a_probe_joins_by_selection(tmp_path, monkeypatch):
    real = community_runtime.release_community_probe

    def lost(cfg, community_id, sigma, seed, state_dir=None):
        out = real(cfg, community_id, sigma, seed, state_dir)
        if community_id == 2:
            out.vector = np.full_like(out.vector, np.nan)
        return out

    monkeypatch.setattr("fedcascade.client_app.release_community_probe", lost)
    run_dir, _ = run(tmp_path, 'strategy.name="cascade"', "train.rounds=4")
    rounds = rounds_of(run_dir)
    # round 1 is the warm-up (everyone trains); community 2 has an update but no usable probe,
    # so it cannot be placed in the combined signal space: it is late, then selects privately
    assert rounds[0]["participants"] == [0, 1, 2, 3] and rounds[0]["late"] == [2]
    assert rounds[2]["joined_late"] == [2]
    rows = rows_of(run_dir)
    assert float(rows[2]["pure_epsilon"]) == pytest.approx(0.09)
    assert all(float(r["epsilon"]) <= 3.0 + 1e-9 for r in rows)
