"""PNG figures of the run and sweep reports (matplotlib's Agg canvas, no global backend switch).

Every function takes plain dicts/lists, writes one PNG and returns its path. Colours are fixed
per group name (sorted) so the same group has the same colour in every figure of a report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "new_figure",
    "save",
    "group_bars",
    "robustness_curves",
    "accuracy_vs_epsilon",
    "disparate_impact_vs_epsilon",
    "ari_by_round",
]

MINORITY_COLOUR = "#c0392b"
MAJORITY_COLOUR = "#2471a3"


def new_figure(width: float, height: float) -> Any:
    """A constrained-layout matplotlib Figure on its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Any, path: Path, dpi: int = 100) -> Path:
    """Write ``fig`` to ``path`` (parent folders created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def colours(names: Sequence[str]) -> dict[str, Any]:
    """A fixed colour per name (tab10, tab20 beyond ten names)."""
    import matplotlib

    ordered = sorted(dict.fromkeys(str(n) for n in names))
    cmap = matplotlib.colormaps["tab10" if len(ordered) <= 10 else "tab20"]
    return {n: cmap(i % cmap.N) for i, n in enumerate(ordered)}


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(float(v))


def group_bars(
    view: Mapping[str, Mapping[str, float]],
    metrics: Sequence[tuple[str, str]],
    path: Path,
    title: str,
) -> Path | None:
    """One small bar panel per metric, one bar per group; None if no metric has a value.

    Parameters
    ----------
    view : dict
        ``{group: {metric: value}}``.
    metrics : sequence of (key, label)
        Metrics to draw, in order; those without any finite value are left out.
    path : Path
        Output PNG.
    title : str
        Figure title.
    """
    shown = [(k, lab) for k, lab in metrics if any(_finite(v.get(k)) for v in view.values())]
    if not shown:
        return None
    groups = list(view)
    col = colours(groups)
    ncols = min(3, len(shown))
    nrows = math.ceil(len(shown) / ncols)
    fig = new_figure(3.6 * ncols, 2.7 * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, (key, label) in zip(axes.flat, shown, strict=False):
        vals = [float(view[g].get(key, math.nan)) for g in groups]
        pos = np.arange(len(groups))
        ax.bar(pos, np.nan_to_num(vals), color=[col[str(g)] for g in groups])
        for p, v in zip(pos, vals, strict=True):
            ax.annotate(
                "n/a" if not math.isfinite(v) else f"{v:.2f}",
                (p, v if math.isfinite(v) else 0.0),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                fontsize="x-small",
            )
        ax.set_xticks(pos, [str(g) for g in groups], rotation=30 if len(groups) > 3 else 0)
        ax.set_title(label, fontsize="small")
        ax.tick_params(labelsize="x-small")
        ax.margins(y=0.15)
    for ax in list(axes.flat)[len(shown) :]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize="medium")
    return save(fig, path)


def robustness_curves(
    view: Mapping[str, Mapping[str, float]],
    scales: Sequence[float],
    adversarial_eps: float | None,
    path: Path,
) -> Path | None:
    """Accuracy of each group against input-noise scale (0 = clean), plus the attack."""
    from fedcascade.metrics import noise_key

    if not scales or not any(_finite(v.get(noise_key(scales[0]))) for v in view.values()):
        return None
    col = colours(list(view))
    fig = new_figure(6.4, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    xs = [0.0, *[float(s) for s in scales]]
    for g, row in view.items():
        ys = [row.get("accuracy", math.nan), *[row.get(noise_key(s), math.nan) for s in scales]]
        ax.plot(xs, ys, "o-", color=col[str(g)], label=str(g))
        if _finite(row.get("acc_adversarial")):
            ax.plot(
                [xs[-1] * 1.15 if xs[-1] > 0 else 1.0],
                [row["acc_adversarial"]],
                marker="X",
                ms=9,
                color=col[str(g)],
                ls="none",
            )
    ax.set_xlabel("input Gaussian noise sigma (input units)")
    ax.set_ylabel("accuracy")
    extra = f"; X = FGSM/PGD at eps {adversarial_eps:g} (right)" if adversarial_eps else ""
    ax.set_title(f"Robustness per group{extra}", fontsize="small")
    ax.legend(fontsize="x-small", title="group", title_fontsize="x-small")
    ax.grid(alpha=0.3)
    return save(fig, path)


def _jitter(i: int, n: int) -> float:
    """Multiplicative x offset of series i of n on a log axis, so error bars do not overlap."""
    return float(1.0 + 0.04 * (i - (n - 1) / 2))


def _eps_axis(ax: Any, eps_values: Sequence[float]) -> None:
    ax.set_xscale("log")
    ax.set_xticks(list(eps_values), [f"{e:g}" for e in eps_values])
    ax.minorticks_off()
    ax.set_xlabel("target epsilon")
    ax.grid(alpha=0.3)


def accuracy_vs_epsilon(
    series: Mapping[str, Mapping[str, Mapping[float, tuple[float, float]]]],
    references: Mapping[str, tuple[float, float]],
    path: Path,
    title: str = "Accuracy vs privacy budget",
) -> Path | None:
    """One panel per strategy: accuracy of each series (e.g. minority, majority) against epsilon.

    Parameters
    ----------
    series : dict
        ``{strategy: {series name: {epsilon: (mean, std)}}}`` for the private runs.
    references : dict
        ``{series name: (mean, std)}`` of the non-private reference (drawn as dotted lines).
    path : Path
        Output PNG.
    """
    strategies = [s for s, d in series.items() if any(d.values())]
    if not strategies:
        return None
    names = sorted({n for s in strategies for n in series[s]})
    col = colours(names)
    col.update({n: c for n, c in (("minority", MINORITY_COLOUR), ("majority", MAJORITY_COLOUR))})
    ncols = min(3, len(strategies))
    nrows = math.ceil(len(strategies) / ncols)
    fig = new_figure(4.2 * ncols, 3.3 * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    for ax, strat in zip(axes.flat, strategies, strict=False):
        eps_all: set[float] = set()
        for name in names:
            pts = series[strat].get(name, {})
            if not pts:
                continue
            eps = sorted(pts)
            eps_all.update(eps)
            m = [pts[e][0] for e in eps]
            s = [0.0 if not math.isfinite(pts[e][1]) else pts[e][1] for e in eps]
            ls = "--" if name == "majority" else "-"
            lw = 2.2 if name in ("minority", "majority") else 1.2
            ax.errorbar(eps, m, yerr=s, fmt="o" + ls, color=col[name], lw=lw, capsize=3, label=name)
        for name, (m, _) in references.items():
            if math.isfinite(m):
                ax.axhline(m, color=col.get(name, "grey"), ls=":", lw=1.2)
        _eps_axis(ax, sorted(eps_all))
        ax.set_title(strat, fontsize="small")
    for ax in list(axes.flat)[len(strategies) :]:
        ax.set_visible(False)
    axes[0, 0].set_ylabel("test accuracy")
    axes[0, 0].legend(
        fontsize="x-small", title="dotted: non-private FedAvg", title_fontsize="x-small"
    )
    fig.suptitle(title + " (mean ± std over seeds)", fontsize="medium")
    return save(fig, path)


def disparate_impact_vs_epsilon(
    di: Mapping[str, Mapping[float, tuple[float, float]]],
    worst: Mapping[str, Mapping[float, tuple[float, float]]],
    worst_reference: tuple[float, float] | None,
    path: Path,
) -> Path | None:
    """Left: disparate impact of DP against epsilon per strategy. Right: worst-group accuracy."""
    if not any(di.values()) and not any(worst.values()):
        return None
    strategies = sorted(set(di) | set(worst))
    col = colours(strategies)
    fig = new_figure(10.0, 3.8)
    ax1, ax2 = fig.subplots(1, 2)
    for ax, data, ylabel in (
        (ax1, di, "disparate impact of DP\n(minority drop - majority drop)"),
        (ax2, worst, "worst-group accuracy"),
    ):
        eps_all: set[float] = set()
        for i, strat in enumerate(strategies):
            pts = data.get(strat, {})
            if not pts:
                continue
            eps = sorted(pts)
            eps_all.update(eps)
            ax.errorbar(
                [e * _jitter(i, len(strategies)) for e in eps],
                [pts[e][0] for e in eps],
                yerr=[0.0 if not math.isfinite(pts[e][1]) else pts[e][1] for e in eps],
                fmt="o-",
                color=col[strat],
                capsize=3,
                label=strat,
            )
        if eps_all:
            _eps_axis(ax, sorted(eps_all))
        ax.set_ylabel(ylabel, fontsize="small")
    ax1.axhline(0.0, color="black", lw=0.8)
    if worst_reference is not None and math.isfinite(worst_reference[0]):
        ax2.axhline(worst_reference[0], color="grey", ls=":", label="non-private FedAvg")
    ax1.set_title("> 0: DP costs the minority more than the majority", fontsize="small")
    ax2.set_title("worst group (mean ± std over seeds)", fontsize="small")
    ax2.legend(fontsize="x-small")
    return save(fig, path)


def ari_by_round(
    curves: Mapping[str, tuple[Sequence[int], Sequence[float], Sequence[float]]],
    path: Path,
) -> Path | None:
    """Cluster-recovery ARI against round: ``{label: (rounds, mean, std)}``."""
    if not curves:
        return None
    col = colours(list(curves))
    fig = new_figure(6.4, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    from matplotlib.ticker import MaxNLocator

    markers = "os^Dv<>p"
    for i, (label, (rounds, mean, std)) in enumerate(curves.items()):
        m = np.asarray(mean, dtype=float)
        s = np.nan_to_num(np.asarray(std, dtype=float))
        # Curves often coincide (e.g. every clustered strategy at ARI 1): offset them slightly.
        x = np.asarray(rounds, dtype=float) + 0.03 * (i - (len(curves) - 1) / 2)
        ax.plot(x, m, marker=markers[i % len(markers)], ls="-", color=col[label], label=label)
        ax.fill_between(x, m - s, m + s, color=col[label], alpha=0.15)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("adjusted Rand index vs true sub-distributions")
    ax.set_ylim(-0.1, 1.05)
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small")
    ax.set_title("Cluster recovery per round (mean ± std over seeds)", fontsize="small")
    return save(fig, path)
