"""End to end: three SuperNodes each train on their own CSV file (node config ``data-path``)
while the server only has the public reference file, through the real ServerApp/ClientApp."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedcascade.config import load_config
from fedcascade.data import clear_cache
from fedcascade.data.local import clear_local_cache
from fedcascade.data.partition import largest_remainder
from fedcascade.inline_grid import InlineGrid
from fedcascade.server_app import run_on_grid

EXPERIMENT = """
name = "datapath"
seed = 4

[data]
source = "csv"
min_group_test = 0

[data.csv]
path = "{reference}"
label = "label"
numeric = ["x1", "x2"]
categorical = ["site"]
groups = ["sex"]
n_communities = 3

[data.partition]
method = "size_skew"

[data.public_pool]
records = 120

[model]
hidden = [16]
embedding_dim = 8
lora_rank = 2

[model.pretrain]
epochs = 2

[privacy]
target_epsilon = 3.0
batch_size = 16

[train]
rounds = 2
lr = 0.1

[strategy]
name = "{strategy}"
"""


def table(n: int, seed: int, shift: float) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1 = rng.normal(shift, 1.0, n)
    x2 = rng.normal(0.0, 1.0, n)
    return pd.DataFrame(
        {
            "x1": x1.round(3),
            "x2": x2.round(3),
            "site": rng.choice(["rural", "urban"], n),
            "sex": rng.choice(["F", "M"], n),
            "label": np.where(x1 + x2 > shift, "high", "low"),
        }
    )


class NodeFileGrid(InlineGrid):
    """The in-process grid with deployment node configs: ``community-id`` + ``data-path``."""

    def __init__(self, files: dict[int, Path]) -> None:
        super().__init__(len(files))
        # node ids and community ids in different orders, as on a real SuperLink
        for ctx, (cid, path) in zip(
            reversed(list(self.contexts.values())), sorted(files.items()), strict=True
        ):
            ctx.node_config = {"community-id": cid, "data-path": str(path)}


@pytest.fixture(autouse=True)
def _fresh_caches():
    clear_cache()
    clear_local_cache()


@pytest.mark.parametrize("strategy", ["dp-fedavg", "ifca", "cascade"])
def test_every_community_trains_on_its_own_file(tmp_path, strategy):
    reference = tmp_path / "server" / "reference.csv"
    reference.parent.mkdir()
    table(300, 0, 0.0).to_csv(reference, index=False)
    sizes = {0: 60, 1: 150, 2: 90}
    files = {}
    for cid, n in sizes.items():
        node_dir = tmp_path / f"node-{cid}"  # only that node knows this path
        node_dir.mkdir()
        files[cid] = node_dir / "community.csv"
        table(n, 10 + cid, 0.5 * cid).to_csv(files[cid], index=False)
    exp = tmp_path / "experiment.toml"
    options = "\n[strategy.options]\nwarmup_rounds = 1\n" if strategy == "cascade" else ""
    exp.write_text(EXPERIMENT.format(reference=reference, strategy=strategy) + options)
    cfg = load_config(exp)

    grid = NodeFileGrid(files)
    run_dir = run_on_grid(grid, cfg, run_dir=tmp_path / "run")

    with open(run_dir / "communities.csv", newline="") as f:
        rows = {int(r["community_id"]): r for r in csv.DictReader(f)}
    assert sorted(rows) == [0, 1, 2]
    for cid, n in sizes.items():
        n_train, n_val, n_test = largest_remainder(n, np.array([0.7, 0.1, 0.2])).tolist()
        r = rows[cid]
        assert (int(r["n_train"]), int(r["n_val"]), int(r["n_test"])) == (n_train, n_val, n_test)
        assert r["status"] == "ok" and 0 < float(r["epsilon"]) <= 3.0 + 1e-6
        # the community's delta comes from its own file's size (default: below 1/n_train)
        assert float(r["delta"]) < 1.0 / n_train
        # the server's reference file says nothing about a node's data: no ground truth claimed
        assert r["sub_distribution"] == "" and r["name"] == ""
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["ari"] is None and summary["accuracy_by_sub_distribution"] == {}
    # Evaluation ran on each node's own validation and test splits.
    evaluated: dict[int, set[int]] = {}
    for m in grid.replies:
        if m.metadata.message_type.startswith("evaluate"):
            cid = int(m.content["info"]["community-id"])
            evaluated.setdefault(cid, set()).add(int(m.content["metrics"]["num-examples"]))
    for cid, n in sizes.items():
        assert evaluated[cid] == set(largest_remainder(n, np.array([0.7, 0.1, 0.2]))[1:].tolist())
    # Every node said its records are its own, and the server never saw a node's path.
    infos = [m.content["info"] for m in grid.replies if "local-data" in m.content["info"]]
    assert len(infos) == 3 and all(list(i["local-data"]) == [True] for i in infos)
    written = "".join(p.read_text() for p in run_dir.iterdir() if p.is_file())
    assert "community.csv" not in written
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["n_communities"] == 3 and summary["accuracy"] is not None
