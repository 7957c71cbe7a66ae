"""Sweeps: a grid of runs declared in the experiment TOML's ``[sweep]`` table.

Each grid point is the base config with dotted overrides (e.g. ``strategy.name = "ifca"``,
``privacy.target_epsilon = 3``, ``seed = 1``), validated like any config *before the first run
starts*. Each point gets its own run directory; finished points are kept and skipped on rerun,
and a failing point is recorded without losing the others. At the end ``sweep.csv`` (one row
per point) and ``sweep.md`` (mean and standard deviation over seeds) are written.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
import re
import shutil
import statistics
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fedcascade.config import (
    ExperimentConfig,
    apply_overrides,
    config_from_dict,
    parse_override,
    read_toml,
)
from fedcascade.configtools import to_dict
from fedcascade.errors import ConfigError

#: summary.json fields copied into sweep.csv (plus any numeric extra a strategy reports)
METRICS = [
    "accuracy",
    "val_accuracy",
    "worst_group_accuracy",
    "accuracy_gap",
    "minority_accuracy",
    "majority_accuracy",
    "max_epsilon_spent",
    "wall_seconds",
]


@dataclass(frozen=True)
class SweepPoint:
    """One run of a sweep."""

    name: str
    overrides: tuple[tuple[str, Any], ...]
    cfg: ExperimentConfig


def _slug(key: str, value: Any) -> str:
    short = key.split(".")[-1]
    short = {
        "target_epsilon": "eps",
        "name": "strategy" if key.startswith("strategy") else "name",
    }.get(short, short)
    return re.sub(r"[^A-Za-z0-9.\-]+", "-", f"{short}-{value}")


def _lookup(raw: Mapping[str, Any], dotted: str) -> Any:
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def expand(
    raw: Mapping[str, Any], quick: bool = False, extra_overrides: Sequence[str] = ()
) -> list[SweepPoint]:
    """All points of the sweep declared in ``raw`` (a parsed experiment TOML), validated.

    Raises
    ------
    ConfigError
        If the base config, the grid or any point is invalid (before anything runs).
    """
    base = apply_overrides(raw, [parse_override(o) for o in extra_overrides])
    base_cfg = config_from_dict(base)
    sweep = base_cfg.sweep
    grid = dict(sweep.grid)
    if quick:
        base = apply_overrides(base, list(sweep.quick.items()))
        grid.update(sweep.quick_grid)
    if not grid:
        raise ConfigError(
            "sweep.grid", {}, "at least one key with a list of values", "a sweep needs a grid"
        )
    keys = list(grid)
    rules = [r for r in sweep.where if quick or not r.quick_only]
    points = []
    for values in itertools.product(*(grid[k] for k in keys)):
        overrides = tuple(zip(keys, values))
        name = "_".join(_slug(k, v) for k, v in overrides)
        point = apply_overrides(base, overrides)
        extra = [
            kv
            for r in rules
            if all(_lookup(point, k) == v for k, v in r.match.items())
            for kv in r.set.items()
        ]
        try:
            cfg = config_from_dict(apply_overrides(point, extra))
        except ConfigError as e:
            raise ConfigError(
                e.key, e.given, e.allowed, f"in sweep point {name}. {e.why}".strip()
            ) from None
        points.append(SweepPoint(name, overrides, cfg))
    return points


def load_sweep(
    path: str | Path, quick: bool = False, overrides: Sequence[str] = ()
) -> list[SweepPoint]:
    """Read an experiment TOML and expand its sweep."""
    return expand(read_toml(path), quick, overrides)


def _numeric_extras(summary: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in summary.items():
        if k in METRICS or k in ("seed", "rounds", "n_communities", "target_epsilon"):
            continue
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = v
    return out


def effective_digest(cfg: ExperimentConfig) -> str:
    """A digest of what determines a run's results: the config without its output section,
    and without the privacy section when the strategy trains non-privately (it ignores it)."""
    from strategies.registry import resolve_strategy

    d = to_dict(cfg)
    d.pop("output", None)
    d.pop("sweep", None)
    if not resolve_strategy(cfg.strategy.name).private:
        d.pop("privacy", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


def run_sweep(
    points: Sequence[SweepPoint],
    out_dir: Path,
    run_one: Callable[[ExperimentConfig, Path], Path],
    log: Callable[[str], None] = print,
) -> tuple[Path, list[str]]:
    """Run every point (skipping finished ones) and write ``sweep.csv`` and ``sweep.md``.

    Returns the sweep directory and the names of failed points.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []
    t0 = time.perf_counter()
    done: dict[str, Path] = {}
    for i, point in enumerate(points, 1):
        run_dir = out_dir / point.name
        key = effective_digest(point.cfg)
        if (run_dir / "summary.json").exists():
            log(f"[{i}/{len(points)}] {point.name}: already finished, kept")
            done.setdefault(key, run_dir)
            continue
        if key in done:
            # e.g. non-private fedavg at several epsilons: the same run, so copy it
            shutil.copytree(done[key], run_dir, dirs_exist_ok=True)
            (run_dir / "same_as.txt").write_text(f"{done[key].name}\n")
            log(f"[{i}/{len(points)}] {point.name}: identical to {done[key].name}, copied")
            continue
        log(f"[{i}/{len(points)}] {point.name} (elapsed {time.perf_counter() - t0:.0f}s)")
        try:
            cfg = replace(point.cfg, output=replace(point.cfg.output, overwrite=True))
            run_one(cfg, run_dir)
            done[key] = run_dir
        except Exception as e:  # noqa: BLE001 - record and go on; finished points must survive
            failed.append(point.name)
            (out_dir / "failed.txt").open("a").write(f"{point.name}: {e!r}\n")
            log(f"  FAILED: {e}")
    write_tables(points, out_dir)
    return out_dir, failed


