"""The report of a sweep directory (issue 6, item 3, and the cross-run part of issue 8).

Tables and plots a person can read at a glance:

* headline tables, strategy x epsilon, cells "mean ± std" over seeds: minority accuracy,
  majority accuracy, the disparate impact of DP and worst-group accuracy;
* ``disparity.csv``: those numbers per run, with the non-private reference each private run is
  compared with;
* accuracy (minority, majority, every group) and disparate impact against epsilon;
* cluster recovery (ARI against the true sub-distributions) per round;
* from every run's own report: disparity gaps per config, multiplicity across seeds, and the
  cascade across runs (Spearman of the representation score with every other disparity).

Disparate impact of DP (issue 6): ``(acc_np_min - acc_p_min) - (acc_np_maj - acc_p_maj)``, the
minority's accuracy drop from the matching non-private run minus the majority's; the matching
run is the ``fedavg`` run with the same seed and the same other grid values. Positive = DP costs
the minority more.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedcascade.metrics import MetricsConfig, plot_cascade, report_rows
from fedcascade.reporting import plots
from fedcascade.reporting.jsonsafe import dumps
from fedcascade.reporting.markdown import as_float, fmt_mean_std, mean_std, table
from fedcascade.reporting.run_report import (
    analyse_run,
    cascade_for,
    cascade_lines,
    guard_cascade,
    metrics_config,
    write_run_report,
)
from fedcascade.reporting.rundir import Note, read_run
from fedcascade.reporting.sweepdir import (
    EPSILON_KEY,
    REFERENCE_STRATEGY,
    STRATEGY_KEY,
    Sweep,
    SweepRun,
    read_sweep,
)

__all__ = [
    "disparity_rows",
    "headline_tables",
    "ari_curves",
    "write_sweep_report",
    "DISPARITY_COLUMNS",
]

#: columns of ``disparity.csv`` (grid keys other than strategy/epsilon/seed are added after seed)
DISPARITY_COLUMNS = [
    "run",
    "strategy",
    "strategy_label",
    "private",
    "epsilon",
    "seed",
    "accuracy",
    "minority_accuracy",
    "majority_accuracy",
    "worst_group_accuracy",
    "accuracy_gap",
    "reference_run",
    "reference_minority_accuracy",
    "reference_majority_accuracy",
    "minority_drop",
    "majority_drop",
    "disparate_impact",
    "final_ari",
    "max_epsilon_spent",
]

#: headline tables: (disparity.csv column, title, how to read it)
HEADLINE_METRICS = [
    (
        "minority_accuracy",
        "Minority accuracy",
        "test accuracy of the marginalized sub-distribution(s)",
    ),
    ("majority_accuracy", "Majority accuracy", "test accuracy of the other sub-distributions"),
    (
        "disparate_impact",
        "Disparate impact of DP",
        "(non-private − private accuracy) of the minority minus the same for the majority, "
        "against the non-private FedAvg run with the same seed; > 0 = DP costs the minority more",
    ),
    ("worst_group_accuracy", "Worst-group accuracy", "accuracy of the worst sensitive group"),
]

#: per-config disparity gaps (max − min over groups) taken from every run's own report
GAP_METRICS = [
    ("accuracy", "accuracy"),
    ("flattening", "flattening"),
    ("mia_auc_calibrated", "MIA AUC (cal.)"),
    ("acc_adversarial", "acc. under attack"),
    ("ece", "ECE"),
    ("ambiguity", "ambiguity"),
]


def _eps_label(eps: float) -> str:
    return "non-private" if math.isinf(eps) else f"ε={eps:g}"


def _row_label(run: SweepRun, grid_keys: Sequence[str]) -> str:
    other = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in run.other(grid_keys))
    return run.strategy + (f" ({other})" if other else "")


def disparity_rows(sweep: Sweep) -> list[dict[str, Any]]:
    """One ``disparity.csv`` row per finished run (see :data:`DISPARITY_COLUMNS`)."""
    rows = []
    others = [k for k in sweep.grid_keys if k not in (STRATEGY_KEY, EPSILON_KEY, "seed")]
    for r in sweep.runs:
        s = r.summary
        row: dict[str, Any] = dict.fromkeys(DISPARITY_COLUMNS)
        row |= {
            "run": r.name,
            "strategy": r.strategy,
            "strategy_label": s.get("strategy_label"),
            "private": r.private,
            "epsilon": r.epsilon,
            "seed": r.seed,
            **{k: r.grid.get(k) for k in others},
            "accuracy": as_float(s.get("accuracy")),
            "minority_accuracy": as_float(s.get("minority_accuracy")),
            "majority_accuracy": as_float(s.get("majority_accuracy")),
            "worst_group_accuracy": as_float(s.get("worst_group_accuracy")),
            "accuracy_gap": as_float(s.get("accuracy_gap")),
            "final_ari": as_float(s.get("ari")),
            "max_epsilon_spent": as_float(s.get("max_epsilon_spent")),
        }
        ref = sweep.reference_for(r) if r.private else None
        if ref is not None:
            rmin = as_float(ref.summary.get("minority_accuracy"))
            rmaj = as_float(ref.summary.get("majority_accuracy"))
            row.update(
                reference_run=ref.name,
                reference_minority_accuracy=rmin,
                reference_majority_accuracy=rmaj,
                minority_drop=rmin - row["minority_accuracy"],
                majority_drop=rmaj - row["majority_accuracy"],
            )
            row["disparate_impact"] = row["minority_drop"] - row["majority_drop"]
        rows.append(row)
    return rows


def _dedupe_non_private(sweep: Sweep, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop repeats of a non-private run along the epsilon axis (which it ignores).

    Without this, FedAvg at "epsilon" 1 and 4 would count as two seeds and shrink its std.
    """
    keep = {r.name for r in _distinct_runs(sweep)}
    return [row for row in rows if row["run"] in keep]


