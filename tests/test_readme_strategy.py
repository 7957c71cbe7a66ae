"""The README's "Write your own strategy" example, run as written through the real engine."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import pytest

from fedcascade.cli import main
from fedcascade.config import load_config
from fedcascade.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "data" / "tiny.toml"


@pytest.fixture()
def example_module(tmp_path, monkeypatch):
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Write your own strategy", 1)[1]
    code = re.search(r"```python\n(.*?)\n```", section, flags=re.S).group(1)
    pkg = tmp_path / "my_strategies"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "local.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_strategies.local:LocalOnly"
    for name in [m for m in sys.modules if m.startswith("my_strategies")]:
        del sys.modules[name]


def test_example_options_are_validated(example_module):
    with pytest.raises(ConfigError, match="strategy.options.rank"):
        load_config(TINY, [f'strategy.name="{example_module}"', "strategy.options.rank=0"])
    with pytest.raises(ConfigError, match="strategy.options.rnak"):
        load_config(TINY, [f'strategy.name="{example_module}"', "strategy.options.rnak=2"])


def test_example_strategy_runs(example_module, tmp_path):
    out = tmp_path / "run"
    code = main(
        [
            "run",
            str(TINY),
            "--out",
            str(out),
            "--set",
            f'strategy.name="{example_module}"',
            "--set",
            "strategy.options.rank=1",
        ]
    )
    assert code == 0
    with open(out / "communities.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(int(r["cluster"]) for r in rows) == [0, 1, 2, 3]  # one adapter per community
    assert all(r["lora_rank"] == "1" for r in rows)
    last = json.loads((out / "rounds.jsonl").read_text().splitlines()[-1])
    assert last["n_clusters"] == 4 and last["cluster_sizes"] == {"0": 1, "1": 1, "2": 1, "3": 1}
    # every community stayed within its budget
    assert all(0 < float(r["epsilon"]) <= 3.0 + 1e-9 for r in rows)
