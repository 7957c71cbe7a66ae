"""``fedcascade report DIR``: a Markdown report of a run or a sweep directory.

A run directory (it has ``summary.json``) gets its headline figures, accuracy per group and
sub-distribution, and the per-community table. A sweep directory (it has ``sweep.csv``) gets the
sweep table. The disparity report extends this module.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from fedcascade.errors import ConfigError


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "" if v is None else str(v)


def _table(rows: list[dict[str, Any]], cols: list[str]) -> list[str]:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return out


def run_report_lines(run_dir: Path) -> list[str]:
    """Markdown lines for one run directory."""
    summary = json.loads((run_dir / "summary.json").read_text())
    lines = [
        f"# Run {run_dir.name}",
        "",
        f"Strategy: {summary.get('strategy_label') or summary.get('strategy')}",
        "",
    ]
    keys = [
        "accuracy",
        "worst_group_accuracy",
        "accuracy_gap",
        "minority_accuracy",
        "majority_accuracy",
        "max_epsilon_spent",
        "target_epsilon",
        "rounds",
        "wall_seconds",
    ]
    lines += _table([{k: summary.get(k) for k in keys}], keys) + [""]
    for title, key in (
        ("Accuracy by group", "accuracy_by_group"),
        ("Accuracy by sub-distribution", "accuracy_by_sub_distribution"),
    ):
        d = summary.get(key) or {}
        if d:
            lines += (
                [f"## {title}", ""]
                + _table([{"name": k, "accuracy": v} for k, v in d.items()], ["name", "accuracy"])
                + [""]
            )
    with open(run_dir / "communities.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    cols = [
        "community_id",
        "group",
        "sub_distribution",
        "n_train",
        "cluster",
        "lora_rank",
        "accuracy",
        "epsilon",
        "noise_multiplier",
        "steps",
    ]
    lines += ["## Communities", ""] + _table(rows, cols) + [""]
    return lines


def write_report(path: Path) -> Path:
    """Write ``path/report.md`` for a run or sweep directory and return its path."""
    if (path / "summary.json").exists():
        lines = run_report_lines(path)
    elif (path / "sweep.md").exists():
        lines = (path / "sweep.md").read_text().splitlines()
    else:
        raise ConfigError(
            "DIR",
            str(path),
            "a run directory (with summary.json) or a sweep directory (with sweep.md)",
        )
    out = path / "report.md"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out
