"""Per-community privacy ledger: every spend recorded, persisted, and checked against the budget.

A community's guarantee covers the whole run, across rounds and process restarts, so the
ledger lives in a JSON file that is rewritten atomically (temp file + ``os.replace``) after every
record, under an advisory file lock so two worker processes cannot interleave a
check-then-write. Every public method re-reads the file when another process changed it (its
inode / mtime / size stamp differs from the one this handle last read or wrote); a handle that
wrote the file last does not re-read it.

Durability
----------
``os.replace`` is atomic: a reader, or a process restarted after a crash (kill -9, OOM, an
exception anywhere), sees either the previous ledger or the new one, never a half-written file,
and reloads exactly what was recorded. By default the file is NOT ``fsync``'ed (that costs
3-5 ms per record, more than a small community's training round): a process crash loses
nothing, but an operating-system crash or power loss within the kernel's write-back delay
(seconds) can lose the last record(s), i.e. under-count the last round(s); on filesystems
without ordered rename (not ext4's default) it can also leave an empty file, which the next
open reports as a :class:`~fedcascade.errors.DataError` rather than reading it as "nothing
spent". Pass ``durable=True`` (e.g. a deployed node on hardware that may lose power) to fsync
the file and its directory on every record.

Composition
-----------
DP-SGD blocks are composed by the configured accountant (PRV or RDP) at the ledger's delta.
Pure-DP events (e.g. a report-noisy-max cluster selection costing ``epsilon_select`` with
delta 0) are added by *basic composition*: an (e1, delta)-DP mechanism followed by an
(e2, 0)-DP one is (e1 + e2, delta)-DP, adaptively. Hence::

    epsilon = epsilon_accountant(DP-SGD blocks, delta) + sum(pure epsilons),  delta = delta

Refusal happens *before* anything is spent: :meth:`PrivacyLedger.record` raises
:class:`~fedcascade.errors.PrivacyBudgetExceeded` and leaves the ledger unchanged, so call it
before training (a crash after recording only over-counts, which is safe).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fedcascade.errors import ConfigError, DataError, PrivacyBudgetExceeded
from fedcascade.privacy.accounting import ACCOUNTANTS, compute_epsilon
from fedcascade.privacy.config import DPPlan

try:  # POSIX advisory locks; elsewhere the ledger still works for a single process
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["PrivacyLedger", "COMPOSITION", "BUDGET_SLACK"]

COMPOSITION = "basic: epsilon = epsilon_accountant(DP-SGD blocks, delta) + sum(pure-DP epsilons)"
#: Absolute slack on the budget check, for float rounding only (e.g. (3.0 - 0.09) + 0.09).
BUDGET_SLACK = 1e-9
_VERSION = 1


class PrivacyLedger:
    """The (epsilon, delta) spending of one community.

    Parameters
    ----------
    path : str, Path or None
        JSON file of this community's ledger. ``None`` keeps it in memory only. An existing file
        is loaded and must have been started with the same ``target_epsilon``, ``delta`` and
        ``accountant``; a missing file is created.
    target_epsilon : float
        Budget for the whole run, ``> 0`` (``inf`` = unbounded, for non-private runs).
    delta : float
        In (0, 1).
    accountant : {"prv", "rdp"}
    horizon_steps : int, optional
        Planned DP-SGD steps for the whole run (e.g. rounds x steps per round); only sizes the
        PRV grid once so every round reuses one discretisation (see
        :func:`~fedcascade.privacy.accounting.compute_epsilon`). Can be raised later through
        the attribute of the same name.
    durable : bool, optional
        ``fsync`` every write (survives power loss); default ``False``, which survives process
        crashes (see "Durability" above).

    Raises
    ------
    ConfigError
        Bad arguments, or an existing file started with a different budget.
    DataError
        The file exists but is not a fedcascade ledger.
    """

    def __init__(
        self,
        path: str | Path | None,
        target_epsilon: float,
        delta: float,
        accountant: str = "prv",
        *,
        horizon_steps: int = 0,
        durable: bool = False,
    ) -> None:
        if isinstance(target_epsilon, bool) or not (
            isinstance(target_epsilon, (int, float)) and target_epsilon > 0
        ):
            raise ConfigError("privacy.target_epsilon", target_epsilon, "a number > 0")
        if not (isinstance(delta, (int, float)) and 0 < delta < 1):
            raise ConfigError("privacy.delta", delta, "a number in (0, 1)")
        if accountant not in ACCOUNTANTS:
            raise ConfigError("privacy.accountant", accountant, f"one of {ACCOUNTANTS}")
        self.target_epsilon = float(target_epsilon)
        self.delta = float(delta)
        self.accountant = accountant
        if (
            isinstance(horizon_steps, bool)
            or not isinstance(horizon_steps, int)
            or horizon_steps < 0
        ):
            raise ConfigError("horizon_steps", horizon_steps, "an integer >= 0")
        self.horizon_steps = horizon_steps
        self.durable = bool(durable)
        self.path = Path(path) if path is not None else None
        self._blocks: list[dict[str, Any]] = []
        self._pure: list[dict[str, Any]] = []
        self._stamp: tuple[int, int, int] | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._locked():
                if self.path.exists():
                    self._load()
                else:
                    self._save()

    # ----------------------------------------------------------------- queries
    def spent(self) -> float:
        """Epsilon spent so far (DP-SGD blocks by the accountant + pure events)."""
        self._sync()
        return self._total(self._blocks, self._pure)

    def remaining(self) -> float:
        """Epsilon still available (``target - spent``, never below 0)."""
        return max(0.0, self.target_epsilon - self.spent())

    def would_spend(self, plan: DPPlan) -> float:
        """Epsilon after running ``plan`` (``inf`` if the plan is not private)."""
        self._sync()
        return self._total([*self._blocks, _block_dict(plan)], self._pure)

    def would_spend_pure(self, epsilon: float) -> float:
        """Epsilon after a pure-DP event costing ``epsilon``."""
        self._sync()
        return self._total(self._blocks, [*self._pure, {"epsilon": float(epsilon)}])

    # ----------------------------------------------------------------- spending
    def record(self, plan: DPPlan) -> float:
        """Record a block of DP-SGD steps, or refuse it.

        Call this BEFORE training: on refusal nothing is recorded and nothing may be trained.

        Returns
        -------
        float
            Epsilon spent including this block.

        Raises
        ------
        PrivacyBudgetExceeded
            If the block would take the community past ``target_epsilon`` (a block without
            noise or clipping always does, unless the target is ``inf``).
        """
        if not isinstance(plan, DPPlan):
            raise TypeError(f"record() needs a DPPlan, got {type(plan).__name__}")
        with self._locked():
            self._sync()  # under the lock: picks up any other process's write
            if plan.steps == 0:
                return self._total(self._blocks, self._pure)
            blocks = [*self._blocks, _block_dict(plan)]
            after = self._total(blocks, self._pure)
            self._refuse_if_over(
                after,
                f"{plan.steps} DP-SGD steps (q={plan.sample_rate:g}, "
                f"sigma={plan.noise_multiplier:g})",
            )
            self._blocks = blocks
            self._save()
            return after

    def record_pure(self, epsilon: float, what: str) -> float:
        """Record a pure-DP event (delta 0), e.g. a report-noisy-max selection, or refuse it.

        Parameters
        ----------
        epsilon : float
            Its cost, finite and ``>= 0``.
        what : str
            Short description kept in the results, e.g. ``"cluster selection round 12"``.

        Returns
        -------
        float
            Epsilon spent including this event.

        Raises
        ------
        PrivacyBudgetExceeded
            If it would take the community past ``target_epsilon``.
        """
        if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon >= 0):
            raise ValueError(f"pure-DP epsilon must be a finite number >= 0, got {epsilon!r}")
        with self._locked():
            self._sync()  # under the lock: picks up any other process's write
            pure = [*self._pure, {"epsilon": float(epsilon), "what": str(what)}]
            after = self._total(self._blocks, pure)
            self._refuse_if_over(after, f"pure-DP event '{what}' (epsilon {epsilon:g})")
            self._pure = pure
            self._save()
            return after

    # ----------------------------------------------------------------- reporting
    def summary(self) -> dict[str, Any]:
        """Everything needed to recompute this community's epsilon independently.

        Returns
        -------
        dict
            ``accountant``, ``delta``, ``epsilon``, ``target_epsilon``, ``epsilon_dpsgd``,
            ``epsilon_pure``, ``composition``, ``blocks`` (``sample_rate``, ``noise_multiplier``,
            ``steps``, ``max_grad_norm`` each), ``pure_events`` (``epsilon``, ``what``),
            ``total_steps``, ``last_sample_rate``, ``last_noise_multiplier`` (``None`` before
            the first block).
        """
        self._sync()
        eps_sgd = self._dpsgd(self._blocks)
        eps_pure = math.fsum(e["epsilon"] for e in self._pure)
        last = self._blocks[-1] if self._blocks else None
        return {
            "accountant": self.accountant,
            "delta": self.delta,
            "target_epsilon": self.target_epsilon,
            "epsilon": eps_sgd + eps_pure,
            "epsilon_dpsgd": eps_sgd,
            "epsilon_pure": eps_pure,
            "composition": COMPOSITION,
            "blocks": [dict(b) for b in self._blocks],
            "pure_events": [dict(e) for e in self._pure],
            "total_steps": sum(b["steps"] for b in self._blocks),
            "last_sample_rate": last["sample_rate"] if last else None,
            "last_noise_multiplier": last["noise_multiplier"] if last else None,
        }

    def metrics(self) -> dict[str, float]:
        """Flat numeric summary for a Flower ``MetricRecord`` (no lists, no ``None``)."""
        s = self.summary()
        return {
            "epsilon": s["epsilon"],
            "epsilon_dpsgd": s["epsilon_dpsgd"],
            "epsilon_pure": s["epsilon_pure"],
            "target_epsilon": s["target_epsilon"],
            "delta": s["delta"],
            "total_steps": float(s["total_steps"]),
            "last_sample_rate": float(s["last_sample_rate"] or 0.0),
            "last_noise_multiplier": float(s["last_noise_multiplier"] or 0.0),
        }

    def __repr__(self) -> str:
        where = str(self.path) if self.path else "memory"
        return (
            f"PrivacyLedger({where}, spent={self.spent():.4g}/{self.target_epsilon:g}, "
            f"delta={self.delta:g}, accountant={self.accountant!r})"
        )

    # ----------------------------------------------------------------- internals
    def _dpsgd(self, blocks: list[dict[str, Any]]) -> float:
        return compute_epsilon(
            [(b["sample_rate"], b["noise_multiplier"], b["steps"]) for b in blocks],
            self.delta,
            self.accountant,
            horizon_steps=self.horizon_steps,
        )

    def _total(self, blocks: list[dict[str, Any]], pure: list[dict[str, Any]]) -> float:
        return self._dpsgd(blocks) + math.fsum(e["epsilon"] for e in pure)

    def _refuse_if_over(self, after: float, what: str) -> None:
        if after > self.target_epsilon + BUDGET_SLACK:
            spent = self._total(self._blocks, self._pure)
            raise PrivacyBudgetExceeded(
                f"refused {what}: epsilon would go from {spent:.4f} to {after:.4f}, over the "
                f"budget {self.target_epsilon:g} (delta {self.delta:g}, {self.accountant} "
                f"accountant{', ledger ' + str(self.path) if self.path else ''}); nothing was spent"
            )

    def _state(self) -> dict[str, Any]:
        return {
            "fedcascade_privacy_ledger": _VERSION,
            "target_epsilon": self.target_epsilon,
            "delta": self.delta,
            "accountant": self.accountant,
            "composition": COMPOSITION,
            "epsilon": self._total(self._blocks, self._pure),
            "blocks": self._blocks,
            "pure_events": self._pure,
        }

    def _save(self) -> None:
        if self.path is None:
            return
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(_dumps(self._state()))
                if self.durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, self.path)  # atomic: readers see the old or the new ledger, never half
            if self.durable:
                _fsync_dir(self.path.parent)  # make the rename itself survive power loss
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._stamp = _stamp(self.path)

    def _load(self) -> None:
        assert self.path is not None
        try:
            with open(self.path, "rb") as f:
                # the stamp of the very file read (a writer never changes a file in place, it
                # renames a new one over it), so a write racing this read is seen next time
                stamp = _stamp_of(os.fstat(f.fileno()))
                state = json.loads(f.read())
            version = state["fedcascade_privacy_ledger"]
            blocks = [_check_block(b) for b in state["blocks"]]
            pure = [
                {"epsilon": float(e["epsilon"]), "what": str(e["what"])}
                for e in state["pure_events"]
            ]
            saved = (
                float(state["target_epsilon"]),
                float(state["delta"]),
                str(state["accountant"]),
            )
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DataError(
                f"privacy ledger {self.path}",
                f"an unreadable file ({err})",
                "a JSON ledger written by fedcascade",
            ) from err
        if version != _VERSION:
            raise DataError(
                f"privacy ledger {self.path}", f"version {version}", f"version {_VERSION}"
            )
        for key, mine, theirs in zip(
            ("privacy.target_epsilon", "privacy.delta", "privacy.accountant"),
            (self.target_epsilon, self.delta, self.accountant),
            saved,
        ):
            if mine != theirs:
                raise ConfigError(
                    key,
                    mine,
                    f"{theirs!r}, the value the ledger {self.path} was started with",
                    "a community's budget cannot change mid-run: resume with the same privacy "
                    "settings, or start a new run directory",
                )
        self._blocks, self._pure = blocks, pure
        self._stamp = stamp

    def _sync(self) -> None:
        """Reload if another process rewrote the file since we last read or wrote it.

        Every write is a new file renamed into place (a new inode), and a ledger only grows, so
        an unchanged (inode, mtime, size) stamp means nobody else wrote since.
        """
        if self.path is None:
            return
        stamp = _stamp(self.path)
        if stamp != self._stamp and stamp is not None:
            self._load()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self.path is None or fcntl is None:
            yield
            return
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _block_dict(plan: DPPlan) -> dict[str, Any]:
    return {
        "sample_rate": float(plan.sample_rate),
        "noise_multiplier": float(plan.noise_multiplier),
        "steps": int(plan.steps),
        "max_grad_norm": None if plan.max_grad_norm is None else float(plan.max_grad_norm),
    }


def _check_block(b: dict[str, Any]) -> dict[str, Any]:
    plan = DPPlan(
        sample_rate=float(b["sample_rate"]),
        steps=int(b["steps"]),
        noise_multiplier=float(b["noise_multiplier"]),
        max_grad_norm=None if b.get("max_grad_norm") is None else float(b["max_grad_norm"]),
    )
    return _block_dict(plan)


def _dumps(state: dict[str, Any]) -> str:
    """The ledger as JSON with one key, block or event per line (readable, diff-able).

    Built from C-encoded pieces: ``json.dump(..., indent=...)`` falls back to the pure-Python
    encoder and writes hundreds of small chunks, ~0.4 ms per record for a 15-round ledger.
    """
    lines = []
    for key, value in state.items():
        if isinstance(value, list):
            items = ",\n  ".join(json.dumps(v) for v in value)
            text = f"[\n  {items}\n ]" if value else "[]"
        else:
            text = json.dumps(value)
        lines.append(f" {json.dumps(key)}: {text}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        return _stamp_of(path.stat())
    except FileNotFoundError:
        return None


def _stamp_of(st: os.stat_result) -> tuple[int, int, int]:
    # os.replace gives every write a new inode, so this changes even within one mtime tick
    return (st.st_ino, st.st_mtime_ns, st.st_size)
