"""The cascade: does a group's representation score predict its other disparities?

Input rows are one per (run, group), each holding that group's scores in that run (the
``groups`` part of :func:`fedcascade.metrics.group_report`, flattened, plus ``run`` and
``group``). For each outcome metric the table gives Spearman's rank correlation with the
representation score across all rows, a seeded percentile-bootstrap confidence interval
(rows resampled with replacement), and a verdict that reads the sign against the metric
directions in :mod:`fedcascade.metrics.directions`.

By default scores are first centred within each run (each run's mean over its groups is
subtracted), so the correlation measures disparity between groups, not differences between
runs (a smaller epsilon lowers every group's accuracy at once; that is not a cascade).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import rankdata

from fedcascade.errors import DataError
from fedcascade.metrics.directions import NOT_METRICS, REPRESENTATION, direction

__all__ = ["spearman", "bootstrap_spearman", "cascade_table", "plot_cascade"]


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` (NaN if constant)."""
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(axis=-1) / den
    return np.where(den > 0, r, np.nan)


def spearman(x: Any, y: Any) -> float:
    """Spearman rank correlation (average ranks for ties); NaN if either side is constant."""
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if xa.shape != ya.shape or xa.ndim != 1:
        raise DataError("x, y", f"shapes {xa.shape} and {ya.shape}", "two 1-D arrays of one length")
    if xa.size < 3:
        return float("nan")
    return float(_pearson_rows(rankdata(xa), rankdata(ya)))