def _cells(
    sweep: Sweep, rows: Sequence[dict[str, Any]], key: str
) -> tuple[dict[str, dict[float, list[float]]], list[float]]:
    """``{row label: {epsilon: [value per seed]}}`` and the sorted epsilon columns."""
    by_name = {r.name: r for r in sweep.runs}
    cells: dict[str, dict[float, list[float]]] = {}
    eps_cols: set[float] = set()
    for row in rows:
        run = by_name[row["run"]]
        label = _row_label(run, sweep.grid_keys)
        cells.setdefault(label, {}).setdefault(run.epsilon, []).append(as_float(row.get(key)))
        eps_cols.add(run.epsilon)
    return cells, sorted(eps_cols)


def headline_tables(sweep: Sweep, rows: Sequence[dict[str, Any]]) -> dict[str, dict]:
    """Strategy x epsilon tables of the :data:`HEADLINE_METRICS`: mean, std and n per cell."""
    rows = _dedupe_non_private(sweep, rows)
    out = {}
    for key, _, _ in HEADLINE_METRICS:
        cells, _ = _cells(sweep, rows, key)
        out[key] = {
            label: {
                _eps_label(e): dict(zip(("mean", "std", "n"), mean_std(v), strict=True))
                for e, v in by_eps.items()
            }
            for label, by_eps in cells.items()
        }
    return out


def _headline_markdown(sweep: Sweep, rows: Sequence[dict[str, Any]]) -> list[str]:
    rows = _dedupe_non_private(sweep, rows)
    lines: list[str] = []
    for key, title, how in HEADLINE_METRICS:
        cells, eps_cols = _cells(sweep, rows, key)
        if not any(math.isfinite(v) for d in cells.values() for vs in d.values() for v in vs):
            continue

        # Leave out columns and rows without any value (e.g. no disparate impact for the
        # non-private reference itself).
        def has(vals: list[float] | None) -> bool:
            return bool(vals) and any(math.isfinite(v) for v in vals)

        eps_cols = [e for e in eps_cols if any(has(d.get(e)) for d in cells.values())]
        cells = {k: d for k, d in cells.items() if any(has(v) for v in d.values())}
        heads = ["strategy", *[_eps_label(e) for e in eps_cols]]
        trows = []
        for label, by_eps in cells.items():
            trow = {"strategy": label}
            for e in eps_cols:
                vals = by_eps.get(e)
                trow[_eps_label(e)] = fmt_mean_std(vals) if vals else None
            trows.append(trow)
        lines += [f"### {title}", "", f"_{how}._", ""] + table(trows, heads) + [""]
    return lines


