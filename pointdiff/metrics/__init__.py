"""Point-cloud distances and generation metrics (pure PyTorch; CPU or GPU)."""

from pointdiff.metrics.distances import (
    EMD_COSTS,
    PAIR_METRICS,
    MetricInputError,
    as_clouds,
    chamfer_distance,
    chamfer_l1,
    emd_approx,
    emd_exact,
    f_score,
    pairwise_matrix,
    squared_distances,
)
from pointdiff.metrics.sets import (
    PROTOCOLS,
    compute_set_metrics,
    jsd,
    mmd_cov,
    normalize_clouds,
    occupancy_counts,
    one_nn_accuracy,
)

__all__ = [
    "EMD_COSTS",
    "PAIR_METRICS",
    "PROTOCOLS",
    "MetricInputError",
    "as_clouds",
    "chamfer_distance",
    "chamfer_l1",
    "compute_set_metrics",
    "emd_approx",
    "emd_exact",
    "f_score",
    "jsd",
    "mmd_cov",
    "normalize_clouds",
    "occupancy_counts",
    "one_nn_accuracy",
    "pairwise_matrix",
    "squared_distances",
]
