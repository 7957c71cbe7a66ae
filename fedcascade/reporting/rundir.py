"""Read a finished run directory (the results contract) without ever raising on missing parts.

What cannot be read becomes a :class:`Note` that the report prints ("skipped: ... because ...")
instead of a traceback.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcascade.reporting.markdown import as_float

__all__ = ["Note", "RunDir", "read_run", "is_run_dir"]


@dataclass(frozen=True)
class Note:
    """Something a report could not compute, and why.

    Attributes
    ----------
    section : str
        Which part of the report is affected (e.g. ``"representation"``).
    message : str
        What was skipped and why, in one sentence a reader can act on.
    """

    section: str
    message: str


@dataclass
class RunDir:
    """The readable parts of one run directory.

    Attributes
    ----------
    path : Path
        The run directory.
    summary : dict
        ``summary.json`` (empty if unreadable).
    communities : list of dict
        Rows of ``communities.csv`` as strings (empty if unreadable).
    rounds : list of dict
        Records of ``rounds.jsonl`` (empty if absent).
    config : ExperimentConfig or None
        The resolved config rebuilt from ``config.toml`` (None if it cannot be).
    notes : list of Note
        What could not be read, and why.
    """

    path: Path
    summary: dict[str, Any] = field(default_factory=dict)
    communities: list[dict[str, str]] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    config: Any = None
    notes: list[Note] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The directory name (the run's name in tables)."""
        return self.path.name

    def note(self, section: str, message: str) -> None:
        """Record that ``section`` was (partly) skipped and why."""
        self.notes.append(Note(section, message))

    def epsilon_of(self) -> dict[int, float]:
        """Epsilon spent per community id (``inf`` for non-private runs, NaN if unknown)."""
        return {int(r["community_id"]): as_float(r.get("epsilon")) for r in self.communities}

    def cluster_of(self) -> dict[int, tuple[int | None, int | None]]:
        """``{community id: (cluster, lora rank)}`` as recorded (None where empty)."""
        out = {}
        for r in self.communities:
            c, k = r.get("cluster", ""), r.get("lora_rank", "")
            out[int(r["community_id"])] = (
                int(float(c)) if c not in ("", None) else None,
                int(float(k)) if k not in ("", None) else None,
            )
        return out


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` looks like a finished run directory (it has ``summary.json``)."""
    return (path / "summary.json").is_file()


def _read_json(path: Path, run: RunDir, section: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        run.note(section, f"{path.name} is missing")
        return {}
    except (OSError, ValueError) as e:
        run.note(section, f"{path.name} could not be read ({e})")
        return {}
    return data if isinstance(data, dict) else {}


def read_run(path: Path, load_config: bool = True) -> RunDir:
    """Read the results files of ``path``; never raises for missing or broken files.

    Parameters
    ----------
    path : Path
        A run directory.
    load_config : bool
        Rebuild the resolved config from ``config.toml`` (needed to rebuild data and models).
    """
    run = RunDir(Path(path))
    run.summary = _read_json(run.path / "summary.json", run, "summary")
    try:
        with open(run.path / "communities.csv", newline="", encoding="utf-8") as f:
            run.communities = list(csv.DictReader(f))
    except FileNotFoundError:
        run.note("communities", "communities.csv is missing: no per-community table or epsilon")
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        run.note("communities", f"communities.csv could not be read ({e})")
    rounds_path = run.path / "rounds.jsonl"
    if rounds_path.is_file():
        for i, line in enumerate(rounds_path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                run.rounds.append(json.loads(line))
            except ValueError:
                run.note("rounds", f"rounds.jsonl line {i} is not valid JSON; skipped")
    if load_config:
        cfg_path = run.path / "config.toml"
        if not cfg_path.is_file():
            run.note("config", "config.toml is missing: data and models cannot be rebuilt")
        else:
            from fedcascade.config import load_config as _load

            try:
                run.config = _load(cfg_path)
            except Exception as e:  # noqa: BLE001 - any failure here only disables sections
                run.note("config", f"config.toml could not be loaded ({e})")
    return run