def _series(
    sweep: Sweep, rows: Sequence[dict[str, Any]]
) -> tuple[dict, dict, dict, dict, tuple[float, float] | None, dict]:
    """Data of the accuracy / disparate-impact plots (private runs vs epsilon, references)."""
    rows = _dedupe_non_private(sweep, rows)
    by_name = {r.name: r for r in sweep.runs}
    acc: dict[str, dict[str, dict[float, list[float]]]] = {}
    groups: dict[str, dict[str, dict[float, list[float]]]] = {}
    di: dict[str, dict[float, list[float]]] = {}
    worst: dict[str, dict[float, list[float]]] = {}
    ref_vals: dict[str, list[float]] = {"minority": [], "majority": []}
    ref_worst: list[float] = []
    ref_groups: dict[str, list[float]] = {}
    for row in rows:
        run = by_name[row["run"]]
        label = _row_label(run, sweep.grid_keys)
        if not run.private:
            if run.strategy == REFERENCE_STRATEGY:
                ref_vals["minority"].append(row["minority_accuracy"])
                ref_vals["majority"].append(row["majority_accuracy"])
                ref_worst.append(row["worst_group_accuracy"])
                for g, v in (run.summary.get("accuracy_by_group") or {}).items():
                    ref_groups.setdefault(g, []).append(as_float(v))
            continue
        e = run.epsilon
        for name in ("minority", "majority"):
            acc.setdefault(label, {}).setdefault(name, {}).setdefault(e, []).append(
                row[f"{name}_accuracy"]
            )
        for g, v in (run.summary.get("accuracy_by_group") or {}).items():
            groups.setdefault(label, {}).setdefault(g, {}).setdefault(e, []).append(as_float(v))
        di.setdefault(label, {}).setdefault(e, []).append(as_float(row.get("disparate_impact")))
        worst.setdefault(label, {}).setdefault(e, []).append(row["worst_group_accuracy"])

    def ms(d: Mapping[float, list[float]]) -> dict[float, tuple[float, float]]:
        out = {}
        for e, v in d.items():
            m, s, n = mean_std(v)
            if n:
                out[e] = (m, s)
        return out

    acc_ms = {k: {n: ms(d) for n, d in v.items()} for k, v in acc.items()}
    grp_ms = {k: {n: ms(d) for n, d in v.items()} for k, v in groups.items()}
    refs = {n: mean_std(v)[:2] for n, v in ref_vals.items() if v}
    ref_g = {g: mean_std(v)[:2] for g, v in ref_groups.items()}
    worst_ref = mean_std(ref_worst)[:2] if ref_worst else None
    return (
        acc_ms,
        {k: ms(v) for k, v in di.items()},
        {k: ms(v) for k, v in worst.items()},
        refs,
        worst_ref,
        {"series": grp_ms, "references": ref_g},
    )


