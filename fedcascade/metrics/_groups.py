"""Small vectorised helpers shared by the metric modules: grouping and input checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fedcascade.errors import DataError


def as_1d(values: Any, field: str, *, dtype: Any = None) -> np.ndarray:
    """Return ``values`` as a 1-D array, or raise :class:`DataError` naming ``field``."""
    arr = np.asarray(values, dtype=dtype)
    if arr.ndim != 1:
        raise DataError(
            field, f"an array of shape {arr.shape}", "a 1-D array (one value per record)"
        )
    return arr


def as_2d(values: Any, field: str, *, dtype: Any = float) -> np.ndarray:
    """Return ``values`` as a 2-D float array, or raise :class:`DataError` naming ``field``."""
    arr = np.asarray(values, dtype=dtype)
    if arr.ndim != 2:
        raise DataError(field, f"an array of shape {arr.shape}", "a 2-D array (one row per record)")
    return arr


def same_length(fields: dict[str, np.ndarray | None]) -> int:
    """Check that every non-``None`` array has the same first dimension and return it."""
    sizes = {name: len(a) for name, a in fields.items() if a is not None}
    if not sizes:
        return 0
    first_name, n = next(iter(sizes.items()))
    for name, size in sizes.items():
        if size != n:
            raise DataError(
                name, f"{size} records", f"{n} records, the same number as '{first_name}'"
            )
    return n


def group_index(groups: Any, field: str = "groups") -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct group names and, for each record, the position of its group.

    Parameters
    ----------
    groups : array-like of shape (n,)
        Group label of each record (str or int).
    field : str
        Name used in error messages.

    Returns
    -------
    names : np.ndarray of shape (g,)
        Distinct labels, sorted.
    inverse : np.ndarray of int, shape (n,)
        ``names[inverse] == groups``.
    """
    arr = as_1d(groups, field)
    names, inverse = np.unique(arr, return_inverse=True)
    return names, inverse.reshape(-1)


def group_mean(values: np.ndarray, inverse: np.ndarray, n_groups: int) -> np.ndarray:
    """Mean of ``values`` within each group (NaN for an empty group); one bincount, no loop."""
    counts = np.bincount(inverse, minlength=n_groups).astype(float)
    sums = np.bincount(inverse, weights=np.asarray(values, dtype=float), minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts


def group_key(name: Any) -> Any:
    """Plain-Python key for a group label (``np.str_('a')`` -> ``'a'``) so dicts print cleanly."""
    return name.item() if isinstance(name, np.generic) else name


def spread(values: Sequence[float] | np.ndarray) -> float:
    """``max - min`` over the finite entries (NaN when fewer than one finite value)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan")
    return float(v.max() - v.min())
