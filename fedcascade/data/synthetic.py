"""The seed paper's Figure 1 world: a mixture of sub-distributions on low-dimensional manifolds.

Geometry (all drawn from the seed):

- A random orthonormal basis of the D-dimensional input space. Its first ``shared_axes``
  directions are *shared*: any sub-distribution may use them (x1..x4 in Figure 1). Each
  sub-distribution also owns ``unique_dims`` directions nobody else uses (x5 for D4).
- Sub-distribution k lives on a ``intrinsic_dim``-dimensional manifold inside the span of its
  ``shared_dims`` shared directions plus its unique ones. Manifold coordinates ``z`` follow a
  mixture of ``modes`` Gaussians (complexity); they are embedded by
  ``phi(z) = L z + curvature * sin(B z + b)`` (non-linear unless ``curvature = 0``), moved to
  a centre at distance about ``separation`` along the shared directions, and blurred with
  isotropic input noise of std ``noise``.
- Each sub-distribution labels its records with its *own* function of ``z``: a random sum of
  sinusoids, cut at its quantiles so the classes are balanced. Regions of different
  sub-distributions overlap on the shared directions but disagree on labels, so a model fit
  to the aggregate follows the majority and is wrong for the small sub-distributions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedcascade.data.assemble import Unit, communities_from_units, warn_small_test_groups
from fedcascade.data.config import DataConfig, SyntheticConfig
from fedcascade.data.types import Federation

__all__ = ["SyntheticWorld", "SubManifold", "make_world", "build_synthetic", "marginalized_flags"]

_STREAM_WORLD, _STREAM_SAMPLES, _STREAM_SPLIT, _STREAM_PUBLIC = 0, 1, 2, 3
_LABEL_FEATURES = 6
_QUANTILE_SAMPLE = 4096


def _thin_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for a small inner dimension, without BLAS.

    The inner dimensions here are manifold dimensions (2-8). Multi-threaded BLAS is slower
    than a few broadcast multiply-adds for such shapes, and much slower when the machine's
    cores are busy with other workers (measured: 2.9 s vs 1.4 s for 530k records).
    """
    if a.shape[1] > 8:
        return a @ b
    out = a[:, 0, None] * b[0] if b.ndim == 2 else a[:, 0] * b[0]
    for j in range(1, a.shape[1]):
        out += a[:, j, None] * b[j] if b.ndim == 2 else a[:, j] * b[j]
    return out


