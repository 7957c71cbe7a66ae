"""Small argument checks shared by the clustering modules (clear messages, no bare tracebacks)."""

from __future__ import annotations

from typing import Any

import numpy as np


def fail(name: str, given: Any, expected: str) -> None:
    """Raise ``ValueError`` saying which argument, what was given and what is allowed."""
    shown = given
    if isinstance(given, np.ndarray):
        shown = f"array of shape {given.shape}"
    raise ValueError(f"{name}: got {shown!r}; expected {expected}")


def as_matrix(x: Any, name: str, *, min_rows: int = 1) -> np.ndarray:
    """``x`` as a finite float64 2-D array with at least ``min_rows`` rows."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        fail(name, arr, "a 2-D array (n_clients, n_features)")
    if arr.shape[0] < min_rows or arr.shape[1] < 1:
        fail(name, arr, f"at least {min_rows} row(s) and 1 column")
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        fail(name, f"non-finite value at row {bad[0]}, column {bad[1]}", "finite numbers only")
    return arr


def positive(
    value: float, name: str, *, allow_zero: bool = False, allow_inf: bool = False
) -> float:
    """``value`` as a float that is > 0 (or >= 0)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        fail(name, value, "a number")
    if np.isnan(v) or (np.isinf(v) and not allow_inf) or v < 0 or (v == 0 and not allow_zero):
        fail(
            name,
            value,
            ("a number >= 0" if allow_zero else "a number > 0") + ("" if allow_inf else ", finite"),
        )
    return v


def labels_array(labels: Any, name: str, n: int | None = None) -> np.ndarray:
    """``labels`` as a 1-D integer array (of length ``n`` when given)."""
    arr = np.asarray(labels)
    if arr.ndim != 1 or (n is not None and len(arr) != n):
        fail(name, arr, f"a 1-D array of {n if n is not None else 'n'} integer cluster labels")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr)):
            arr = arr.astype(int)
        else:
            fail(name, arr.dtype, "integer cluster labels")
    if arr.size and arr.min() < 0:
        fail(name, int(arr.min()), "labels >= 0")
    return arr.astype(int)


def rng_of(rng: Any) -> np.random.Generator:
    """A numpy Generator from a Generator, a seed or ``None``."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)
