"""Benchmark `fedcascade report` (issue 8 asks for at most 60 s on the quickstart run).

    python benchmarks/bench_report.py RUN_DIR [--sweep SWEEP_DIR]

Without RUN_DIR it first runs the quickstart (`experiments/quickstart.toml`, about a minute)
into a temporary directory. Measured in one go:

1. the real command, cold: `fedcascade report RUN_DIR` in a fresh process (imports, data
   rebuild, backbone from the disk cache, every metric, figures, files);
2. the same in this process, split into stages (read, rebuild + evaluate models, metrics,
   figures) once caches are warm: what each further run of a sweep costs;
3. optionally a whole sweep report (every run's report + the sweep's tables and figures).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def quickstart(tmp: Path) -> Path:
    out = tmp / "quickstart"
    cmd = [sys.executable, "-m", "fedcascade.cli", "run", str(REPO / "experiments/quickstart.toml")]
    subprocess.run([*cmd, "--out", str(out)], check=True, cwd=tmp)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("run_dir", nargs="?", help="a finished run directory (default: run quickstart)")
    ap.add_argument("--sweep", help="also time the report of this sweep directory")
    args = ap.parse_args()
    os.environ.setdefault("FLWR_HOME", tempfile.mkdtemp(prefix="flwr-home-"))
    tmp = Path(tempfile.mkdtemp(prefix="bench-report-"))
    run_dir = Path(args.run_dir) if args.run_dir else quickstart(tmp)

    cmd = [sys.executable, "-m", "fedcascade.cli", "report", str(run_dir)]
    _, cold = timed(subprocess.run, cmd, check=True, capture_output=True)
    print(f"cold `fedcascade report {run_dir.name}` (fresh process): {cold:6.1f} s  (limit 60 s)")

    import torch

    from fedcascade.metrics import group_report
    from fedcascade.reporting.evaluation import evaluate_run
    from fedcascade.reporting.run_report import metrics_config, write_run_report
    from fedcascade.reporting.rundir import read_run

    torch.set_num_threads(1)
    # first call in this process: imports and caches (data, backbone, adapter) are built
    _, first = timed(write_run_report, run_dir)
    run, t_read = timed(read_run, run_dir)
    cfg = metrics_config(run)
    ev, t_eval = timed(evaluate_run, run, cfg)
    _, t_metrics = timed(
        lambda: (
            group_report(ev.run_arrays("groups"), cfg),
            group_report(ev.run_arrays("communities"), cfg),
        )
    )
    _, warm = timed(write_run_report, run_dir)
    t_figs = warm - t_read - t_eval - t_metrics
    print(f"in-process, first call (cold caches):      {first:6.2f} s")
    print(f"in-process, warm caches:                   {warm:6.2f} s  (ratio {first / warm:.1f}x)")
    print(f"  read results files + config              {t_read:6.2f} s")
    print(
        f"  rebuild models, evaluate every record    {t_eval:6.2f} s  ({len(ev.labels)} test records)"
    )
    print(f"  metrics (groups + communities views)     {t_metrics:6.2f} s")
    print(f"  cascade tables, figures, files (rest)    {t_figs:6.2f} s")
    if args.sweep:
        from fedcascade.reporting.sweep_report import write_sweep_report

        sweep = Path(args.sweep)
        n = sum(1 for p in sweep.iterdir() if (p / "summary.json").is_file())
        _, t_all = timed(write_sweep_report, sweep, True, None, lambda m: None)
        _, t_lean = timed(write_sweep_report, sweep, False, None, lambda m: None)
        print(f"sweep report, {n} runs, with per-run reports: {t_all:6.1f} s")
        print(f"sweep report, {n} runs, sweep files only:     {t_lean:6.1f} s")


if __name__ == "__main__":
    main()
