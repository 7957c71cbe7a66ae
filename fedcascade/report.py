"""``fedcascade report DIR``: the cascading-disparity report of a run or a sweep directory.

A run directory (it has ``summary.json``) gets ``report.md``, ``report.json`` and
``figures/*.png``: performance, representation, privacy, robustness, calibration and
multiplicity per group and sub-distribution, and the cascade that relates them
(:mod:`fedcascade.reporting.run_report`). A sweep directory (``sweep.csv`` or run directories
inside) gets the same for every run plus the sweep's tables and plots: accuracy and disparate
impact of DP against epsilon, cluster recovery per round, the cascade across runs, and
``disparity.csv`` (:mod:`fedcascade.reporting.sweep_report`).
"""

from __future__ import annotations

from pathlib import Path

from fedcascade.errors import ConfigError

__all__ = ["write_report"]


def write_report(path: Path, per_run: bool = True) -> Path:
    """Write the report of the run or sweep directory ``path`` and return ``report.md``'s path.

    Parameters
    ----------
    path : Path
        A run directory or a sweep directory.
    per_run : bool
        For a sweep, also write each run's own report into its directory.

    Raises
    ------
    ConfigError
        If ``path`` is neither a run directory nor a sweep directory.
    """
    from fedcascade.reporting.rundir import is_run_dir
    from fedcascade.reporting.sweepdir import is_sweep_dir

    path = Path(path)
    if is_run_dir(path):
        from fedcascade.reporting.run_report import write_run_report

        return write_run_report(path)[0]
    if path.is_dir() and is_sweep_dir(path):
        from fedcascade.reporting.sweep_report import write_sweep_report

        return write_sweep_report(path, per_run=per_run)
    raise ConfigError(
        "DIR",
        str(path),
        "a run directory (with summary.json) or a sweep directory (with sweep.csv or run "
        "directories inside)",
        "run `fedcascade run CONFIG --out DIR` or `fedcascade sweep CONFIG --out DIR` first",
    )
