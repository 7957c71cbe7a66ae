"""The cascading-disparity report of one finished run (issue 8).

:func:`analyse_run` computes every metric per group, per sub-distribution and per community
from the run's saved models (see :mod:`fedcascade.reporting.evaluation`); what cannot be
computed (no models, data not on this machine, no sibling seeds) is skipped with a note.
:func:`write_run_report` writes ``report.md``, ``report.json`` and ``figures/*.png``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedcascade.metrics import MetricsConfig, cascade_table, group_report, noise_key, report_rows
from fedcascade.metrics.directions import direction
from fedcascade.reporting import plots
from fedcascade.reporting.evaluation import RunEvaluation, evaluate_run, predict_records
from fedcascade.reporting.jsonsafe import dumps
from fedcascade.reporting.markdown import as_float, fmt, table
from fedcascade.reporting.rundir import RunDir, read_run

__all__ = [
    "analyse_run",
    "run_markdown",
    "run_figures",
    "write_run_report",
    "metrics_config",
    "cascade_for",
    "guard_cascade",
    "SECTIONS",
]

#: the run-level figures of the headline table, from summary.json
HEADLINE = [
    ("accuracy", "accuracy"),
    ("worst_group_accuracy", "worst-group acc."),
    ("accuracy_gap", "gap"),
    ("minority_accuracy", "minority acc."),
    ("majority_accuracy", "majority acc."),
    ("max_epsilon_spent", "max ε spent"),
    ("ari", "ARI"),
    ("wall_seconds", "wall s"),
]

#: largest accuracy difference between the report's recomputation and the run's own evaluation
#: that still counts as "the same models on the same data"
CONSISTENCY_TOLERANCE = 1e-9


def _robustness_cols(cfg: MetricsConfig) -> list[str]:
    return ["accuracy", *[noise_key(s) for s in cfg.noise_scales], "acc_adversarial"]


def sections(cfg: MetricsConfig) -> list[dict[str, Any]]:
    """The report's sections: id, title, one-line reading guide and per-group columns."""
    return [
        {
            "id": "performance",
            "title": "1. Performance",
            "intro": "Test accuracy and cross-entropy per group. For a binary task the "
            "demographic-parity and equalized-odds differences compare groups' selection "
            "rates and error rates (0 = equal).",
            "columns": ["n", "accuracy", "loss", "selection_rate", "tpr", "fpr"],
        },
        {
            "id": "representation",
            "title": "2. Representation",
            "intro": "Dimension of each group's backbone+adapter embeddings of its test records: "
            "effective rank and participation ratio (linear), intrinsic dimension (manifold), "
            "and the flattening score 1 - ID(embedding)/ID(input): the fraction of the group's "
            "own input dimension the representation no longer spans (higher = flatter).",
            "columns": [
                "effective_rank",
                "participation_ratio",
                "intrinsic_dim",
                "intrinsic_dim_input",
                "flattening",
                "flattening_linear",
            ],
        },
        {
            "id": "privacy",
            "title": "3. Privacy",
            "intro": "ε spent by the group's communities (a record's guarantee is its community's; "
            "a group shows the largest) and membership inference of training records against "
            "held-out test records: loss-threshold attack and its calibrated variant (loss "
            "relative to the frozen pretrained backbone). AUC 0.5 / advantage 0 = no leakage; "
            "the advantage is optimistic on small groups (see mia_n_*).",
            "columns": [
                "epsilon",
                "mia_auc",
                "mia_advantage",
                "mia_auc_calibrated",
                "mia_advantage_calibrated",
                "mia_n_members",
                "mia_n_nonmembers",
            ],
        },
        {
            "id": "robustness",
            "title": "4. Robustness",
            "intro": "Accuracy per group under input Gaussian noise of increasing standard "
            "deviation (input units) and under an L∞ FGSM/PGD attack.",
            "columns": _robustness_cols(cfg),
        },
        {
            "id": "calibration",
            "title": "5. Calibration",
            "intro": f"Expected calibration error ({cfg.ece_bins} bins) and the fraction of "
            f"records predicted wrongly with confidence ≥ {cfg.confident_threshold:g}.",
            "columns": ["ece", "confident_error_rate"],
        },
        {
            "id": "multiplicity",
            "title": "6. Multiplicity",
            "intro": "Disagreement between the models of the same config trained with different "
            "seeds, on this run's test records: ambiguity (records on which any two seeds "
            "disagree) and discrepancy (largest pairwise disagreement).",
            "columns": ["ambiguity", "discrepancy"],
        },
    ]