@dataclass(frozen=True, eq=False)
class SubManifold:
    """The generative parameters of one sub-distribution (see the module docstring)."""

    centre: np.ndarray  # (D,)
    basis: np.ndarray  # (D, m) orthonormal columns: the input directions it uses
    lin: np.ndarray  # (m, d)
    bend: np.ndarray  # (m, d)
    bend_phase: np.ndarray  # (m,)
    mode_means: np.ndarray  # (modes, d)
    mode_std: float
    label_w: np.ndarray  # (F, d)
    label_b: np.ndarray  # (F,)
    label_a: np.ndarray  # (F,)
    thresholds: np.ndarray  # (C-1,)
    noise: float
    label_noise: float
    curvature: float

    def latent(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Draw ``n`` manifold coordinates from the mixture of modes."""
        modes = rng.integers(0, len(self.mode_means), size=n)
        d = self.mode_means.shape[1]
        return self.mode_means[modes] + self.mode_std * rng.standard_normal((n, d))

    def score(self, z: np.ndarray) -> np.ndarray:
        """The sub-distribution's own label score of manifold coordinates ``z``."""
        return _thin_matmul(np.sin(_thin_matmul(z, self.label_w.T) + self.label_b), self.label_a)

    def embed(self, z: np.ndarray) -> np.ndarray:
        """Map manifold coordinates into the input space (noise-free)."""
        local = _thin_matmul(z, self.lin.T) + self.curvature * np.sin(
            _thin_matmul(z, self.bend.T) + self.bend_phase
        )
        return self.centre + _thin_matmul(local, self.basis.T)


@dataclass(frozen=True, eq=False)
class SyntheticWorld:
    """All sub-distributions of one synthetic world; :meth:`sample` draws labelled records."""

    subs: list[SubManifold]
    dim: int
    n_classes: int

    def sample(
        self, k: int, n: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Draw ``n`` records from sub-distribution ``k``.

        Returns
        -------
        x : numpy.ndarray
            float32, shape ``(n, D)``.
        y : numpy.ndarray
            int64 labels, shape ``(n,)``.
        z : numpy.ndarray
            float64 manifold coordinates, shape ``(n, intrinsic_dim)``.
        """
        s = self.subs[k]
        z = s.latent(n, rng)
        # float32 noise: drawing it is the main cost of a large federation (about 2x faster).
        x = s.embed(z).astype(np.float32)
        x += np.float32(s.noise) * rng.standard_normal((n, self.dim), dtype=np.float32)
        y = np.searchsorted(s.thresholds, s.score(z)).astype(np.int64)
        if s.label_noise > 0:
            flip = rng.random(n) < s.label_noise
            y[flip] = rng.integers(0, self.n_classes, size=int(flip.sum()))
        return x, y, z


def make_world(cfg: SyntheticConfig, seed: int) -> SyntheticWorld:
    """Draw the geometry and labelling functions of a synthetic world from ``seed``.

    Parameters
    ----------
    cfg : SyntheticConfig
        The ``[data.synthetic]`` section.
    seed : int
        Data seed.

    Returns
    -------
    SyntheticWorld
    """
    rng = np.random.default_rng([seed, _STREAM_WORLD])
    dim = cfg.dim
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    shared = q[:, : cfg.shared_axes]
    next_unique = cfg.shared_axes
    subs = []
    for s in cfg.sub_distributions:
        picked = np.sort(rng.choice(cfg.shared_axes, size=s.shared_dims, replace=False))
        unique = q[:, next_unique : next_unique + s.unique_dims]
        next_unique += s.unique_dims
        basis = np.concatenate([shared[:, picked], unique], axis=1)
        m, d = basis.shape[1], s.intrinsic_dim
        lin, _ = np.linalg.qr(rng.standard_normal((m, d)))  # orthonormal columns: no squashing
        bend = rng.standard_normal((m, d))
        bend_phase = rng.uniform(0, 2 * np.pi, size=m)
        # Centres sit along the shared directions, so sub-distributions overlap there.
        direction = (
            shared @ rng.standard_normal(cfg.shared_axes)
            if cfg.shared_axes > 0
            else rng.standard_normal(dim)
        )
        centre = cfg.separation * direction / max(np.linalg.norm(direction), 1e-12)
        # One mode: a single blob. More modes: well-separated blobs, each a different regime
        # of the labelling function, so the sub-distribution is harder to learn from few records.
        mode_means = np.zeros((1, d)) if s.modes == 1 else 2.0 * rng.standard_normal((s.modes, d))
        label_w = rng.standard_normal((_LABEL_FEATURES, d))
        label_b = rng.uniform(0, 2 * np.pi, size=_LABEL_FEATURES)
        label_a = rng.standard_normal(_LABEL_FEATURES)
        sub = SubManifold(
            centre=centre,
            basis=basis,
            lin=lin,
            bend=bend,
            bend_phase=bend_phase,
            mode_means=mode_means,
            mode_std=1.0 if s.modes == 1 else 0.6,
            label_w=label_w,
            label_b=label_b,
            label_a=label_a,
            thresholds=np.zeros(0),
            noise=s.noise,
            label_noise=s.label_noise,
            curvature=cfg.curvature,
        )
        # Balanced classes: cut the score at its own quantiles (from a fixed reference draw, so
        # the labelling function does not depend on how many records are drawn later).
        ref = sub.score(sub.latent(_QUANTILE_SAMPLE, rng))
        qs = np.quantile(ref, np.arange(1, cfg.n_classes) / cfg.n_classes)
        subs.append(_with_thresholds(sub, qs))
    return SyntheticWorld(subs=subs, dim=dim, n_classes=cfg.n_classes)


def _with_thresholds(sub: SubManifold, thresholds: np.ndarray) -> SubManifold:
    from dataclasses import replace

    return replace(sub, thresholds=np.asarray(thresholds, dtype=np.float64))


def marginalized_flags(totals: list[int], explicit: list[bool | None]) -> list[int]:
    """Indices of marginalized sub-distributions.

    An explicit flag wins; otherwise a sub-distribution is marginalized when its total records
    are at most half of the largest sub-distribution's.
    """
    biggest = max(totals) if totals else 0
    return [
        k
        for k, (t, e) in enumerate(zip(totals, explicit, strict=True))
        if (e if e is not None else t <= 0.5 * biggest)
    ]


def public_counts(
    totals: list[int], minority: list[int], n_public: int, weight: float, rng: np.random.Generator
) -> np.ndarray:
    """How many public-pool records each sub-distribution contributes (multinomial draw)."""
    w = np.asarray(totals, dtype=np.float64)
    w[minority] *= weight
    if n_public == 0 or w.sum() <= 0:
        return np.zeros(len(totals), dtype=np.int64)
    return rng.multinomial(n_public, w / w.sum()).astype(np.int64)


def build_synthetic(cfg: DataConfig, seed: int) -> Federation:
    """Build the synthetic federation (uncached; use :func:`fedcascade.data.build_federation`).

    Parameters
    ----------
    cfg : DataConfig
        Config with ``source = "synthetic"``.
    seed : int
        Data seed.

    Returns
    -------
    Federation
    """
    sc = cfg.synthetic
    world = make_world(sc, seed)
    names = sc.sub_distribution_names()
    units = []
    totals = []
    offset = 0
    for k, s in enumerate(sc.sub_distributions):
        per = round(s.size * sc.records_per_community)
        n = per * s.n_communities
        totals.append(n)
        # One stream per sub-distribution: its records do not change when another is edited.
        x, y, _ = world.sample(k, n, np.random.default_rng([seed, _STREAM_SAMPLES, k]))
        units.append(
            Unit(
                name=names[k],
                sub_distribution=k,
                n_communities=s.n_communities,
                x=x,
                y=y,
                groups=np.full(n, names[k]),
                ids=np.arange(offset, offset + n, dtype=np.int64),
            )
        )
        offset += n
    rng = np.random.default_rng([seed, _STREAM_SPLIT])
    communities = communities_from_units(units, cfg, sc.n_classes, rng)
    minority = marginalized_flags(totals, [s.marginalized for s in sc.sub_distributions])

    prng = np.random.default_rng([seed, _STREAM_PUBLIC])
    counts = public_counts(
        totals, minority, cfg.public_records, cfg.public_pool.minority_weight, prng
    )
    px, py, pk = [], [], []
    for k, c in enumerate(counts):
        if c:
            x, y, _ = world.sample(k, int(c), prng)
            px.append(x)
            py.append(y)
            pk.append(np.full(int(c), k, dtype=np.int64))
    public_x = np.concatenate(px) if px else np.zeros((0, sc.dim), dtype=np.float32)
    public_y = np.concatenate(py) if py else np.zeros(0, dtype=np.int64)
    public_k = np.concatenate(pk) if pk else np.zeros(0, dtype=np.int64)
    warn_small_test_groups(communities, cfg.min_group_test)
    return Federation(
        communities=communities,
        n_classes=sc.n_classes,
        input_shape=(sc.dim,),
        sub_distribution_names=names,
        minority_sub_distributions=minority,
        public_x=torch.from_numpy(public_x),
        public_y=torch.from_numpy(public_y),
        public_sub_distribution=public_k,
        source="synthetic",
        info={
            "records_per_sub_distribution": dict(zip(names, totals, strict=True)),
            "public_per_sub_distribution": dict(zip(names, counts.tolist(), strict=True)),
        },
    )
