"""Picture of a synthetic world: a 2-D projection coloured by sub-distribution.

Regenerate the figure in the docs with::

    python -m fedcascade.data.plot docs/img/synthetic_projection.png
"""

from __future__ import annotations

import sys

import numpy as np

from fedcascade.configtools import build
from fedcascade.data.config import DataConfig
from fedcascade.data.synthetic import make_world

__all__ = ["plot_synthetic_projection"]


def plot_synthetic_projection(cfg: DataConfig, seed: int, path: str, per_sub: int = 600) -> None:
    """Save a PNG: PCA of the aggregate, left coloured by sub-distribution, right by label.

    Every sub-distribution is drawn with the same number of points (``per_sub``) so the small
    ones are visible; their real share is in the legend.

    Parameters
    ----------
    cfg : DataConfig
        A config with a ``[data.synthetic]`` section.
    seed : int
        Data seed.
    path : str
        Output PNG path.
    per_sub : int
        Points drawn per sub-distribution.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sc = cfg.synthetic
    world = make_world(sc, seed)
    rng = np.random.default_rng(seed)
    xs, ys, ks = [], [], []
    for k in range(len(sc.sub_distributions)):
        x, y, _ = world.sample(k, per_sub, rng)
        xs.append(x)
        ys.append(y)
        ks.append(np.full(per_sub, k))
    x, y, k = np.concatenate(xs), np.concatenate(ys), np.concatenate(ks)
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    p = centred @ vt[:2].T

    names = sc.sub_distribution_names()
    totals = [
        round(s.size * sc.records_per_community) * s.n_communities for s in sc.sub_distributions
    ]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), sharex=True, sharey=True)
    for j, name in enumerate(names):
        s = sc.sub_distributions[j]
        share = 100 * totals[j] / sum(totals)
        axes[0].scatter(
            p[k == j, 0],
            p[k == j, 1],
            s=5,
            alpha=0.6,
            label=f"{name}: {share:.0f}% of records, {s.n_communities} comm., {s.modes} mode(s)",
        )
    axes[0].set_title(f"coloured by sub-distribution ({per_sub} points each)")
    axes[0].legend(fontsize=7, loc="best", markerscale=3)
    markers = ["o", "^", "s", "D", "v", "P"]
    for j in range(len(names)):
        for c in range(sc.n_classes):
            m = (k == j) & (y == c)
            axes[1].scatter(
                p[m, 0],
                p[m, 1],
                s=5,
                alpha=0.6,
                marker=markers[j % len(markers)],
                color=plt.cm.coolwarm(c / max(sc.n_classes - 1, 1)),
            )
    axes[1].set_title("coloured by label (marker = sub-distribution)")
    for ax in axes:
        ax.set_xlabel("principal component 1")
    axes[0].set_ylabel("principal component 2")
    fig.suptitle(
        f"Synthetic world (D = {sc.dim}, seed {seed}): sub-distributions overlap on shared "
        "directions but label differently",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":  # pragma: no cover
    out = sys.argv[1] if len(sys.argv) > 1 else "synthetic_projection.png"
    plot_synthetic_projection(build(DataConfig, {}, "data"), 0, out)
    print(f"wrote {out}")
