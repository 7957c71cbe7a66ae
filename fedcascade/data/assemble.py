"""Turn the natural units of a source into communities: split, partition, check, wrap.

Every source (synthetic, digits, adult, csv) produces a list of :class:`Unit` s: the records of
one sub-distribution (or group) and how many communities share them. This module does the
rest the same way for all of them, so partitioners and split rules behave identically
everywhere.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedcascade.data.config import DataConfig
from fedcascade.data.partition import assign_records, partition_weights, stratified_split
from fedcascade.data.types import Community
from fedcascade.errors import DataError

__all__ = ["Unit", "communities_from_units", "warn_small_test_groups", "SmallTestSetWarning"]

TRAIN, VAL, TEST = 0, 1, 2


class SmallTestSetWarning(UserWarning):
    """A group's test set in some community is too small to measure reliably."""


@dataclass
class Unit:
    """The records of one natural unit and how many communities share them.

    Attributes
    ----------
    name : str
        Prefix of its communities' names.
    sub_distribution : int
        Hidden sub-distribution id of all its communities.
    n_communities : int
        How many communities split these records.
    x : numpy.ndarray
        float32 features, shape ``(n, *input_shape)``.
    y : numpy.ndarray
        int64 labels.
    groups : numpy.ndarray
        str group label of every record.
    ids : numpy.ndarray
        int64 record ids in the source's numbering.
    split : numpy.ndarray, optional
        int8 split (0 train, 1 val, 2 test) fixed by the source (digits does this so that no
        base image is in a train split and a test split); ``None`` = stratified split here.
    name_format : str
        Format of community names, with fields ``unit`` and ``j``.
    """

    name: str
    sub_distribution: int
    n_communities: int
    x: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    ids: np.ndarray
    split: np.ndarray | None = None
    name_format: str = "{unit}-c{j}"


def _tensor_x(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _tensor_y(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))


def communities_from_units(
    units: Sequence[Unit],
    cfg: DataConfig,
    n_classes: int,
    rng: np.random.Generator,
    sizes: Sequence[float] | None = None,
) -> list[Community]:
    """Split and partition every unit, returning communities numbered in unit order.

    Parameters
    ----------
    units : sequence of Unit
        The source's units.
    cfg : DataConfig
        Supplies the split fractions and the partitioner.
    n_classes : int
        Number of label classes.
    rng : numpy.random.Generator
        Randomness for splits and partitions.
    sizes : sequence of float, optional
        ``size_skew`` sizes, one per community over all units (defaults to
        ``cfg.partition.sizes``).

    Returns
    -------
    list of Community

    Raises
    ------
    DataError
        If a community would get no training records (too many communities for the data).
    """
    p = cfg.partition
    sizes = p.sizes if sizes is None else sizes
    total = sum(u.n_communities for u in units)
    if sizes is not None and len(sizes) != total:
        raise DataError("data.partition.sizes", list(sizes), f"one size per community ({total})")
    fractions = (1.0 - cfg.test_fraction - cfg.val_fraction, cfg.val_fraction, cfg.test_fraction)
    out: list[Community] = []
    for unit in units:
        k = unit.n_communities
        split = unit.split if unit.split is not None else stratified_split(unit.y, fractions, rng)
        unit_sizes = None
        if sizes is not None:
            unit_sizes = list(sizes[len(out) : len(out) + k])
        parts = _partition_unit(unit, split, k, n_classes, rng, unit_sizes, cfg)
        for j in range(k):
            idx = [parts[s][j] for s in (TRAIN, VAL, TEST)]
            if len(idx[TRAIN]) == 0:
                raise DataError(
                    f"community {unit.name_format.format(unit=unit.name, j=j)}",
                    f"{len(unit.y)} records shared by {k} communities",
                    "at least one training record per community: use fewer communities, more "
                    "records, or a milder partition",
                )
            out.append(
                Community(
                    community_id=len(out),
                    name=unit.name_format.format(unit=unit.name, j=j),
                    x_train=_tensor_x(unit.x[idx[TRAIN]]),
                    y_train=_tensor_y(unit.y[idx[TRAIN]]),
                    x_val=_tensor_x(unit.x[idx[VAL]]),
                    y_val=_tensor_y(unit.y[idx[VAL]]),
                    x_test=_tensor_x(unit.x[idx[TEST]]),
                    y_test=_tensor_y(unit.y[idx[TEST]]),
                    groups_train=unit.groups[idx[TRAIN]],
                    groups_val=unit.groups[idx[VAL]],
                    groups_test=unit.groups[idx[TEST]],
                    sub_distribution=unit.sub_distribution,
                    ids_train=unit.ids[idx[TRAIN]],
                    ids_val=unit.ids[idx[VAL]],
                    ids_test=unit.ids[idx[TEST]],
                )
            )
    return out


def _partition_unit(
    unit: Unit,
    split: np.ndarray,
    k: int,
    n_classes: int,
    rng: np.random.Generator,
    unit_sizes: list[float] | None,
    cfg: DataConfig,
) -> list[list[np.ndarray]]:
    """Positions (into the unit) of each community's records, per split: ``parts[split][j]``."""
    p = cfg.partition
    pools = [np.flatnonzero(split == s) for s in (TRAIN, VAL, TEST)]
    # Dirichlet draws can leave a community (almost) empty; redraw a bounded number of times,
    # as common FL benchmarks do, then fail with advice rather than loop forever.
    attempts = 100 if p.method == "dirichlet" else 1
    for _ in range(attempts):
        w = partition_weights(
            p.method, k, n_classes, rng, power=p.power, sizes=unit_sizes, alpha=p.alpha
        )
        parts = []
        for pool in pools:
            local = assign_records(unit.y[pool], w, rng)
            parts.append([pool[ix] for ix in local])
        smallest = min(len(a) for a in parts[TRAIN])
        if k == 1 or p.method == "natural" or smallest >= p.min_train_records:
            return parts
    raise DataError(
        f"data.partition ({p.method}) for {unit.name}",
        f"a community with {smallest} training records",
        f"at least data.partition.min_train_records = {p.min_train_records}: raise alpha or the "
        "records per community, or lower the number of communities",
    )


def warn_small_test_groups(communities: Sequence[Community], min_group_test: int) -> list[str]:
    """Warn (once, listing offenders) when a group has too few test records in a community.

    Parameters
    ----------
    communities : sequence of Community
        The federation.
    min_group_test : int
        Threshold: a (community, group) pair with fewer test records than this is reported.
        0 disables the check.

    Returns
    -------
    list of str
        ``"<community name>/<group>: <n>"`` for each offender (also in the warning text).
    """
    if min_group_test <= 0:
        return []
    small: list[str] = []
    for c in communities:
        counts = Counter(c.groups_test.tolist())
        for g in sorted(set(c.groups_train.tolist()) | set(counts)):
            if counts.get(g, 0) < min_group_test:
                small.append(f"{c.name}/{g}: {counts.get(g, 0)}")
    if small:
        shown = ", ".join(small[:8]) + (f", ... ({len(small) - 8} more)" if len(small) > 8 else "")
        warnings.warn(
            f"{len(small)} (community, group) test sets have fewer than data.min_group_test = "
            f"{min_group_test} records, so their per-group metrics are too noisy to compare: "
            f"{shown}. Raise data.test_fraction or the records per community, or accept wider "
            "error bars.",
            SmallTestSetWarning,
            stacklevel=3,
        )
    return small
