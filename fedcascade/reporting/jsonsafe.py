"""Strict JSON for reports: no ``NaN``/``Infinity`` literals, only plain Python types.

``json.dumps`` writes ``NaN`` and ``Infinity`` by default, which strict parsers (browsers,
``jq``, most JSON libraries outside Python) reject. A report writes a missing or undefined value
as ``null`` and an infinite one as the string ``"inf"`` / ``"-inf"`` (``float("inf")`` reads it
back).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["json_safe", "dumps"]


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN -> ``None``, +-inf -> ``"inf"``/``"-inf"``, numpy -> Python, keys -> str.

    Tuples and arrays become lists; paths become strings; anything else unknown becomes its
    ``str`` so that writing a report never fails on an exotic value.
    """
    if obj is None or isinstance(obj, (bool, str, int)) and not isinstance(obj, np.generic):
        return obj
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        if math.isnan(x):
            return None
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return x
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return [json_safe(v) for v in obj.tolist()]
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.str_):
        return str(obj)
    return str(obj)


def dumps(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON text of ``obj`` (see :func:`json_safe`); never contains NaN or Infinity."""
    return json.dumps(json_safe(obj), indent=indent, allow_nan=False)