SECTIONS = [s["id"] for s in sections(MetricsConfig())]


def metrics_config(run: RunDir) -> MetricsConfig:
    """The run's ``[metrics]`` settings if its config has them, else the defaults."""
    cfg = getattr(run.config, "metrics", None) if run.config is not None else None
    return cfg if isinstance(cfg, MetricsConfig) else MetricsConfig()


# -- computing ---------------------------------------------------------------------------------


def _add_record_columns(
    view: dict[Any, dict[str, float]], keys: np.ndarray, columns: Mapping[str, np.ndarray]
) -> None:
    """Add the per-key mean of each per-record column (robustness correctness) to ``view``."""
    names, inv = np.unique(keys, return_inverse=True)
    counts = np.bincount(inv, minlength=len(names)).astype(float)
    for col, values in columns.items():
        sums = np.bincount(inv, weights=np.asarray(values, dtype=float), minlength=len(names))
        for name, s, c in zip(names.tolist(), sums, counts, strict=True):
            if name in view and c > 0:
                view[name][col] = float(s / c)


def _add_worst(summary: dict[str, Any], view: Mapping[Any, Mapping[str, float]], col: str) -> None:
    """``<col>_worst_group``, ``<col>_worst`` and ``<col>_gap`` as the metrics library writes them."""
    d = direction(col)
    finite = {g: row[col] for g, row in view.items() if math.isfinite(row.get(col, math.nan))}
    if not finite or d == 0:
        return
    worst = (max if d > 0 else min)(finite, key=finite.__getitem__)
    summary[f"{col}_worst_group"] = worst
    summary[f"{col}_worst"] = finite[worst]
    summary[f"{col}_gap"] = max(finite.values()) - min(finite.values())


def _seed_predictions(
    ev: RunEvaluation, run: RunDir, siblings: Sequence[RunDir]
) -> tuple[np.ndarray | None, list[str]]:
    """Predictions of this run's and its sibling seeds' models on this run's test records."""
    if not siblings:
        run.note(
            "multiplicity",
            "needs runs of the same config with other seeds: run a sweep with a seed axis "
            "(e.g. `seed = [0, 1, 2]` in [sweep.grid]) and report it",
        )
        return None, []
    mine = [r.get("name") for r in run.communities]
    preds = [ev.probs.argmax(axis=1)]
    used = [run.name]
    for sib in siblings:
        theirs = [r.get("name") for r in sib.communities]
        if theirs != mine:
            run.note(
                "multiplicity",
                f"{sib.name} has other communities ({len(theirs)} vs {len(mine)}, or other "
                "names); left out",
            )
            continue
        try:
            p = predict_records(sib, ev.community, ev.inputs)
        except Exception as e:  # noqa: BLE001 - one broken sibling must not sink the report
            run.note("multiplicity", f"{sib.name}: its models could not be evaluated ({e})")
            continue
        if p is not None:
            preds.append(p)
            used.append(sib.name)
    if len(preds) < 2:
        run.note("multiplicity", "no sibling seed had usable models")
        return None, used
    return np.stack(preds), used


def _fallback_views(run: RunDir) -> dict[str, dict[Any, dict[str, float]]]:
    """What the results files alone give: accuracy per group/sub-distribution, epsilon, loss."""
    s = run.summary
    groups: dict[Any, dict[str, float]] = {
        g: {"accuracy": float(v)} for g, v in (s.get("accuracy_by_group") or {}).items()
    }
    eps_by_group: dict[str, float] = {}
    communities: dict[Any, dict[str, float]] = {}
    for r in run.communities:
        e = as_float(r.get("epsilon"))
        g = r.get("group") or ""
        if g and not math.isnan(e):
            eps_by_group[g] = max(eps_by_group.get(g, -math.inf), e)
        communities[r.get("name") or r["community_id"]] = {
            "n": as_float(r.get("n_test")),
            "accuracy": as_float(r.get("accuracy")),
            "loss": as_float(r.get("loss")),
            "epsilon": e,
        }
    for g, e in eps_by_group.items():
        groups.setdefault(g, {})["epsilon"] = e
    subs = {
        k: {"accuracy": float(v)} for k, v in (s.get("accuracy_by_sub_distribution") or {}).items()
    }
    return {"groups": groups, "subdistributions": subs, "communities": communities}