def ari_curves(
    sweep: Sweep,
) -> tuple[dict[str, tuple[list[int], list[float], list[float]]], list[str]]:
    """Mean and std over seeds of the ARI per round, per (strategy, epsilon).

    Runs that kept one model throughout (ARI 0 by construction) are left out; their strategy
    names are returned second.
    """
    acc: dict[str, dict[int, list[float]]] = {}
    single: set[str] = set()
    for r in sweep.runs:
        pts = [(rec.get("round"), as_float(rec.get("ari"))) for rec in r.rounds]
        pts = [(int(k), v) for k, v in pts if k is not None and math.isfinite(v)]
        if not pts:
            continue
        if all(len(rec.get("cluster_sizes") or {}) <= 1 for rec in r.rounds):
            single.add(r.strategy)
            continue
        label = f"{_row_label(r, sweep.grid_keys)} {_eps_label(r.epsilon)}"
        for k, v in pts:
            acc.setdefault(label, {}).setdefault(k, []).append(v)
    curves = {}
    for label, d in acc.items():
        rounds = sorted(d)
        stats = [mean_std(d[k]) for k in rounds]
        curves[label] = (rounds, [s[0] for s in stats], [s[1] for s in stats])
    return curves, sorted(single - {r.strategy for r in sweep.runs if _multi(r)})


def _multi(run: SweepRun) -> bool:
    return any(len(rec.get("cluster_sizes") or {}) > 1 for rec in run.rounds)


def _write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for row in rows:
            out = {}
            for c in columns:
                v = row.get(c)
                if v is None or (isinstance(v, float) and math.isnan(v)):
                    out[c] = ""
                else:
                    out[c] = v
            w.writerow(out)


def _run_analyses(
    sweep: Sweep,
    per_run: bool,
    config: MetricsConfig | None,
    log: Callable[[str], None],
) -> dict[str, dict[str, Any]]:
    """Every run's own analysis (and report files when ``per_run``), with seed siblings."""
    analyses: dict[str, dict[str, Any]] = {}
    sets = sweep.seed_sets()
    for i, r in enumerate(sweep.runs, 1):
        siblings = [s.path for ss in sets if r in ss for s in ss if s is not r]
        t0 = time.perf_counter()
        try:
            if per_run:
                _, analysis = write_run_report(r.path, config, siblings)
            else:
                run = read_run(r.path)
                analysis = analyse_run(
                    run,
                    config if config is not None else metrics_config(run),
                    [read_run(p) for p in siblings],
                    cascade=False,
                )
        except Exception as e:  # noqa: BLE001 - one broken run must not sink the sweep report
            sweep.notes.append(
                Note("runs", f"{r.name}: its report failed ({type(e).__name__}: {e})")
            )
            continue
        analyses[r.name] = analysis
        log(f"[{i}/{len(sweep.runs)}] {r.name}: {time.perf_counter() - t0:.1f}s")
    return analyses


def _distinct_runs(sweep: Sweep) -> list[SweepRun]:
    """The runs, with repeats of a non-private run along the epsilon axis dropped."""
    seen: set[tuple] = set()
    out = []
    for r in sweep.runs:
        if not r.private:
            key = (r.strategy, r.other(sweep.grid_keys), r.seed)
            if key in seen:
                continue
            seen.add(key)
        out.append(r)
    return out


