"""Find a strategy class by registered name or by import path ``package.module:Class``."""

from __future__ import annotations

import difflib
import importlib

from fedcascade.errors import ConfigError

# name -> "module:Class"; modules are imported only when chosen, so one broken strategy
# cannot stop the others from loading.
BUILTIN: dict[str, str] = {
    "fedavg": "strategies.fedavg:FedAvg",
    "dp-fedavg": "strategies.dp_fedavg:DPFedAvg",
    "ifca": "strategies.ifca:IFCA",
    "oracle-clustered": "strategies.oracle_clustered:OracleClustered",
    "r-dpcfl": "strategies.r_dpcfl:RDPCFL",
    "cascade": "strategies.cascade:Cascade",
}


def register(name: str, target: str) -> None:
    """Register ``target`` ("module:Class") under ``name`` for this process."""
    BUILTIN[name] = target


def resolve_strategy(name: str, key: str = "strategy.name") -> type:
    """Return the strategy class for ``name``.

    Raises
    ------
    ConfigError
        Unknown name, unimportable module, missing class, or a class that is not a
        :class:`strategies.base.FedcascadeStrategy`.
    """
    from strategies.base import FedcascadeStrategy

    target = BUILTIN.get(name, name)
    if ":" not in target:
        close = difflib.get_close_matches(name, list(BUILTIN), n=1)
        raise ConfigError(
            key,
            name,
            f"one of {sorted(BUILTIN)} or an import path 'package.module:Class'",
            f"did you mean '{close[0]}'?" if close else "",
        )
    module_name, _, cls_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(key, name, "an importable module path", f"import failed: {e}") from None
    cls = getattr(module, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, FedcascadeStrategy)):
        raise ConfigError(
            key,
            name,
            f"a subclass of strategies.base.FedcascadeStrategy named {cls_name} in {module_name}",
        )
    return cls
