"""Benchmark of the disparity report at quickstart size, and of its hot paths.

Run: ``python benchmarks/bench_metrics.py`` (about 15 s on 2 cores). Prints

* the time of :func:`fedcascade.metrics.group_report` for one quickstart-sized run
  (6 communities x 300 test records, 64 input features, 32-dim embeddings, a small MLP for the
  robustness metrics, membership losses, 3 seeds for multiplicity), with and without the model;
* the time of :func:`fedcascade.metrics.plot_cascade` for a sweep of 30 runs (180 rows);
* before/after ratios of the spectrum computation (SVD versus eigenvalues of the smaller Gram
  matrix, what ``effective_rank`` / ``participation_ratio`` use) and of the per-group ECE
  (Python loop over groups versus one combined bincount).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fedcascade.metrics import (
    MembershipArrays,
    RunArrays,
    calibration_by_group,
    expected_calibration_error,
    group_report,
    plot_cascade,
    report_rows,
)


def _best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def quickstart_run(
    seed: int = 0, groups: int = 6, per_group: int = 300, dim: int = 64
) -> RunArrays:
    """A synthetic run shaped like the quickstart's test set."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    n = groups * per_group
    labels_g = np.repeat(np.array([f"c{i}" for i in range(groups)]), per_group)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    y = rng.integers(0, 10, n)
    model = torch.nn.Sequential(
        torch.nn.Linear(dim, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 10),
    )
    with torch.no_grad():
        xt = torch.as_tensor(x)
        emb = model[:4](xt).numpy()
        probs = torch.softmax(model(xt).double(), 1).numpy()
    m_groups = np.repeat(np.array([f"c{i}" for i in range(groups)]), 200)
    mem = MembershipArrays(
        rng.exponential(size=len(m_groups)),
        m_groups,
        rng.exponential(size=len(m_groups)),
        m_groups,
        rng.exponential(size=(4, len(m_groups))),
        rng.exponential(size=(4, len(m_groups))),
    )
    seeds = np.stack([probs.argmax(1), rng.integers(0, 10, n), rng.integers(0, 10, n)])
    return RunArrays(
        groups=labels_g,
        labels=y,
        probs=probs,
        subdistributions=np.repeat(np.arange(groups) // 2, per_group),
        embeddings=emb,
        inputs=x,
        membership=mem,
        epsilon={f"c{i}": 4.0 for i in range(groups)},
        model=model,
        seed_predictions=seeds,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="best of this many timings")
    args = parser.parse_args()
    torch.set_num_threads(1)

    arrays = quickstart_run()
    no_model = quickstart_run()
    no_model.model = None
    group_report(no_model)  # warm-up: imports, BLAS and sklearn first-call costs
    t_full = _best_of(lambda: group_report(arrays), args.repeat)
    t_nomodel = _best_of(lambda: group_report(no_model), args.repeat)
    print(f"group_report, quickstart run (1800 records), with model:    {t_full:7.3f} s")
    print(f"group_report, quickstart run (1800 records), without model: {t_nomodel:7.3f} s")

    # A sweep's rows: two real reports, jittered into 30 runs (the plot's cost is what matters).
    base = [group_report(quickstart_run(seed=r, per_group=100)) for r in range(2)]
    rows = []
    for r in range(30):
        rng = np.random.default_rng(r)
        for row in report_rows(base[r % 2], run=f"run{r}"):
            row["flattening"] += rng.normal(0, 0.05)
            row["accuracy"] += rng.normal(0, 0.05)
            rows.append(row)
    with tempfile.TemporaryDirectory() as tmp:
        t_plot = _best_of(lambda: plot_cascade(rows, Path(tmp) / "c.png"), args.repeat)
    print(f"plot_cascade, 30 runs x 6 groups (2000 bootstrap resamples):  {t_plot:7.3f} s")

    # Hot path 1: spectrum of a (300, 32) group embedding and a (300, 64) input block.
    for shape in [(300, 32), (300, 64), (1800, 32)]:
        x = np.random.default_rng(0).normal(size=shape)
        svd = _best_of(
            lambda x=x: [np.linalg.svd(x, compute_uv=False) for _ in range(20)], args.repeat
        )
        gram = _best_of(lambda x=x: [np.linalg.eigvalsh(x.T @ x) for _ in range(20)], args.repeat)
        print(
            f"spectrum {shape}: svd {svd / 20 * 1e3:7.3f} ms, gram eigvalsh {gram / 20 * 1e3:7.3f} ms,"
            f" ratio {svd / gram:6.1f}x"
        )

    # Hot path 2: per-group ECE, loop versus one bincount.
    probs, labels, groups = arrays.probs, arrays.labels, arrays.groups
    names = np.unique(groups)
    loop = _best_of(
        lambda: [
            expected_calibration_error(probs[groups == g], labels[groups == g]) for g in names
        ],
        args.repeat,
    )
    vec = _best_of(lambda: calibration_by_group(probs, labels, groups), args.repeat)
    print(
        f"per-group ECE: loop {loop * 1e3:7.3f} ms, bincount {vec * 1e3:7.3f} ms, ratio {loop / vec:5.1f}x"
    )


if __name__ == "__main__":
    main()