def collect(points: Sequence[SweepPoint], out_dir: Path) -> list[dict[str, Any]]:
    """One row per finished point: its grid values and summary metrics."""
    rows = []
    for point in points:
        summary_path = out_dir / point.name / "summary.json"
        if not summary_path.exists():
            continue
        summary = json.loads(summary_path.read_text())
        row: dict[str, Any] = {"run": point.name, **{k: v for k, v in point.overrides}}
        row["strategy_label"] = summary.get("strategy_label")
        for m in METRICS:
            row[m] = summary.get(m)
        row.update(_numeric_extras(summary))
        rows.append(row)
    return rows


def _fmt(values: list[float]) -> str:
    vals = [float(v) for v in values if v is not None and v != "" and math.isfinite(float(v))]
    if not vals:
        return ""
    if len(vals) == 1:
        return f"{vals[0]:.4f}"
    return f"{statistics.mean(vals):.4f} ± {statistics.stdev(vals):.4f}"


def write_tables(points: Sequence[SweepPoint], out_dir: Path) -> list[dict[str, Any]]:
    """``sweep.csv`` (every finished point) and ``sweep.md`` (mean ± std over seeds)."""
    rows = collect(points, out_dir)
    grid_keys = list(dict.fromkeys(k for p in points for k, _ in p.overrides))
    metric_cols = list(
        dict.fromkeys(
            k for r in rows for k in r if k not in grid_keys and k not in ("run", "strategy_label")
        )
    )
    with open(out_dir / "sweep.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["run", *grid_keys, "strategy_label", *metric_cols])
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in w.fieldnames})
    group_keys = [k for k in grid_keys if k != "seed"]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in group_keys), []).append(r)
    shown = [m for m in METRICS if any(r.get(m) is not None for r in rows)] + [
        m for m in metric_cols if m not in METRICS and m.endswith("ari")
    ]
    lines = [
        f"# Sweep {out_dir.name}",
        "",
        "Mean ± standard deviation over seeds (n = runs per row).",
        "",
        "| " + " | ".join([*group_keys, "n", *shown]) + " |",
        "|" + "---|" * (len(group_keys) + 1 + len(shown)),
    ]
    for key, members in groups.items():
        cells = (
            [str(v) for v in key]
            + [str(len(members))]
            + [_fmt([m.get(c) for m in members]) for c in shown]
        )
        lines.append("| " + " | ".join(cells) + " |")
    (out_dir / "sweep.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return rows


def select_best(
    sweep_dir: Path,
    by: str,
    param_key: str,
    metric: str = "val_accuracy",
    default: float | None = None,
) -> dict[str, Any]:
    """For each value of ``by`` (e.g. the strategy), the ``param_key`` value whose runs have the
    highest mean ``metric`` in ``sweep_dir/sweep.csv``.

    Ties go to the value closest to ``default``. Meant for validation metrics only: choosing on
    the test split would leak into the reported numbers.

    Raises
    ------
    ConfigError
        If ``sweep.csv`` is missing or lacks one of the named columns.
    """
    path = Path(sweep_dir) / "sweep.csv"
    if not path.is_file():
        raise ConfigError("SWEEP_DIR", str(sweep_dir), "a sweep directory holding sweep.csv")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for col in (by, param_key, metric):
        if rows and col not in rows[0]:
            raise ConfigError(
                "--by/--param/--metric", col, f"a column of sweep.csv: {sorted(rows[0])}"
            )
    scores: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        if r[metric] not in ("", None):
            scores.setdefault((r[by], r[param_key]), []).append(float(r[metric]))
    best: dict[str, Any] = {}
    for group in dict.fromkeys(g for g, _ in scores):
        options = [(statistics.mean(v), p) for (g, p), v in scores.items() if g == group]
        tie = (lambda p: -abs(float(p) - default)) if default is not None else (lambda p: 0.0)
        _, chosen = max(options, key=lambda t: (t[0], tie(t[1])))
        best[group] = tomllib.loads(f"v = {chosen}")["v"] if chosen else chosen
    return best


def where_rules(best: Mapping[str, Any], by: str, param_key: str) -> str:
    """``[[sweep.where]]`` TOML rules setting ``param_key`` per value of ``by``."""
    out = []
    for group, value in best.items():
        out += [
            "[[sweep.where]]",
            f'match = {{ "{by}" = "{group}" }}',
            f'set = {{ "{param_key}" = {value!r} }}',
            "",
        ]
    return "\n".join(out)
