"""Which way is "worse" for each metric name the report produces.

+1: higher is worse (a harm, e.g. loss, ECE, MIA AUC, flattening); -1: higher is better (e.g.
accuracy, effective rank of the embedding). Used to pick the worst group and to read the sign
of a cascade correlation. Names not listed here have no direction (0).
"""

from __future__ import annotations

HIGHER_IS_WORSE = 1
HIGHER_IS_BETTER = -1

_EXACT: dict[str, int] = {
    # performance
    "accuracy": HIGHER_IS_BETTER,
    "loss": HIGHER_IS_WORSE,
    # representation (embedding side; input-side dimensions describe the data, not the model)
    "flattening": HIGHER_IS_WORSE,
    "flattening_linear": HIGHER_IS_WORSE,
    "effective_rank": HIGHER_IS_BETTER,
    "participation_ratio": HIGHER_IS_BETTER,
    "intrinsic_dim": HIGHER_IS_BETTER,
    # privacy
    "mia_auc": HIGHER_IS_WORSE,
    "mia_advantage": HIGHER_IS_WORSE,
    "mia_auc_calibrated": HIGHER_IS_WORSE,
    "mia_advantage_calibrated": HIGHER_IS_WORSE,
    "epsilon": HIGHER_IS_WORSE,
    # robustness
    "acc_adversarial": HIGHER_IS_BETTER,
    # calibration
    "ece": HIGHER_IS_WORSE,
    "confident_error_rate": HIGHER_IS_WORSE,
    # multiplicity
    "ambiguity": HIGHER_IS_WORSE,
    "discrepancy": HIGHER_IS_WORSE,
}

# Bookkeeping columns: never outcomes of the cascade.
NOT_METRICS = frozenset(
    {
        "run",
        "group",
        "subdistribution",
        "n",
        "mia_n_members",
        "mia_n_nonmembers",
        "intrinsic_dim_input",
        "effective_rank_input",
        "selection_rate",
        "tpr",
        "fpr",
    }
)

# Representation scores: candidates for the x axis of the cascade, not its outcomes.
REPRESENTATION = frozenset(
    {"flattening", "flattening_linear", "effective_rank", "participation_ratio", "intrinsic_dim"}
)


def direction(name: str) -> int:
    """+1 if a higher value of metric ``name`` is worse, -1 if better, 0 if unknown."""
    if name in _EXACT:
        return _EXACT[name]
    if name.startswith("acc_noise_") or name.startswith("acc_"):
        return HIGHER_IS_BETTER
    return 0
