"""The two objects every data source produces: a :class:`Community` and a :class:`Federation`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["Community", "Federation"]


def _empty_ids() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


@dataclass(frozen=True, eq=False)
class Community:
    """One federated client: the records of one community, already split.

    Attributes
    ----------
    community_id : int
        Position in :attr:`Federation.communities` (equals the Flower partition id).
    name : str
        Human-readable name, e.g. ``"sub0-c2"`` or ``"Black_Female-1"``.
    x_train, y_train, x_val, y_val, x_test, y_test : torch.Tensor
        Features (float32, shape ``(n, *input_shape)``) and labels (int64, shape ``(n,)``).
        ``val`` is held out of the training data for tuning; ``test`` is drawn from the same
        distribution as the community's training data and is never trained on.
    groups_train, groups_val, groups_test : numpy.ndarray
        Sensitive-group label (str) of every record, for per-group metrics. Sources without a
        sensitive attribute use the sub-distribution name.
    sub_distribution : int
        Hidden ground truth: which sub-distribution generated this community. For metrics and
        results only; it must never reach a strategy.
    ids_train, ids_val, ids_test : numpy.ndarray
        Record ids (int64) in the source's own numbering: the row in the file (adult, csv), the
        base image (digits) or a running number (synthetic). They let anyone audit that no
        record is in two splits and how often a digits image is reused across communities.
    """

    community_id: int
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    groups_train: np.ndarray
    groups_val: np.ndarray
    groups_test: np.ndarray
    sub_distribution: int
    ids_train: np.ndarray = field(default_factory=_empty_ids)
    ids_val: np.ndarray = field(default_factory=_empty_ids)
    ids_test: np.ndarray = field(default_factory=_empty_ids)

    @property
    def n_train(self) -> int:
        """Number of training records (public: counts are not private in fedcascade)."""
        return int(self.y_train.shape[0])

    @property
    def n_val(self) -> int:
        """Number of validation records."""
        return int(self.y_val.shape[0])

    @property
    def n_test(self) -> int:
        """Number of test records."""
        return int(self.y_test.shape[0])

    def __repr__(self) -> str:
        return (
            f"Community(id={self.community_id}, name={self.name!r}, n_train={self.n_train}, "
            f"n_val={self.n_val}, n_test={self.n_test}, sub_distribution={self.sub_distribution})"
        )


@dataclass(frozen=True, eq=False)
class Federation:
    """All communities of one experiment plus the public pretraining pool.

    Attributes
    ----------
    communities : list of Community
        Indexed by community id (= Flower partition id).
    n_classes : int
        Number of label classes; labels are ``0 .. n_classes - 1``.
    input_shape : tuple of int
        Shape of one record: ``(D,)`` for tabular and synthetic data, ``(1, 8, 8)`` for digits.
    sub_distribution_names : list of str
        Name of every sub-distribution, indexed by :attr:`Community.sub_distribution`.
    minority_sub_distributions : list of int
        The marginalized sub-distributions (small and distinct).
    public_x, public_y : torch.Tensor
        The "public" pool for backbone pretraining (may have 0 rows). It holds none of any
        community's records and, by default, under-represents the marginalized
        sub-distributions the way foundation-model pretraining data does.
    public_sub_distribution : numpy.ndarray
        Sub-distribution id (int64) of every public record.
    source : str
        ``"synthetic"``, ``"digits"``, ``"adult"`` or ``"csv"``.
    info : dict
        Provenance for the results directory (record counts per sub-distribution, reuse of
        base records, how features were scaled, ...). Plain JSON-able values.
    """

    communities: list[Community]
    n_classes: int
    input_shape: tuple[int, ...]
    sub_distribution_names: list[str]
    minority_sub_distributions: list[int]
    public_x: torch.Tensor
    public_y: torch.Tensor
    public_sub_distribution: np.ndarray
    source: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_communities(self) -> int:
        """Number of communities."""
        return len(self.communities)

    def sub_distribution_of(self) -> np.ndarray:
        """Hidden sub-distribution id of every community (int64, for metrics only)."""
        return np.array([c.sub_distribution for c in self.communities], dtype=np.int64)

    def __repr__(self) -> str:
        return (
            f"Federation(source={self.source!r}, n_communities={self.n_communities}, "
            f"n_classes={self.n_classes}, input_shape={self.input_shape}, "
            f"sub_distributions={self.sub_distribution_names}, "
            f"minority={self.minority_sub_distributions}, public={int(self.public_y.shape[0])})"
        )
