"""Clustering science behind the strategies: plain functions over numpy arrays (no Flower).

Modules
-------
updates         flatten / average client updates, DP noise std of an update
rdpcfl          R-DPCFL's clustering round (PCA(2) + spherical GMM, overlap, switch round)
gmm             spherical GMM fit, overlap, choice of k
cascade         cascade's noise-aware clustering with automatic k; free assignment of late clients
selection       report-noisy-max / -min, sensitivities, RDP accounting of selections
noise_plan      noise scaling by cluster size: weights, rounds, sample rates, warm-up share
ranks           LoRA rank per cluster
lora_aggregate  HetLoRA / FlexLoRA aggregation across ranks
metrics         adjusted Rand index and minority recovery (logging only)
simulate        DP-noisy update matrices with known clusters (tests, benchmarks)
"""

from fedcascade.clustering.cascade import (
    ClusterResult,
    assign_by_update,
    cascade_cluster,
    combine_rounds,
    estimate_noise_variance,
    noise_corrected_gram,
    spectral_embedding,
)
from fedcascade.clustering.gmm import (
    GMMFit,
    choose_k,
    fit_spherical_gmm,
    gmm_overlap,
    pairwise_overlaps,
)
from fedcascade.clustering.lora_aggregate import (
    flexlora_aggregate,
    hetlora_aggregate,
    lora_rank,
    pad_lora,
    truncate_lora,
)
from fedcascade.clustering.metrics import adjusted_rand, cluster_recovery
from fedcascade.clustering.noise_plan import (
    NoisePlan,
    aggregate_noise_ratio,
    aggregation_weights,
    cluster_noise_plan,
    cluster_precision,
    cluster_rounds,
    gdp_mu,
    min_sample_rate,
    participation_rounds,
    warmup_share,
)
from fedcascade.clustering.probe import (
    probe_dimension,
    probe_features,
    probe_noise_multiplier,
    probe_noise_std,
    probe_norm_bound,
    release_probe,
)
from fedcascade.clustering.ranks import cluster_ranks, lora_param_count
from fedcascade.clustering.rdpcfl import (
    RDPCFLClustering,
    rdpcfl_cluster,
    rdpcfl_embed,
    rdpcfl_selection_rounds,
    rdpcfl_switch_round,
    sample_from_posteriors,
)
from fedcascade.clustering.selection import (
    accuracy_sensitivity,
    exponential_mechanism_probs,
    loss_sensitivity,
    rdp_to_epsilon,
    report_noisy_max,
    report_noisy_min,
    selection_epsilon,
    selection_rdp,
)
from fedcascade.clustering.simulate import simulate_updates
from fedcascade.clustering.updates import (
    dp_update_noise_std,
    flatten_updates,
    unflatten,
    weighted_average,
)

__all__ = [
    "probe_dimension",
    "probe_features",
    "probe_noise_multiplier",
    "probe_noise_std",
    "probe_norm_bound",
    "release_probe",
    "ClusterResult",
    "GMMFit",
    "NoisePlan",
    "RDPCFLClustering",
    "accuracy_sensitivity",
    "adjusted_rand",
    "aggregate_noise_ratio",
    "aggregation_weights",
    "assign_by_update",
    "cascade_cluster",
    "choose_k",
    "cluster_noise_plan",
    "cluster_precision",
    "cluster_ranks",
    "cluster_recovery",
    "cluster_rounds",
    "combine_rounds",
    "dp_update_noise_std",
    "estimate_noise_variance",
    "exponential_mechanism_probs",
    "fit_spherical_gmm",
    "flatten_updates",
    "flexlora_aggregate",
    "gdp_mu",
    "gmm_overlap",
    "hetlora_aggregate",
    "lora_param_count",
    "lora_rank",
    "loss_sensitivity",
    "min_sample_rate",
    "noise_corrected_gram",
    "pad_lora",
    "pairwise_overlaps",
    "participation_rounds",
    "rdp_to_epsilon",
    "rdpcfl_cluster",
    "rdpcfl_embed",
    "rdpcfl_selection_rounds",
    "rdpcfl_switch_round",
    "report_noisy_max",
    "report_noisy_min",
    "sample_from_posteriors",
    "selection_epsilon",
    "selection_rdp",
    "simulate_updates",
    "spectral_embedding",
    "truncate_lora",
    "unflatten",
    "warmup_share",
    "weighted_average",
]