def bootstrap_spearman(
    x: Any, y: Any, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Spearman's rho and its percentile-bootstrap confidence interval.

    All resamples are ranked at once (``rankdata(axis=1)``), so 2000 resamples of a few hundred
    rows take milliseconds. Resamples in which one side is constant are left out.

    Returns
    -------
    (rho, low, high)
        NaN for fewer than 3 rows.
    """
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    rho = spearman(xa, ya)
    if not np.isfinite(rho):
        return rho, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, xa.size, size=(n_boot, xa.size))
    boot = _pearson_rows(rankdata(xa[idx], axis=1), rankdata(ya[idx], axis=1))
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return rho, float("nan"), float("nan")
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(boot, [tail, 100.0 - tail])
    return rho, float(low), float(high)


def _column(rows: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    out = np.full(len(rows), np.nan)
    for i, r in enumerate(rows):
        v = r.get(key)
        if isinstance(v, (int, float, np.number)) and not isinstance(v, bool):
            out[i] = float(v)
    return out


def _centred(values: np.ndarray, runs: np.ndarray) -> np.ndarray:
    _, inv = np.unique(runs, return_inverse=True)
    inv = inv.reshape(-1)
    ok = np.isfinite(values)
    sums = np.bincount(inv[ok], weights=values[ok], minlength=inv.max(initial=-1) + 1)
    counts = np.bincount(inv[ok], minlength=inv.max(initial=-1) + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts
    return values - means[inv]


def default_outcomes(rows: Sequence[Mapping[str, Any]], representation: str) -> list[str]:
    """Numeric keys of ``rows`` that are disparities: not bookkeeping, not representation."""
    seen: dict[str, None] = {}
    for r in rows:
        for k, v in r.items():
            if (
                k not in NOT_METRICS
                and k not in REPRESENTATION
                and k != representation
                and isinstance(v, (int, float, np.number))
                and not isinstance(v, bool)
            ):
                seen.setdefault(k, None)
    return list(seen)


def _verdict(rho: float, low: float, high: float, expected: int, n: int) -> str:
    if n < 3:
        return "not enough data"
    if not math.isfinite(rho):
        return "no variation"
    if expected == 0 or not (math.isfinite(low) and math.isfinite(high)):
        return "inconclusive"
    if low > 0 or high < 0:
        return "supports cascade" if np.sign(rho) == expected else "contradicts cascade"
    return "inconclusive"


def cascade_table(
    rows: list[dict],
    representation: str = "flattening",
    outcomes: Sequence[str] | None = None,
    within_run: bool = True,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[dict]:
    """Spearman correlation of the representation score with every other disparity.

    Parameters
    ----------
    rows : list of dict
        One per (run, group): ``{"run": ..., "group": ..., "flattening": 0.4, "accuracy": ...}``.
        Missing or NaN values drop that row for that outcome only.
    representation : str
        Key of the representation score (x axis), e.g. ``"flattening"``.
    outcomes : sequence of str, optional
        Keys to relate to it; default: every numeric disparity key found in ``rows``.
    within_run : bool
        Centre every score within its run first (see the module docstring). Needs ``"run"``.
    n_boot, confidence, seed
        Bootstrap resamples, interval level and the seed that makes the interval reproducible.

    Returns
    -------
    list of dict
        One per outcome: ``representation``, ``outcome``, ``n`` (rows used), ``spearman``,
        ``ci_low``, ``ci_high``, ``expected_sign`` (+1: the cascade predicts that a worse
        representation goes with a higher value; -1: lower; 0: unknown) and ``verdict``
        (``"supports cascade"``: the interval excludes 0 on the predicted side;
        ``"contradicts cascade"``: it excludes 0 on the other side; ``"inconclusive"``;
        ``"no variation"``: the outcome or score is constant; ``"not enough data"``: < 3 rows).
    """
    if not rows:
        raise DataError("rows", "an empty list", "one dict per (run, group) with metric values")
    if within_run and any("run" not in r for r in rows):
        raise DataError(
            "rows", "a row without a 'run' key", "every row to name its run (or within_run=False)"
        )
    if not 0.0 < confidence < 1.0:
        raise DataError("confidence", confidence, "a level strictly between 0 and 1, e.g. 0.95")
    if n_boot < 1:
        raise DataError("n_boot", n_boot, "a positive number of bootstrap resamples")
    x = _column(rows, representation)
    if not np.isfinite(x).any():
        raise DataError(
            f"rows[...]['{representation}']",
            "no numeric value in any row",
            "the representation score of each (run, group)",
        )
    runs = np.array([str(r.get("run", "")) for r in rows])
    if within_run:
        x = _centred(x, runs)
    rep_dir = direction(representation)
    out = []
    for name in outcomes if outcomes is not None else default_outcomes(rows, representation):
        y = _column(rows, name)
        if within_run:
            y = _centred(y, runs)
        ok = np.isfinite(x) & np.isfinite(y)
        rho, low, high = bootstrap_spearman(x[ok], y[ok], n_boot, confidence, seed)
        expected = rep_dir * direction(name)
        out.append(
            {
                "representation": representation,
                "outcome": name,
                "n": int(ok.sum()),
                "spearman": rho,
                "ci_low": low,
                "ci_high": high,
                "expected_sign": expected,
                "verdict": _verdict(rho, low, high, expected, int(ok.sum())),
            }
        )
    return out


_VERDICT_COLOURS = {
    "supports cascade": "#c0392b",
    "contradicts cascade": "#2471a3",
    "inconclusive": "#7f8c8d",
    "no variation": "#bdc3c7",
    "not enough data": "#bdc3c7",
}


def plot_cascade(
    rows: list[dict],
    path: str | Path,
    representation: str = "flattening",
    outcomes: Sequence[str] | None = None,
    within_run: bool = True,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    max_panels: int = 8,
) -> list[dict]:
    """Write a PNG: a forest plot of the cascade correlations and scatter panels behind them.

    Top: one horizontal bar per outcome, Spearman's rho with its bootstrap interval, coloured
    by verdict (red: supports the cascade). Below: for up to ``max_panels`` outcomes (strongest
    first) the representation score against the outcome, one colour per group, one point per
    (run, group). Uses matplotlib's Agg canvas directly (no global backend switch).

    Parameters
    ----------
    rows, representation, outcomes, within_run, n_boot, confidence, seed
        As for :func:`cascade_table`.
    path : str or Path
        Where to write the PNG (parent folders are created).
    max_panels : int
        Most scatter panels to draw.

    Returns
    -------
    list of dict
        The :func:`cascade_table` the figure shows.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    table = cascade_table(rows, representation, outcomes, within_run, n_boot, confidence, seed)
    shown = sorted(
        (t for t in table if math.isfinite(t["spearman"])),
        key=lambda t: -abs(t["spearman"]),
    )[:max_panels]
    ncols = min(4, max(1, len(shown)))
    nrows_sc = math.ceil(len(shown) / ncols) if shown else 0
    forest_h = 0.35 * len(table) + 1.2
    fig = Figure(figsize=(4.0 * ncols + 1.0, forest_h + 3.2 * nrows_sc), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(1 + nrows_sc, ncols, height_ratios=[forest_h] + [3.2] * nrows_sc)

    ax = fig.add_subplot(grid[0, :])
    ypos = np.arange(len(table))[::-1]
    for yy, t in zip(ypos, table, strict=True):
        colour = _VERDICT_COLOURS[t["verdict"]]
        if math.isfinite(t["ci_low"]):
            ax.plot([t["ci_low"], t["ci_high"]], [yy, yy], color=colour, lw=2.5)
        if math.isfinite(t["spearman"]):
            ax.plot(t["spearman"], yy, "o", color=colour, ms=7)
            ax.annotate(
                f"{t['spearman']:+.2f}",
                (t["spearman"], yy),
                xytext=(0, 5),
                textcoords="offset points",
                ha="center",
                fontsize="x-small",
                color=colour,
            )
        else:
            ax.annotate(
                t["verdict"],
                (0.0, yy),
                xytext=(6, -3),
                textcoords="offset points",
                fontsize="x-small",
                color=colour,
            )
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_yticks(ypos, [f"{t['outcome']}  (n={t['n']})" for t in table])
    ax.set_xlim(-1.05, 1.05)
    ax.set_xlabel(f"Spearman rho with {representation}  ({int(confidence * 100)}% bootstrap CI)")
    centred = " (scores centred within each run)" if within_run else ""
    ax.set_title(f"Does {representation} predict the other disparities?{centred}")
    for verdict in ("supports cascade", "contradicts cascade", "inconclusive"):
        ax.plot([], [], "o-", color=_VERDICT_COLOURS[verdict], label=verdict)
    ax.legend(
        loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3, fontsize="small", frameon=False
    )

    groups = sorted({str(r.get("group", "")) for r in rows})
    cmap = matplotlib.colormaps["tab10" if len(groups) <= 10 else "tab20"]
    colour_of = {g: cmap(i % cmap.N) for i, g in enumerate(groups)}
    runs = np.array([str(r.get("run", "")) for r in rows])
    x = _column(rows, representation)
    if within_run:
        x = _centred(x, runs)
    grp = np.array([str(r.get("group", "")) for r in rows])
    for i, t in enumerate(shown):
        sax = fig.add_subplot(grid[1 + i // ncols, i % ncols])
        y = _column(rows, t["outcome"])
        if within_run:
            y = _centred(y, runs)
        for g in groups:
            m = (grp == g) & np.isfinite(x) & np.isfinite(y)
            sax.scatter(x[m], y[m], s=18, color=colour_of[g], label=g, alpha=0.85)
        sax.set_title(
            f"{t['outcome']}: rho={t['spearman']:+.2f}", color=_VERDICT_COLOURS[t["verdict"]]
        )
        suffix = " (run-centred)" if within_run else ""
        sax.set_xlabel(representation + suffix, fontsize="small")
        sax.set_ylabel(t["outcome"] + suffix, fontsize="small")
        sax.tick_params(labelsize="small")
        if i == 0:
            sax.legend(fontsize="x-small", title="group", title_fontsize="x-small")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return table
