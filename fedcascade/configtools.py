"""Typed, validated config sections built from plain dicts (TOML tables).

Every config section in fedcascade is a frozen dataclass whose fields are declared with
:func:`param`. :func:`build` turns a TOML table into that dataclass and checks, before any work
starts: unknown keys (with a suggestion), missing required keys, types (``Literal``, ``Optional``,
tuples, lists, dicts and nested sections included) and numeric ranges. Cross-field rules live in
an optional ``validate(self, key)`` method that raises :class:`~fedcascade.errors.ConfigError`.

Modelled on scikit-learn's parameter validation: every error says which key, what was given and
what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from fedcascade.errors import MISSING, ConfigError

T = TypeVar("T")

__all__ = ["param", "build", "to_dict", "check", "join_key"]


def param(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Any = dataclasses.MISSING,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    doc: str = "",
) -> Any:
    """Declare a config field with optional numeric bounds and a one-line description.

    Parameters
    ----------
    default, default_factory
        As for :func:`dataclasses.field`. Omit both to make the key required.
    ge, gt, le, lt : float, optional
        Inclusive / exclusive bounds checked for numbers (and for each number in a sequence).
    doc : str
        One line shown in the config reference and in error messages.
    """
    meta = {"ge": ge, "gt": gt, "le": le, "lt": lt, "doc": doc}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def join_key(prefix: str, name: str) -> str:
    """Dotted key of ``name`` inside the section at ``prefix``."""
    return f"{prefix}.{name}" if prefix else name


def check(cond: bool, key: str, given: Any, allowed: str, why: str = "") -> None:
    """Raise :class:`ConfigError` unless ``cond`` holds."""
    if not cond:
        raise ConfigError(key, given, allowed, why)


def build(cls: type[T], raw: Mapping[str, Any] | None, key: str = "") -> T:
    """Build and validate the dataclass ``cls`` from the mapping ``raw``.

    Parameters
    ----------
    cls : type
        A dataclass whose fields were declared with :func:`param`.
    raw : Mapping or None
        The TOML table (``None`` means an absent table: all defaults).
    key : str
        Dotted path of this section, used in error messages.

    Returns
    -------
    cls
        The validated instance.

    Raises
    ------
    ConfigError
        On the first problem found, naming the full dotted key.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(key or "<root>", raw, f"a table of keys {_field_names(cls)}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in raw if k not in fields]
    if unknown:
        bad = unknown[0]
        close = difflib.get_close_matches(bad, list(fields), n=1)
        why = f"did you mean '{close[0]}'?" if close else ""
        raise ConfigError(join_key(key, bad), raw[bad], f"one of the keys {sorted(fields)}", why)
    values: dict[str, Any] = {}
    for name, f in fields.items():
        sub = join_key(key, name)
        if name in raw:
            values[name] = _coerce(raw[name], hints[name], sub, f.metadata)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            doc = f.metadata.get("doc", "")
            raise ConfigError(
                sub, MISSING, _describe(hints[name]), f"this key is required. {doc}".strip()
            )
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate(key)
    return obj


def to_dict(obj: Any) -> Any:
    """Turn a (nested) config dataclass into plain TOML-writable values; ``None`` is dropped."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            v = to_dict(getattr(obj, f.name))
            if v is not None:
                out[f.name] = v
        return out
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items() if v is not None}
    return obj


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return " or ".join(_describe(a) for a in args) + (
            " (or omitted)" if len(args) < len(get_args(tp)) else ""
        )
    if origin in (tuple, list):
        args = get_args(tp)
        return f"a list of {_describe(args[0])}" if args else "a list"
    if origin in (dict, Mapping):
        args = get_args(tp)
        return f"a table of {_describe(args[1])}" if args else "a table"
    if dataclasses.is_dataclass(tp):
        return f"a table with keys {_field_names(tp)}"
    return getattr(tp, "__name__", str(tp))


def _check_bounds(value: float, key: str, meta: Mapping[str, Any]) -> None:
    ge, gt, le, lt = (meta.get(k) for k in ("ge", "gt", "le", "lt"))
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(key, value, "a finite number")
    parts = []
    if ge is not None:
        parts.append(f">= {ge}")
    if gt is not None:
        parts.append(f"> {gt}")
    if le is not None:
        parts.append(f"<= {le}")
    if lt is not None:
        parts.append(f"< {lt}")
    ok = (
        (ge is None or value >= ge)
        and (gt is None or value > gt)
        and (le is None or value <= le)
        and (lt is None or value < lt)
    )
    if not ok:
        raise ConfigError(key, value, "a number " + " and ".join(parts), meta.get("doc", ""))


def _coerce(value: Any, tp: Any, key: str, meta: Mapping[str, Any]) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key, meta)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(key, value, _describe(tp), meta.get("doc", ""))
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed or type(value) is not type(allowed[allowed.index(value)]):
            close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            why = f"did you mean {close[0]!r}?" if close else meta.get("doc", "")
            raise ConfigError(key, value, _describe(tp), why)
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, value, "true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ConfigError(key, value, "an integer", meta.get("doc", ""))
        _check_bounds(value, key, meta)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, value, "a number", meta.get("doc", ""))
        value = float(value)
        _check_bounds(value, key, meta)
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, value, "a string", meta.get("doc", ""))
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, value, _describe(tp), meta.get("doc", ""))
        args = get_args(tp)
        item_tp = args[0] if args else Any
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis or origin is list:
            items = [_coerce(v, item_tp, f"{key}[{i}]", meta) for i, v in enumerate(value)]
        else:
            if len(value) != len(args):
                raise ConfigError(key, value, f"a list of exactly {len(args)} values")
            items = [
                _coerce(v, a, f"{key}[{i}]", meta) for i, (v, a) in enumerate(zip(value, args))
            ]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(key, value, _describe(tp), meta.get("doc", ""))
        args = get_args(tp)
        vt = args[1] if args else Any
        return {str(k): _coerce(v, vt, join_key(key, str(k)), meta) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    raise TypeError(f"configtools cannot check type {tp!r} of {key}")  # a bug in our schema
