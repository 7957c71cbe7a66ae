"""Benchmark of the clustering library: speed at scale and ARI against DP noise.

Run: ``python benchmarks/bench_clustering.py`` (about a minute on one core).

1. ``cascade_cluster`` on 1,000 communities x 5,000 parameters (10 sub-distributions of 40 or 160
   communities), with the dense eigendecomposition vs the Lanczos + warm subspace iteration used
   by default, and R-DPCFL's embedding + GMM for reference.
2. ARI of R-DPCFL's pipeline and of cascade on the R-DPCFL protocol (21 communities in 4
   sub-distributions of {3, 6, 6, 6}) across epsilon (R-DPCFL*: its PCA + GMM given cascade's
   3-round warm-up data, to separate the algorithm from the warm-up budget), with DP noise from real DP-SGD plans
   (see tests/test_clustering_cascade.py for how the noise multipliers were computed), for
   equal community sizes (600 records) and for a minority of smaller communities (150 records).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

from fedcascade.clustering import (
    adjusted_rand,
    cascade_cluster,
    cluster_recovery,
    combine_rounds,
    rdpcfl_cluster,
    simulate_updates,
)
from fedcascade.clustering import cascade as cascade_mod

SIGMA_RDPCFL = {1.0: 9.908, 3.0: 3.740, 8.0: 1.719}  # one full-batch round, then 49 at q = 0.1
SIGMA_CASCADE = {1.0: 11.279, 3.0: 4.218, 8.0: 1.886}  # three full-batch rounds, then 47


def bench_speed(repeats: int) -> None:
    sizes = [40] * 5 + [160] * 5
    U, y = simulate_updates(sizes, 5000, 0.02, rounds=1, seed=0, dtype=np.float32)
    print(f"cascade_cluster, {len(y)} communities x 5000 parameters, 10 sub-distributions")
    timings = {}
    for label, dense_max in [("dense eigh", 10**9), ("lanczos + warm subspace", 300)]:
        cascade_mod.DENSE_EIGH_MAX_N = dense_max
        best = np.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            res = cascade_cluster(U, 0.02, k_max=12, seed=0)
            best = min(best, time.perf_counter() - t0)
        timings[label] = best
        print(
            f"  {label:<26} {best:6.2f} s   k = {res.k}, ARI = {adjusted_rand(y, res.labels):.3f}"
        )
    cascade_mod.DENSE_EIGH_MAX_N = 300
    print(f"  speed-up: {timings['dense eigh'] / timings['lanczos + warm subspace']:.1f}x")
    t0 = time.perf_counter()
    r = rdpcfl_cluster(U[0], 10, 0, 100)
    print(
        f"  R-DPCFL (PCA 2 + GMM, true k) {time.perf_counter() - t0:6.2f} s   "
        f"ARI = {adjusted_rand(y, r.labels):.3f}"
    )


def bench_ari(seeds: int, signal: float) -> None:
    print(f"\nARI vs epsilon, 21 communities {{3, 6, 6, 6}}, p = 5000, |g_c - g_c'| = {signal} C")
    print(
        "  records (minority / others)   eps    R-DPCFL   R-DPCFL*  cascade   cascade k   minority found"
    )
    for small in (600, 150):
        records = np.array([small] * 3 + [600] * 18)
        for eps in (1.0, 3.0, 8.0):
            ar, aw, ac, ks, mf = [], [], [], [], []
            for seed in range(seeds):
                s_r = SIGMA_RDPCFL[eps] / records
                Ur, y = simulate_updates((3, 6, 6, 6), 5000, s_r, signal_norm=signal, seed=seed)
                ar.append(adjusted_rand(y, rdpcfl_cluster(Ur[0], 4, seed, 50).labels))
                s_c = SIGMA_CASCADE[eps] / records
                Uc, y = simulate_updates(
                    (3, 6, 6, 6),
                    5000,
                    np.broadcast_to(s_c, (3, 21)),
                    rounds=3,
                    signal_norm=signal,
                    seed=seed,
                )
                # R-DPCFL* : R-DPCFL's PCA + GMM on cascade's averaged warm-up updates (same data)
                aw.append(
                    adjusted_rand(y, rdpcfl_cluster(combine_rounds(Uc, s_c)[0], 4, seed, 50).labels)
                )
                res = cascade_cluster(Uc, s_c, k_max=8, seed=seed)
                rec = cluster_recovery(y, res.labels)
                ac.append(rec["ari"])
                ks.append(res.k)
                mf.append(rec["minority_recovered"])
            print(
                f"  {small:>4} / 600                  {eps:>4}   {np.mean(ar):7.2f}   {np.mean(aw):7.2f}"
                f"   {np.mean(ac):7.2f}"
                f"   {np.mean(ks):9.2f}   {np.mean(mf):6.0%}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--signal", type=float, default=0.3)
    ap.add_argument(
        "--threads", type=int, default=1, help="BLAS threads (1: fair on a shared machine)"
    )
    args = ap.parse_args()
    with threadpool_limits(args.threads):
        bench_speed(args.repeats)
        bench_ari(args.seeds, args.signal)


if __name__ == "__main__":
    main()
