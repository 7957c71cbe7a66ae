"""Build a federation once per process and serve communities from the cache.

A Flower simulation calls the ClientApp many times per worker process; regenerating (or
re-reading) the data for each call would dominate the run time of a many-community
federation. The cache key is the whole :class:`DataConfig` (a hashable frozen dataclass), the
data seed and, for file sources, the file's size and modification time, so an edited file is
re-read.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

from fedcascade.data.config import DataConfig
from fedcascade.data.types import Community, Federation
from fedcascade.errors import DataError

__all__ = ["build_federation", "load_community", "clear_cache", "cache_info", "data_seed"]

#: Federations kept per process (least recently used dropped first).
CACHE_SIZE = 4

_cache: OrderedDict[Hashable, Federation] = OrderedDict()
_lock = threading.Lock()
_stats = {"hits": 0, "misses": 0}


def data_seed(cfg: DataConfig, seed: int) -> int:
    """The seed the data is built from: ``cfg.seed`` when set, else the run seed."""
    return cfg.seed if cfg.seed is not None else seed


def _file_stamp(cfg: DataConfig) -> tuple:
    if cfg.source == "csv" and cfg.csv is not None:
        try:
            st = os.stat(cfg.csv.path)
        except OSError:
            return (cfg.csv.path, None)
        return (os.path.abspath(cfg.csv.path), st.st_size, st.st_mtime_ns)
    return ()


def _builder(source: str) -> Callable[[DataConfig, int], Federation]:
    if source == "synthetic":
        from fedcascade.data.synthetic import build_synthetic

        return build_synthetic
    if source == "digits":
        from fedcascade.data.digits import build_digits

        return build_digits
    if source == "adult":
        from fedcascade.data.adult import build_adult

        return build_adult
    if source == "csv":
        from fedcascade.data.csvfile import build_csv

        return build_csv
    raise DataError("data.source", source, "synthetic, digits, adult or csv")  # pragma: no cover


def build_federation(cfg: DataConfig, seed: int) -> Federation:
    """Build (or fetch from the per-process cache) the federation of ``cfg``.

    Parameters
    ----------
    cfg : DataConfig
        The validated ``[data]`` section.
    seed : int
        The run seed (ignored when ``cfg.seed`` fixes the data).

    Returns
    -------
    Federation
        The same object for the same (config, seed) within a process; treat it as read-only.

    Raises
    ------
    DataError
        If the data cannot be read or does not fit the config.
    """
    s = data_seed(cfg, seed)
    key = (cfg, s, _file_stamp(cfg))
    with _lock:
        fed = _cache.get(key)
        if fed is not None:
            _cache.move_to_end(key)
            _stats["hits"] += 1
            return fed
        _stats["misses"] += 1
    # Built outside the lock: a second thread asking for the same key builds it twice, which
    # is wasteful but correct (the build is deterministic).
    fed = _builder(cfg.source)(cfg, s)
    with _lock:
        _cache[key] = fed
        _cache.move_to_end(key)
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return fed


def load_community(cfg: DataConfig, seed: int, community_id: int) -> Community:
    """One community of the (cached) federation; ``community_id`` is the Flower partition id.

    Raises
    ------
    DataError
        If ``community_id`` is not a community of this federation.
    """
    fed = build_federation(cfg, seed)
    if not 0 <= community_id < len(fed.communities):
        raise DataError(
            "partition id",
            community_id,
            f"0 .. {len(fed.communities) - 1} (the federation has {len(fed.communities)} "
            "communities; set num-supernodes to data.n_communities)",
        )
    return fed.communities[community_id]


def clear_cache() -> None:
    """Forget every cached federation (tests, or to free memory)."""
    with _lock:
        _cache.clear()
        _stats["hits"] = 0
        _stats["misses"] = 0


def cache_info() -> dict[str, int]:
    """Cache statistics: ``hits``, ``misses`` and current ``size``."""
    with _lock:
        return {**_stats, "size": len(_cache)}