def _consistency(run: RunDir, ev: RunEvaluation, groups: Mapping[Any, Mapping[str, float]]) -> dict:
    """How far the report's recomputed accuracies are from the run's own evaluation."""
    diffs_c = []
    for r in run.communities:
        cid = int(r["community_id"])
        rec, acc = ev.community_accuracy.get(cid), as_float(r.get("accuracy"))
        if rec is not None and math.isfinite(acc):
            diffs_c.append(abs(rec - acc))
    diffs_g = [
        abs(float(v) - groups[g]["accuracy"])
        for g, v in (run.summary.get("accuracy_by_group") or {}).items()
        if g in groups
    ]
    worst = max(diffs_c + diffs_g, default=math.nan)
    out = {
        "max_abs_community_accuracy_difference": max(diffs_c, default=math.nan),
        "max_abs_group_accuracy_difference": max(diffs_g, default=math.nan),
        "matches": bool(math.isfinite(worst) and worst <= CONSISTENCY_TOLERANCE),
    }
    if math.isfinite(worst) and worst > CONSISTENCY_TOLERANCE:
        run.note(
            "consistency",
            f"recomputed accuracies differ from the run's own evaluation by up to {worst:.4g}: "
            "the data or models rebuilt here differ from the run's (another machine, torch "
            "version or backbone cache?)",
        )
    return out


#: fewer units than this give no verdict: a bootstrap of 3 or 4 points yields degenerate
#: intervals (every resample of 3 points with any variation has rho = +-1 or 0.5)
MIN_CASCADE_UNITS = 5


