"""The experiment config: one TOML file = one experiment.

Loading validates everything before any work starts (see :mod:`fedcascade.configtools`): an
unknown key, a wrong type, an out-of-range value or an impossible combination raises one
:class:`~fedcascade.errors.ConfigError` that names the key, the value given and what is allowed.
``--set key=value`` overrides are applied to the raw TOML first and then go through the very same
validation.
"""

from __future__ import annotations

import copy
import hashlib
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import tomli_w

from fedcascade.configtools import build, check, param, to_dict
from fedcascade.data import DataConfig
from fedcascade.errors import ConfigError
from fedcascade.metrics.config import MetricsConfig
from fedcascade.models import ModelConfig
from fedcascade.privacy import PrivacyConfig

__all__ = [
    "TrainConfig",
    "StrategyConfig",
    "SimulationConfig",
    "OutputConfig",
    "SweepConfig",
    "ExperimentConfig",
    "load_config",
    "config_from_dict",
    "apply_overrides",
    "parse_override",
    "dump_config",
    "config_digest",
]


@dataclass(frozen=True)
class TrainConfig:
    """``[train]``: the federated schedule and local optimisation."""

    rounds: int = param(3, ge=1, le=100_000, doc="number of federated rounds")
    local_epochs: float = param(
        1.0, gt=0, le=1000, doc="expected passes over a community's training data per round"
    )
    lr: float = param(0.1, gt=0, le=100, doc="local SGD learning rate")
    participation: float = param(1.0, gt=0, le=1, doc="fraction of communities sampled each round")
    timeout_seconds: float = param(3600.0, gt=0, doc="how long the server waits for replies")


@dataclass(frozen=True)
class StrategyConfig:
    """``[strategy]``: which aggregation strategy runs, and its own options."""

    name: str = param(
        "fedavg", doc="registered name (see `fedcascade strategies`) or 'pkg.module:Class'"
    )
    options: dict[str, Any] = param(
        default_factory=dict, doc="options of that strategy; validated by the strategy itself"
    )


@dataclass(frozen=True)
class SimulationConfig:
    """``[simulation]``: Flower's simulation engine with Ray."""

    engine: Literal["ray", "inline"] = param(
        "ray",
        doc="'ray': Flower's simulation engine; 'inline': same apps in this process, clients in turn",
    )
    num_cpus_per_client: float = param(
        1.0, gt=0, doc="CPUs Ray reserves per client; concurrency = floor(CPUs / this)"
    )
    num_gpus_per_client: float = param(0.0, ge=0)
    ray_address: str | None = param(
        None,
        doc="attach to an existing Ray cluster (e.g. 'auto' or '10.0.0.1:6379'); None starts one",
    )
    ray_num_cpus: int | None = param(None, ge=1, doc="CPUs of a locally started Ray instance")
    torch_threads: int = param(1, ge=1, le=256, doc="torch threads inside each client")


@dataclass(frozen=True)
class OutputConfig:
    """``[output]``: where the run directory goes."""

    dir: str = param("runs/{name}", doc="run directory; '{name}' and '{seed}' are filled in")
    overwrite: bool = param(False, doc="replace an existing non-empty run directory")


@dataclass(frozen=True)
class SweepRule:
    """``[[sweep.where]]``: dotted overrides for the points whose values match.

    E.g. ``match = {"strategy.name" = "cascade"}``, ``set = {"strategy.options.warmup_rounds" = 2}``
    (options only one strategy has), or a learning rate chosen per strategy on validation data.
    """

    match: dict[str, Any] = param(doc="dotted key -> value a point must have")
    set: dict[str, Any] = param(doc="dotted key -> value applied to matching points")
    quick_only: bool = param(False, doc="apply only under --quick")