def _gaps_table(
    sweep: Sweep, analyses: Mapping[str, Mapping[str, Any]]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Per config (strategy, epsilon): mean ± std over seeds of each disparity gap."""
    by_cfg: dict[str, list[Mapping[str, Any]]] = {}
    for r in _distinct_runs(sweep):
        a = analyses.get(r.name)
        if a is None or not a.get("record_level"):
            continue
        label = f"{_row_label(r, sweep.grid_keys)}, {_eps_label(r.epsilon)}"
        by_cfg.setdefault(label, []).append(a["worst"]["groups"])
    cols = [k for k, _ in GAP_METRICS if any(f"{k}_gap" in w for ws in by_cfg.values() for w in ws)]
    rows = []
    for label, ws in by_cfg.items():
        row: dict[str, Any] = {"config": label, "runs": len(ws)}
        for k in cols:
            row[k] = fmt_mean_std([w.get(f"{k}_gap") for w in ws])
        rows.append(row)
    return rows, cols


def _multiplicity_table(
    sweep: Sweep, analyses: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Per config and group: ambiguity and discrepancy, mean over the config's runs."""
    out = []
    distinct = {r.name for r in _distinct_runs(sweep)}
    for ss in sweep.seed_sets():
        ss = [r for r in ss if r.name in distinct]
        views = [analyses[r.name]["views"]["groups"] for r in ss if r.name in analyses]
        views = [v for v in views if any("ambiguity" in row for row in v.values())]
        if not views:
            continue
        label = f"{_row_label(ss[0], sweep.grid_keys)}, {_eps_label(ss[0].epsilon)}"
        for g in sorted({g for v in views for g in v}):
            out.append(
                {
                    "config": label,
                    "seeds": len(ss),
                    "group": g,
                    "ambiguity": fmt_mean_std([v.get(g, {}).get("ambiguity") for v in views]),
                    "discrepancy": fmt_mean_std([v.get(g, {}).get("discrepancy") for v in views]),
                }
            )
    return out


def write_sweep_report(
    path: Path,
    per_run: bool = True,
    config: MetricsConfig | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Write ``report.md``, ``report.json``, ``disparity.csv`` and ``figures/*.png`` of a sweep.

    Parameters
    ----------
    path : Path
        The sweep directory.
    per_run : bool
        Also write every run's own report (``report.md``, ``report.json``, figures) into its
        directory. The sweep's cross-run tables need the runs' analyses either way.
    config : MetricsConfig, optional
        Metric settings for every run (default: each run's ``[metrics]`` or the defaults).
    log : callable, optional
        Progress messages (default: standard error).

    Returns
    -------
    Path
        ``path/report.md``.
    """
    import sys

    t0 = time.perf_counter()
    path = Path(path)
    say = log or (lambda m: print(m, file=sys.stderr, flush=True))
    sweep = read_sweep(path)
    cfg = config if config is not None else MetricsConfig()
    fig_dir = path / "figures"
    rows = disparity_rows(sweep)
    others = [k for k in sweep.grid_keys if k not in (STRATEGY_KEY, EPSILON_KEY, "seed")]
    columns = DISPARITY_COLUMNS[:6] + others + DISPARITY_COLUMNS[6:]
    _write_csv(path / "disparity.csv", rows, columns)

    missing_ref = [r["run"] for r in rows if r["private"] and r.get("reference_run") is None]
    if missing_ref:
        sweep.notes.append(
            Note(
                "disparate impact",
                f"no non-private '{REFERENCE_STRATEGY}' run with the same seed and other grid "
                f"values for {len(missing_ref)} private run(s) (e.g. {missing_ref[0]}); add "
                f"'{REFERENCE_STRATEGY}' to the strategy axis of the sweep",
            )
        )

    figs: dict[str, Path | None] = {}
    acc, di, worst, refs, worst_ref, grp = _series(sweep, rows)
    figs["accuracy_vs_epsilon"] = plots.accuracy_vs_epsilon(
        acc, refs, fig_dir / "accuracy_vs_epsilon.png", "Minority vs majority accuracy"
    )
    if any(set(d) - {"minority", "majority"} for d in grp["series"].values()):
        figs["group_accuracy_vs_epsilon"] = plots.accuracy_vs_epsilon(
            grp["series"],
            grp["references"],
            fig_dir / "group_accuracy_vs_epsilon.png",
            "Accuracy per group",
        )
    figs["disparate_impact_vs_epsilon"] = plots.disparate_impact_vs_epsilon(
        di, worst, worst_ref, fig_dir / "disparate_impact_vs_epsilon.png"
    )
    curves, single = ari_curves(sweep)
    figs["ari_by_round"] = plots.ari_by_round(curves, fig_dir / "ari_by_round.png")

    analyses = _run_analyses(sweep, per_run, config, say)
    cascade: dict[str, list[dict[str, Any]]] = {}
    level_rows: dict[str, list[dict]] = {}
    for level in ("groups", "communities"):
        level_rows[level] = [
            row
            for name, a in analyses.items()
            if a.get("record_level")
            for row in report_rows({"groups": a["views"][level]}, run=name)
        ]
    if len(level_rows["groups"]) >= 3:
        cascade["groups"] = guard_cascade(
            plot_cascade(
                level_rows["groups"],
                fig_dir / "cascade.png",
                cfg.representation,
                within_run=cfg.within_run,
                n_boot=cfg.bootstrap,
                confidence=cfg.confidence,
                seed=cfg.seed,
            )
        )
        figs["cascade"] = fig_dir / "cascade.png"
    if len(level_rows["communities"]) >= 3:
        cascade["communities"] = cascade_for(level_rows["communities"], cfg)
    gaps, gap_cols = _gaps_table(sweep, analyses)
    mult = _multiplicity_table(sweep, analyses)

    figures = {k: p.name for k, p in figs.items() if p is not None}
    lines = _markdown(
        sweep,
        rows,
        figures,
        curves,
        single,
        gaps,
        gap_cols,
        mult,
        cascade,
        level_rows,
        cfg,
        analyses,
        per_run,
    )
    report = {
        "kind": "sweep",
        "sweep": path.name,
        "grid_keys": sweep.grid_keys,
        "runs": [r.name for r in sweep.runs],
        "disparity": rows,
        "headline": headline_tables(sweep, rows),
        "ari_by_round": {k: {"rounds": v[0], "mean": v[1], "std": v[2]} for k, v in curves.items()},
        "gaps": gaps,
        "multiplicity": mult,
        "cascade": cascade,
        "runs_analysed": {
            name: {
                "record_level": a.get("record_level"),
                "groups": a["views"]["groups"],
                "worst": a["worst"]["groups"],
                "multiplicity_runs": a.get("multiplicity_runs"),
            }
            for name, a in analyses.items()
        },
        "figures": {k: f"figures/{v}" for k, v in figures.items()},
        "notes": [{"section": n.section, "message": n.message} for n in sweep.notes],
        "seconds": time.perf_counter() - t0,
    }
    (path / "report.json").write_text(dumps(report) + "\n", encoding="utf-8")
    out = path / "report.md"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def _markdown(
    sweep: Sweep,
    rows: Sequence[dict[str, Any]],
    figures: Mapping[str, str],
    curves: Mapping[str, Any],
    single: Sequence[str],
    gaps: Sequence[dict[str, Any]],
    gap_cols: Sequence[str],
    mult: Sequence[dict[str, Any]],
    cascade: Mapping[str, list[dict[str, Any]]],
    level_rows: Mapping[str, list[dict]],
    cfg: MetricsConfig,
    analyses: Mapping[str, Mapping[str, Any]],
    per_run: bool,
) -> list[str]:
    strategies = sorted({r.strategy for r in sweep.runs})
    eps = sorted({r.epsilon for r in sweep.runs if r.private})
    seeds = sorted({str(r.seed) for r in sweep.runs})
    lines = [
        f"# Sweep report: {sweep.path.name}",
        "",
        f"{len(sweep.runs)} finished runs; strategies {', '.join(strategies) or '–'}; "
        f"target ε {', '.join(f'{e:g}' for e in eps) or '–'}; seeds {', '.join(seeds)}. "
        "Cells are mean ± standard deviation over seeds (a non-private run is counted once "
        "even when the sweep repeats it along the ε axis). Per-run numbers: `disparity.csv`.",
        "",
        "## Headline",
        "",
    ]
    lines += _headline_markdown(sweep, rows)
    if "accuracy_vs_epsilon" in figures:
        lines += [
            "## Accuracy vs privacy budget",
            "",
            "Solid: minority; dashed: majority; dotted: the non-private FedAvg reference.",
            "",
            f"![accuracy vs epsilon](figures/{figures['accuracy_vs_epsilon']})",
            "",
        ]
        if "group_accuracy_vs_epsilon" in figures:
            lines += [f"![accuracy per group](figures/{figures['group_accuracy_vs_epsilon']})", ""]
    else:
        lines += ["> No private runs: no accuracy-vs-ε plot.", ""]
    if "disparate_impact_vs_epsilon" in figures:
        lines += [
            "## Disparate impact of DP",
            "",
            f"![disparate impact vs epsilon](figures/{figures['disparate_impact_vs_epsilon']})",
            "",
        ]
    lines += ["## Cluster recovery", ""]
    if curves:
        ari_rows = []
        for label, (rounds, mean, std) in curves.items():
            ari_rows.append(
                {
                    "config": label,
                    "rounds": len(rounds),
                    "first": mean[0],
                    "final": mean[-1],
                    "final_std": std[-1],
                }
            )
        lines += [
            "Adjusted Rand index of the strategy's cluster assignment against the true "
            "sub-distributions, per round (1 = recovered exactly, 0 = chance).",
            "",
        ]
        lines += table(
            ari_rows,
            ["config", "rounds", "first", "final", "final_std"],
            ["config", "rounds", "ARI round 1", "ARI final (mean)", "std"],
        ) + [""]
        if "ari_by_round" in figures:
            lines += [f"![ARI per round](figures/{figures['ari_by_round']})", ""]
    else:
        lines += ["> No clustered runs with a known truth (rounds.jsonl has no `ari`).", ""]
    if single:
        lines += [
            f"_Single-model strategies ({', '.join(single)}) keep one cluster; their ARI is 0 "
            "by construction and is not drawn._",
            "",
        ]
    lines += ["## Cascading disparities across runs", ""]
    if gaps:
        lines += [
            "Gap (worst minus best group) of each disparity, mean ± std over seeds; each run's "
            "own report has the per-group numbers.",
            "",
        ]
        lines += table(
            gaps,
            ["config", "runs", *gap_cols],
            ["config", "runs", *[dict(GAP_METRICS)[c] for c in gap_cols]],
        ) + [""]
    else:
        lines += ["> No run could be evaluated record by record (see the notes).", ""]
    if mult:
        lines += [
            "### Multiplicity across seeds",
            "",
            "Ambiguity / discrepancy of the models of one config trained with different seeds "
            "(each run's records, mean ± std over its seeds).",
            "",
        ]
        lines += table(mult, ["config", "seeds", "group", "ambiguity", "discrepancy"]) + [""]
    else:
        lines += [
            "> Multiplicity needs at least two seeds of the same config with saved models.",
            "",
        ]
    lines += ["### The cascade", ""]
    if cascade.get("groups"):
        lines += [
            f"Units = (run, group), {len(level_rows['groups'])} of them; scores "
            + ("centred within each run, so " if cfg.within_run else "")
            + f"ρ measures whether the group whose representation is flatter (`{cfg.representation}`) "
            "is also the one that is worse off.",
            "",
        ]
        lines += cascade_lines(cascade["groups"], cfg.confidence) + [""]
        if "cascade" in figures:
            lines += [f"![cascade](figures/{figures['cascade']})", ""]
    if cascade.get("communities"):
        lines += [f"Units = (run, community), {len(level_rows['communities'])} of them:", ""]
        lines += cascade_lines(cascade["communities"], cfg.confidence) + [""]
    if not cascade:
        lines += ["> Not enough record-level results for a correlation (need 3 units).", ""]
    lines += ["## Runs", ""]
    run_rows = []
    for r in sweep.runs:
        a = analyses.get(r.name, {})
        link = f"[{r.name}]({r.name}/report.md)" if per_run and a else r.name
        run_rows.append(
            {
                "run": link,
                "strategy": r.strategy,
                "epsilon": _eps_label(r.epsilon),
                "seed": r.seed,
                "accuracy": as_float(r.summary.get("accuracy")),
                "record-level": a.get("record_level") if a else None,
                "notes": len(a.get("notes", [])) if a else None,
            }
        )
    lines += table(
        run_rows, ["run", "strategy", "epsilon", "seed", "accuracy", "record-level", "notes"]
    )
    lines += [""]
    if sweep.notes:
        lines += ["## What was skipped, and why", ""]
        lines += [f"- **{n.section}**: {n.message}" for n in sweep.notes] + [""]
    return lines
