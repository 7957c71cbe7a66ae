"""Errors that users see. Each names the field, what was given and what is allowed."""

from __future__ import annotations

from typing import Any


class FedcascadeError(Exception):
    """Base class of every error fedcascade raises on purpose (the CLI prints these cleanly)."""


class ConfigError(FedcascadeError, ValueError):
    """An experiment config (or ``--set`` override) is invalid.

    Parameters
    ----------
    key : str
        Dotted path of the offending key, e.g. ``"privacy.target_epsilon"``.
    given : Any
        The value that was given (use :data:`MISSING` when the key is absent).
    allowed : str
        Human-readable description of what is allowed.
    why : str, optional
        One more sentence on why, or how to fix it.
    """

    def __init__(self, key: str, given: Any, allowed: str, why: str = "") -> None:
        self.key = key
        self.given = given
        self.allowed = allowed
        self.why = why
        shown = "nothing (the key is missing)" if given is MISSING else repr(given)
        msg = f"config key '{key}': got {shown}; allowed: {allowed}"
        if why:
            msg += f". {why}"
        super().__init__(msg)


class DataError(FedcascadeError, ValueError):
    """A data file or data set does not have the shape fedcascade needs.

    Parameters
    ----------
    field : str
        What is wrong, e.g. ``"csv column 'age'"`` or ``"data.csv.path"``.
    given : Any
        What was found.
    allowed : str
        What is expected instead.
    """

    def __init__(self, field: str, given: Any, allowed: str) -> None:
        self.field = field
        self.given = given
        self.allowed = allowed
        super().__init__(f"{field}: got {given!r}; expected {allowed}")


class PrivacyBudgetExceeded(FedcascadeError, RuntimeError):
    """Training would push a community past its (epsilon, delta) budget."""


class _Missing:
    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return "MISSING"


MISSING: Any = _Missing()
