"""scikit-learn's bundled 8x8 digits, split into communities the way clustered DP-FL papers do.

Each sub-distribution applies a covariate shift (rotate every image by 0/90/180/270 degrees,
counter-clockwise) and/or a concept shift (label ``y -> (y + label_shift) mod 10``). The
default is the R-DPCFL protocol: 21 communities in 4 sub-distributions of {3, 6, 6, 6}
communities rotated by 0/90/180/270 degrees, the 3 being the minority.

How the 1,797 base images are shared (see docs/data.md for the privacy consequences):

1. ``public_pool.records`` base images are set aside for the public pool; no community ever
   holds them.
2. The rest is split once, stratified by label, into train / val / test *base pools*. A
   community's train (val, test) records always come from the train (val, test) base pool, so
   no base image is ever in one community's training data and another's test data.
3. Within a sub-distribution every base image is used at most once (its communities hold
   disjoint images). With ``reuse = "across_sub_distributions"`` (default) each
   sub-distribution draws its images independently, so one base image can appear, differently
   rotated or relabelled, in up to one community per sub-distribution. With ``reuse = "none"``
   every base image is in at most one community.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import numpy as np
import torch

from fedcascade.configtools import check, join_key
from fedcascade.data.assemble import Unit, communities_from_units, warn_small_test_groups
from fedcascade.data.config import DataConfig
from fedcascade.data.partition import largest_remainder, stratified_split
from fedcascade.data.synthetic import marginalized_flags, public_counts
from fedcascade.data.types import Federation
from fedcascade.errors import DataError

__all__ = ["load_base_digits", "transform", "build_digits", "check_digits_capacity", "N_BASE"]

#: Number of images in scikit-learn's digits data set.
N_BASE = 1797
N_CLASSES = 10
_STREAM_BASE, _STREAM_UNITS, _STREAM_SPLIT, _STREAM_PUBLIC = 10, 11, 12, 13


@functools.lru_cache(maxsize=1)
def load_base_digits() -> tuple[np.ndarray, np.ndarray]:
    """The base images scaled to [0, 1], shape ``(1797, 1, 8, 8)`` float32, and labels int64.

    Reads the CSV that scikit-learn bundles (``sklearn/datasets/data/digits.csv.gz``, the data
    behind ``sklearn.datasets.load_digits``) without importing scikit-learn, which would cost
    about 1.5 s in every worker process.
    """
    spec = importlib.util.find_spec("sklearn")
    path = None
    if spec is not None and spec.origin is not None:
        path = os.path.join(os.path.dirname(spec.origin), "datasets", "data", "digits.csv.gz")
    if path is None or not os.path.exists(path):
        raise DataError(
            "digits data", path, "scikit-learn's bundled digits.csv.gz (pip install scikit-learn)"
        )
    raw = np.loadtxt(path, delimiter=",", dtype=np.float32)
    if raw.shape != (N_BASE, 65):  # pragma: no cover - a changed scikit-learn file
        raise DataError("digits data", raw.shape, f"({N_BASE}, 65) values in {path}")
    x = (raw[:, :64] / 16.0).reshape(N_BASE, 1, 8, 8)
    x.setflags(write=False)
    y = raw[:, 64].astype(np.int64)
    y.setflags(write=False)
    return x, y


def transform(
    x: np.ndarray, y: np.ndarray, rotation: int, label_shift: int
) -> tuple[np.ndarray, np.ndarray]:
    """Apply a sub-distribution's shifts.

    Parameters
    ----------
    x : numpy.ndarray
        Images, shape ``(n, 1, 8, 8)``.
    y : numpy.ndarray
        Labels in 0..9.
    rotation : int
        0, 90, 180 or 270: counter-clockwise rotation in degrees (``numpy.rot90``).
    label_shift : int
        Concept shift: labels become ``(y + label_shift) mod 10``.

    Returns
    -------
    tuple of numpy.ndarray
        Transformed copies of ``x`` (float32) and ``y`` (int64).
    """
    xr = np.ascontiguousarray(np.rot90(x, k=rotation // 90, axes=(-2, -1)), dtype=np.float32)
    return xr, ((y + label_shift) % N_CLASSES).astype(np.int64)


def _fractions(cfg: DataConfig) -> tuple[float, float, float]:
    return (1.0 - cfg.test_fraction - cfg.val_fraction, cfg.val_fraction, cfg.test_fraction)


def _per_community(cfg: DataConfig, size: float) -> np.ndarray:
    """Train/val/test records of one community of relative ``size``."""
    n = max(1, round(size * cfg.digits.records_per_community))
    return largest_remainder(n, np.asarray(_fractions(cfg)))


def _pool_sizes(cfg: DataConfig) -> np.ndarray:
    rest = N_BASE - cfg.public_records
    return largest_remainder(max(rest, 0), np.asarray(_fractions(cfg)))


def check_digits_capacity(cfg: DataConfig, key: str) -> None:
    """Raise ConfigError if the digits protocol needs more base images than exist.

    Called from :meth:`DataConfig.validate`, so an impossible protocol fails before any work.
    """
    check(
        cfg.public_records < N_BASE,
        join_key(key, "public_pool.records"),
        cfg.public_records,
        f"fewer than the {N_BASE} digits images",
    )
    pools = _pool_sizes(cfg)
    needs = [s.n_communities * _per_community(cfg, s.size) for s in cfg.digits.sub_distributions]
    need = np.max(needs, axis=0) if cfg.digits.reuse != "none" else np.sum(needs, axis=0)
    for p, name in enumerate(("train", "val", "test")):
        if need[p] > pools[p]:
            # Largest records_per_community that fits, for the error message.
            fits = cfg.digits.records_per_community * pools[p] / max(need[p], 1)
            within = "one sub-distribution" if cfg.digits.reuse != "none" else "all communities"
            check(
                False,
                join_key(key, "digits.records_per_community"),
                cfg.digits.records_per_community,
                f"about {int(fits)} or less",
                f"{within} would need {int(need[p])} distinct base images for {name} but the "
                f"{name} pool holds {int(pools[p])} (1797 digits minus "
                f"{cfg.public_records} public, split by test/val fractions). Lower it, give "
                "fewer communities, shrink the public pool"
                + (
                    ", or allow reuse = 'across_sub_distributions'"
                    if cfg.digits.reuse == "none"
                    else ""
                ),
            )


def build_digits(cfg: DataConfig, seed: int) -> Federation:
    """Build the digits federation (uncached; use :func:`fedcascade.data.build_federation`).

    Parameters
    ----------
    cfg : DataConfig
        Config with ``source = "digits"``.
    seed : int
        Data seed.

    Returns
    -------
    Federation
    """
    dc = cfg.digits
    check_digits_capacity(cfg, "data")
    base_x, base_y = load_base_digits()
    rng = np.random.default_rng([seed, _STREAM_BASE])
    perm = rng.permutation(N_BASE)
    n_pub = cfg.public_records
    public_ids, rest = perm[:n_pub], perm[n_pub:]
    split = stratified_split(base_y[rest], _fractions(cfg), rng)
    pools = [rest[split == p] for p in range(3)]

    names = [s.display_name for s in dc.sub_distributions]
    urng = np.random.default_rng([seed, _STREAM_UNITS])
    # reuse = "none": one global shuffle per pool, consecutive slices per sub-distribution.
    shuffled = [urng.permutation(pool) for pool in pools]
    cursor = [0, 0, 0]
    units, totals = [], []
    for k, s in enumerate(dc.sub_distributions):
        per = _per_community(cfg, s.size)
        ids_parts, split_parts = [], []
        for p in range(3):
            need = int(per[p] * s.n_communities)
            if dc.reuse == "none":
                chosen = shuffled[p][cursor[p] : cursor[p] + need]
                cursor[p] += need
            else:
                chosen = urng.choice(pools[p], size=need, replace=False)
            ids_parts.append(chosen)
            split_parts.append(np.full(need, p, dtype=np.int8))
        ids = np.concatenate(ids_parts).astype(np.int64)
        x, y = transform(base_x[ids], base_y[ids], s.rotation, s.label_shift)
        totals.append(len(ids))
        units.append(
            Unit(
                name=names[k],
                sub_distribution=k,
                n_communities=s.n_communities,
                x=x,
                y=y,
                groups=np.full(len(ids), names[k]),
                ids=ids,
                split=np.concatenate(split_parts),
            )
        )
    communities = communities_from_units(
        units, cfg, N_CLASSES, np.random.default_rng([seed, _STREAM_SPLIT])
    )
    minority = marginalized_flags(totals, [s.marginalized for s in dc.sub_distributions])

    prng = np.random.default_rng([seed, _STREAM_PUBLIC])
    counts = public_counts(totals, minority, n_pub, cfg.public_pool.minority_weight, prng)
    owner = np.repeat(np.arange(len(names)), counts)
    px = np.zeros((n_pub, 1, 8, 8), dtype=np.float32)
    py = np.zeros(n_pub, dtype=np.int64)
    for k, s in enumerate(dc.sub_distributions):
        sel = np.flatnonzero(owner == k)
        if len(sel):
            px[sel], py[sel] = transform(
                base_x[public_ids[sel]], base_y[public_ids[sel]], s.rotation, s.label_shift
            )
    uses = np.bincount(
        np.concatenate([np.concatenate([c.ids_train, c.ids_val, c.ids_test]) for c in communities]),
        minlength=N_BASE,
    )
    warn_small_test_groups(communities, cfg.min_group_test)
    return Federation(
        communities=communities,
        n_classes=N_CLASSES,
        input_shape=(1, 8, 8),
        sub_distribution_names=names,
        minority_sub_distributions=minority,
        public_x=torch.from_numpy(px),
        public_y=torch.from_numpy(py),
        public_sub_distribution=owner.astype(np.int64),
        source="digits",
        info={
            "records_per_sub_distribution": dict(zip(names, totals, strict=True)),
            "public_per_sub_distribution": dict(zip(names, counts.tolist(), strict=True)),
            "base_pool_sizes": {
                n: len(p) for n, p in zip(("train", "val", "test"), pools, strict=True)
            },
            "reuse": dc.reuse,
            "max_communities_per_base_image": int(uses.max()) if len(uses) else 0,
            "base_images_used": int((uses > 0).sum()),
        },
    )
