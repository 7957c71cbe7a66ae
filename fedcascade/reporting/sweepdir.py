"""Read a sweep directory: its runs, their grid values, seed siblings and non-private references.

A sweep directory holds one run directory per grid point and ``sweep.csv`` (``run``, one column
per grid key, ``strategy_label``, metrics). Grid values come from ``sweep.csv``; strategy, seed,
privacy and the metrics come from each run's own ``summary.json`` (the authority).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcascade.reporting.markdown import as_float
from fedcascade.reporting.rundir import Note, is_run_dir

__all__ = [
    "SweepRun",
    "Sweep",
    "read_sweep",
    "is_sweep_dir",
    "seed_siblings",
    "STRATEGY_KEY",
    "EPSILON_KEY",
    "SEED_KEY",
    "REFERENCE_STRATEGY",
]

STRATEGY_KEY = "strategy.name"
EPSILON_KEY = "privacy.target_epsilon"
SEED_KEY = "seed"
#: the non-private run the disparate impact of DP is measured against
REFERENCE_STRATEGY = "fedavg"


def _parse(value: str) -> Any:
    """A grid value from ``sweep.csv``: int, float, bool or the text itself."""
    text = value.strip()
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


@dataclass
class SweepRun:
    """One finished point of a sweep.

    Attributes
    ----------
    name : str
        Its directory name.
    path : Path
        Its run directory.
    grid : dict
        Its grid values (``{dotted key: value}``), empty when ``sweep.csv`` is absent.
    summary : dict
        Its ``summary.json``.
    """

    name: str
    path: Path
    grid: dict[str, Any]
    summary: dict[str, Any]
    rounds: list[dict[str, Any]] = field(default_factory=list)

    @property
    def strategy(self) -> str:
        """Registered strategy name (from the summary, else the grid)."""
        return str(self.summary.get("strategy") or self.grid.get(STRATEGY_KEY) or "?")

    @property
    def private(self) -> bool:
        """Whether the run trained with DP."""
        return bool(self.summary.get("private"))

    @property
    def seed(self) -> Any:
        """The run seed."""
        return self.summary.get("seed", self.grid.get(SEED_KEY))

    @property
    def epsilon(self) -> float:
        """Target epsilon of a private run; ``inf`` for a non-private one."""
        if not self.private:
            return math.inf
        e = as_float(self.grid.get(EPSILON_KEY, self.summary.get("target_epsilon")))
        return e if math.isfinite(e) else as_float(self.summary.get("target_epsilon"))

    def other(self, grid_keys: Sequence[str]) -> tuple[tuple[str, Any], ...]:
        """Grid values other than strategy, epsilon and seed (what a reference must share)."""
        return tuple(
            (k, self.grid.get(k))
            for k in grid_keys
            if k not in (STRATEGY_KEY, EPSILON_KEY, SEED_KEY)
        )

    def config_key(self, grid_keys: Sequence[str]) -> tuple:
        """Everything but the seed: runs with equal keys differ only in their seed."""
        without_seed = tuple((k, self.grid.get(k)) for k in grid_keys if k != SEED_KEY)
        if not grid_keys:  # no sweep.csv: fall back to what the summaries say
            return (("strategy", self.strategy), ("epsilon", self.epsilon))
        return without_seed


@dataclass
class Sweep:
    """A sweep directory's finished runs.

    Attributes
    ----------
    path : Path
    runs : list of SweepRun
        In ``sweep.csv`` order (directory order without it).
    grid_keys : list of str
        The grid's dotted keys (empty without ``sweep.csv``).
    notes : list of Note
        Unreadable or failed points.
    """

    path: Path
    runs: list[SweepRun]
    grid_keys: list[str]
    notes: list[Note] = field(default_factory=list)

    def seed_sets(self) -> list[list[SweepRun]]:
        """Groups of runs that differ only in their seed (every group, even of one run)."""
        sets: dict[tuple, list[SweepRun]] = {}
        for r in self.runs:
            sets.setdefault(r.config_key(self.grid_keys), []).append(r)
        return list(sets.values())

    def reference_for(self, run: SweepRun) -> SweepRun | None:
        """The non-private FedAvg run with the same seed and the same other grid values.

        Among several (an epsilon axis also multiplies the non-private runs, which ignore it),
        the one with the same epsilon grid value is preferred, then the first.
        """
        cands = [
            r
            for r in self.runs
            if r.strategy == REFERENCE_STRATEGY
            and not r.private
            and r.seed == run.seed
            and r.other(self.grid_keys) == run.other(self.grid_keys)
        ]
        same_eps = [r for r in cands if r.grid.get(EPSILON_KEY) == run.grid.get(EPSILON_KEY)]
        return (same_eps or cands or [None])[0]


def is_sweep_dir(path: Path) -> bool:
    """Whether ``path`` holds a sweep (``sweep.csv`` or run directories one level down)."""
    if (path / "sweep.csv").is_file():
        return True
    return path.is_dir() and any(is_run_dir(p) for p in path.iterdir() if p.is_dir())


def _read_rounds(path: Path) -> list[dict[str, Any]]:
    out = []
    try:
        lines = (path / "rounds.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def read_sweep(path: Path) -> Sweep:
    """Read every finished run of the sweep at ``path`` (never raises on a broken run)."""
    path = Path(path)
    notes: list[Note] = []
    grid_keys: list[str] = []
    rows: dict[str, dict[str, Any]] = {}
    csv_path = path / "sweep.csv"
    if csv_path.is_file():
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            if "run" in header and "strategy_label" in header:
                grid_keys = header[header.index("run") + 1 : header.index("strategy_label")]
            for row in reader:
                rows[row["run"]] = {k: _parse(row.get(k) or "") for k in grid_keys}
        names = list(rows)
    else:
        notes.append(
            Note("sweep", "sweep.csv is missing: runs are matched by their summaries only")
        )
        names = sorted(p.name for p in path.iterdir() if p.is_dir() and is_run_dir(p))
    runs = []
    for name in names:
        run_dir = path / name
        try:
            summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            notes.append(Note("sweep", f"run {name} has no readable summary.json ({e}); left out"))
            continue
        runs.append(SweepRun(name, run_dir, rows.get(name, {}), summary, _read_rounds(run_dir)))
    failed = path / "failed.txt"
    if failed.is_file():
        for line in failed.read_text(encoding="utf-8").splitlines():
            if line.strip():
                notes.append(Note("sweep", f"failed point: {line.strip()}"))
    return Sweep(path, runs, grid_keys, notes)


def seed_siblings(run_dir: Path) -> list[Path]:
    """Run directories of the same sweep that differ from ``run_dir`` only in their seed."""
    run_dir = Path(run_dir)
    parent = run_dir.parent
    if not (parent / "sweep.csv").is_file():
        return []
    sweep = read_sweep(parent)
    mine = next((r for r in sweep.runs if r.name == run_dir.name), None)
    if mine is None:
        return []
    key = mine.config_key(sweep.grid_keys)
    return [
        r.path
        for r in sweep.runs
        if r.name != mine.name and r.config_key(sweep.grid_keys) == key and r.seed != mine.seed
    ]
