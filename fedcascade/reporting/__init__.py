"""``fedcascade report``: the cascading-disparity report of a run or a sweep directory.

Modules, each small and testable on its own:

``rundir``, ``sweepdir``
    read a run / sweep directory (the results contract) without ever raising on missing parts;
    what cannot be read becomes a :class:`~fedcascade.reporting.rundir.Note`.
``evaluation``
    rebuild a run's cluster models and evaluate them on every community's records
    (probabilities, embeddings, noise/attack predictions, membership-inference losses).
``run_report``
    every metric per group, sub-distribution and community, the within-run cascade, and the
    run's ``report.md`` / ``report.json`` / ``figures/``.
``sweep_report``
    disparate impact of DP, strategy x epsilon tables, ARI per round, cascade across runs,
    ``disparity.csv`` and the sweep's ``report.md`` / ``report.json`` / ``figures/``.
``plots``, ``markdown``, ``jsonsafe``
    figures (Agg canvas), Markdown tables, strict JSON (no NaN/Infinity literals).

The entry point is :func:`fedcascade.report.write_report`.
"""

from fedcascade.reporting.rundir import Note, RunDir, is_run_dir, read_run
from fedcascade.reporting.sweepdir import Sweep, SweepRun, is_sweep_dir, read_sweep

__all__ = [
    "Note",
    "RunDir",
    "Sweep",
    "SweepRun",
    "is_run_dir",
    "is_sweep_dir",
    "read_run",
    "read_sweep",
]
