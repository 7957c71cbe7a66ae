"""``fedcascade``: run an experiment, run a sweep, write a report.

Exit codes: 0 success, 1 a run failed, 2 invalid input (config, override, path).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from fedcascade.errors import FedcascadeError

EPILOG_RUN = """examples:
  fedcascade run experiments/quickstart.toml
  fedcascade run experiments/quickstart.toml --set train.rounds=5 --set privacy.target_epsilon=8
  fedcascade run experiments/quickstart.toml --set strategy.name=dp-fedavg --out runs/dp

The run directory holds config.toml, rounds.jsonl, communities.csv and summary.json
(see the README, "Results contract")."""

EPILOG_SWEEP = """examples:
  fedcascade sweep experiments/disparity_synthetic.toml --out runs/synthetic
  fedcascade sweep experiments/disparity_synthetic.toml --quick

The grid comes from the [sweep] table of CONFIG; each point gets OUT/<point>/ and the sweep
writes OUT/sweep.csv and OUT/sweep.md. Finished points are kept and skipped when rerun."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedcascade",
        description="Clustered, differentially private federated learning for marginalized communities.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run one experiment on Flower's simulation engine (Ray)",
        description="Validate CONFIG, then run it with one simulated SuperNode per community.",
        epilog=EPILOG_RUN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("config", metavar="CONFIG", help="experiment TOML file")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (dotted, TOML value); repeatable",
    )
    run.add_argument("--out", metavar="DIR", help="run directory (default: [output] dir of CONFIG)")
    run.add_argument(
        "--overwrite", action="store_true", help="replace an existing non-empty run directory"
    )
    run.add_argument("--verbose", action="store_true", help="show Flower's and Ray's own logs")

    sweep = sub.add_parser(
        "sweep",
        help="run the grid declared in CONFIG's [sweep] table",
        description="Run every point of CONFIG's [sweep] grid; write sweep.csv and sweep.md.",
        epilog=EPILOG_SWEEP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sweep.add_argument("config", metavar="CONFIG", help="experiment TOML file with a [sweep] table")
    sweep.add_argument("--out", metavar="DIR", help="sweep directory (default: runs/<name>-sweep)")
    sweep.add_argument(
        "--quick",
        action="store_true",
        help="smoke-test size: apply [sweep.quick] overrides and [sweep.quick_grid]",
    )
    sweep.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key for every point; repeatable",
    )
    sweep.add_argument("--verbose", action="store_true", help="show Flower's and Ray's own logs")

    report = sub.add_parser(
        "report",
        help="write a Markdown report (tables, PNG plots, JSON) for a run or sweep directory",
        description="Read DIR (a run directory or a sweep directory) and write DIR/report.md.",
    )
    report.add_argument("dir", metavar="DIR", help="run or sweep directory")

    select = sub.add_parser(
        "select",
        help="pick a hyperparameter per strategy from a tuning sweep's VALIDATION metric",
        description="Print [[sweep.where]] rules choosing, for each value of --by, the --param value "
        "with the best mean --metric in SWEEP_DIR/sweep.csv (ties: closest to --default).",
    )
    select.add_argument("dir", metavar="SWEEP_DIR", help="a finished sweep directory")
    select.add_argument("--by", default="strategy.name", help="grid key to choose separately for")
    select.add_argument("--param", default="train.lr", help="grid key being chosen")
    select.add_argument("--metric", default="val_accuracy", help="sweep.csv column to maximise")
    select.add_argument("--default", type=float, default=0.1, help="preferred value on ties")

    sub.add_parser("strategies", help="list the registered strategies")
    return p


def _run(args: argparse.Namespace) -> int:
    from fedcascade.config import load_config
    from fedcascade.simulation import Progress, run_experiment

    cfg = load_config(args.config, args.overrides)
    if args.overwrite:
        cfg = replace(cfg, output=replace(cfg.output, overwrite=True))
    run_dir = Path(args.out) if args.out else cfg.run_dir
    out = run_experiment(cfg, run_dir, progress=Progress(), quiet=not args.verbose)
    print(f"results: {out}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from fedcascade.simulation import Progress, run_experiment
    from fedcascade.sweep import load_sweep, run_sweep

    points = load_sweep(args.config, args.quick, args.overrides)
    name = points[0].cfg.name
    out = (
        Path(args.out)
        if args.out
        else Path("runs") / f"{name}-sweep{'-quick' if args.quick else ''}"
    )

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    def run_one(cfg, run_dir):
        return run_experiment(cfg, run_dir, progress=Progress(), quiet=not args.verbose)

    out_dir, failed = run_sweep(points, out, run_one, log)
    print(
        f"sweep: {out_dir / 'sweep.csv'} and {out_dir / 'sweep.md'} ({len(points) - len(failed)}/{len(points)} points)"
    )
    return 1 if failed else 0


def _report(args: argparse.Namespace) -> int:
    from fedcascade.report import write_report

    path = write_report(Path(args.dir))
    print(f"report: {path}")
    return 0


def _select(args: argparse.Namespace) -> int:
    from fedcascade.sweep import select_best, where_rules

    best = select_best(Path(args.dir), args.by, args.param, args.metric, args.default)
    print(f"# chosen on {args.metric} by `fedcascade select {args.dir}`")
    print(where_rules(best, args.by, args.param))
    return 0


def _strategies(args: argparse.Namespace) -> int:
    from strategies.registry import BUILTIN, resolve_strategy

    for name in sorted(BUILTIN):
        cls = resolve_strategy(name)
        print(f"{name:18s} {cls.label}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point."""
    args = _parser().parse_args(argv)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Our matrices are small: multithreaded BLAS on a shared 2-core machine made them 5-8x
    # slower (measured in benchmarks/bench_clustering.py). Set before numpy is first imported;
    # Ray workers inherit it.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    handler = {
        "run": _run,
        "sweep": _sweep,
        "report": _report,
        "select": _select,
        "strategies": _strategies,
    }[args.command]
    try:
        return handler(args)
    except FedcascadeError as e:
        print(f"fedcascade: error: {e}", file=sys.stderr)
        from fedcascade.simulation import RunFailed

        return 1 if isinstance(e, RunFailed) else 2
    except KeyboardInterrupt:
        print(
            "fedcascade: interrupted; finished rounds are kept in the run directory",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