@dataclass(frozen=True)
class SweepConfig:
    """``[sweep]``: a grid of runs over dotted config keys.

    ``grid`` maps a dotted key (e.g. ``"privacy.target_epsilon"``) to the list of values to
    try; the sweep runs the Cartesian product. ``quick`` holds dotted overrides that shrink every
    run to smoke-test size, ``quick_grid`` replaces grid axes under ``--quick``, and ``where``
    rules set keys only for the points that match.
    """

    grid: dict[str, list[Any]] = param(default_factory=dict)
    quick: dict[str, Any] = param(default_factory=dict)
    quick_grid: dict[str, list[Any]] = param(default_factory=dict)
    where: tuple[SweepRule, ...] = param(default_factory=tuple)

    def validate(self, key: str) -> None:
        for k, values in {**self.grid, **self.quick_grid}.items():
            check(len(values) > 0, f"{key}.grid.{k}", values, "a non-empty list of values")
            check(not k.startswith("sweep"), f"{key}.grid.{k}", k, "a key outside [sweep]")


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment. Every section has defaults; the TOML overrides what it names."""

    name: str = param("experiment", doc="used in the run directory name")
    seed: int = param(0, ge=0, le=2**31 - 1)
    data: DataConfig = param(default_factory=DataConfig)
    model: ModelConfig = param(default_factory=ModelConfig)
    privacy: PrivacyConfig = param(default_factory=PrivacyConfig)
    train: TrainConfig = param(default_factory=TrainConfig)
    strategy: StrategyConfig = param(default_factory=StrategyConfig)
    simulation: SimulationConfig = param(default_factory=SimulationConfig)
    output: OutputConfig = param(default_factory=OutputConfig)
    metrics: MetricsConfig = param(default_factory=MetricsConfig)
    sweep: SweepConfig = param(default_factory=SweepConfig)

    def validate(self, key: str) -> None:
        check(
            bool(self.name) and all(c.isalnum() or c in "-_." for c in self.name),
            "name",
            self.name,
            "a non-empty string of letters, digits, '-', '_' or '.'",
        )

    @property
    def run_dir(self) -> Path:
        """The run directory with ``{name}`` and ``{seed}`` filled in."""
        return Path(self.output.dir.format(name=self.name, seed=self.seed))


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key=value``; the value is read as a TOML value, else kept as a plain string.

    Examples: ``train.rounds=5`` -> 5, ``privacy.enabled=false`` -> False,
    ``strategy.name=ifca`` -> "ifca", ``model.hidden=[32,32]`` -> [32, 32].
    """
    if "=" not in text:
        raise ConfigError("--set", text, "KEY=VALUE, e.g. train.rounds=5")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(
            "--set", text, "KEY=VALUE with a dotted key such as privacy.target_epsilon"
        )
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, value


def apply_overrides(raw: Mapping[str, Any], overrides: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """Return a deep copy of ``raw`` with dotted ``(key, value)`` overrides applied."""
    out = copy.deepcopy(dict(raw))
    for key, value in overrides:
        node = out
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(".".join(parts[: i + 1]), nxt, "a table, to set a key inside it")
            node = nxt
        # strategy.options and sweep grids hold free-form keys; everything else is checked by build()
        node[parts[-1]] = value
    return out


def config_from_dict(raw: Mapping[str, Any], resolve_strategy: bool = True) -> ExperimentConfig:
    """Validate a raw config mapping (a parsed TOML file) into an :class:`ExperimentConfig`.

    The strategy name and its options are resolved and validated here too, so a typo in a
    strategy option fails at load time, not after an hour of training. Clients pass
    ``resolve_strategy=False``: they never run the strategy, and a user's strategy module need
    only be importable where the server runs.
    """
    cfg = build(ExperimentConfig, raw, "")
    if not resolve_strategy:
        return cfg
    # Imported here: strategies import fedcascade, not the other way round at module load.
    from strategies.registry import resolve_strategy as resolve

    cls = resolve(cfg.strategy.name, key="strategy.name")
    cls.build_options(cfg.strategy.options, key="strategy.options")
    cls.check_config(cfg)
    return cfg


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Read, override and validate an experiment TOML file.

    Parameters
    ----------
    path : str or Path
        The experiment file.
    overrides : iterable of str
        ``key=value`` strings (the CLI's ``--set``).

    Raises
    ------
    ConfigError
        If the file cannot be read or parsed, or anything in it is invalid.
    """
    raw = apply_overrides(read_toml(path), [parse_override(o) for o in overrides])
    return config_from_dict(raw)


def read_toml(path: str | Path) -> dict[str, Any]:
    """The parsed experiment file; a missing, unreadable or malformed file is a ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("CONFIG", str(path), "the path of an existing experiment TOML file")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(
            "CONFIG", str(path), "a valid TOML file", f"TOML parse error: {e}"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError("CONFIG", str(path), "a readable UTF-8 text file", str(e)) from None


def config_to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """The fully resolved config as plain TOML-writable data."""
    return to_dict(cfg)


def dump_config(cfg: ExperimentConfig) -> str:
    """The fully resolved config as TOML text (enough to rerun exactly)."""
    return tomli_w.dumps(config_to_dict(cfg))


def config_digest(cfg: ExperimentConfig, *sections: str) -> str:
    """A short stable hash of the whole config, or of the named sections only."""
    d = config_to_dict(cfg)
    if sections:
        d = {s: d.get(s) for s in sections} | {"seed": cfg.seed}
    return hashlib.sha256(tomli_w.dumps(d).encode()).hexdigest()[:16]
