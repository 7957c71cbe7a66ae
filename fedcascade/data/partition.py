"""Partitioners: how the records of one natural unit are shared among its communities.

A *unit* is a set of records from one sub-distribution (a synthetic or digits sub-distribution,
an Adult group, a CSV file). A partitioner draws a weight matrix ``W`` of shape
``(n_communities, n_classes)``: column ``c`` says which share of the unit's class-``c`` records
each community receives. The same ``W`` is applied to the unit's train, validation and test
pools separately, so each community's test split follows the same label mix as its training
data, and every record lands in exactly one community's split.

- ``natural``: equal iid shares (``W[i, c] = 1 / k``).
- ``size_skew``: shares ``s_i`` from a power law ``(i+1)^-power`` or from given sizes;
  ``W[i, c] = s_i`` (label mix unchanged).
- ``dirichlet``: for each class, shares over communities drawn from ``Dirichlet(alpha)``
  (Hsu et al. 2019); small ``alpha`` means each community sees few classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedcascade.errors import DataError

__all__ = ["partition_weights", "allocate_counts", "assign_records", "largest_remainder"]


def largest_remainder(total: int, shares: np.ndarray) -> np.ndarray:
    """Split the integer ``total`` in proportion to ``shares`` so the parts sum exactly to it.

    Parameters
    ----------
    total : int
        Number of items to split.
    shares : numpy.ndarray
        Non-negative weights (need not sum to 1; all-zero weights give all-zero parts).

    Returns
    -------
    numpy.ndarray
        int64 counts, same length as ``shares``, summing to ``total`` (or 0 if shares are 0).
    """
    shares = np.asarray(shares, dtype=np.float64)
    s = shares.sum()
    if total <= 0 or s <= 0:
        return np.zeros(len(shares), dtype=np.int64)
    exact = total * shares / s
    counts = np.floor(exact).astype(np.int64)
    rest = total - int(counts.sum())
    if rest > 0:
        # Ties broken by index (stable sort) so the split is deterministic.
        order = np.argsort(-(exact - counts), kind="stable")
        counts[order[:rest]] += 1
    return counts


def partition_weights(
    method: str,
    n_communities: int,
    n_classes: int,
    rng: np.random.Generator,
    *,
    power: float = 1.0,
    sizes: Sequence[float] | None = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """Draw the share matrix ``W`` (communities x classes) of one unit.

    Parameters
    ----------
    method : {"natural", "size_skew", "dirichlet"}
        The partitioner.
    n_communities, n_classes : int
        Shape of ``W``.
    rng : numpy.random.Generator
        Source of randomness (dirichlet only; power-law shares are deterministic).
    power : float
        ``size_skew`` exponent; community ``i`` gets a share proportional to ``(i+1)^-power``.
    sizes : sequence of float, optional
        ``size_skew`` with explicit relative sizes (overrides ``power``).
    alpha : float
        ``dirichlet`` concentration.

    Returns
    -------
    numpy.ndarray
        float64 array whose columns each sum to 1.
    """
    k = n_communities
    if method == "natural":
        w = np.ones((k, n_classes))
    elif method == "size_skew":
        if sizes is not None:
            s = np.asarray(sizes, dtype=np.float64)
            if s.shape != (k,):
                raise DataError("data.partition.sizes", list(sizes), f"{k} sizes for this unit")
        else:
            s = (np.arange(k) + 1.0) ** (-power)
        w = np.repeat(s[:, None], n_classes, axis=1)
    elif method == "dirichlet":
        w = rng.dirichlet(np.full(k, alpha), size=n_classes).T if k > 1 else np.ones((1, n_classes))
    else:  # pragma: no cover - the config Literal prevents this
        raise DataError("data.partition.method", method, "natural, size_skew or dirichlet")
    return w / w.sum(axis=0, keepdims=True)


def allocate_counts(class_counts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Records of each class given to each community (exact: columns sum to ``class_counts``).

    Parameters
    ----------
    class_counts : numpy.ndarray
        Records per class in the pool, shape ``(C,)``.
    weights : numpy.ndarray
        Share matrix from :func:`partition_weights`, shape ``(k, C)``.

    Returns
    -------
    numpy.ndarray
        int64 counts of shape ``(k, C)``.
    """
    k, n_classes = weights.shape
    out = np.zeros((k, n_classes), dtype=np.int64)
    for c in range(n_classes):
        out[:, c] = largest_remainder(int(class_counts[c]), weights[:, c])
    return out


