"""Shared test setup: keep torch to one thread and Flower's state out of the user's home."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(autouse=True, scope="session")
def _torch_single_thread():
    import torch

    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session", autouse=True)
def _isolated_homes(tmp_path_factory):
    """FLWR_HOME and the backbone cache in temporary folders for the whole session."""
    flwr_home = tmp_path_factory.mktemp("flwr_home")
    cache = tmp_path_factory.mktemp("fedcascade_cache")
    old = {k: os.environ.get(k) for k in ("FLWR_HOME", "FEDCASCADE_CACHE")}
    os.environ["FLWR_HOME"] = str(flwr_home)
    os.environ["FEDCASCADE_CACHE"] = str(cache)
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
