"""The TOML examples in docs/data.md are valid [data] configs."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from fedcascade.configtools import build
from fedcascade.data import DataConfig

DOC = Path(__file__).resolve().parents[1] / "docs" / "data.md"
BLOCKS = re.findall(r"```toml\n(.*?)```", DOC.read_text(), flags=re.S)


def test_docs_have_examples():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_doc_example_is_a_valid_config(i):
    raw = tomllib.loads(BLOCKS[i])["data"]
    cfg = build(DataConfig, raw, "data")
    if cfg.source in ("synthetic", "digits"):
        assert cfg.n_communities >= 6


@pytest.mark.parametrize(
    "raw",
    [
        {},
        {
            "source": "digits",
            "digits": {"sub_distributions": [{"label_shift": 1}, {"rotation": 90}]},
        },
        {
            "source": "csv",
            "csv": {"path": "x.csv", "label": "y", "numeric": ["a"], "community": "c"},
        },
        {"partition": {"method": "size_skew", "sizes": [1, 2, 3, 1, 1, 1]}},
    ],
)
def test_resolved_config_round_trips_through_toml(raw):
    import tomli_w

    from fedcascade.configtools import to_dict

    cfg = build(DataConfig, raw, "data")
    again = build(DataConfig, tomllib.loads(tomli_w.dumps({"data": to_dict(cfg)}))["data"], "data")
    assert again == cfg and hash(again) == hash(cfg)  # same cache key after a round trip