def assign_records(
    labels: np.ndarray, weights: np.ndarray, rng: np.random.Generator
) -> list[np.ndarray]:
    """Split a pool of records among communities following ``weights``.

    Parameters
    ----------
    labels : numpy.ndarray
        int labels of the pool's records, shape ``(n,)``, values in ``0 .. C-1``.
    weights : numpy.ndarray
        Share matrix, shape ``(k, C)``.
    rng : numpy.random.Generator
        Shuffles records within each class before slicing.

    Returns
    -------
    list of numpy.ndarray
        For each community, sorted int64 positions into ``labels``. Every position appears in
        exactly one community.
    """
    k, n_classes = weights.shape
    labels = np.asarray(labels)
    n = len(labels)
    if n == 0:
        return [np.zeros(0, dtype=np.int64) for _ in range(k)]
    # Records grouped by class, shuffled within each class.
    perm = rng.permutation(n)
    order = perm[np.argsort(labels[perm], kind="stable")]
    if np.allclose(weights, weights[:, :1]):
        # Same share for every class (natural, size_skew): exact community totals, and each
        # community gets every class in proportion (+-1). Deal the class-sorted records to a
        # sequence in which community i appears T_i times, evenly spread.
        totals = largest_remainder(n, weights[:, 0])
        # Communities listed in random order before a stable sort: a random tie-break, so no
        # community is always first in line for the rarest class.
        comm = rng.permutation(k)
        comm = comm[totals[comm] > 0]
        keys = np.concatenate([(np.arange(totals[i]) + 0.5) / totals[i] for i in comm])
        owners = np.repeat(comm, totals[comm])
        seq = owners[np.argsort(keys, kind="stable")]
        owner = np.empty(n, dtype=np.int64)
        owner[order] = seq
    else:
        class_counts = np.bincount(labels, minlength=n_classes)[:n_classes]
        counts = allocate_counts(class_counts, weights)
        owner = np.empty(n, dtype=np.int64)
        start = 0
        for c in range(n_classes):
            owner[order[start : start + class_counts[c]]] = np.repeat(np.arange(k), counts[:, c])
            start += class_counts[c]
    # Group positions by owner in one stable sort (positions stay sorted within a community).
    by_owner = np.argsort(owner, kind="stable")
    return np.split(by_owner.astype(np.int64), np.cumsum(np.bincount(owner, minlength=k))[:-1])


def stratified_split(
    labels: np.ndarray, fractions: Sequence[float], rng: np.random.Generator
) -> np.ndarray:
    """Assign every record to one of ``len(fractions)`` splits, stratified by label.

    Parameters
    ----------
    labels : numpy.ndarray
        int labels, shape ``(n,)``.
    fractions : sequence of float
        Target share of each split (e.g. ``(0.7, 0.1, 0.2)`` for train/val/test).
    rng : numpy.random.Generator
        Shuffles records within each class.

    Returns
    -------
    numpy.ndarray
        int8 split index of every record. Per class, the split sizes follow ``fractions`` by
        largest remainder, and leftover records of tiny classes go to the first split (train).
    """
    labels = np.asarray(labels)
    out = np.zeros(len(labels), dtype=np.int8)
    fr = np.asarray(fractions, dtype=np.float64)
    # Rounding per class could starve the small splits of a tiny pool; we also round the total
    # per split and then walk classes so the split totals match the overall target.
    target = largest_remainder(len(labels), fr)
    classes, inverse = np.unique(labels, return_inverse=True)
    per_class = (
        np.stack([largest_remainder(int((inverse == j).sum()), fr) for j in range(len(classes))])
        if len(classes)
        else np.zeros((0, len(fr)), dtype=np.int64)
    )
    # Fix split totals: move records between splits within the classes that have them.
    diff = target - per_class.sum(axis=0)
    for s in range(1, len(fr)):
        while diff[s] != 0:
            step = 1 if diff[s] > 0 else -1
            donor_col = 0
            # Take from (or give to) the class with the most records in the donor split.
            order = np.argsort(-per_class[:, donor_col] if step > 0 else -per_class[:, s])
            j = int(order[0])
            if step > 0 and per_class[j, donor_col] == 0:
                break
            if step < 0 and per_class[j, s] == 0:
                break
            per_class[j, s] += step
            per_class[j, donor_col] -= step
            diff[s] -= step
    for j in range(len(classes)):
        idx = np.flatnonzero(inverse == j)
        rng.shuffle(idx)
        bounds = np.concatenate([[0], np.cumsum(per_class[j])])
        for s in range(len(fr)):
            out[idx[bounds[s] : bounds[s + 1]]] = s
    return out