def guard_cascade(tbl: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Replace the verdict of rows computed on fewer than :data:`MIN_CASCADE_UNITS` units."""
    out = []
    for t in tbl:
        t = dict(t)
        if t["n"] < MIN_CASCADE_UNITS and t["verdict"] not in ("no variation",):
            t["verdict"] = f"too few units (n < {MIN_CASCADE_UNITS})"
            t["ci_low"] = t["ci_high"] = math.nan
        out.append(t)
    return out


def cascade_for(rows: list[dict], cfg: MetricsConfig) -> list[dict[str, Any]]:
    """The cascade table of ``rows`` with the settings of ``cfg``, guarded for few units."""
    return guard_cascade(
        cascade_table(
            rows,
            cfg.representation,
            within_run=cfg.within_run,
            n_boot=cfg.bootstrap,
            confidence=cfg.confidence,
            seed=cfg.seed,
        )
    )


def analyse_run(
    run: RunDir,
    config: MetricsConfig | None = None,
    siblings: Sequence[RunDir] = (),
    cascade: bool = True,
) -> dict[str, Any]:
    """Every disparity metric of one run, per group, sub-distribution and community.

    Parameters
    ----------
    run : RunDir
        The run (from :func:`fedcascade.reporting.rundir.read_run`); notes on what was skipped
        are appended to ``run.notes``.
    config : MetricsConfig, optional
        Metric settings; default: the run's ``[metrics]`` if any, else the defaults.
    siblings : sequence of RunDir
        Runs of the same config with other seeds, for the multiplicity metrics.
    cascade : bool
        Compute the within-run cascade tables (bootstrap; skip when only the views are needed).

    Returns
    -------
    dict
        ``run``, ``strategy``, ``headline`` (summary figures), ``views`` (``groups``,
        ``subdistributions``, ``communities``: ``{key: {metric: value}}``), ``worst``
        (per view: ``<metric>_worst_group``, ``_worst``, ``_gap``, ``dp_difference``,
        ``eo_difference``), ``overall``, ``cascade`` (per level: the cascade table),
        ``multiplicity_runs``, ``consistency``, ``settings``, ``record_level`` (whether
        models were evaluated), ``notes``, ``seconds``.
    """
    t0 = time.perf_counter()
    cfg = config if config is not None else metrics_config(run)
    s = run.summary
    out: dict[str, Any] = {
        "kind": "run",
        "run": run.name,
        "strategy": s.get("strategy"),
        "strategy_label": s.get("strategy_label"),
        "private": s.get("private"),
        "seed": s.get("seed"),
        "target_epsilon": s.get("target_epsilon"),
        "rounds": s.get("rounds"),
        "n_communities": s.get("n_communities"),
        "headline": {k: s.get(k) for k, _ in HEADLINE},
        "summary": s,
    }
    try:
        ev = evaluate_run(run, cfg)
    except Exception as e:  # noqa: BLE001 - report what can be reported, never a traceback
        run.note("records", f"the saved models could not be evaluated ({type(e).__name__}: {e})")
        ev = None
    if ev is None:
        views = _fallback_views(run)
        out.update(
            views=views,
            worst={"groups": {}, "subdistributions": {}, "communities": {}},
            overall={},
            record_level=False,
            multiplicity_runs=[],
            consistency={},
            settings={},
        )
        for v in ("groups", "communities"):
            for col in ("accuracy", "epsilon"):
                _add_worst(out["worst"][v], views[v], col)
        if "accuracy_worst_group" in out["worst"]["groups"]:
            out["worst"]["groups"]["worst_group"] = out["worst"]["groups"]["accuracy_worst_group"]
        out["cascade"] = {}
    else:
        seed_preds, used = _seed_predictions(ev, run, siblings)
        rep = group_report(ev.run_arrays("groups", seed_preds), cfg)
        rep_c = group_report(ev.run_arrays("communities", seed_preds), cfg)
        views = {
            "groups": rep["groups"],
            "subdistributions": rep.get("subdistributions", {}),
            "communities": rep_c["groups"],
        }
        worst = {
            "groups": rep["summary"],
            "subdistributions": rep.get("summary_subdistributions", {}),
            "communities": rep_c["summary"],
        }
        for k, row in views["subdistributions"].items():
            row["epsilon"] = ev.epsilon_by_subdistribution.get(k, math.nan)
        overall = {0: rep["overall"]}
        keys = {
            "groups": ev.groups,
            "subdistributions": ev.subdistributions,
            "communities": ev.community_name,
        }
        for v, k in keys.items():
            _add_record_columns(views[v], k, ev.robustness)
        _add_record_columns(overall, np.zeros(len(ev.labels), dtype=int), ev.robustness)
        for v in views:
            for col in ["epsilon", *ev.robustness]:
                _add_worst(worst[v], views[v], col)
        out.update(
            views=views,
            worst=worst,
            overall=overall[0],
            record_level=True,
            multiplicity_runs=used if seed_preds is not None else [],
            consistency=_consistency(run, ev, views["groups"]),
            settings={**rep["settings"], "representation": cfg.representation},
            n_classes=ev.n_classes,
            skipped_communities=ev.skipped_communities,
        )
        out["cascade"] = {}
        if cascade:
            for level in ("groups", "communities"):
                rows = report_rows({"groups": views[level]}, run=run.name)
                out["cascade"][level] = cascade_for(rows, cfg)
    out["notes"] = [{"section": n.section, "message": n.message} for n in run.notes]
    out["seconds"] = time.perf_counter() - t0
    return out


# -- figures ------------------------------------------------------------------------------------

_BAR_METRICS = [
    ("accuracy", "accuracy (higher = better)"),
    ("flattening", "flattening (higher = flatter)"),
    ("mia_auc_calibrated", "MIA AUC, calibrated (0.5 = none)"),
    ("acc_adversarial", "accuracy under attack"),
    ("ece", "ECE (higher = worse)"),
    ("ambiguity", "ambiguity across seeds"),
    ("epsilon", "ε spent"),
]


def run_figures(
    analysis: Mapping[str, Any],
    rows_by_level: Mapping[str, list[dict]],
    out_dir: Path,
    config: MetricsConfig,
) -> dict[str, str]:
    """Write the run's PNGs into ``out_dir``; return ``{figure id: file name}``."""
    views = analysis["views"]
    made: dict[str, Path | None] = {}
    made["disparities"] = plots.group_bars(
        views["groups"],
        [(k, lab) for k, lab in _BAR_METRICS if k != "epsilon" or analysis.get("private")],
        out_dir / "disparities.png",
        f"{analysis['run']}: disparities per group",
    )
    if analysis.get("record_level"):
        made["robustness"] = plots.robustness_curves(
            views["groups"],
            list(config.noise_scales),
            config.adversarial_eps,
            out_dir / "robustness.png",
        )
        level = "communities" if len(views["groups"]) < MIN_CASCADE_UNITS else "groups"
        rows = rows_by_level.get(level, [])
        if len(rows) >= MIN_CASCADE_UNITS:
            from fedcascade.metrics import plot_cascade

            plot_cascade(
                rows,
                out_dir / "cascade.png",
                config.representation,
                within_run=config.within_run,
                n_boot=config.bootstrap,
                confidence=config.confidence,
                seed=config.seed,
                # The run's tables list every outcome; four scatter panels keep the figure
                # readable and halve its drawing time (constrained layout dominates).
                max_panels=4,
            )
            made["cascade"] = out_dir / "cascade.png"
            analysis["cascade_plot_level"] = level  # type: ignore[index]
    return {k: p.name for k, p in made.items() if p is not None}


# -- markdown -----------------------------------------------------------------------------------


def _view_table(
    view: Mapping[Any, Mapping[str, float]], cols: Sequence[str], key: str
) -> list[str]:
    present = [c for c in cols if any(c in row for row in view.values())]
    if not present:
        return []
    rows = [
        {key: k, **{c: _count(v) if c in _COUNTS else v for c, v in row.items()}}
        for k, row in view.items()
    ]
    return table(rows, [key, *present])


_COUNTS = frozenset({"n", "mia_n_members", "mia_n_nonmembers"})


def _count(v: Any) -> Any:
    return int(v) if isinstance(v, float) and math.isfinite(v) else v


def _worst_table(worst: Mapping[str, Any], cols: Sequence[str]) -> list[str]:
    rows = [
        {
            "metric": c,
            "worst": worst[f"{c}_worst_group"],
            "value": worst.get(f"{c}_worst"),
            "gap": worst.get(f"{c}_gap"),
        }
        for c in cols
        if f"{c}_worst_group" in worst
    ]
    if not rows:
        return []
    return table(
        rows,
        ["metric", "worst", "value", "gap"],
        ["metric", "worst group", "its value", "gap (max − min)"],
    )


def _same_view(a: Mapping[Any, Mapping], b: Mapping[Any, Mapping]) -> bool:
    """Whether two views hold the same keys and accuracies (groups = sub-distributions)."""
    if set(map(str, a)) != set(map(str, b)):
        return False
    return all(
        math.isclose(a[k].get("accuracy", 0.0), b[k].get("accuracy", 0.0), abs_tol=1e-12) for k in a
    )


def cascade_lines(tbl: Sequence[Mapping[str, Any]], confidence: float) -> list[str]:
    """Markdown table of a cascade table (outcome, n, rho, CI, verdict)."""
    rows = [
        {
            "outcome": t["outcome"],
            "n": t["n"],
            "rho": t["spearman"],
            "ci": (
                f"[{t['ci_low']:+.2f}, {t['ci_high']:+.2f}]"
                if math.isfinite(t["ci_low"]) and math.isfinite(t["ci_high"])
                else None
            ),
            "expected": {1: "+", -1: "−"}.get(int(t["expected_sign"]), "?"),
            "verdict": t["verdict"],
        }
        for t in tbl
    ]
    return table(
        rows,
        ["outcome", "n", "rho", "ci", "expected", "verdict"],
        [
            "outcome",
            "n",
            "Spearman ρ",
            f"{int(confidence * 100)}% CI",
            "cascade predicts",
            "verdict",
        ],
        digits=2,
    )


def _plural(n: Any, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _notes_for(analysis: Mapping[str, Any], *sections: str) -> list[str]:
    return [
        f"> Skipped/partial ({n['section']}): {n['message']}"
        for n in analysis.get("notes", [])
        if n["section"] in sections
    ]


def run_markdown(
    analysis: Mapping[str, Any],
    figures: Mapping[str, str],
    config: MetricsConfig,
    figures_dir: str = "figures",
) -> list[str]:
    """The lines of a run's ``report.md``."""
    a = analysis
    views, worst = a["views"], a["worst"]
    label = a.get("strategy_label") or a.get("strategy") or "?"
    eps = a.get("target_epsilon")
    lines = [
        f"# Cascading-disparity report: {a['run']}",
        "",
        f"Strategy **{label}** (`{a.get('strategy')}`), "
        + (f"private at target ε = {fmt(eps)}" if a.get("private") else "not private")
        + f", seed {a.get('seed')}, {_plural(a.get('rounds'), 'round')}, "
        f"{_plural(a.get('n_communities'), 'community', 'communities')}.",
        "",
    ]
    head = a["headline"]
    # Headers are the summary.json keys, so readers can match the numbers to the file.
    lines += table([head], [k for k, _ in HEADLINE]) + [""]
    cons = a.get("consistency") or {}
    if a.get("record_level"):
        status = "match" if cons.get("matches") else "**do not match** (see notes)"
        lines += [
            "Record-level metrics come from the saved cluster models evaluated again on each "
            f"community's test records; the recomputed accuracies {status} the run's own "
            f"(largest difference {fmt(cons.get('max_abs_community_accuracy_difference'), 6)}).",
            "",
        ]
    else:
        lines += [
            "Only the run's result files could be used (no record-level metrics); see the notes "
            "below for why.",
            "",
        ]
    if "disparities" in figures:
        lines += [f"![disparities per group]({figures_dir}/{figures['disparities']})", ""]
    same = _same_view(views["groups"], views.get("subdistributions", {}))
    record_notes = _notes_for(a, "records", "config")
    if record_notes:
        lines += record_notes + [""]
    for sec in sections(config):
        cols = sec["columns"]
        lines += [f"## {sec['title']}", "", sec["intro"], ""]
        notes = _notes_for(a, sec["id"])
        own = cols if sec["id"] == "performance" else [c for c in cols if c != "accuracy"]
        has_own = any(c in row for row in views["groups"].values() for c in own)
        body = _view_table(views["groups"], cols, "group") if has_own else []
        if not body:
            why = notes or ["> Not computed for this run (see 'What was skipped, and why')."]
            lines += why + [""]
            continue
        lines += ["Per group:", ""] + body + [""]
        if sec["id"] == "privacy" and not a.get("record_level"):
            lines += ["> Membership inference needs the saved models (see below).", ""]
        wt = _worst_table(worst["groups"], [c for c in cols if c != "n"])
        if wt:
            lines += wt + [""]
        if sec["id"] == "performance":
            extra = [
                f"{name} {fmt(worst['groups'].get(k))}"
                for k, name in (
                    ("dp_difference", "demographic-parity difference"),
                    ("eo_difference", "equalized-odds difference"),
                )
                if k in worst["groups"]
            ]
            if extra:
                lines += ["Binary task: " + ", ".join(extra) + ".", ""]
        if views.get("subdistributions") and not same:
            sub = _view_table(views["subdistributions"], cols, "sub-distribution")
            if sub:
                lines += ["Per sub-distribution (ground truth):", ""] + sub + [""]
        if sec["id"] == "robustness" and "robustness" in figures:
            lines += [f"![robustness per group]({figures_dir}/{figures['robustness']})", ""]
        if notes:
            lines += notes + [""]
    if same and views.get("subdistributions"):
        lines += [
            "_Groups coincide with the ground-truth sub-distributions in this data, so the "
            "per-sub-distribution tables are not repeated._",
            "",
        ]
    lines += ["## 7. The cascade", ""]
    casc = a.get("cascade") or {}
    if not casc:
        lines += ["> Not computed for this run (it needs the record-level metrics).", ""]
    else:
        lines += [
            f"Spearman correlation of each unit's representation score (`{config.representation}`) "
            "with its other disparities, with a percentile-bootstrap interval. 'supports cascade' "
            "means the interval excludes 0 on the side the cascade predicts (a flatter "
            "representation going with worse outcomes). Within one run the units are its groups "
            "and its communities; a sweep report pools runs.",
            "",
        ]
        for level, title in (("groups", "Units = groups"), ("communities", "Units = communities")):
            tbl = casc.get(level) or []
            if not tbl:
                continue
            n_units = len(views[level])
            lines += [f"{title} ({n_units}):", ""]
            if n_units < 3:
                lines += ["> Fewer than 3 units: no correlation can be estimated.", ""]
                continue
            if n_units < MIN_CASCADE_UNITS:
                lines += [
                    f"> Only {n_units} units: ρ is shown, but no interval or verdict is "
                    f"drawn below {MIN_CASCADE_UNITS}; pool runs in a sweep for a real test.",
                    "",
                ]
            lines += cascade_lines(tbl, config.confidence) + [""]
        if "cascade" in figures:
            lines += [
                f"![cascade]({figures_dir}/{figures['cascade']})",
                "",
                f"_Figure: units = {a.get('cascade_plot_level', 'groups')}._",
                "",
            ]
    lines += ["## Communities", ""]
    comm_view = views.get("communities", {})
    rows = []
    for r in a.get("communities_table", []):
        rows.append({**r, **(comm_view.get(r.get("name")) or {})})
    cols = [
        "community_id",
        "name",
        "group",
        "sub_distribution",
        "n_train",
        "cluster",
        "lora_rank",
        "accuracy",
        "flattening",
        "mia_auc_calibrated",
        "acc_adversarial",
        "ambiguity",
        "epsilon",
        "noise_multiplier",
        "steps",
        "status",
    ]
    cols = [c for c in cols if any(r.get(c) not in (None, "") for r in rows)]
    lines += table(rows, cols) + [""]
    if a.get("notes"):
        lines += ["## What was skipped, and why", ""]
        lines += [f"- **{n['section']}**: {n['message']}" for n in a["notes"]] + [""]
    lines += [
        "Metric definitions and references: `docs/metrics.md`. Machine-readable numbers: "
        '`report.json` (missing values are null, infinite ones the string "inf").',
        "",
    ]
    return lines


def _community_rows(run: RunDir) -> list[dict[str, Any]]:
    out = []
    for r in run.communities:
        row: dict[str, Any] = dict(r)
        for k in ("community_id", "n_train", "cluster", "lora_rank", "steps", "sub_distribution"):
            v = as_float(r.get(k))
            row[k] = int(v) if math.isfinite(v) else None
        row["csv_accuracy"] = as_float(r.get("accuracy"))
        row["epsilon"] = as_float(r.get("epsilon"))
        out.append(row)
    return out


def write_run_report(
    path: Path,
    config: MetricsConfig | None = None,
    siblings: Sequence[Path] | None = None,
    figures: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """Write ``report.md``, ``report.json`` and ``figures/*.png`` for the run at ``path``.

    Parameters
    ----------
    path : Path
        A run directory.
    config : MetricsConfig, optional
        Metric settings (default: the run's ``[metrics]`` or the defaults).
    siblings : sequence of Path, optional
        Runs of the same config with other seeds (multiplicity). Default: found in the parent
        sweep directory, if any.
    figures : bool
        Write the PNGs.

    Returns
    -------
    (Path, dict)
        The path of ``report.md`` and the analysis written to ``report.json``.
    """
    from fedcascade.reporting.sweepdir import seed_siblings

    t0 = time.perf_counter()
    run = read_run(path)
    cfg = config if config is not None else metrics_config(run)
    sib_paths = seed_siblings(path) if siblings is None else list(siblings)
    sib_runs = [read_run(p) for p in sib_paths]
    analysis = analyse_run(run, cfg, sib_runs)
    analysis["communities_table"] = _community_rows(run)
    rows_by_level = {
        level: report_rows({"groups": analysis["views"][level]}, run=run.name)
        for level in ("groups", "communities")
    }
    figs = run_figures(analysis, rows_by_level, path / "figures", cfg) if figures else {}
    analysis["figures"] = {k: f"figures/{v}" for k, v in figs.items()}
    lines = run_markdown(analysis, figs, cfg)
    analysis["seconds"] = time.perf_counter() - t0
    (path / "report.json").write_text(dumps(analysis) + "\n", encoding="utf-8")
    out = path / "report.md"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out, analysis
