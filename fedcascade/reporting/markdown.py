"""Markdown tables and number formatting shared by the run and sweep reports."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["fmt", "table", "mean_std", "fmt_mean_std", "as_float"]

#: how a value that cannot be computed is shown
MISSING = "–"


def as_float(value: Any) -> float:
    """``value`` as a float; ``None``, ``""`` and unparsable text give NaN (``"inf"`` parses)."""
    if value is None or value == "" or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def fmt(value: Any, digits: int = 3) -> str:
    """One table cell: floats to ``digits`` decimals, NaN/None as ``–``, inf as ``∞``."""
    if value is None or value == "":
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return MISSING
        if math.isinf(value):
            return "∞" if value > 0 else "-∞"
        return f"{value:.{digits}f}"
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text


def table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    headers: Sequence[str] | None = None,
    digits: int = 3,
) -> list[str]:
    """Markdown lines of a table with one row per mapping; absent keys are shown as ``–``."""
    heads = list(headers) if headers is not None else list(columns)
    out = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    out += ["| " + " | ".join(fmt(r.get(c), digits) for c in columns) + " |" for r in rows]
    return out


def mean_std(values: Iterable[Any]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (NaN below 2 values) and count of the finite values."""
    vals = [v for v in (as_float(x) for x in values) if math.isfinite(v)]
    if not vals:
        return math.nan, math.nan, 0
    sd = statistics.stdev(vals) if len(vals) > 1 else math.nan
    return statistics.fmean(vals), sd, len(vals)


def fmt_mean_std(values: Iterable[Any], digits: int = 3) -> str:
    """``"mean ± std"`` over the finite values (just the mean for one value, ``–`` for none)."""
    m, s, n = mean_std(values)
    if n == 0:
        return MISSING
    if n == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {s:.{digits}f}"
